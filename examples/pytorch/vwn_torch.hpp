#pragma once
/// \file vwn_torch.hpp
/// vwn's primitives inside PyTorch's C++ API (LibTorch): autograd operators and `torch::nn::Module`s for the GHC /
/// DGHC sub-layer, the over-width embeddings, the reduce head and the MTP mixer, on CPU tensors in float32 or
/// float64. The shape `(m, n)` is chosen at run time from the shapes this build compiled (`compiled_shapes()`);
/// the work is done by vwn's host back end (the reference transformer's width parts, `transformer/width.hpp`),
/// its forward and hand-written backward, not by autograd over small PyTorch operations.
///
/// Layout: every tensor is row-major with the feature dimension last, any number of leading dimensions
/// (`[..., D']` for an over-width state, `[..., D]` for a backbone vector); they are flattened to `T` tokens
/// without a copy. Inputs must be contiguous CPU tensors of the module's dtype; anything else is refused with a
/// `c10::Error` naming the argument, what was expected and what was given (nothing is copied to another device or
/// dtype behind the caller's back). Gradients arriving from autograd are made contiguous where they are not.
///
/// Parameters: each module registers its parameters under vwn's names (`alpha`, `beta`, `W_alpha`, ..., `E`,
/// `W_reduce`, `W_mix`) with vwn's logical shapes (docs/checkpoint.md), sharing memory with the vwn primitive
/// that computes with them: an optimiser step updates them in place and the next forward sees it without a copy.
/// A parameter that no longer shares that memory (replaced, or loaded by assignment) is copied in at the next
/// forward. A module is built for one dtype; `to(dtype)` is refused at the next forward.
///
/// Checkpoints of `vwn-train` load into the modules by name: `read_checkpoint` and `load_from`.
///
/// A module is not meant to run two backward passes at once from two threads; its calls are serialised by a lock.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace vwn::libtorch {

/// The shapes `(m, n)` this build compiled, e.g. "(1,1) (1,2) (2,3) ...": the only ones a module accepts.
std::string compiled_shapes();

/// One vwn primitive behind the modules: its parameters, their gradients and its lock. Opaque; shared by a module
/// and the autograd nodes of the calls that are waiting for their backward pass.
class primitive;

/// A parameter of a primitive: vwn's name, a tensor sharing the primitive's memory, and whether decoupled weight
/// decay applies to it in vwn's trainer (the dynamic projections, the reduce and the mixer; not the static
/// matrices, norms or embedding tables).
struct parameter {
  std::string name;
  torch::Tensor tensor;
  bool weight_decay = false;
};

/// The parameters of a primitive, in vwn's order.
std::vector<parameter> parameters_of(const std::shared_ptr<primitive>& p);

/// A readable name of the primitive, e.g. "vwn::dghc<2,3> (D = 512, float32)".
std::string describe(const primitive& p);

// ---------------------------------------------------------------------------------------------------------------
// Primitives and their autograd operators (the functional interface; the modules below call them). `params` are
// the primitive's parameters in the order of `parameters_of` (or tensors of the same shapes and dtype, which are
// then used instead): autograd delivers their gradients there.
// ---------------------------------------------------------------------------------------------------------------

/// A GHC (`dynamic` false) or DGHC sub-layer of shape `(m, n)` for backbone width `dim` (a positive multiple of
/// `m`), initialised as in the paper (eq. 15, 16; dynamic projections 0, scales 1).
std::shared_ptr<primitive> make_ghc(int m, int n, std::int64_t dim, bool dynamic, torch::Dtype dtype);

/// What the width connection hands to the depth connection of the same sub-layer: the carried state `C`
/// (`[..., D']`) and the call's saved coefficients. Feed it to exactly one `ghc_depth`.
struct ghc_carry {
  torch::Tensor C;                     ///< the carried state
  c10::intrusive_ptr<torch::CustomClassHolder> saved;  ///< the call's saved state (opaque)
};

