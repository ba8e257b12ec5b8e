#include <train/plot.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <system_error>

#include <train/generate.hpp>

namespace vwn::train {

namespace {

/// Whether `s` holds a control character (which no gnuplot string can hold).
bool has_control(const std::string& s) {
  for (const char c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return true;
  return false;
}

}  // namespace

std::string gnuplot_quote(const std::string& s) {
  // Single quotes: gnuplot reads their content as it is (no backslash escapes, no `command` substitution); a
  // quote inside is doubled.
  if (has_control(s)) throw std::invalid_argument("a gnuplot string cannot hold control characters, got '" + printable(s) + "'");
  std::string out = "'";
  for (const char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

std::string gnuplot_png_terminal(int width, int height) {
  const std::string size = std::to_string(width) + "," + std::to_string(height);
  return "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) { set terminal pngcairo size " + size +
         " } else { set terminal png size " + size + " }\n";
}

std::string run_gnuplot(const std::filesystem::path& script) {
  if (!have_gnuplot()) return "gnuplot not found (install gnuplot-nox, e.g. with scripts/setup.sh)";
  // No shell and no path in the script: gnuplot runs in the script's folder on "./NAME", an argument that cannot
  // read as an option, and its output (both streams) goes to this program's standard output.
  const std::filesystem::path folder = script.has_parent_path() ? script.parent_path() : std::filesystem::path(".");
  const std::string name = "./" + script.filename().string();
  std::fflush(nullptr);
  const pid_t child = ::fork();
  if (child < 0) return "cannot start gnuplot: " + std::string(std::strerror(errno));
  if (child == 0) {
    if (::chdir(folder.c_str()) != 0) ::_exit(126);
    ::dup2(STDOUT_FILENO, STDERR_FILENO);
    ::execlp("gnuplot", "gnuplot", name.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(child, &status, 0) < 0)
    if (errno != EINTR) return "cannot wait for gnuplot: " + std::string(std::strerror(errno));
  if (WIFSIGNALED(status)) return "gnuplot was stopped by signal " + std::to_string(WTERMSIG(status));
  if (WEXITSTATUS(status) != 0)
    return "gnuplot failed on '" + script.string() + "' (status " + std::to_string(WEXITSTATUS(status)) + ")";
  return {};
}

bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

std::string plot_losses(const std::vector<log_row>& rows, const std::filesystem::path& png, const std::string& title) {
  if (rows.empty()) return "the log holds no rows";
  if (!have_gnuplot()) return "gnuplot not found (install gnuplot-nox, e.g. with scripts/setup.sh)";
  if (has_control(png.filename().string()))
    return "the file name '" + printable(png.filename().string()) + "' holds control characters";
  std::filesystem::path script = png;
  script.replace_extension(".gp");
  std::ofstream o(script, std::ios::trunc);
  o << "# Loss curves of " << title << "; regenerate with: gnuplot " << script.filename().string() << "\n";
  o << "$train << EOD\n";
  for (const auto& r : rows) o << r.step << " " << r.loss << " " << r.next << "\n";
  o << "EOD\n$val << EOD\n";
  bool any_val = false, any_val2 = false;
  for (const auto& r : rows)
    if (r.val_next) {
      any_val = true;
      any_val2 = any_val2 || r.val_next2.has_value();
      o << r.step << " " << *r.val_next << " " << (r.val_next2 ? *r.val_next2 : 0.0) << "\n";
    }
  o << "EOD\n";
  o << gnuplot_png_terminal(1000, 600);
  o << "set output " << gnuplot_quote(png.filename().string()) << "\n";  // gnuplot runs in the plot's folder
  o << "set title " << gnuplot_quote(title) << " noenhanced\n";
  o << "set xlabel \"step\"\nset ylabel \"cross-entropy (nats)\"\nset grid\nset key top right\n";
  o << "plot $train using 1:2 with lines lw 1 lc rgb \"#9ab8d8\" title \"train loss\"";
  if (rows.front().next2) o << ", $train using 1:3 with lines lw 1 lc rgb \"#d8b89a\" title \"train next-token\"";
  if (any_val) o << ", $val using 1:2 with linespoints lw 2 pt 7 lc rgb \"#c03020\" title \"val next-token\"";
  if (any_val2) o << ", $val using 1:3 with linespoints lw 2 pt 5 lc rgb \"#2060c0\" title \"val next-2-token\"";
  o << "\n";
  o.close();
  if (!o) return "cannot write the gnuplot script '" + script.string() + "'";
  std::error_code ec;
  std::filesystem::remove(png, ec);  // so that a plot that is there afterwards is this one
  const std::string problem = run_gnuplot(script);
  if (!problem.empty()) return problem;
  if (!std::filesystem::is_regular_file(png, ec)) return "gnuplot wrote no '" + png.string() + "'";
  return {};
}

}  // namespace vwn::train
