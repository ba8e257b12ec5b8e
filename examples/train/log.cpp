#include <train/log.hpp>

#include <charconv>
#include <cstdio>
#include <sstream>
#include <stdexcept>
#include <system_error>

namespace vwn::train {

namespace fs = std::filesystem;

csv_log::csv_log(const fs::path& path, const std::optional<log_history>& history)
    : path_(path), partial_(path.string() + ".partial") {
  std::vector<std::string> keep;
  if (history) {
    std::ifstream in(history->path);
    std::string line;
    bool first = true;
    while (std::getline(in, line)) {
      if (first) {
        first = false;
        if (line == header) continue;
      }
      if (in.eof()) break;  // last line without its newline: incomplete
      log_row r;
      if (parse(line, r) && r.step <= history->step) keep.push_back(line);
    }
  }
  out_.open(partial_, std::ios::trunc);
  out_ << header << '\n';
  for (const auto& l : keep) out_ << l << '\n';
  out_.flush();
  if (!out_) throw std::runtime_error("cannot write the log '" + partial_.string() + "'");
}

csv_log::~csv_log() {
  if (committed_) return;
  out_.close();
  std::error_code ec;
  fs::remove(partial_, ec);  // nothing to report from a destructor: the file only held this run's rows
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
  out_ << format(r) << '\n';
  out_.flush();
  if (!out_) throw std::runtime_error("cannot append to the log '" + current_path().string() + "'");
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
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    log_row r;
    if (parse(line, r)) rows.push_back(r);
  }
  return rows;
}

}  // namespace vwn::train