/// The width connection's result: the backbone input `X` (`[..., D]`) and the carry.
struct ghc_width_result {
  torch::Tensor X;
  ghc_carry carry;
};

/// Width connection: `H` (`[..., D']`) -> `X`, `C` (`mix = a^T H`).
ghc_width_result ghc_width(const std::shared_ptr<primitive>& ghc, const torch::Tensor& H, torch::TensorList params);

/// Depth connection: `H_out = b Z + C` for the backbone output `Z` (`[..., D]`, same leading dimensions as `X`).
torch::Tensor ghc_depth(const torch::Tensor& Z, const ghc_carry& carry, torch::TensorList params);

/// A direct (`E`, `V x D'`) or low-rank (`E_base` `V x D`, `W_expand` `D' x D`) over-width embedding for vocabulary
/// size `vocab`, drawn with `seed` as vwn draws it.
std::shared_ptr<primitive> make_embedding(int m, int n, std::int64_t vocab, std::int64_t dim, bool lowrank,
                                          std::uint64_t seed, torch::Dtype dtype);

/// `H0` (`[..., D']`) for integer `tokens` (`[...]`, int32 or int64, each in `[0, vocab)`).
torch::Tensor embedding_forward(const std::shared_ptr<primitive>& embedding, const torch::Tensor& tokens,
                                torch::TensorList params);

/// The reduce head `h = W_reduce GroupNorm(H)` (`D' -> D`; no GroupNorm for fractional `n/m`, the identity for
/// `n == m`), drawn with `seed`.
std::shared_ptr<primitive> make_reduce_head(int m, int n, std::int64_t dim, std::uint64_t seed, torch::Dtype dtype);

/// `h` (`[..., D]`) from the last over-width state `H` (`[..., D']`).
torch::Tensor reduce_head_forward(const std::shared_ptr<primitive>& head, const torch::Tensor& H,
                                  torch::TensorList params);

/// The block-level MTP mixer `U[j] = W_mix [A[j]; B[j]]` per slot, drawn with `seed`.
std::shared_ptr<primitive> make_mtp_mixer(int m, int n, std::int64_t dim, std::uint64_t seed, torch::Dtype dtype);

/// `U` (`[..., D']`) from `A` and `B` (both `[..., D']`).
torch::Tensor mtp_mixer_forward(const std::shared_ptr<primitive>& mixer, const torch::Tensor& A, const torch::Tensor& B,
                                torch::TensorList params);

// ---------------------------------------------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------------------------------------------

/// What every module below shares: the primitive, its parameters registered under vwn's names (sharing its memory),
/// and loading them from a checkpoint's tensors.
class PrimitiveModule : public torch::nn::Module {
 public:
  /// Copies the tensors `<prefix><name>` of `tensors` (e.g. a checkpoint's `model.blocks.0.ghc_attn.`) into the
  /// parameters; each must exist and hold as many values as the parameter (flat or shaped). Nothing is copied unless
  /// all are there.
  void load_from(const std::map<std::string, torch::Tensor>& tensors, const std::string& prefix);
  /// The primitive.
  const std::shared_ptr<primitive> core;

 protected:
  explicit PrimitiveModule(std::shared_ptr<primitive> p);
  /// The registered parameters, in vwn's order (what the operators are given).
  std::vector<torch::Tensor> params_;
};

/// Settings of a GHC / DGHC sub-layer: `GHCOptions(2, 3, 512).dynamic(true).dtype(torch::kFloat64)`.
struct GHCOptions {
  GHCOptions(int m, int n, std::int64_t dim) : m_(m), n_(n), dim_(dim) {}
  TORCH_ARG(int, m);
  TORCH_ARG(int, n);
  TORCH_ARG(std::int64_t, dim);
  TORCH_ARG(bool, dynamic) = true;
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat32;
};

