#include <train/output.hpp>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string_view>
#include <system_error>

#include <io/safetensors.hpp>
#include <train/checkpoint.hpp>
#include <train/trainer.hpp>

namespace vwn::train {

namespace fs = std::filesystem;

void fault_point() {
  static const long at = [] {
    const char* v = std::getenv("VWN_FAULT_AT");
    return v ? std::strtol(v, nullptr, 10) : 0L;
  }();
  static long calls = 0;
  if (at > 0 && ++calls == at) ::_exit(fault_exit_status);
}

void expect_output_name(const std::string& out) {
  if (out.empty()) throw std::invalid_argument("--out: expected a folder, got ''");
  static constexpr char hex[] = "0123456789abcdef";
  auto code = [](unsigned char c) { return std::string("\\x") + hex[c >> 4] + hex[c & 15]; };
  std::string shown;  // every control character as \xNN, so that the message is one line
  std::size_t first = out.size();
  for (std::size_t i = 0; i < out.size(); ++i) {
    const auto c = static_cast<unsigned char>(out[i]);
    const bool control = c < 0x20 || c == 0x7f;
    if (control && first == out.size()) first = i;
    shown += control ? code(c) : std::string(1, out[i]);
  }
  if (first < out.size())
    throw std::invalid_argument("--out: expected a folder name without control characters, got '" + shown + "' (" +
                                code(static_cast<unsigned char>(out[first])) + " at byte " + std::to_string(first + 1) + ")");
}

namespace {

/// What kind of thing `type` is, for messages.
std::string kind(fs::file_type type) {
  return type == fs::file_type::regular ? "a regular file" : std::string(safetensors::detail::file_kind(type));
}

/// Syncs the folder `dir` (its renames and removals reach the disk); best effort.
void sync_folder(const fs::path& dir) { (void)safetensors::detail::sync_path(dir, O_RDONLY | O_DIRECTORY); }

/// Whether `p` names something, a dangling link included.
bool present(const fs::path& p) {
  std::error_code ec;
  return fs::symlink_status(p, ec).type() != fs::file_type::not_found && !ec;
}

}  // namespace

output_folder::output_folder(const fs::path& out, const std::optional<fs::path>& resume, bool overwrite) : out_(out) {
  const std::string where = "--out " + out.string() + ": ";
  std::error_code ec;
  const fs::file_status st = fs::status(out, ec);
  if (ec && st.type() != fs::file_type::not_found)
    throw std::runtime_error(where + "cannot use it as a folder: " + ec.message());
  if (st.type() == fs::file_type::not_found) {
    fs::create_directories(out, ec);
    if (ec) throw std::runtime_error(where + "cannot create the folder: " + ec.message());
  } else if (st.type() != fs::file_type::directory) {
    throw std::runtime_error(where + "expected a folder, got " + kind(st.type()));
  }

  // The lock, before anything in the folder is looked at.
  const fs::path lock = out / lock_name;
  lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0644);
  if (lock_fd_ < 0) throw std::runtime_error(where + "cannot open the lock file " + lock.string() + ": " + std::strerror(errno));
  struct stat lst {};
  if (::fstat(lock_fd_, &lst) != 0 || !S_ISREG(lst.st_mode)) {
    ::close(lock_fd_);
    throw std::runtime_error(where + "the lock file " + lock.string() + " is not a regular file: remove it");
  }
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    std::string holder;
    char buf[32] = {};
    const ssize_t got = ::pread(lock_fd_, buf, sizeof buf - 1, 0);
    for (ssize_t i = 0; i < got && buf[i] >= '0' && buf[i] <= '9'; ++i) holder.push_back(buf[i]);
    ::close(lock_fd_);
    if (err == EWOULDBLOCK)
      throw std::runtime_error(where + "another vwn-train " + (holder.empty() ? std::string("process") : "(pid " + holder + ")") +
                               " is running in this folder: wait for it to end, or choose another --out");
    throw std::runtime_error(where + "cannot lock " + lock.string() + ": " + std::strerror(err));
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, pid.data(), pid.size(), 0) != ssize_t(pid.size())) {
    // The lock holds without the pid: another run would then only not name this one.
  }

  try {
    expect_output_folder(out, resume, overwrite);
    same_run_ = resume && fs::equivalent(checkpoint_path(), *resume, ec);
    recover();
  } catch (...) {
    ::close(lock_fd_);
    throw;
  }
}

output_folder::~output_folder() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the lock; the file stays (removing it would race a new run)
}

