#include <train/values.hpp>

#include <charconv>
#include <cmath>
#include <stdexcept>
#include <system_error>

namespace vwn::train::detail {

std::string format_double(double x) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}

void bad_value(std::string_view what, std::string_view expected, std::string_view got) {
  throw std::invalid_argument(std::string(what) + ": expected " + std::string(expected) + ", got '" + std::string(got) + "'");
}

void bad_setting(std::string_view what, std::string_view expected, std::string_view got) {
  throw std::invalid_argument(std::string(what) + ": expected " + std::string(expected) + ", got " + std::string(got));
}

namespace {

/// Whether `from_chars` read the whole of a non-empty `s`.
template <class T>
bool read_all(std::string_view s, T& v) {
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  return !s.empty() && r.ec == std::errc() && r.ptr == s.data() + s.size();
}

}  // namespace

std::int64_t parse_int(std::string_view what, std::string_view s, std::int64_t lo, std::int64_t hi,
                       std::string_view expected) {
  std::int64_t v = 0;
  if (!read_all(s, v) || v < lo || v > hi) bad_value(what, expected, s);
  return v;
}

std::uint64_t parse_u64(std::string_view what, std::string_view s) {
  std::uint64_t v = 0;
  if (!read_all(s, v)) bad_value(what, "an integer in [0, 2^64)", s);
  return v;
}

double parse_double(std::string_view what, std::string_view s, bool (*ok)(double), std::string_view expected) {
  double v = 0;
  if (!read_all(s, v) || !std::isfinite(v) || !ok(v)) bad_value(what, expected, s);
  return v;
}

bool parse_bool(std::string_view what, std::string_view s) {
  if (s == "true" || s == "1" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "0" || s == "no" || s == "off") return false;
  bad_value(what, "true or false", s);
}

}  // namespace vwn::train::detail
