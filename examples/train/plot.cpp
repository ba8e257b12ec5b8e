#include <train/plot.hpp>

#include <cstdlib>
#include <fstream>

namespace vwn::train {

namespace {

/// `s` in single quotes for the shell.
std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

std::string gnuplot_quote(const std::string& s) {
  std::string out;
  for (char c : s) out += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  return "\"" + out + "\"";
}

std::string gnuplot_png_terminal(int width, int height) {
  const std::string size = std::to_string(width) + "," + std::to_string(height);
  return "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) { set terminal pngcairo size " + size +
         " } else { set terminal png size " + size + " }\n";
}

std::string run_gnuplot(const std::filesystem::path& script) {
  if (!have_gnuplot()) return "gnuplot not found (install gnuplot-nox, e.g. with scripts/setup.sh)";
  const int rc = std::system(("gnuplot " + shell_quote(script.string()) + " 2>&1").c_str());
  if (rc != 0) return "gnuplot failed on '" + script.string() + "' (status " + std::to_string(rc) + ")";
  return {};
}

bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

std::string plot_losses(const std::vector<log_row>& rows, const std::filesystem::path& png, const std::string& title) {
  if (rows.empty()) return "the log holds no rows";
  if (!have_gnuplot()) return "gnuplot not found (install gnuplot-nox, e.g. with scripts/setup.sh)";
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
  o << "set output " << gnuplot_quote(png.string()) << "\n";
  o << "set title " << gnuplot_quote(title) << " noenhanced\n";
  o << "set xlabel \"step\"\nset ylabel \"cross-entropy (nats)\"\nset grid\nset key top right\n";
  o << "plot $train using 1:2 with lines lw 1 lc rgb \"#9ab8d8\" title \"train loss\"";
  if (rows.front().next2) o << ", $train using 1:3 with lines lw 1 lc rgb \"#d8b89a\" title \"train next-token\"";
  if (any_val) o << ", $val using 1:2 with linespoints lw 2 pt 7 lc rgb \"#c03020\" title \"val next-token\"";
  if (any_val2) o << ", $val using 1:3 with linespoints lw 2 pt 5 lc rgb \"#2060c0\" title \"val next-2-token\"";
  o << "\n";
  o.close();
  if (!o) return "cannot write the gnuplot script '" + script.string() + "'";
  return run_gnuplot(script);
}

}  // namespace vwn::train