/// One GHC / DGHC sub-layer around a backbone: `forward(H, backbone)` returns `H_out = b backbone(X) + C`; `width`
/// and `depth` give the two connections separately.
class GHCImpl : public PrimitiveModule {
 public:
  explicit GHCImpl(const GHCOptions& options);
  /// The whole sub-layer: width connection, `Z = backbone(X)`, depth connection.
  torch::Tensor forward(const torch::Tensor& H, const std::function<torch::Tensor(const torch::Tensor&)>& backbone);
  /// The width connection alone.
  ghc_width_result width(const torch::Tensor& H);
  /// The depth connection of a width connection's carry.
  torch::Tensor depth(const torch::Tensor& Z, const ghc_carry& carry);
  const GHCOptions options;
};
TORCH_MODULE(GHC);

/// Settings of an over-width embedding.
struct OverWidthEmbeddingOptions {
  OverWidthEmbeddingOptions(int m, int n, std::int64_t vocab, std::int64_t dim) : m_(m), n_(n), vocab_(vocab), dim_(dim) {}
  TORCH_ARG(int, m);
  TORCH_ARG(int, n);
  TORCH_ARG(std::int64_t, vocab);
  TORCH_ARG(std::int64_t, dim);
  TORCH_ARG(bool, lowrank) = false;
  TORCH_ARG(std::uint64_t, seed) = 1;
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat32;
};

/// The over-width embedding: integer tokens `[...]` -> `H0` `[..., D']`.
class OverWidthEmbeddingImpl : public PrimitiveModule {
 public:
  explicit OverWidthEmbeddingImpl(const OverWidthEmbeddingOptions& options);
  torch::Tensor forward(const torch::Tensor& tokens);
  const OverWidthEmbeddingOptions options;
};
TORCH_MODULE(OverWidthEmbedding);

/// Settings of a reduce head or an MTP mixer.
struct WidthOptions {
  WidthOptions(int m, int n, std::int64_t dim) : m_(m), n_(n), dim_(dim) {}
  TORCH_ARG(int, m);
  TORCH_ARG(int, n);
  TORCH_ARG(std::int64_t, dim);
  TORCH_ARG(std::uint64_t, seed) = 2;
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat32;
};

/// The reduce head: `[..., D']` -> `[..., D]`.
class ReduceHeadImpl : public PrimitiveModule {
 public:
  explicit ReduceHeadImpl(const WidthOptions& options);
  torch::Tensor forward(const torch::Tensor& H);
  const WidthOptions options;
};
TORCH_MODULE(ReduceHead);

/// The block-level MTP mixer: `A`, `B` (`[..., D']`) -> `U` (`[..., D']`).
class MTPMixerImpl : public PrimitiveModule {
 public:
  explicit MTPMixerImpl(const WidthOptions& options);
  torch::Tensor forward(const torch::Tensor& A, const torch::Tensor& B);
  const WidthOptions options;
};
TORCH_MODULE(MTPMixer);

// ---------------------------------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------------------------------

/// A verified `vwn-train` checkpoint (docs/checkpoint.md): every tensor under its file name (`model.embed.E`,
/// `model.blocks.0.ghc_attn.alpha`, `optim.<name>.m`, ...) as a flat float32 tensor, and the metadata
/// (`config.m`, `config.width`, ...) as text. Throws std::runtime_error for a missing, corrupted or foreign file.
struct checkpoint_tensors {
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};
checkpoint_tensors read_checkpoint(const std::string& path);

/// Copies the tensors `<prefix><name>` into `params` (named as `parameters_of(p)`), checking that each exists and
/// holds as many values; throws std::invalid_argument naming the tensor, the expected and the given count.
void load_parameters(const std::shared_ptr<primitive>& p, const std::vector<torch::Tensor>& params,
                     const std::map<std::string, torch::Tensor>& tensors, const std::string& prefix);

}  // namespace vwn::libtorch
