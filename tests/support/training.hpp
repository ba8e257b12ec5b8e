#pragma once
// Helpers of the trainer tests (tests/train/): bitwise comparison of doubles, the whole state of a run as bytes, and
// deterministic English-like text for corpora.
#include <train/trainer.hpp>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace vwn_test {

/// Whether `a` and `b` have the same bits (NaN payloads and the sign of zero included).
inline bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

/// Every parameter and optimiser moment of `t` as raw bytes with their names, in visit order: equal strings mean
/// bit-identical states.
inline std::string state_bytes(vwn::train::trainer& t) {
  std::string out;
  t.model().visit([&](const std::string& name, float* p, float*, vwn::index_t size, bool) {
    out += name;
    out.append(reinterpret_cast<const char*>(p), std::size_t(size) * sizeof(float));
  });
  t.optimizer().for_each_state([&](const std::string& name, const float* p, vwn::index_t size) {
    out += name;
    out.append(reinterpret_cast<const char*>(p), std::size_t(size) * sizeof(float));
  });
  return out;
}

/// The gradients the optimiser of `t` holds (after a step: the batch's gradient, clipped where clipping is on), every
/// trained tensor in registration order, as one vector.
inline std::vector<float> gradients(const vwn::train::trainer& t) {
  std::vector<float> g;
  for (const auto& x : t.optimizer().tensors()) g.insert(g.end(), x.grad, x.grad + x.size);
  return g;
}

/// Deterministic English-like text of exactly `bytes` bytes: words of a small vocabulary, some sentences ending in a
/// newline.
inline std::string english_text(std::size_t bytes, std::uint64_t seed = 7) {
  static const char* const words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to",
                                      "house", "of", "light", "is", "in", "blue", "river", "went", "home", "it"};
  std::mt19937_64 g(seed);
  std::string s;
  while (s.size() < bytes) {
    s += words[g() % 20];
    s += (g() % 9 == 0) ? ".\n" : " ";
  }
  s.resize(bytes);
  return s;
}

}  // namespace vwn_test
