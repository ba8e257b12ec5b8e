#pragma once
/// \file output.hpp
/// The output folder of a training run (`vwn-train --out`): its exclusive lock, where a resumed run's log comes
/// from, what a run killed in the middle of a save left behind, and the order in which a save writes the folder,
/// chosen so that a process stopped between any two of its system calls leaves a folder that `--resume` continues
/// from with a complete log and bit-identical training (docs/reliability.md walks through every instant).

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <train/log.hpp>

namespace vwn::train {

class trainer;

/// Exit status of a process stopped by `fault_point`.
inline constexpr int fault_exit_status = 86;

/// Test hook of the save sequence: where the environment variable `VWN_FAULT_AT` holds a number N >= 1, the Nth
/// call in the process ends it at once with `_exit(fault_exit_status)`, as a `kill -9` at that instant would
/// (nothing is unwound, flushed or removed). Does nothing otherwise.
void fault_point();

/// Checks the text of `--out` before anything is done with it: not empty, and without control characters (a
/// newline, a tab, an escape...), which are refused naming the first one and its position. Throws
/// std::invalid_argument.
void expect_output_name(const std::string& out);

/// The output folder of one run, from the moment it is opened to the end of the run.
///
/// Opening it creates the folder where it is missing, takes an exclusive advisory lock on its file
/// `vwn-train.lock` (flock; held until destruction, released by the kernel when the process dies, so a killed
/// run never leaves a stale lock), checks that it may hold this run (`expect_output_folder`), and then completes
/// or clears what a killed run left: a `log.csv.partial` that holds exactly the rows the folder's checkpoint
/// records (a run stopped between its checkpoint's rename and its log's) is put in place of `log.csv`, any other
/// is removed, and so are the temporary files of checkpoint writes that never finished.
class output_folder {
 public:
  /// The file name of the lock in the folder.
  static constexpr const char* lock_name = "vwn-train.lock";

  /// Opens `out` for a run started with `resume` (the `--resume` checkpoint, if any) and `overwrite`. Throws
  /// std::runtime_error when `out` is not a folder and cannot be made one, when another process holds the lock
  /// (naming its pid), or when the folder holds another run (`expect_output_folder`).
  output_folder(const std::filesystem::path& out, const std::optional<std::filesystem::path>& resume, bool overwrite);
  output_folder(const output_folder&) = delete;
  output_folder& operator=(const output_folder&) = delete;
  /// Releases the lock.
  ~output_folder();

  /// The folder as given.
  const std::filesystem::path& path() const { return out_; }
  /// `checkpoint.safetensors` in the folder.
  std::filesystem::path checkpoint_path() const { return out_ / "checkpoint.safetensors"; }
  /// `log.csv` in the folder.
  std::filesystem::path log_path() const { return out_ / "log.csv"; }
  /// `loss.png` in the folder.
  std::filesystem::path plot_path() const { return out_ / "loss.png"; }
  /// Whether the run continues the checkpoint of this folder (the `--resume` file is this folder's checkpoint,
  /// through any link).
  bool same_run() const { return same_run_; }
  /// What opening the folder did that the user should know (a completed save of a killed run), one line each.
  const std::vector<std::string>& notices() const { return notices_; }

  /// The lines the log of `t`, resumed from `resume`, starts with: the rows up to its step of the log of the
  /// checkpoint's run, which lives in this folder for the same run and otherwise next to the checkpoint's real
  /// path (links resolved). Where the checkpoint records its log's digest, the rows must match it: `log.csv` or,
  /// when a save was cut short there, `log.csv.partial`. A missing log gives no rows and a notice; a log that holds
  /// other rows (another run's, or edited), or is not a regular file (never opened), is refused with
  /// std::runtime_error. Checkpoints of older versions take
  /// the rows of `log.csv` as they are.
  std::vector<std::string> history(const trainer& t, const std::filesystem::path& resume);

  /// Saves the run: syncs the log's rows to disk, writes the checkpoint with their digest (temporary file,
  /// sync, rename, folder sync) and, at the run's first save, removes the plot of the run it replaced (unless it
  /// continues this folder's own run) and renames the log's partial file over `log.csv`. Calls `fault_point`
  /// between the steps: 6 times at the first save of a run that replaces or starts a folder, 4 times otherwise. Throws non_finite_error (nothing written) for a diverged state, and
  /// std::runtime_error when a write fails.
  void save(const trainer& t, csv_log& log);

 private:
  std::filesystem::path out_;
  bool same_run_ = false;
  int lock_fd_ = -1;
  std::vector<std::string> notices_;

  /// Completes or clears what a killed run left (see the class comment).
  void recover();
};

}  // namespace vwn::train
