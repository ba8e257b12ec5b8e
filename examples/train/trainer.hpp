#pragma once
/// \file trainer.hpp
/// Training loop of the reference transformer as used by the `vwn-train` and `vwn-sample` programs: a
/// trainer that owns the model, AdamW, the learning-rate schedule and the batch sampler, and resumes from
/// its checkpoints bit for bit. This is the header the programs include: it brings in the rest of the
/// vwn_train library, one job per header:
///   values.hpp        checked parsing and formatting of setting values
///   settings.hpp      the settings of a run and their table (flags, checkpoint keys, help, checks)
///   command_line.hpp  the command lines of vwn-train and vwn-sample
///   checkpoint.hpp    checkpoint files (docs/checkpoint.md)
///   log.hpp           the CSV log
///   output.hpp        the output folder: its lock, the recovery of a killed run, the save sequence
///   plot.hpp          the loss plot (gnuplot)
///   generate.hpp      text generation

#include <csignal>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <train/checkpoint.hpp>
#include <train/command_line.hpp>
#include <train/distributed.hpp>
#include <train/generate.hpp>
#include <train/log.hpp>
#include <train/output.hpp>
#include <train/plot.hpp>
#include <train/settings.hpp>
#include <train/values.hpp>
#include <transformer/data.hpp>
#include <transformer/model.hpp>
#include <transformer/optim.hpp>

namespace vwn::train {

/// Thrown by `trainer::train_step` when a training loss or the gradient norm is not finite: the message names
/// the step and the value or gradient tensor that went bad. Thrown before the update, so the parameters and
/// the optimiser state are those of the last good step (the batch sampler has moved on: continue from a
/// checkpoint, not from this trainer). Thrown by `trainer::evaluate` when a validation loss is not finite
/// (the parameters are then those that gave it: do not save them).
class non_finite_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Result of one optimiser step.
struct step_result {
  index_t step = 0;        ///< steps completed, this one included (1 for the first)
  double lr = 0;           ///< learning rate used
  model::losses loss;      ///< training losses of the batch (before the update)
  double grad_norm = 0;    ///< gradient norm before clipping
  double seconds = 0;      ///< wall time of the step
  bool stop = false;       ///< whether some rank was asked to stop (`parallelism::stop`) by the end of this step
  double wait_seconds = 0; ///< wall time this rank waited for the slowest rank before the sum, part of `seconds`
  double sum_seconds = 0;  ///< wall time of the sum over the ranks (the allreduce) after that wait, part of `seconds`
  double sum_bytes = 0;    ///< bytes this rank handed to the sum over the ranks (0 for one rank)
};

/// How a trainer computes each global batch of `B` sequences: split over the ranks of `world` (a disjoint slice of
/// every batch each, drawn from the same sampler) and on each rank into parts of `micro_batch` sequences. The batch
/// is `P = B / micro_batch` parts in all; rank `r` of `R` takes parts `r k .. r k + k - 1` (`k = P / R`, in sequence
/// order), adds their gradients in that order, and the ranks sum theirs (an allreduce); the sum divided by `P` is the
/// gradient of the batch's mean loss, as one part of `B` would give it up to the order of the sums
/// (docs/distributed.md). With `P = 1` (one process, no micro-batches) the step is exactly the step without this.
struct parallelism {
  /// Sequences per part on each rank; 0: the rank's whole share `B / R` in one part.
  index_t micro_batch = 0;
  /// The ranks that share each batch; nullptr: this process alone. Must outlive the trainer.
  communicator* world = nullptr;
  /// Set (by a signal handler) when this process is asked to stop; each step tells every rank whether any rank
  /// had it set (`step_result::stop`), so that all stop after the same step. nullptr: never.
  const volatile std::sig_atomic_t* stop = nullptr;
};

/// Validation losses, averaged over the evaluation batches.
struct evaluation {
  double next = 0;   ///< next-token cross-entropy (nats)
  double next2 = 0;  ///< next-2-token cross-entropy (0 without MTP)
};

/// Mean losses of `model` over `batches` of windows of `T` inputs (every batch the same size, so this is the mean over
/// every scored token), in the batches' order: what `trainer::evaluate` and `vwn-eval` compute. `when` starts the
/// message of the non_finite_error thrown when a loss is not finite ("after step 1600"), `why` ends it.
evaluation mean_losses(model::transformer<float>& model, const std::vector<data::batch>& batches, index_t T,
                       const std::string& when, const std::string& why = {});

/// Batches that cover the whole of `split` (the validation bytes) with windows of `T` inputs that do not overlap:
/// `data::max_evaluation_batches(split, B, T)` batches of `B` windows spread evenly from its start to its end, so
/// every byte but fewer than `(B + 1) T + 2` of the split is scored once as a next-token target. Throws
/// std::invalid_argument when not even one batch fits.
std::vector<data::batch> whole_split_batches(std::span<const std::uint8_t> split, index_t B, index_t T);

/// Owns the model, AdamW, the schedule and the batch sampler of one run on one corpus (which must outlive
/// the trainer). Deterministic: the same settings and corpus give bit-identical losses and parameters, and a
/// run resumed from a checkpoint continues exactly as the uninterrupted run would have (with the same thread
/// count).
class trainer {
 public:
  /// A fresh run, its batches split as `p` says. Throws std::invalid_argument for invalid settings or a batch that
  /// does not split into equal parts over the ranks (naming the flags), std::runtime_error when the corpus is too
  /// short for the context.
  trainer(const settings& s, const data::text_corpus& corpus, const parallelism& p = {});

