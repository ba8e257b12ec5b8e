#pragma once
/// \file vwn_torch.hpp
/// vwn's primitives inside PyTorch's C++ API (LibTorch): registered operators (`torch.ops.vwn.*`, with CPU,
/// Autograd, AutocastCPU and Meta kernels) and `torch::nn::Module`s for the GHC / DGHC sub-layer, the over-width
/// embeddings, the reduce head and the MTP mixer, on CPU tensors in float32 or float64. The shape `(m, n)` is chosen
/// at run time from the shapes this build compiled (`compiled_shapes()`); the work is done by vwn's host back end
/// (the reference transformer's width parts, `transformer/width.hpp`), its forward and hand-written backward, not by
/// autograd over small PyTorch operations.
///
/// The operators are pure functions of their arguments: each call computes with the parameter tensors it is handed
/// (copied into a private workspace of vwn's for the call) and never writes them. A module's parameters are ordinary
/// tensors owned by PyTorch, changed only by whoever owns them (an optimiser, `load_state_dict`).
///
/// Layout: every tensor is row-major with the feature dimension last, any number of leading dimensions
/// (`[..., D']` for an over-width state, `[..., D]` for a backbone vector); non-contiguous inputs are copied, as
/// PyTorch's own operators do. Inputs must be CPU tensors of the parameters' dtype (float32 or float64; under CPU
/// autocast they are cast to it); anything else is refused with a `c10::Error` naming the operator, the argument,
/// what was expected and what was given.
///
/// The backward passes are not differentiable: a double backward (`create_graph` followed by a second backward,
/// Hessians, `gradgradcheck`) raises an error naming the operator.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/torch.h>