void output_folder::recover() {
  std::error_code ec;
  const fs::path partial = log_path().string() + ".partial";
  if (present(partial)) {
    // A save stopped between the checkpoint's rename and the log's: the partial file holds the rows the checkpoint
    // records, log.csv does not. The save is completed as it would have been.
    std::optional<checkpoint> c;
    if (fs::is_regular_file(partial, ec) && fs::is_regular_file(checkpoint_path(), ec)) {
      try {
        c = read_checkpoint(checkpoint_path());
      } catch (const std::exception&) {
        // A checkpoint that cannot be used holds no rows to complete; resuming from it is refused with the reason.
      }
    }
    if (c && c->log && csv_log::digest_of(csv_log::history_lines(partial, c->step)) == *c->log &&
        !(csv_log::digest_of(csv_log::history_lines(log_path(), c->step)) == *c->log)) {
      fs::rename(partial, log_path(), ec);
      if (ec)
        throw std::runtime_error("--out " + out_.string() + ": cannot put " + partial.string() + " in place of " +
                                 log_path().string() + ": " + ec.message());
      sync_folder(out_);
      fs::remove(plot_path(), ec);  // the plot of the run it replaced, if any; redrawn at the end of this run
      fs::remove(fs::path(plot_path()).replace_extension(".gp"), ec);
      notices_.push_back("completed the save of step " + std::to_string(c->step) + " that a stopped run left unfinished: " +
                         partial.filename().string() + " put in place of " + log_path().filename().string());
    }
    fs::remove(partial, ec);  // a run stopped before its first save: its rows belong to no checkpoint
  }
  // Checkpoint writes that never reached their rename.
  const std::string tmp_prefix = checkpoint_path().filename().string() + ".tmp";
  for (fs::directory_iterator it(out_, ec), end; !ec && it != end; it.increment(ec))
    if (it->path().filename().string().rfind(tmp_prefix, 0) == 0) {
      std::error_code ignored;
      fs::remove(it->path(), ignored);
    }
}

std::vector<std::string> output_folder::history(const trainer& t, const fs::path& resume) {
  std::error_code ec;
  fs::path folder = out_;
  if (!same_run_) {
    const fs::path real = fs::canonical(resume, ec);
    folder = ec ? resume.parent_path() : real.parent_path();
  }
  const fs::path log = folder / "log.csv";
  const index_t step = t.steps_done();
  const std::optional<log_digest>& expected = t.resumed_log();
  const fs::file_status st = fs::status(log, ec);
  if (present(log) && st.type() != fs::file_type::not_found && st.type() != fs::file_type::regular)
    throw std::runtime_error("--resume " + resume.string() + ": the log " + log.string() + " is " + kind(st.type()) +
                             ", expected a regular file (it is not opened)");
  std::vector<std::string> lines = csv_log::history_lines(log, step);
  if (!expected) return lines;  // a checkpoint of an older version: its log as it is
  if (csv_log::digest_of(lines) == *expected) return lines;
  if (!same_run_) {  // a save cut short in the checkpoint's own folder (which this run does not own)
    std::vector<std::string> partial = csv_log::history_lines(folder / "log.csv.partial", step);
    if (csv_log::digest_of(partial) == *expected) return partial;
  }
  if (!present(log)) {
    notices_.push_back("no log " + log.string() + " of the resumed run: the new log starts after step " +
                       std::to_string(step) + " (its " + std::to_string(expected->rows) + " earlier rows are not in it)");
    return {};
  }
  throw std::runtime_error("--resume " + resume.string() + ": the log " + log.string() +
                           " does not hold the rows of this checkpoint: expected " + std::to_string(expected->rows) +
                           " rows up to step " + std::to_string(step) + " with digest " + expected->fnv1a64 + ", got " +
                           std::to_string(lines.size()) + " with digest " + csv_log::digest_of(lines).fnv1a64 +
                           " (another run's log, or an edited one). Resume through the checkpoint in its own run's folder, "
                           "or move that log away to start the new log after step " + std::to_string(step));
}

void output_folder::save(const trainer& t, csv_log& log) {
  fault_point();  // the rows are written (flushed), nothing of the save is done
  log.sync();
  fault_point();
  t.save(checkpoint_path(), log.digest(), [] { fault_point(); });  // the temporary file is complete, not renamed
  fault_point();  // the checkpoint is in place (and the folder synced): from here on, the run is this one
  if (log.committed()) return;
  std::error_code ec;
  if (!same_run_) {  // the plot of the run this one replaced, and its gnuplot script
    fs::remove(plot_path(), ec);
    fault_point();
    fs::remove(fs::path(plot_path()).replace_extension(".gp"), ec);
    fault_point();
  }
  log.commit();
  sync_folder(out_);
}

}  // namespace vwn::train
