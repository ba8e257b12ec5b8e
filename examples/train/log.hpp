#pragma once
/// \file log.hpp
/// The CSV training log `log.csv`: one row per step, appended line by line, cut back to a checkpoint's
/// step when a run resumes, and put in place only once the run has written its first checkpoint.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <train/values.hpp>
#include <vwn/core/config.hpp>

namespace vwn::train {

/// One row of `log.csv`.
struct log_row {
  index_t step = 0;                            ///< steps completed, this one included
  double lr = 0;                               ///< learning rate of the step
  double loss = 0;                             ///< training loss (next-token plus weighted next-2-token)
  double next = 0;                             ///< training next-token loss
  std::optional<double> next2;                 ///< training next-2-token loss; empty without MTP
  std::optional<double> val_next, val_next2;   ///< only on evaluation steps (val_next2 only with MTP)
  double tokens_per_s = 0;                     ///< throughput of the step
  double elapsed_s = 0;                        ///< training seconds so far
};

/// Where a resumed run's log begins: the well-formed rows with step <= `step` of the log at `path` (the resumed
/// run's own `log.csv`; a missing file or one that is not a regular file gives no rows).
struct log_history {
  std::filesystem::path path;  ///< the resumed run's log
  index_t step = 0;            ///< the checkpoint's step: rows past it are dropped
};

/// What a checkpoint records of its run's log: the number of data lines the log held when the checkpoint was
/// written and the FNV-1a 64 of those lines (each with its newline), so that a resumed run can tell the log that
/// belongs to a checkpoint from another run's, or from one that lost rows.
struct log_digest {
  std::uint64_t rows = 0;   ///< data lines (the header is not counted)
  std::string fnv1a64;      ///< 16 hex digits
  /// Equal counts and hashes.
  bool operator==(const log_digest&) const = default;
};

/// The training log: one CSV row per step, appended and flushed line by line, so that a crash leaves at most an
/// incomplete last line, which a resumed run drops (together with rows past the checkpoint's step).
///
/// Nothing at `path` is replaced until the run has something to replace it with: the new log is written to
/// `path + ".partial"`, and `commit()` renames it over `path`; the trainer commits right after writing its
/// first checkpoint. Until then a failed run leaves `path` as it was (another run's log under `--overwrite`, or a
/// resumed run's rows past its checkpoint), and the destructor removes the partial file (so does a constructor
/// that fails). A process killed before its first checkpoint leaves the partial file behind; the next run in that
/// folder removes it, or puts it in place when it holds the rows of the folder's checkpoint (`output_folder`).
class csv_log {
 public:
  /// The first line of the file.
  static constexpr std::string_view header = "step,lr,train_loss,train_next,train_next2,val_next,val_next2,tokens_per_s,elapsed_s";

  /// Starts the log of a run that will live at `path`: the header, then, for a resumed run, the rows of
  /// `history` up to its step. Writes only `path + ".partial"`. Throws std::runtime_error when that file cannot
  /// be written.
  csv_log(const std::filesystem::path& path, const std::optional<log_history>& history);
  /// The same with the history's lines already read (`history_lines`).
  csv_log(const std::filesystem::path& path, const std::vector<std::string>& history);
  csv_log(const csv_log&) = delete;
  csv_log& operator=(const csv_log&) = delete;
  /// Removes the partial file unless `commit()` was called.
  ~csv_log();

  /// Renames the partial file over `path` (the rows appended so far and those to come); later calls do nothing.
  /// Throws std::runtime_error when the rename fails.
  void commit();

  /// True after `commit()`.
  bool committed() const { return committed_; }

  /// The file the rows go to now: `path + ".partial"` before `commit()`, `path` after.
  std::filesystem::path current_path() const;

  /// Appends one row and flushes it.
  void append(const log_row& r);

  /// The data lines written so far (history and appended rows): what a checkpoint written now records.
  const log_digest& digest() const { return digest_; }

  /// Makes the rows written so far durable (fsync of the file). Throws std::runtime_error when it fails.
  void sync();

  /// The data lines of the log at `path` that a checkpoint at `step` continues from: the well-formed lines with
  /// step <= `step`, in file order, without an incomplete last line (one without its newline) or lines over 4096
  /// bytes. Reads only a regular file (after following links): a missing path or a FIFO, device or folder gives
  /// no lines, and nothing is opened that could block or never end.
  static std::vector<std::string> history_lines(const std::filesystem::path& path, index_t step);

  /// The digest of `lines` (each counted with a newline).
  static log_digest digest_of(const std::vector<std::string>& lines);

  /// The CSV line of a row (without newline).
  static std::string format(const log_row& r);

  /// Parses a data line; false when it is malformed.
  static bool parse(const std::string& line, log_row& r);

  /// The well-formed rows of a log file (empty when it cannot be read or is not a regular file).
  static std::vector<log_row> read(const std::filesystem::path& path);

 private:
  std::filesystem::path path_, partial_;
  std::ofstream out_;
  bool committed_ = false;
  log_digest digest_;
  detail::fnv1a hash_;

  /// Writes one data line and adds it to the digest.
  void write_line(const std::string& line);
};

}  // namespace vwn::train