namespace vwn::libtorch {

/// The shapes `(m, n)` this build compiled, e.g. "(1,1) (1,2) (2,3) ...": the only ones the operators accept.
std::string compiled_shapes();

/// A parameter of a part: vwn's name, a fresh tensor holding its initial value, and whether decoupled weight decay
/// applies to it in vwn's trainer (the dynamic projections, the reduce and the mixer; not the static matrices,
/// norms or embedding tables).
struct parameter {
  std::string name;
  torch::Tensor tensor;
  bool weight_decay = false;
};

// ---------------------------------------------------------------------------------------------------------------
// Initial parameters, in the order the operators take them
// ---------------------------------------------------------------------------------------------------------------

/// A GHC (`dynamic` false) or DGHC sub-layer of shape `(m, n)` for backbone width `dim` (a positive multiple of
/// `m`) in the connection family `connection` (`vwn`, `mhc`, `mhc-lite` up to n = 5, `mhc-v4`; docs/mhc.md).
/// `vwn`, initialised as in the paper (eq. 15, 16; dynamic projections 0, scales 1): `alpha` `n x (m+n)`, `beta`
/// `n x m` and, dynamic, `W_alpha` `db x (m+n)`, `W_beta` `db x m`, `S_alpha`, `S_beta`, `g` `[db]`. The manifold
/// families, initialised to the same identity within `sigmoid(-8)`: the logit biases `b_pre`, `b_post` `n x m`,
/// `b_res` `n x n` (`[n!]` for mhc-lite) and, dynamic, `phi` `n db x K` (`K = 2nm + ` the carry logits) and
/// `gate` `[3]`.
std::vector<parameter> ghc_parameters(int m, int n, std::int64_t dim, bool dynamic, torch::Dtype dtype,
                                      const std::string& connection = "vwn");

/// A direct (`E`, `V x D'`) or low-rank (`E_base` `V x D`, `W_expand` `D' x D`) over-width embedding for vocabulary
/// size `vocab`, drawn with `seed` as vwn draws it.
std::vector<parameter> embedding_parameters(int m, int n, std::int64_t vocab, std::int64_t dim, bool lowrank,
                                            std::uint64_t seed, torch::Dtype dtype);

/// The reduce head `h = W_reduce GroupNorm(H)` (`D' -> D`): `gn_weight`, `gn_bias` `[D']` (when `n % m == 0`,
/// `n != m`), `W_reduce` `D x D'` (when `n != m`); none for `n == m` (the identity). Drawn with `seed`.
std::vector<parameter> reduce_head_parameters(int m, int n, std::int64_t dim, std::uint64_t seed, torch::Dtype dtype);

/// The block-level MTP mixer `U[j] = W_mix [A[j]; B[j]]`: `W_mix` `db x 2db`, drawn with `seed`.
std::vector<parameter> mtp_mixer_parameters(int m, int n, std::int64_t dim, std::uint64_t seed, torch::Dtype dtype);

/// A seed drawn from PyTorch's default CPU generator (follows `torch::manual_seed`).
std::uint64_t seed_from_torch();

// ---------------------------------------------------------------------------------------------------------------
// The operators (`torch.ops.vwn.<name>`, called through the dispatcher: autograd, autocast and tracing apply).
// `params` are the part's parameters in the order above.
// ---------------------------------------------------------------------------------------------------------------

/// What the width connection hands to the depth connection of the same sub-layer: the carried state `C`
/// (`[..., D']`) and each token's depth coefficients `b` (`[..., n, m]`), which also hold the call's saved state.
/// `b` must be the very tensor the width connection returned (not a copy).
struct ghc_carry {
  torch::Tensor C;
  torch::Tensor b;
};

/// The width connection's result: the backbone input `X` (`[..., D]`) and the carry.
struct ghc_width_result {
  torch::Tensor X;
  ghc_carry carry;
};

/// `vwn::ghc_width(Tensor H, Tensor[] params, int m, int n, bool dynamic, int owner=0, str connection="vwn") ->
/// (Tensor X, Tensor C, Tensor b)`: `H` (`[..., D']`) -> `X`, `C` (`mix = a^T H`), `b`. `owner` names the caller (a
/// module's id, 0 for none): a depth connection of another owner refuses the carry. `connection`: the family of
/// `ghc_parameters`, whose parameters `params` are.
ghc_width_result ghc_width(const torch::Tensor& H, torch::TensorList params, int m, int n, bool dynamic,
                           std::int64_t owner = 0, const std::string& connection = "vwn");

/// `vwn::ghc_depth(Tensor Z, Tensor C, Tensor b, Tensor[] params, int m, int n, bool dynamic, int owner=0,
/// str connection="vwn") -> Tensor`: `H_out = b Z + C` for the backbone output `Z` (`[..., D]`, the leading
/// dimensions of `C`). A carry of another connection family is refused.
torch::Tensor ghc_depth(const torch::Tensor& Z, const ghc_carry& carry, torch::TensorList params, int m, int n,
                        bool dynamic, std::int64_t owner = 0, const std::string& connection = "vwn");

/// `vwn::overwidth_embedding(Tensor tokens, Tensor[] params, int m, int n, bool lowrank) -> Tensor`: `H0`
/// (`[..., D']`) for integer `tokens` (`[...]`, int32 or int64, each in `[0, vocab)`).
torch::Tensor overwidth_embedding(const torch::Tensor& tokens, torch::TensorList params, int m, int n, bool lowrank);

/// `vwn::reduce_head(Tensor H, Tensor[] params, int m, int n) -> Tensor`: `h` (`[..., D]`) from `H` (`[..., D']`).
torch::Tensor reduce_head(const torch::Tensor& H, torch::TensorList params, int m, int n);

/// `vwn::mtp_mixer(Tensor A, Tensor B, Tensor[] params, int m, int n) -> Tensor`: `U` (`[..., D']`) from `A`, `B`.
torch::Tensor mtp_mixer(const torch::Tensor& A, const torch::Tensor& B, torch::TensorList params, int m, int n);

// ---------------------------------------------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------------------------------------------

/// What every module below shares: its parameters registered under vwn's names (ordinary tensors), a unique id
/// that its GHC carries name, and loading from a checkpoint's tensors.
class PrimitiveModule : public torch::nn::Module {
 public:
  /// Copies the tensors `<prefix><name>` of `tensors` (e.g. a checkpoint's `model.blocks.0.ghc_attn.`) into the
  /// parameters; each must exist and hold as many values as the parameter (flat or shaped). Nothing is copied unless
  /// all are there.
  void load_from(const std::map<std::string, torch::Tensor>& tensors, const std::string& prefix);
  /// The registered parameters, in vwn's order (what the operators are given).
  std::vector<torch::Tensor> vwn_parameters() const;
  /// The names of the parameters vwn's trainer applies weight decay to.
  std::vector<std::string> weight_decay_names() const;
  /// This module's id (unique in the process).
  std::int64_t id() const { return id_; }

