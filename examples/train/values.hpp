#pragma once
/// \file values.hpp
/// Text form of the trainer's values, shared by the command line and the checkpoint metadata: checked
/// parsing whose errors name the flag (or key), what was expected and what was given, and the shortest
/// round-trip text of a double.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace vwn::train::detail {

/// Largest size or count a setting accepts (2^40).
inline constexpr std::int64_t max_size = std::int64_t(1) << 40;

/// Shortest text that reads back to the same double.
std::string format_double(double x);

/// Throws std::invalid_argument "what: expected EXPECTED, got 'GOT'" (the value quoted).
[[noreturn]] void bad_value(std::string_view what, std::string_view expected, std::string_view got);

/// Throws std::invalid_argument "what: expected EXPECTED, got GOT" (the value as it is).
[[noreturn]] void bad_setting(std::string_view what, std::string_view expected, std::string_view got);

/// The whole of `s` as a decimal integer in [lo, hi]; otherwise `bad_value(what, expected, s)`.
std::int64_t parse_int(std::string_view what, std::string_view s, std::int64_t lo, std::int64_t hi,
                       std::string_view expected);

/// The whole of `s` as a decimal integer in [0, 2^64); otherwise `bad_value`.
std::uint64_t parse_u64(std::string_view what, std::string_view s);

/// The whole of `s` as a finite number accepted by `ok`; otherwise `bad_value(what, expected, s)`.
double parse_double(std::string_view what, std::string_view s, bool (*ok)(double), std::string_view expected);

/// true, 1, yes, on / false, 0, no, off; otherwise `bad_value(what, "true or false", s)`.
bool parse_bool(std::string_view what, std::string_view s);

/// FNV-1a, 64 bits: the hash of checkpoints' checksums, corpus fingerprints and log digests.
struct fnv1a {
  std::uint64_t h = 0xcbf29ce484222325ull;  ///< the hash so far
  /// Adds `n` bytes.
  void add(const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  }
  /// Adds the bytes of `s` and a NUL.
  void add(std::string_view s) {
    add(s.data(), s.size());
    const unsigned char zero = 0;
    add(&zero, 1);
  }
  /// The hash as 16 hex digits.
  std::string hex() const {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out(16, '0');
    for (int i = 0; i < 16; ++i) out[std::size_t(15 - i)] = digits[(h >> (4 * i)) & 15];
    return out;
  }
};

}  // namespace vwn::train::detail
