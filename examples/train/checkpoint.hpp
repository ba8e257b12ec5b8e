#pragma once
/// \file checkpoint.hpp
/// Checkpoints of a training run: safetensors files holding the model's parameters, AdamW's moments and,
/// as metadata, the settings, the counters, the corpus fingerprint and a checksum over all of it. The
/// format is documented in docs/checkpoint.md.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <io/safetensors.hpp>
#include <train/log.hpp>
#include <train/settings.hpp>
#include <transformer/data.hpp>
#include <transformer/model.hpp>

namespace vwn::train {

/// Name written under the `format` metadata key of every checkpoint.
inline constexpr std::string_view checkpoint_format = "vwn-train-checkpoint";
/// Version of the checkpoint layout (metadata keys and tensor names); bumped on any incompatible change.
inline constexpr int checkpoint_version = 1;

/// The contents of a checkpoint: read and verified by `read_checkpoint`, or filled by the trainer and
/// written by `write_checkpoint`.
struct checkpoint {
  std::filesystem::path path;         ///< the file it was read from
  settings config;                    ///< the run's settings
  index_t step = 0;                   ///< completed training steps
  std::int64_t optimizer_step = 0;    ///< AdamW step count
  data::sampler_state sampler;        ///< position of the training batch sampler
  std::uint64_t data_bytes = 0;       ///< corpus size
  std::string data_fingerprint;       ///< FNV-1a 64 of the corpus bytes
  std::string data_source;            ///< corpus path at training time (informative)
  double elapsed_seconds = 0;         ///< training time so far (informative)
  std::string model_name;             ///< e.g. "vwn::model::transformer<2,3,dynamic>"
  std::optional<log_digest> log;      ///< the run's log rows up to `step` (absent in files of older versions)
  safetensors::file file;             ///< the tensors (`model.<name>`, `optim.<name>`) and the raw metadata
};

/// FNV-1a 64 fingerprint of a corpus's bytes, as 16 hex digits (stored in checkpoints).
std::string corpus_fingerprint(const data::text_corpus& corpus);

/// Reads and verifies a checkpoint: a valid safetensors file with `format`, `format_version` and a
/// matching checksum, and every metadata key present and well formed, its settings valid, its step within the
/// run and its counters (`optimizer_step`, `sampler_batch_index`) equal to its step. Throws std::runtime_error
/// ("cannot use checkpoint 'PATH': ...") for a missing, truncated, corrupted or foreign file. Never writes
/// anything. `vwn-train --resume` and `vwn-sample` both go through it (and through `detail::load_tensors`), so they
/// accept exactly the same files.
checkpoint read_checkpoint(const std::filesystem::path& path);

/// Writes `c` to `path` atomically (a temporary file next to `path`, synced, then a rename; the folder must exist):
/// `c.file`'s tensors, and as metadata `c`'s fields with the format, its version, the library version and
/// the checksum (any metadata already in `c.file` is replaced). `c.path` is not used. `before_rename` as in
/// `safetensors::file::write`.
void write_checkpoint(const std::filesystem::path& path, checkpoint c, const std::function<void()>& before_rename = {});

/// Rebuilds the model of a verified checkpoint with its parameters (for sampling).
std::unique_ptr<model::transformer<float>> load_model(const checkpoint& c);

/// Hands AdamW the parameters of `model` that `s` trains (`trained`), in the checkpoint order: the trainer and
/// `load_model` both call it, so the optimiser's tensors in a checkpoint are those of its settings.
void add_trained_parameters(optim::adamw<float>& opt, model::transformer<float>& model, const settings& s);

/// Checks that a run may write its `checkpoint.safetensors` and `log.csv` into the folder `out`, before anything
/// is written. A fresh run (`resume` empty) needs a folder without a checkpoint; a resumed run needs the folder of
/// the run it continues (where `resume` is that folder's checkpoint) or a folder with neither a checkpoint nor a
/// log. `overwrite` allows replacing another run. Throws std::runtime_error naming the folder, what it holds and
/// the ways out.
void expect_output_folder(const std::filesystem::path& out, const std::optional<std::filesystem::path>& resume,
                          bool overwrite);

namespace detail {

/// The checksum a checkpoint stores under `checksum`: FNV-1a 64 over the metadata (except `checksum` itself) and
/// every tensor's name, dtype, shape and bytes, as 16 hex digits.
std::string checkpoint_checksum(const safetensors::file& f);

/// "cannot use checkpoint 'PATH': ", the start of every checkpoint error.
std::string checkpoint_error_prefix(const std::filesystem::path& p);

/// Refuses, before any model is built, a checkpoint whose settings describe another model than the one it holds
/// (the parameter count of `model::count_values` against the values of its `model.*` tensors) or cannot fit in the
/// memory `available` (`expect_memory_fits`; the programs pass `available_memory()`) for `training` (the run's
/// batch) or for sampling (one sequence), with the checkpoint's name in front. Throws std::runtime_error.
void expect_checkpoint_fits(const checkpoint& c, std::optional<double> available, bool training);

/// A buffer to fill from the checkpoint tensor `name`.
struct tensor_target {
  std::string name;  ///< tensor name in the file
  float* data;       ///< destination
  index_t size;      ///< floats at `data`
};

/// The tensors a checkpoint holds for `model` trained by `opt`: `model.<name>` for every parameter, then
/// `optim.<name>.m` / `.v` for every moment. `vwn-train --resume` and `vwn-sample` load the same list.
std::vector<tensor_target> checkpoint_targets(model::transformer<float>& model, optim::adamw<float>& opt);

/// Copies the tensors of `c` into `targets`; checks everything first (presence, F32 dtype, shape `[size]`,
/// every value finite, no tensor left over), so nothing is written unless every tensor is fine. Throws
/// std::runtime_error.
void load_tensors(const checkpoint& c, const std::vector<tensor_target>& targets);

}  // namespace detail

}  // namespace vwn::train
