#include <train/log.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <stdexcept>
#include <system_error>

namespace vwn::train {

namespace fs = std::filesystem;

namespace {

/// Longest line a log holds (a row is under 200 bytes): longer ones are malformed and skipped unread.
constexpr std::size_t max_line = 4096;

/// Calls `f(line, complete)` for each line of the file at `path` (`complete`: it ended with a newline) when it is a
/// regular file, after following links. The file is opened without blocking and checked on the open descriptor,
/// so a FIFO, a device or a folder is never read; a line over `max_line` bytes is skipped without being kept.
template <class F>
void for_each_line(const fs::path& path, F&& f) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return;
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return;
  }
  std::string line;
  bool too_long = false;
  char buf[1 << 16];
  for (;;) {
    const ssize_t got = ::read(fd, buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;
    for (ssize_t i = 0; i < got; ++i) {
      const char c = buf[i];
      if (c == '\n') {
        if (!too_long) f(line, true);
        line.clear();
        too_long = false;
      } else if (!too_long) {
        if (line.size() == max_line) {
          too_long = true;
          line.clear();
        } else {
          line.push_back(c);
        }
      }
    }
  }
  ::close(fd);
  if (!too_long && !line.empty()) f(line, false);
}

}  // namespace

csv_log::csv_log(const fs::path& path, const std::optional<log_history>& history)
    : csv_log(path, history ? history_lines(history->path, history->step) : std::vector<std::string>{}) {}

csv_log::csv_log(const fs::path& path, const std::vector<std::string>& history)
    : path_(path), partial_(path.string() + ".partial") {
  std::error_code ec;
  fs::remove(partial_, ec);  // what a killed run left (a link or a FIFO included: never opened)
  out_.open(partial_, std::ios::trunc);
  out_ << header << '\n';
  for (const auto& l : history) write_line(l);
  out_.flush();
  if (!out_) {
    out_.close();
    fs::remove(partial_, ec);  // e.g. a full disk: nothing of this run is left behind
    throw std::runtime_error("cannot write the log '" + partial_.string() + "'");
  }
}

csv_log::~csv_log() {
  if (committed_) return;
  out_.close();
  std::error_code ec;
  fs::remove(partial_, ec);  // nothing to report from a destructor: the file only held this run's rows
}

void csv_log::write_line(const std::string& line) {
  out_ << line << '\n';
  hash_.add(line.data(), line.size());
  hash_.add("\n", 1);
  ++digest_.rows;
  digest_.fnv1a64 = hash_.hex();
}

void csv_log::commit() {
  if (committed_) return;
  std::error_code ec;
  // The open stream keeps writing to the renamed file.
  fs::rename(partial_, path_, ec);
  if (ec) throw std::runtime_error("cannot put the log '" + partial_.string() + "' in place of '" + path_.string() + "': " + ec.message());
  committed_ = true;
}

fs::path csv_log::current_path() const { return committed_ ? path_ : partial_; }

void csv_log::append(const log_row& r) {
  write_line(format(r));
  out_.flush();
  if (!out_) throw std::runtime_error("cannot append to the log '" + current_path().string() + "'");
}

void csv_log::sync() {
  out_.flush();
  const fs::path p = current_path();
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  const bool ok = out_ && fd >= 0 && ::fsync(fd) == 0;
  const int err = errno;
  if (fd >= 0) ::close(fd);
  if (!ok) throw std::runtime_error("cannot write the log '" + p.string() + "' to disk: " + std::strerror(err));
}

std::vector<std::string> csv_log::history_lines(const fs::path& path, index_t step) {
  std::vector<std::string> keep;
  bool first = true;
  for_each_line(path, [&](const std::string& line, bool complete) {
    const bool is_header = first && line == header;
    first = false;
    log_row r;
    if (!is_header && complete && parse(line, r) && r.step <= step) keep.push_back(line);
  });
  return keep;
}

log_digest csv_log::digest_of(const std::vector<std::string>& lines) {
  detail::fnv1a h;
  for (const auto& l : lines) {
    h.add(l.data(), l.size());
    h.add("\n", 1);
  }
  return {lines.size(), h.hex()};
}

std::string csv_log::format(const log_row& r) {
  auto num = [](const std::optional<double>& x) {
    if (!x) return std::string();
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.6f", *x);
    return std::string(buf);
  };
  char lr[32], tps[32], el[32];
  std::snprintf(lr, sizeof lr, "%.6g", r.lr);
  std::snprintf(tps, sizeof tps, "%.1f", r.tokens_per_s);
  std::snprintf(el, sizeof el, "%.3f", r.elapsed_s);
  return std::to_string(r.step) + "," + lr + "," + num(r.loss) + "," + num(r.next) + "," + num(r.next2) + "," +
         num(r.val_next) + "," + num(r.val_next2) + "," + tps + "," + el;
}
bool csv_log::parse(const std::string& line, log_row& r) {
  std::vector<std::string> cells;
  std::string cell;
  std::istringstream s(line);
  while (std::getline(s, cell, ',')) cells.push_back(cell);
  if (!line.empty() && line.back() == ',') cells.emplace_back();
  if (cells.size() != 9) return false;
  auto num = [](const std::string& c, double& x) {
    const auto res = std::from_chars(c.data(), c.data() + c.size(), x);
    return !c.empty() && res.ec == std::errc() && res.ptr == c.data() + c.size();
  };
  auto opt = [&](const std::string& c, std::optional<double>& x) {
    if (c.empty()) return x.reset(), true;
    double v;
    if (!num(c, v)) return false;
    x = v;
    return true;
  };
  double step;
  if (!num(cells[0], step) || step < 0) return false;
  r.step = index_t(step);
  return num(cells[1], r.lr) && num(cells[2], r.loss) && num(cells[3], r.next) && opt(cells[4], r.next2) &&
         opt(cells[5], r.val_next) && opt(cells[6], r.val_next2) && num(cells[7], r.tokens_per_s) &&
         num(cells[8], r.elapsed_s);
}

std::vector<log_row> csv_log::read(const fs::path& path) {
  std::vector<log_row> rows;
  for_each_line(path, [&](const std::string& line, bool) {
    log_row r;
    if (parse(line, r)) rows.push_back(r);
  });
  return rows;
}

}  // namespace vwn::train
