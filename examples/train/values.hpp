#pragma once
/// \file values.hpp
/// Text form of the trainer's values, shared by the command line and the checkpoint metadata: checked
/// parsing whose errors name the flag (or key), what was expected and what was given, and the shortest
/// round-trip text of a double.

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

}  // namespace vwn::train::detail
