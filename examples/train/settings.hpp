#pragma once
/// \file settings.hpp
/// The settings of a training run and their table: one entry per setting with its checkpoint key,
/// command-line flag, help text, default and checked text conversion both ways. The command line, the
/// checkpoint metadata, the resume comparison and the printed configuration all go through the table.

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <transformer/model.hpp>
#include <transformer/optim.hpp>

namespace vwn::train {

/// Every setting of a training run. Fields marked *run* only steer evaluation and checkpointing; all the
/// others determine the trajectory and must match when a run is resumed.
struct settings {
  int m = 2;              ///< GHC shape: backbone blocks `m`
  int n = 3;              ///< GHC shape: over-width blocks `n`
  bool dynamic = true;    ///< dynamic (DGHC) or static GHC
  std::string connection = "vwn";  ///< GHC connection family: vwn, mhc, mhc-lite, mhc-v4 (<vwn/core/connection.hpp>)
  model::config model{};  ///< sizes; `model.seed` is overwritten with `seed`
  index_t batch = 8;      ///< sequences per step `B`
  double lr = 3e-3;       ///< peak learning rate
  double min_lr_ratio = 0.1;  ///< cosine floor as a fraction of `lr`
  index_t warmup = 30;    ///< linear warm-up steps
  index_t steps = 300;    ///< total optimiser steps
  optim::lr_shape schedule = optim::lr_shape::cosine;  ///< shape after the warm-up
  double weight_decay = 0.1;  ///< AdamW decoupled weight decay
  double clip = 1.0;      ///< global gradient-norm clip; 0 disables clipping
  double beta1 = 0.9;     ///< AdamW first-moment decay
  double beta2 = 0.95;    ///< AdamW second-moment decay
  double adam_eps = 1e-8; ///< AdamW epsilon
  std::uint64_t seed = 1; ///< parameter initialisation and batch order
  bool freeze_ghc = false;    ///< every GHC parameter stays at its initial value (left out of AdamW and of the clip)
  double val_fraction = 0.1;  ///< last part of the corpus held out for validation
  index_t eval_every = 50;    ///< *run*: evaluate every K steps (0: only at the end)
  index_t eval_batches = 8;   ///< *run*: validation batches of `B` windows per evaluation

  /// The defaults of `vwn-train`.
  settings() {
    model.width = 128;
    model.layers = 4;
    model.heads = 4;
    model.context = 128;
    model.mtp = true;
  }
  /// The width shape, GHC kind and connection family.
  model::shape_choice shape() const { return {m, n, dynamic, connection}; }
  /// The model settings with the run's seed.
  model::config model_config() const {
    model::config c = model;
    c.shape = shape();
    c.seed = seed;
    return c;
  }
};

/// One setting: checkpoint key (`config.<key>`), command-line flag, help text, whether it determines the
/// trajectory, and text conversion both ways.
struct setting_field {
  std::string key;         ///< checkpoint metadata key without the `config.` prefix
  std::string flag;        ///< `--key`
  std::string value_name;  ///< e.g. "N" or "X"; empty for a switch (`--key`, `--key=BOOL`)
  std::string negation;    ///< the switch's opposite flag (`--static`, `--no-mtp`); empty for none
  std::string help;        ///< one line of `--help`
  std::string default_text;  ///< what `--help` shows as the default when not `get(settings())`
  bool trajectory = true;  ///< whether a resumed run must keep it
  std::string absent;      ///< the value of a checkpoint that lacks the key (one written before it existed); empty:
                           ///< the key is required
  std::function<std::string(const settings&)> get;        ///< the value as text (read back by `set`)
  std::function<void(settings&, std::string_view)> set;  ///< throws std::invalid_argument naming the flag
};

/// Whether the parameter `name` (as `model::transformer::visit` names it) is trained under `s`: all are, except
/// the GHC parameters (`*.ghc_attn.*`, `*.ghc_ffn.*`, those of the MTP block included) with `freeze_ghc`. With
/// `freeze_ghc`, the `(1,1)` static model is the plain pre-norm transformer throughout training (docs/model.md).
bool trained(const settings& s, std::string_view name);

/// All settings, in the order of `--help`.
const std::vector<setting_field>& setting_fields();

/// The field with this checkpoint key; nullptr when none.
const setting_field* find_field(std::string_view key);

/// The default `--help` shows for a field.
std::string default_text(const setting_field& f);

/// Checks a complete set of settings (ranges and the model's consistency rules: `(m, n)` compiled, `D` a
/// multiple of `m` and of `heads`, even head width, warm-up not longer than the run). Throws
/// std::invalid_argument naming the setting, what was expected and what was given.
void validate(const settings& s);

/// Bytes a training run of `s` needs, estimated from the model's tensor shapes before anything is allocated
/// (`model::count_values`; how close it comes is measured in docs/reliability.md).
struct memory_need {
  /// The parameters, their gradients and AdamW's two moments, plus the copy of those three a checkpoint write or
  /// read holds: seven values per parameter.
  double parameters = 0;
  /// One training batch's activations and scratch (`model::count_values`), and the validation batches' tokens.
  double activations = 0;
  /// The corpus, held once (`data::text_corpus::bytes_at`).
  double corpus = 0;
  /// All three.
  double total() const { return parameters + activations + corpus; }
};

/// The estimate of `s` (float values) on a corpus of `corpus_bytes`, for one process that computes each step in parts
/// of `micro_batch` sequences (0: the whole batch at once; otherwise the activations are those of one part, and the
/// sum of the parts' gradients is one more value per parameter). Throws std::invalid_argument when the shape is not
/// compiled.
memory_need estimate_memory(const settings& s, double corpus_bytes = 0, index_t micro_batch = 0);

/// Bytes this process can still allocate: the kernel's `MemAvailable`, lowered to what the memory limit of the
/// process's cgroup (v2 `memory.max`, or v1 `memory.limit_in_bytes`) leaves; empty where neither can be read.
std::optional<double> available_memory();

/// Refuses settings that cannot fit: throws std::invalid_argument when `estimate_memory(s, corpus_bytes)` exceeds
/// `available`, naming first the size flag (`--batch`, `--context`, `--width`, `--layers`, `--ffn`) whose default
/// would lower the need the most and what the need would then be (or `--data` when the corpus alone does not fit),
/// then the bytes each part needs and the bytes available. Does nothing when `available` is empty. `vwn-train`
/// checks with the corpus's size before reading it; the trainer checks again without it, the corpus then being
/// in memory already.
void expect_memory_fits(const settings& s, std::optional<double> available, double corpus_bytes = 0,
                        index_t micro_batch = 0);

/// "12.3 MB", "4.56 GB": `bytes` in decimal units, three significant digits.
std::string byte_text(double bytes);

/// Multi-line human-readable summary of the settings.
std::string describe(const settings& s);

/// Differences between the settings of a checkpoint and those requested, over the fields that determine
/// the trajectory: "--width: checkpoint 128, requested 64" per entry; empty when they agree.
std::vector<std::string> differences(const settings& checkpoint, const settings& requested);

}  // namespace vwn::train
