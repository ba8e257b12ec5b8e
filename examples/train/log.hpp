#pragma once
/// \file log.hpp
/// The CSV training log `log.csv`: one row per step, appended line by line, cut back to a checkpoint's
/// step when a run resumes.

#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

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

/// The training log: one CSV row per step, appended and flushed line by line so that a crash leaves at most
/// an incomplete last line, which the next `open` for a resumed run drops (together with rows past the
/// checkpoint's step).
class csv_log {
 public:
  /// The first line of the file.
  static constexpr std::string_view header = "step,lr,train_loss,train_next,train_next2,val_next,val_next2,tokens_per_s,elapsed_s";

  /// Opens `path`. A fresh run (`resume_step` empty) starts a new file with the header; a resumed run keeps
  /// the rows with step <= `*resume_step` (rewritten atomically through a temporary file) and appends after
  /// them. Throws std::runtime_error when the file cannot be written.
  csv_log(const std::filesystem::path& path, std::optional<index_t> resume_step);

  /// Appends one row and flushes it.
  void append(const log_row& r);

  /// The CSV line of a row (without newline).
  static std::string format(const log_row& r);

  /// Parses a data line; false when it is malformed.
  static bool parse(const std::string& line, log_row& r);

  /// The well-formed rows of a log file (empty when it cannot be read).
  static std::vector<log_row> read(const std::filesystem::path& path);

 private:
  std::filesystem::path path_;
  std::ofstream out_;
};

}  // namespace vwn::train
