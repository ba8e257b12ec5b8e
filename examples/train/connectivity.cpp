#include <train/connectivity.hpp>

#include <cmath>
#include <fstream>
#include <limits>
#include <stdexcept>

#include <train/plot.hpp>

namespace vwn::train {

namespace fs = std::filesystem;

double connectivity_map::embedding_share(index_t l) const {
  double total = 0;
  for (index_t s = 0; s <= l; ++s) total += strength(l, s);
  return total > 0 ? strength(l, 0) / total : 0.0;
}

std::string connectivity_map::sublayer_name(index_t k) {
  return std::to_string(k / 2) + (k % 2 == 0 ? ".attn" : ".ffn");
}

Eigen::MatrixXd token_connectivity(int m, int n, const std::vector<Eigen::MatrixXd>& coefficients) {
  const index_t K = index_t(coefficients.size());
  for (index_t k = 0; k < K; ++k)
    if (coefficients[std::size_t(k)].rows() != n || coefficients[std::size_t(k)].cols() != 2 * m + n)
      throw std::invalid_argument("vwn::train::token_connectivity: sub-layer " + std::to_string(k) +
                                  ": expected coefficients of " + std::to_string(n) + " x " +
                                  std::to_string(2 * m + n) + ", got " +
                                  std::to_string(coefficients[std::size_t(k)].rows()) + " x " +
                                  std::to_string(coefficients[std::size_t(k)].cols()));
  const double norm = 1.0 / std::sqrt(double(m));
  Eigen::MatrixXd out = Eigen::MatrixXd::Constant(K, K + 1, std::numeric_limits<double>::quiet_NaN());
  // carried[s]: what reaches the over-width state H_l (n x ...) from source s (s = 0: H_0, n x n; s = t + 1: Z_t,
  // n x m), updated sub-layer by sub-layer: H_{l+1} = b_l Z_l + Â_l^T H_l.
  std::vector<Eigen::MatrixXd> carried{Eigen::MatrixXd::Identity(n, n)};
  for (index_t l = 0; l < K; ++l) {
    const Eigen::MatrixXd& ab = coefficients[std::size_t(l)];
    const Eigen::MatrixXd A = ab.leftCols(m), carry = ab.middleCols(m, n), b = ab.rightCols(m);
    for (std::size_t s = 0; s < carried.size(); ++s) out(l, index_t(s)) = (A.transpose() * carried[s]).norm() * norm;
    for (Eigen::MatrixXd& c : carried) c = carry.transpose() * c;
    carried.push_back(b);
  }
  return out;
}

Eigen::MatrixXd token_gains(int m, int n, const std::vector<Eigen::MatrixXd>& coefficients) {
  const index_t K = index_t(coefficients.size());
  Eigen::MatrixXd out(K, 4);
  Eigen::MatrixXd composite = Eigen::MatrixXd::Identity(n, n);
  const auto row_gain = [](const Eigen::MatrixXd& p) { return p.cwiseAbs().rowwise().sum().maxCoeff(); };
  const auto column_gain = [](const Eigen::MatrixXd& p) { return p.cwiseAbs().colwise().sum().maxCoeff(); };
  for (index_t l = 0; l < K; ++l) {
    const Eigen::MatrixXd res = coefficients[std::size_t(l)].middleCols(m, n).transpose();  // H_res,l = Â_l^T
    composite = res * composite;
    out(l, 0) = row_gain(res);
    out(l, 1) = column_gain(res);
    out(l, 2) = row_gain(composite);
    out(l, 3) = column_gain(composite);
  }
  return out;
}

connectivity_map model_connectivity(model::transformer<float>& model, const std::string& text, index_t max_tokens) {
  const model::config& c = model.settings();
  connectivity_map map;
  map.m = model.shape().m;
  map.n = model.shape().n;
  const index_t K = model.ghc_sublayers();
  const auto coefficients_of = [&](index_t row) {
    std::vector<Eigen::MatrixXd> ab;
    for (index_t k = 0; k < K; ++k) ab.push_back(model.ghc_coefficients(k, row).cast<double>());
    return ab;
  };
  const index_t T = c.context;
  if (!model.shape().dynamic) {
    // One short forward fills the saved states; every token has the same coefficients.
    const std::vector<std::int32_t> tokens(std::size_t(std::min<index_t>(T, 4)), std::int32_t('a'));
    model.forward(host, tokens, tokens, c.mtp ? std::span<const std::int32_t>(tokens) : std::span<const std::int32_t>(),
                  index_t(tokens.size()));
    map.strength = token_connectivity(map.m, map.n, coefficients_of(0));
    map.gain = token_gains(map.m, map.n, coefficients_of(0));
    map.tokens = 1;
    return map;
  }
  if (text.size() < 3)
    throw std::invalid_argument("vwn::train::model_connectivity: text: expected at least 3 bytes to average the dynamic "
                                "coefficients over, got " + std::to_string(text.size()));
  map.strength = Eigen::MatrixXd::Zero(K, K + 1);
  map.gain = Eigen::MatrixXd::Zero(K, 4);
  index_t done = 0;
  for (std::size_t start = 0; done < max_tokens && start + 2 < text.size(); start += std::size_t(T)) {
    const index_t len = std::min<index_t>({T, index_t(text.size() - start - 2), max_tokens - done});
    const auto count = static_cast<std::size_t>(len);
    std::vector<std::int32_t> in(count), next(count), next2(count);
    for (index_t i = 0; i < len; ++i) {
      in[std::size_t(i)] = static_cast<unsigned char>(text[start + std::size_t(i)]);
      next[std::size_t(i)] = static_cast<unsigned char>(text[start + std::size_t(i) + 1]);
      next2[std::size_t(i)] = static_cast<unsigned char>(text[start + std::size_t(i) + 2]);
    }
    model.forward(host, in, next, c.mtp ? std::span<const std::int32_t>(next2) : std::span<const std::int32_t>(), len);
    for (index_t t = 0; t < len; ++t) {
      const std::vector<Eigen::MatrixXd> ab = coefficients_of(t);
      const Eigen::MatrixXd s = token_connectivity(map.m, map.n, ab);
      map.strength += s.unaryExpr([](double v) { return std::isnan(v) ? 0.0 : v; });
      map.gain += token_gains(map.m, map.n, ab);
    }
    done += len;
  }
  map.strength /= double(done);
  map.gain /= double(done);
  for (index_t l = 0; l < K; ++l)
    for (index_t s = l + 1; s <= K; ++s) map.strength(l, s) = std::numeric_limits<double>::quiet_NaN();
  map.tokens = done;
  return map;
}

void write_connectivity_csv(const fs::path& path, const connectivity_map& map) {
  fs::path tmp = path;
  tmp += ".partial";
  {
    std::ofstream o(tmp, std::ios::trunc);
    if (!o) throw std::runtime_error("cannot write '" + tmp.string() + "'");
    o.precision(17);
    o << "layer,layer_name,source,source_name,strength\n";
    for (index_t l = 0; l < map.sublayers(); ++l) {
      for (index_t s = 0; s <= l; ++s)
        o << l << "," << connectivity_map::sublayer_name(l) << "," << (s == 0 ? "embedding" : std::to_string(s - 1))
          << "," << (s == 0 ? "embedding" : connectivity_map::sublayer_name(s - 1)) << "," << map.strength(l, s) << "\n";
    }
    for (index_t l = 0; l < map.sublayers(); ++l)
      o << l << "," << connectivity_map::sublayer_name(l) << ",embedding_share,embedding_share,"
        << map.embedding_share(l) << "\n";
    const char* gains[4] = {"gain_forward", "gain_backward", "composite_gain_forward", "composite_gain_backward"};
    for (int g = 0; g < 4 && map.gain.rows() == map.sublayers(); ++g)
      for (index_t l = 0; l < map.sublayers(); ++l)
        o << l << "," << connectivity_map::sublayer_name(l) << "," << gains[g] << "," << gains[g] << ","
          << map.gain(l, g) << "\n";
    o.close();
    if (!o) throw std::runtime_error("cannot write '" + tmp.string() + "'");
  }
  fs::rename(tmp, path);
}

bool plot_connectivity(const fs::path& png, const connectivity_map& map, const std::string& title) {
  if (!have_gnuplot()) return false;
  for (const char c : png.filename().string() + title)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;  // no gnuplot string can hold it
  fs::path script = png;
  script.replace_extension(".gp");
  std::ofstream o(script, std::ios::trunc);
  const index_t K = map.sublayers();
  o << "# Depth-connectivity map: " << title << "; regenerate with: gnuplot " << script.filename().string() << "\n";
  o << "$map << EOD\n";
  // The whole grid (gnuplot's image needs one; the last sub-layer's output reaches no sub-layer and is left out),
  // NaN where there is no path, drawn blank; the labels only where there is one.
  for (index_t l = 0; l < K; ++l) {
    for (index_t s = 0; s < K; ++s) o << s << " " << l << " " << (s <= l ? map.strength(l, s) : NAN) << "\n";
    o << "\n";
  }
  o << "EOD\n$labels << EOD\n";
  for (index_t l = 0; l < K; ++l)
    for (index_t s = 0; s <= l; ++s) o << s << " " << l << " " << map.strength(l, s) << "\n";
  o << "EOD\n";
  o << gnuplot_png_terminal(900, 800);
  o << "set output " << gnuplot_quote(png.filename().string()) << "\n";  // gnuplot runs in the plot's folder
  o << "set title " << gnuplot_quote(title) << " noenhanced\n";
  o << "set xlabel \"source: the embedding, then the output of sub-layer t\"\nset ylabel \"input of sub-layer l\"\n";
  o << "set xrange [-0.5:" << K - 0.5 << "]\nset yrange [" << K - 0.5 << ":-0.5]\n";
  o << "set xtics (\"emb\" 0";
  for (index_t k = 0; k + 1 < K; ++k) o << ", " << gnuplot_quote(connectivity_map::sublayer_name(k)) << " " << k + 1;
  o << ") rotate by 45 right\nset ytics (";
  for (index_t k = 0; k < K; ++k) o << (k ? ", " : "") << gnuplot_quote(connectivity_map::sublayer_name(k)) << " " << k;
  o << ")\nset cbrange [0:*]\nset cblabel \"strength ||M||_F / sqrt(m)\" noenhanced\nset palette rgbformulae 21,22,23\n";
  o << "plot $map using 1:2:3 with image notitle, $labels using 1:2:(sprintf(\"%.2f\", $3)) with labels font \",8\" "
       "textcolor rgb \"#8090a0\" notitle\n";
  o.close();
  if (!o) return false;
  return run_gnuplot(script).empty();
}

}  // namespace vwn::train