  /// Continues the run saved in `path`. The checkpoint must be valid and its settings must equal
  /// `requested` on every field that determines the trajectory (std::invalid_argument listing each
  /// difference otherwise), and `corpus` must be the same corpus (same bytes). Reads only; leaves every
  /// file untouched. The checkpoint holds no rank state: a run saved by any number of ranks or parts continues
  /// with any other `p` that splits its batch.
  static trainer resume(const std::filesystem::path& path, const settings& requested, const data::text_corpus& corpus,
                        const parallelism& p = {});

  /// Moves the run.
  trainer(trainer&&) = default;

  /// One optimiser step on the next training batch.
  step_result train_step();  // throws non_finite_error (see there) before updating anything

  /// Mean validation losses over the fixed evaluation batches (does not change the training state). Throws
  /// non_finite_error when one is not finite. With `P > 1` parts, each batch is scored in parts of the step's size,
  /// spread over the ranks, and their losses are added in batch and part order on every rank: the result depends on
  /// the part size, not on how many ranks share the work.
  evaluation evaluate();

  /// Checks that every rank holds the same run (a hash of the parameters, the optimiser state, the step and the
  /// sampler position, gathered from all ranks); call it on every rank before rank 0 saves. Throws
  /// std::runtime_error naming the ranks that differ from rank 0. Does nothing for one rank.
  void expect_replicas_agree() const;

  /// The hash `expect_replicas_agree` compares (64-bit FNV-1a over the state's bytes).
  std::uint64_t state_hash() const;

  /// The ranks sharing each batch (this process alone when none were given).
  communicator& world() const { return *world_; }
  /// Parts of each global batch (`P`), over all ranks.
  index_t parts() const { return parts_; }
  /// Sequences in each part.
  index_t part_size() const { return s_.batch / parts_; }

  /// Writes the checkpoint (atomically: a temporary file next to `path`, then a rename; the folder must
  /// exist), recording `log`, the digest of the run's log rows so far (`csv_log::digest`). `elapsed_seconds` is
  /// informative. Throws non_finite_error, before writing anything, when a parameter or an optimiser moment is
  /// not finite (an update diverged without a non-finite loss). `before_rename` as in `write_checkpoint`.
  void save(const std::filesystem::path& path, const std::optional<log_digest>& log = std::nullopt,
            const std::function<void()>& before_rename = {}) const;

  /// Completed steps.
  index_t steps_done() const { return step_; }
  /// The settings of the run.
  const settings& config() const { return s_; }
  /// The model.
  model::transformer<float>& model() { return *model_; }
  /// The optimiser.
  const optim::adamw<float>& optimizer() const { return opt_; }
  /// The learning-rate schedule.
  const optim::lr_schedule& schedule() const { return schedule_; }
  /// Position of the batch sampler.
  data::sampler_state sampler_state() const { return sampler_.state(); }
  /// Training seconds of this run including those before the last resume.
  double elapsed_seconds() const { return elapsed_before_ + elapsed_; }
  /// Tokens per training step.
  index_t tokens_per_step() const { return s_.batch * s_.model.context; }
  /// What the checkpoint this run was resumed from records of its log (empty for a fresh run, or a checkpoint
  /// of an older version).
  const std::optional<log_digest>& resumed_log() const { return resumed_log_; }

 private:
  /// Throws non_finite_error when a training loss of the step is not finite.
  void expect_finite(const model::losses& l) const;
  /// "step N: " for the step in progress.
  std::string step_text() const;

  /// The step of `P > 1` parts: each part's gradient, their sum over this rank's parts and then over the ranks.
  model::losses step_in_parts(bool stop_here, step_result& r);
  /// The validation losses of `P > 1` parts (see `evaluate`).
  evaluation evaluate_in_parts();

  settings s_;
  parallelism par_;
  communicator* world_ = nullptr;
  std::shared_ptr<communicator> own_world_;  // this process alone, when no world was given
  index_t parts_ = 1;
  std::vector<float> sum_;  // the gradients of this rank's parts, then of the batch (P > 1)
  const data::text_corpus* corpus_;
  std::string fingerprint_;
  std::unique_ptr<model::transformer<float>> model_;
  optim::adamw<float> opt_;
  optim::lr_schedule schedule_;
  data::batch_sampler sampler_;
  std::vector<data::batch> eval_;
  data::batch batch_;
  index_t step_ = 0;
  double elapsed_before_ = 0;
  double elapsed_ = 0;
  std::optional<log_digest> resumed_log_;
};

}  // namespace vwn::train
