#include <train/generate.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

#include <vwn/core/checks.hpp>
#include <vwn/core/random.hpp>

namespace vwn::train {

std::string generate(model::transformer<float>& m, std::string_view prompt, const sample_options& o) {
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature))
    vwn::detail::fail("vwn::train::generate", "temperature", "a finite number >= 0", std::to_string(o.temperature));
  std::vector<std::int32_t> ctx;
  for (unsigned char c : (prompt.empty() ? std::string_view("\n") : prompt)) ctx.push_back(c);
  rng r(o.seed);
  std::string out;
  // The cache path feeds the prompt once, then each sampled byte; the reference path runs the window every time.
  model::transformer<float>::kv_cache cache = m.make_cache();
  std::vector<float> logits;
  if (o.cache)
    for (const std::int32_t t : ctx) logits = m.decode(cache, t);
  for (index_t i = 0; i < o.tokens && !(o.stop && *o.stop); ++i) {
    if (!o.cache) logits = m.next_logits(ctx);
    const index_t V = index_t(logits.size());
    std::vector<index_t> order(static_cast<std::size_t>(V));
    for (index_t v = 0; v < V; ++v) order[std::size_t(v)] = v;
    std::stable_sort(order.begin(), order.end(), [&](index_t a, index_t b) { return logits[std::size_t(a)] > logits[std::size_t(b)]; });
    index_t pick = order[0];
    if (o.temperature > 0) {
      const index_t k = o.top_k > 0 ? std::min(o.top_k, V) : V;
      std::vector<double> p(static_cast<std::size_t>(k));
      const double top = logits[std::size_t(order[0])];
      double sum = 0;
      for (index_t j = 0; j < k; ++j) sum += p[std::size_t(j)] = std::exp((logits[std::size_t(order[std::size_t(j)])] - top) / o.temperature);
      double u = r.uniform() * sum;
      pick = order[std::size_t(k - 1)];
      for (index_t j = 0; j < k; ++j) {
        u -= p[std::size_t(j)];
        if (u < 0) {
          pick = order[std::size_t(j)];
          break;
        }
      }
    }
    ctx.push_back(std::int32_t(pick));
    out.push_back(static_cast<char>(static_cast<unsigned char>(pick)));
    if (o.cache && i + 1 < o.tokens) logits = m.decode(cache, std::int32_t(pick));
  }
  return out;
}

std::string printable(std::string_view bytes) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    if (c == '\n' || (c >= 0x20 && c < 0x7f && c != '\\')) out.push_back(char(c));
    else if (c == '\\') out += "\\\\";
    else if (c == '\t') out += "\\t";
    else out += std::string("\\x") + hex[c >> 4] + hex[c & 15];
  }
  return out;
}

}  // namespace vwn::train