 protected:
  /// Registers `params` (in vwn's order).
  void register_vwn(std::vector<parameter> params);
  /// Copies `params` (same names and shapes) into the registered parameters.
  void assign(const std::vector<parameter>& params);

 private:
  std::vector<std::string> names_;
  std::vector<std::string> decay_;
  std::int64_t id_;

 protected:
  PrimitiveModule();
};

/// Settings of a GHC / DGHC sub-layer: `GHCOptions(2, 3, 512).dynamic(true).dtype(torch::kFloat64)`, and the
/// connection family: `GHCOptions(1, 4, 512).connection("mhc")` (`vwn` by default; docs/mhc.md).
struct GHCOptions {
  GHCOptions(int m, int n, std::int64_t dim) : m_(m), n_(n), dim_(dim) {}
  TORCH_ARG(int, m);
  TORCH_ARG(int, n);
  TORCH_ARG(std::int64_t, dim);
  TORCH_ARG(bool, dynamic) = true;
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat32;
  TORCH_ARG(std::string, connection) = "vwn";
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
  /// The depth connection of this module's width connection's carry (another module's carry is refused).
  torch::Tensor depth(const torch::Tensor& Z, const ghc_carry& carry);
  /// Back to the initial values (eq. 15, 16).
  void reset_parameters();
  const GHCOptions options;
};
TORCH_MODULE(GHC);

/// Settings of an over-width embedding. Without a seed, one is drawn from PyTorch's generator.
struct OverWidthEmbeddingOptions {
  OverWidthEmbeddingOptions(int m, int n, std::int64_t vocab, std::int64_t dim) : m_(m), n_(n), vocab_(vocab), dim_(dim) {}
  TORCH_ARG(int, m);
  TORCH_ARG(int, n);
  TORCH_ARG(std::int64_t, vocab);
  TORCH_ARG(std::int64_t, dim);
  TORCH_ARG(bool, lowrank) = false;
  TORCH_ARG(std::optional<std::uint64_t>, seed) = std::nullopt;
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat32;
};

/// The over-width embedding: integer tokens `[...]` -> `H0` `[..., D']`.
class OverWidthEmbeddingImpl : public PrimitiveModule {
 public:
  explicit OverWidthEmbeddingImpl(const OverWidthEmbeddingOptions& options);
  torch::Tensor forward(const torch::Tensor& tokens);
  /// New values drawn with a seed from PyTorch's generator.
  void reset_parameters();
  const OverWidthEmbeddingOptions options;
};
TORCH_MODULE(OverWidthEmbedding);

/// Settings of a reduce head or an MTP mixer. Without a seed, one is drawn from PyTorch's generator.
struct WidthOptions {
  WidthOptions(int m, int n, std::int64_t dim) : m_(m), n_(n), dim_(dim) {}
  TORCH_ARG(int, m);
  TORCH_ARG(int, n);
  TORCH_ARG(std::int64_t, dim);
  TORCH_ARG(std::optional<std::uint64_t>, seed) = std::nullopt;
  TORCH_ARG(torch::Dtype, dtype) = torch::kFloat32;
};

/// The reduce head: `[..., D']` -> `[..., D]`.
class ReduceHeadImpl : public PrimitiveModule {
 public:
  explicit ReduceHeadImpl(const WidthOptions& options);
  torch::Tensor forward(const torch::Tensor& H);
  /// New values drawn with a seed from PyTorch's generator.
  void reset_parameters();
  const WidthOptions options;
};
TORCH_MODULE(ReduceHead);

/// The block-level MTP mixer: `A`, `B` (`[..., D']`) -> `U` (`[..., D']`).
class MTPMixerImpl : public PrimitiveModule {
 public:
  explicit MTPMixerImpl(const WidthOptions& options);
  torch::Tensor forward(const torch::Tensor& A, const torch::Tensor& B);
  /// New values drawn with a seed from PyTorch's generator.
  void reset_parameters();
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

}  // namespace vwn::libtorch
