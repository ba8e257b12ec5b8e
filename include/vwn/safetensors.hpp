// Reader and writer for the safetensors file format.
//
// Layout of a file:
//   bytes [0, 8)        little-endian u64 N, the length of the JSON header
//   bytes [8, 8 + N)    JSON header:
//                       {"name": {"dtype": "F64", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//                        "__metadata__": {"key": "value", ...}}
//   bytes [8 + N, EOF)  data section; tensor bytes are row-major, little-endian, at [begin, end)
//                       relative to the start of the data section, packed without gaps.
//
// The reader validates the whole header before touching the data and reports every problem with
// the file name, what was expected and what was found. The writer replaces the target file
// atomically (write to a temporary file in the same directory, then rename).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace vwn::safetensors {

static_assert(std::endian::native == std::endian::little,
              "vwn::safetensors stores tensors in host byte order and requires a little-endian host");

/// Element type of a stored tensor (the subset of safetensors dtypes this library handles).
enum class dtype { f64, f32, bf16, f16, i64, i32, i16, i8, u8, boolean };

/// Name of a dtype as written in the JSON header ("F64", "F32", "BF16", "F16", "I64", ..., "BOOL").
constexpr std::string_view name(dtype t) noexcept {
  switch (t) {
    case dtype::f64: return "F64";
    case dtype::f32: return "F32";
    case dtype::bf16: return "BF16";
    case dtype::f16: return "F16";
    case dtype::i64: return "I64";
    case dtype::i32: return "I32";
    case dtype::i16: return "I16";
    case dtype::i8: return "I8";
    case dtype::u8: return "U8";
    case dtype::boolean: return "BOOL";
  }
  return "?";
}

/// Size in bytes of one element of the given dtype.
constexpr std::size_t element_size(dtype t) noexcept {
  switch (t) {
    case dtype::f64:
    case dtype::i64: return 8;
    case dtype::f32:
    case dtype::i32: return 4;
    case dtype::bf16:
    case dtype::f16:
    case dtype::i16: return 2;
    case dtype::i8:
    case dtype::u8:
    case dtype::boolean: return 1;
  }
  return 0;
}

/// Parses a header dtype name ("F64", "BF16", ...); std::nullopt when it is not one this library handles.
constexpr std::optional<dtype> dtype_from_name(std::string_view s) noexcept {
  constexpr dtype all[] = {dtype::f64, dtype::f32, dtype::bf16, dtype::f16, dtype::i64,
                           dtype::i32, dtype::i16, dtype::i8,   dtype::u8,  dtype::boolean};
  for (dtype t : all) {
    if (name(t) == s) return t;
  }
  return std::nullopt;
}

/// Converts a bfloat16 bit pattern to float (exact).
inline float bf16_to_float(std::uint16_t bits) noexcept {
  return std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
}

/// Converts a float to the nearest bfloat16 bit pattern (round to nearest, ties to even; NaN stays NaN).
inline std::uint16_t float_to_bf16(float value) noexcept {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(value);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x0040u);
  const std::uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<std::uint16_t>((x + rounding) >> 16);
}

/// Converts an IEEE half-precision bit pattern to float (exact, including subnormals, inf and NaN).
inline float f16_to_float(std::uint16_t bits) noexcept {
  const bool negative = (bits & 0x8000u) != 0;
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  float magnitude;
  if (exponent == 0) {
    magnitude = std::ldexp(static_cast<float>(mantissa), -24);
  } else if (exponent == 31) {
    magnitude = mantissa == 0 ? std::numeric_limits<float>::infinity() : std::numeric_limits<float>::quiet_NaN();
  } else {
    magnitude = std::ldexp(static_cast<float>(mantissa + 1024), exponent - 25);
  }
  return negative ? -magnitude : magnitude;
}

/// Converts a float to the nearest IEEE half-precision bit pattern (round to nearest, ties to even).
inline std::uint16_t float_to_f16(float value) noexcept {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(value);
  const std::uint16_t sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  const std::uint32_t abs_bits = x & 0x7fffffffu;
  if (abs_bits >= 0x7f800000u) {  // inf or NaN
    return static_cast<std::uint16_t>(sign | (abs_bits > 0x7f800000u ? 0x7e00u : 0x7c00u));
  }
  if (abs_bits >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (abs_bits < 0x38800000u) {  // below 2^-14: half subnormal (or zero)
    const std::uint32_t float_exponent = abs_bits >> 23;
    if (float_exponent == 0) return sign;  // float subnormals are far below half precision
    const std::uint32_t significand = (abs_bits & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - float_exponent;  // value * 2^24 == significand >> shift
    if (shift >= 32u) return sign;
    std::uint32_t result = significand >> shift;
    const std::uint32_t remainder = significand & ((1u << shift) - 1u);
    const std::uint32_t half = 1u << (shift - 1u);
    if (remainder > half || (remainder == half && (result & 1u))) ++result;
    return static_cast<std::uint16_t>(sign | result);
  }
  const std::uint32_t exponent = (abs_bits >> 23) - 127u + 15u;
  const std::uint32_t mantissa = abs_bits & 0x7fffffu;
  std::uint32_t result = (exponent << 10) | (mantissa >> 13);
  const std::uint32_t remainder = mantissa & 0x1fffu;
  if (remainder > 0x1000u || (remainder == 0x1000u && (result & 1u))) ++result;  // carry may bump the exponent
  return static_cast<std::uint16_t>(sign | result);
}

/// One stored tensor: element type, shape and its raw little-endian row-major bytes.
struct tensor {
  /// Element type.
  dtype type = dtype::f64;
  /// Dimensions, outermost first; empty for a scalar.
  std::vector<std::int64_t> shape;
  /// Raw data, numel() * element_size(type) bytes.
  std::vector<std::byte> bytes;

  /// Number of elements (product of the shape; 1 for a scalar).
  std::int64_t numel() const noexcept {
    std::int64_t count = 1;
    for (std::int64_t d : shape) count *= d;
    return count;
  }
};

namespace detail {

inline constexpr std::string_view prefix = "vwn::safetensors: ";

inline std::string quote_name(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out += '\'';
  out += s;
  out += '\'';
  return out;
}

inline std::string file_prefix(const std::filesystem::path& path) {
  return std::string(prefix) + quote_name(path.string()) + ": ";
}

inline std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string out = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i != 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  out += ']';
  return out;
}

// Product of non-negative dimensions times a factor, or nullopt on int64 overflow.
inline std::optional<std::int64_t> checked_product(const std::vector<std::int64_t>& dims, std::int64_t factor) {
  std::int64_t acc = factor;
  for (std::int64_t d : dims) {
    if (d < 0) return std::nullopt;
    if (d != 0 && acc > std::numeric_limits<std::int64_t>::max() / d) return std::nullopt;
    acc *= d;
  }
  return acc;
}

// ---------------------------------------------------------------------------------------------
// Minimal JSON: enough for a safetensors header (objects, arrays, strings, numbers, literals).

struct json_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct json_value {
  enum class kind { null, boolean, number, string, array, object };
  kind type = kind::null;
  bool flag = false;                // boolean value
  std::string text;                 // string contents (decoded) or number literal
  std::vector<json_value> items;    // array elements, or object values
  std::vector<std::string> keys;    // object keys, parallel to items

  const json_value* find(std::string_view key) const {
    for (std::size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == key) return &items[i];
    }
    return nullptr;
  }
};

inline std::string_view kind_name(json_value::kind k) {
  switch (k) {
    case json_value::kind::null: return "null";
    case json_value::kind::boolean: return "a boolean";
    case json_value::kind::number: return "a number";
    case json_value::kind::string: return "a string";
    case json_value::kind::array: return "an array";
    case json_value::kind::object: return "an object";
  }
  return "?";
}

class json_parser {
 public:
  explicit json_parser(std::string_view text) : text_(text) {}

  json_value parse_document() {
    skip_ws();
    json_value v = parse_value();
    skip_ws();
    if (pos_ != text_.size()) fail("end of header after the top-level value");
    return v;
  }

 private:
  static constexpr int max_depth = 64;
  std::string_view text_;
  std::size_t pos_ = 0;
  int depth_ = 0;

  [[noreturn]] void fail(std::string_view expected) const {
    std::string got;
    if (pos_ >= text_.size()) {
      got = "end of header";
    } else {
      const unsigned char c = static_cast<unsigned char>(text_[pos_]);
      if (c >= 0x20 && c < 0x7f) {
        got = std::string("'") + static_cast<char>(c) + "'";
      } else {
        static constexpr char hex[] = "0123456789abcdef";
        got = std::string("byte 0x") + hex[c >> 4] + hex[c & 15];
      }
    }
    throw json_error("at byte " + std::to_string(pos_) + ": expected " + std::string(expected) + ", got " + got);
  }

  void skip_ws() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
      ++pos_;
    }
  }

  bool peek(char c) const { return pos_ < text_.size() && text_[pos_] == c; }

  void expect(char c) {
    if (!peek(c)) fail(std::string("'") + c + "'");
    ++pos_;
  }

  json_value parse_value() {
    if (pos_ >= text_.size()) fail("a JSON value");
    const char c = text_[pos_];
    if (c == '{') return parse_object();
    if (c == '[') return parse_array();
    if (c == '"') {
      json_value v;
      v.type = json_value::kind::string;
      v.text = parse_string();
      return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
    if (text_.substr(pos_, 4) == "true" || text_.substr(pos_, 5) == "false") {
      json_value v;
      v.type = json_value::kind::boolean;
      v.flag = text_[pos_] == 't';
      pos_ += v.flag ? 4 : 5;
      return v;
    }
    if (text_.substr(pos_, 4) == "null") {
      pos_ += 4;
      return json_value{};
    }
    fail("a JSON value");
  }

  void enter() {
    if (++depth_ > max_depth) fail("less deeply nested JSON");
  }

  json_value parse_object() {
    enter();
    json_value v;
    v.type = json_value::kind::object;
    expect('{');
    skip_ws();
    if (peek('}')) {
      ++pos_;
      --depth_;
      return v;
    }
    for (;;) {
      skip_ws();
      if (!peek('"')) fail("a string key");
      const std::size_t key_pos = pos_;
      std::string key = parse_string();
      if (v.find(key) != nullptr) {
        throw json_error("at byte " + std::to_string(key_pos) + ": duplicate key " + quote_name(key));
      }
      skip_ws();
      expect(':');
      skip_ws();
      v.items.push_back(parse_value());
      v.keys.push_back(std::move(key));
      skip_ws();
      if (peek(',')) {
        ++pos_;
        continue;
      }
      if (peek('}')) {
        ++pos_;
        break;
      }
      fail("',' or '}'");
    }
    --depth_;
    return v;
  }

  json_value parse_array() {
    enter();
    json_value v;
    v.type = json_value::kind::array;
    expect('[');
    skip_ws();
    if (peek(']')) {
      ++pos_;
      --depth_;
      return v;
    }
    for (;;) {
      skip_ws();
      v.items.push_back(parse_value());
      skip_ws();
      if (peek(',')) {
        ++pos_;
        continue;
      }
      if (peek(']')) {
        ++pos_;
        break;
      }
      fail("',' or ']'");
    }
    --depth_;
    return v;
  }

  json_value parse_number() {
    const std::size_t start = pos_;
    auto digits = [&] {
      const std::size_t before = pos_;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
      return pos_ - before;
    };
    if (peek('-')) ++pos_;
    if (peek('0')) {
      ++pos_;
    } else if (digits() == 0) {
      fail("a digit");
    }
    if (peek('.')) {
      ++pos_;
      if (digits() == 0) fail("a digit after '.'");
    }
    if (peek('e') || peek('E')) {
      ++pos_;
      if (peek('+') || peek('-')) ++pos_;
      if (digits() == 0) fail("a digit in the exponent");
    }
    json_value v;
    v.type = json_value::kind::number;
    v.text = std::string(text_.substr(start, pos_ - start));
    return v;
  }

  unsigned parse_hex4() {
    unsigned value = 0;
    for (int i = 0; i < 4; ++i) {
      if (pos_ >= text_.size()) fail("4 hex digits after \\u");
      const char c = text_[pos_];
      unsigned digit;
      if (c >= '0' && c <= '9') {
        digit = static_cast<unsigned>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        digit = static_cast<unsigned>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        digit = static_cast<unsigned>(c - 'A' + 10);
      } else {
        fail("4 hex digits after \\u");
      }
      value = value * 16 + digit;
      ++pos_;
    }
    return value;
  }

  static void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xc0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xe0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (cp & 0x3f));
    }
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    for (;;) {
      if (pos_ >= text_.size()) fail("closing '\"'");
      const char c = text_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20) fail("no raw control character inside a string");
      if (c != '\\') {
        out += c;
        ++pos_;
        continue;
      }
      ++pos_;
      if (pos_ >= text_.size()) fail("an escape character");
      const char e = text_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          std::uint32_t cp = parse_hex4();
          if (cp >= 0xdc00 && cp <= 0xdfff) {
            fail("a high surrogate before a low surrogate");
          }
          if (cp >= 0xd800 && cp <= 0xdbff) {
            if (text_.substr(pos_, 2) != "\\u") fail("a low surrogate \\uDC00-\\uDFFF");
            pos_ += 2;
            const std::uint32_t low = parse_hex4();
            if (low < 0xdc00 || low > 0xdfff) fail("a low surrogate \\uDC00-\\uDFFF");
            cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
          }
          append_utf8(out, cp);
          break;
        }
        default:
          --pos_;
          fail("a valid escape (\\\" \\\\ \\/ \\b \\f \\n \\r \\t \\uXXXX)");
      }
    }
  }
};

inline void append_json_string(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  out += '"';
  for (char ch : s) {
    const unsigned char c = static_cast<unsigned char>(ch);
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 15];
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

// Integer literal -> int64, or nullopt when it is not an integer or does not fit.
inline std::optional<std::int64_t> json_integer(const json_value& v) {
  if (v.type != json_value::kind::number) return std::nullopt;
  std::int64_t out = 0;
  const char* first = v.text.data();
  const char* last = first + v.text.size();
  const auto [ptr, ec] = std::from_chars(first, last, out);
  if (ec != std::errc() || ptr != last) return std::nullopt;
  return out;
}

inline std::string describe(const json_value& v) {
  if (v.type == json_value::kind::number) return "the number " + v.text;
  if (v.type == json_value::kind::string) return "the string " + quote_name(v.text);
  return std::string(kind_name(v.type));
}

// Reads a JSON array of non-negative integers.
inline std::vector<std::int64_t> integer_array(const json_value& v, const std::string& where) {
  if (v.type != json_value::kind::array) {
    throw std::runtime_error(where + " must be an array of non-negative integers, got " + describe(v));
  }
  std::vector<std::int64_t> out;
  out.reserve(v.items.size());
  for (const json_value& item : v.items) {
    const std::optional<std::int64_t> value = json_integer(item);
    if (!value || *value < 0) {
      throw std::runtime_error(where + " must be an array of non-negative integers, got element " + describe(item));
    }
    out.push_back(*value);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Element conversion.

template <class T>
inline constexpr bool supported_value_type =
    std::is_same_v<T, float> || std::is_same_v<T, double> || std::is_same_v<T, std::int32_t> ||
    std::is_same_v<T, std::int64_t>;

template <class Src>
inline Src load(const std::byte* p) noexcept {
  Src v;
  std::memcpy(&v, p, sizeof(Src));
  return v;
}

template <class T, class Src>
inline T convert(Src v, std::string_view tensor_name) {
  if constexpr (std::is_floating_point_v<T>) {
    return static_cast<T>(v);
  } else if constexpr (std::is_floating_point_v<Src>) {
    // Floating point to integer: only exact integers in range are accepted.
    const double d = static_cast<double>(v);
    const double lo = static_cast<double>(std::numeric_limits<T>::min());
    const double hi_exclusive = -2.0 * lo;  // 2^(bits-1)
    if (!(d >= lo && d < hi_exclusive) || std::trunc(d) != d) {
      throw std::range_error(std::string(prefix) + "tensor " + quote_name(tensor_name) + " holds the value " +
                             std::to_string(d) + ", which is not representable as a " +
                             (sizeof(T) == 4 ? "32" : "64") + "-bit integer");
    }
    return static_cast<T>(d);
  } else {
    if (!std::in_range<T>(v)) {
      throw std::range_error(std::string(prefix) + "tensor " + quote_name(tensor_name) + " holds the value " +
                             std::to_string(v) + ", which does not fit a " + (sizeof(T) == 4 ? "32" : "64") +
                             "-bit integer");
    }
    return static_cast<T>(v);
  }
}

template <class T>
std::vector<T> convert_all(const tensor& t, std::string_view tensor_name) {
  const std::size_t count = static_cast<std::size_t>(t.numel());
  std::vector<T> out(count);
  const std::byte* p = t.bytes.data();
  const std::size_t step = element_size(t.type);
  for (std::size_t i = 0; i < count; ++i, p += step) {
    switch (t.type) {
      case dtype::f64: out[i] = convert<T>(load<double>(p), tensor_name); break;
      case dtype::f32: out[i] = convert<T>(load<float>(p), tensor_name); break;
      case dtype::bf16: out[i] = convert<T>(bf16_to_float(load<std::uint16_t>(p)), tensor_name); break;
      case dtype::f16: out[i] = convert<T>(f16_to_float(load<std::uint16_t>(p)), tensor_name); break;
      case dtype::i64: out[i] = convert<T>(load<std::int64_t>(p), tensor_name); break;
      case dtype::i32: out[i] = convert<T>(load<std::int32_t>(p), tensor_name); break;
      case dtype::i16: out[i] = convert<T>(load<std::int16_t>(p), tensor_name); break;
      case dtype::i8: out[i] = convert<T>(load<std::int8_t>(p), tensor_name); break;
      case dtype::u8: out[i] = convert<T>(load<std::uint8_t>(p), tensor_name); break;
      case dtype::boolean: out[i] = static_cast<T>(load<std::uint8_t>(p) != 0 ? 1 : 0); break;
    }
  }
  return out;
}

template <class Scalar>
constexpr dtype dtype_of() {
  if constexpr (std::is_same_v<Scalar, double>) {
    return dtype::f64;
  } else if constexpr (std::is_same_v<Scalar, float>) {
    return dtype::f32;
  } else if constexpr (std::is_same_v<Scalar, std::int64_t>) {
    return dtype::i64;
  } else {
    static_assert(std::is_same_v<Scalar, std::int32_t>,
                  "vwn::safetensors: matrices of double, float, int32_t or int64_t can be stored");
    return dtype::i32;
  }
}

inline std::string random_hex_suffix() {
  static std::atomic<std::uint64_t> counter{0};
  std::uint64_t seed = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  seed ^= (counter.fetch_add(1) + 1) * 0x9e3779b97f4a7c15ull;
  try {
    std::random_device device;
    seed ^= (static_cast<std::uint64_t>(device()) << 32) ^ device();
  } catch (...) {
    // Fall back to the clock and counter only.
  }
  std::mt19937_64 mix(seed);
  const std::uint64_t value = mix();
  static constexpr char hex[] = "0123456789abcdef";
  std::string out(16, '0');
  for (int i = 0; i < 16; ++i) out[static_cast<std::size_t>(i)] = hex[(value >> (4 * i)) & 15];
  return out;
}

}  // namespace detail

/// A set of named tensors plus string metadata, as stored in one safetensors file.
class file {
 public:
  /// Free-form string metadata (the header's "__metadata__" object).
  std::map<std::string, std::string> metadata;

  /// Reads and fully validates a safetensors file; throws std::runtime_error describing the problem.
  static file read(const std::filesystem::path& path) {
    const std::string where = detail::file_prefix(path);
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(where + "cannot open the file for reading");
    in.seekg(0, std::ios::end);
    const std::streamoff end = in.tellg();
    in.seekg(0, std::ios::beg);
    if (end < 0 || !in) throw std::runtime_error(where + "cannot determine the file size");
    const std::uint64_t file_size = static_cast<std::uint64_t>(end);
    if (file_size < 8) {
      throw std::runtime_error(where + "file is too short: expected at least 8 bytes (the header length), got " +
                               std::to_string(file_size) + " bytes");
    }
    unsigned char length_bytes[8];
    in.read(reinterpret_cast<char*>(length_bytes), 8);
    if (!in) throw std::runtime_error(where + "cannot read the 8-byte header length");
    std::uint64_t header_size = 0;
    for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | length_bytes[i];
    if (header_size > file_size - 8) {
      throw std::runtime_error(where + "header length " + std::to_string(header_size) +
                               " is larger than the file: expected at most " + std::to_string(file_size - 8) +
                               " bytes after the 8-byte length prefix (file size " + std::to_string(file_size) +
                               ")");
    }
    std::string header(static_cast<std::size_t>(header_size), '\0');
    in.read(header.data(), static_cast<std::streamsize>(header_size));
    if (!in) throw std::runtime_error(where + "cannot read the " + std::to_string(header_size) + "-byte header");
    const std::uint64_t data_size = file_size - 8 - header_size;

    detail::json_value root;
    try {
      root = detail::json_parser(header).parse_document();
    } catch (const detail::json_error& e) {
      throw std::runtime_error(where + "header is not valid JSON: " + e.what());
    }
    if (root.type != detail::json_value::kind::object) {
      throw std::runtime_error(where + "header must be a JSON object, got " + detail::describe(root));
    }

    file result;
    struct span_info {
      std::uint64_t begin;
      std::uint64_t end;
      const std::string* name;
    };
    std::vector<span_info> spans;
    try {
      for (std::size_t i = 0; i < root.keys.size(); ++i) {
        const std::string& key = root.keys[i];
        const detail::json_value& entry = root.items[i];
        if (key == "__metadata__") {
          result.metadata = parse_metadata(entry);
          continue;
        }
        const std::string tname = "tensor " + detail::quote_name(key);
        if (entry.type != detail::json_value::kind::object) {
          throw std::runtime_error(tname + ": expected an object with dtype, shape and data_offsets, got " +
                                   detail::describe(entry));
        }
        for (const std::string& field : entry.keys) {
          if (field != "dtype" && field != "shape" && field != "data_offsets") {
            throw std::runtime_error(tname + " has an unexpected field " + detail::quote_name(field) +
                                     " (expected only dtype, shape and data_offsets)");
          }
        }
        const detail::json_value* type_v = entry.find("dtype");
        const detail::json_value* shape_v = entry.find("shape");
        const detail::json_value* offsets_v = entry.find("data_offsets");
        if (type_v == nullptr || shape_v == nullptr || offsets_v == nullptr) {
          throw std::runtime_error(tname + " is missing " +
                                   std::string(type_v == nullptr    ? "\"dtype\""
                                               : shape_v == nullptr ? "\"shape\""
                                                                    : "\"data_offsets\""));
        }
        if (type_v->type != detail::json_value::kind::string) {
          throw std::runtime_error(tname + ": dtype must be a string, got " + detail::describe(*type_v));
        }
        const std::optional<dtype> type = dtype_from_name(type_v->text);
        if (!type) {
          throw std::runtime_error(tname + " has unknown dtype " + detail::quote_name(type_v->text) +
                                   " (expected one of F64, F32, BF16, F16, I64, I32, I16, I8, U8, BOOL)");
        }
        std::vector<std::int64_t> shape = detail::integer_array(*shape_v, tname + ": shape");
        const std::vector<std::int64_t> offsets = detail::integer_array(*offsets_v, tname + ": data_offsets");
        if (offsets.size() != 2) {
          throw std::runtime_error(tname + ": data_offsets must have 2 entries [begin, end], got " +
                                   std::to_string(offsets.size()));
        }
        const std::string offsets_text = detail::shape_string(offsets);
        const std::optional<std::int64_t> needed =
            detail::checked_product(shape, static_cast<std::int64_t>(element_size(*type)));
        if (!needed) {
          throw std::runtime_error(tname + " has shape " + detail::shape_string(shape) +
                                   " whose byte size overflows a 64-bit integer");
        }
        if (offsets[1] < offsets[0]) {
          throw std::runtime_error(tname + " has data_offsets " + offsets_text + " with end before begin");
        }
        if (offsets[1] - offsets[0] != *needed) {
          throw std::runtime_error(tname + " has data_offsets " + offsets_text + " (" +
                                   std::to_string(offsets[1] - offsets[0]) + " bytes) but shape " +
                                   detail::shape_string(shape) + " of " + std::string(name(*type)) + " needs " +
                                   std::to_string(*needed) + " bytes");
        }
        if (static_cast<std::uint64_t>(offsets[1]) > data_size) {
          throw std::runtime_error(tname + " has data_offsets " + offsets_text +
                                   " beyond the end of the data section: expected end <= " +
                                   std::to_string(data_size) + " (the data section size)");
        }
        tensor t;
        t.type = *type;
        t.shape = std::move(shape);
        auto [it, inserted] = result.tensors_.emplace(key, std::move(t));
        (void)inserted;  // keys are unique: the JSON parser rejects duplicates
        spans.push_back({static_cast<std::uint64_t>(offsets[0]), static_cast<std::uint64_t>(offsets[1]),
                         &it->first});
      }

      // The data section must be covered exactly, without overlaps or gaps.
      std::sort(spans.begin(), spans.end(), [](const span_info& a, const span_info& b) {
        return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
      });
      std::uint64_t covered = 0;
      const span_info* previous = nullptr;
      for (const span_info& s : spans) {
        if (s.begin == s.end) continue;  // empty tensors occupy no bytes
        if (s.begin < covered) {
          throw std::runtime_error("tensors " + detail::quote_name(*previous->name) + " [" +
                                   std::to_string(previous->begin) + ", " + std::to_string(previous->end) +
                                   "] and " + detail::quote_name(*s.name) + " [" + std::to_string(s.begin) + ", " +
                                   std::to_string(s.end) + "] overlap in the data section");
        }
        if (s.begin > covered) {
          throw std::runtime_error("data section has a gap: bytes [" + std::to_string(covered) + ", " +
                                   std::to_string(s.begin) + ") belong to no tensor (next tensor " +
                                   detail::quote_name(*s.name) + " starts at " + std::to_string(s.begin) + ")");
        }
        covered = s.end;
        previous = &s;
      }
      if (covered != data_size) {
        throw std::runtime_error("data section size mismatch: tensors cover " + std::to_string(covered) +
                                 " bytes but the file has " + std::to_string(data_size) +
                                 " bytes after the header");
      }
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(where + e.what());
    }

    // Read the tensors in file order.
    for (const span_info& s : spans) {
      tensor& t = result.tensors_.find(*s.name)->second;
      t.bytes.resize(static_cast<std::size_t>(s.end - s.begin));
      if (t.bytes.empty()) continue;
      in.seekg(static_cast<std::streamoff>(8 + header_size + s.begin), std::ios::beg);
      in.read(reinterpret_cast<char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
      if (!in) {
        throw std::runtime_error(where + "cannot read the data of tensor " + detail::quote_name(*s.name) + " (" +
                                 std::to_string(t.bytes.size()) + " bytes at data offset " +
                                 std::to_string(s.begin) + ")");
      }
    }
    return result;
  }

  /// True when a tensor with this name is present.
  bool contains(std::string_view tensor_name) const { return tensors_.find(tensor_name) != tensors_.end(); }

  /// The tensor with this name; throws std::out_of_range listing the available names when absent.
  const tensor& at(std::string_view tensor_name) const {
    const auto it = tensors_.find(tensor_name);
    if (it == tensors_.end()) {
      std::string message = std::string(detail::prefix) + "no tensor named " + detail::quote_name(tensor_name) +
                            "; available (" + std::to_string(tensors_.size()) + "):";
      std::size_t listed = 0;
      for (const auto& entry : tensors_) {
        if (listed == 64) {
          message += " ... and " + std::to_string(tensors_.size() - listed) + " more";
          break;
        }
        message += (listed == 0 ? " " : ", ") + detail::quote_name(entry.first);
        ++listed;
      }
      if (tensors_.empty()) message += " none";
      throw std::out_of_range(message);
    }
    return it->second;
  }

  /// Names of all tensors, in sorted order.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (const auto& entry : tensors_) out.push_back(entry.first);
    return out;
  }

  /// Number of tensors.
  std::size_t size() const noexcept { return tensors_.size(); }

  /// The tensor's elements in row-major order, converted to T (float, double, int32_t or int64_t).
  /// Converting to an integer type throws std::range_error for values that are not exactly representable.
  template <class T>
  std::vector<T> values(std::string_view tensor_name) const {
    static_assert(detail::supported_value_type<T>,
                  "vwn::safetensors: values<T> supports float, double, std::int32_t and std::int64_t");
    return detail::convert_all<T>(at(tensor_name), tensor_name);
  }

  /// The tensor as a row-major matrix: a scalar as 1x1, a vector of length k as 1 x k, a matrix as is,
  /// and a tensor of higher rank as shape[0] x (product of the remaining dimensions).
  template <class T>
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> matrix(std::string_view tensor_name) const {
    const tensor& t = at(tensor_name);
    std::int64_t rows = 1;
    std::int64_t cols = 1;
    if (t.shape.size() == 1) {
      cols = t.shape[0];
    } else if (t.shape.size() >= 2) {
      rows = t.shape[0];
      cols = 1;
      for (std::size_t i = 1; i < t.shape.size(); ++i) cols *= t.shape[i];
    }
    const std::vector<T> data = values<T>(tensor_name);
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> out(static_cast<Eigen::Index>(rows),
                                                                          static_cast<Eigen::Index>(cols));
    if (!data.empty()) std::memcpy(out.data(), data.data(), data.size() * sizeof(T));
    return out;
  }

  /// Adds or replaces a tensor, copying numel(shape) * element_size(type) bytes from data (row-major,
  /// little-endian). Throws std::invalid_argument for a reserved name or a negative dimension.
  void set(std::string tensor_name, dtype type, std::vector<std::int64_t> shape, const void* data) {
    if (tensor_name == "__metadata__") {
      throw std::invalid_argument(std::string(detail::prefix) + "'__metadata__' is reserved and cannot name a tensor");
    }
    const std::optional<std::int64_t> size = detail::checked_product(shape, static_cast<std::int64_t>(element_size(type)));
    if (!size) {
      throw std::invalid_argument(std::string(detail::prefix) + "tensor " + detail::quote_name(tensor_name) +
                                  ": invalid shape " + detail::shape_string(shape) +
                                  " (expected non-negative dimensions whose byte size fits 64 bits)");
    }
    if (*size > 0 && data == nullptr) {
      throw std::invalid_argument(std::string(detail::prefix) + "tensor " + detail::quote_name(tensor_name) +
                                  ": null data pointer for " + std::to_string(*size) + " bytes");
    }
    tensor t;
    t.type = type;
    t.shape = std::move(shape);
    t.bytes.resize(static_cast<std::size_t>(*size));
    if (*size > 0) std::memcpy(t.bytes.data(), data, t.bytes.size());
    tensors_.insert_or_assign(std::move(tensor_name), std::move(t));
  }

  /// Adds or replaces a tensor from an Eigen matrix: shape [rows, cols], row-major, stored as F64 for double,
  /// F32 for float (I64 / I32 for int64_t / int32_t).
  template <class Derived>
  void set(std::string tensor_name, const Eigen::MatrixBase<Derived>& m) {
    using Scalar = typename Derived::Scalar;
    const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> row_major = m;
    set(std::move(tensor_name), detail::dtype_of<Scalar>(),
        {static_cast<std::int64_t>(row_major.rows()), static_cast<std::int64_t>(row_major.cols())},
        row_major.data());
  }

  /// Writes the file atomically: the bytes go to a temporary file next to the target, which then replaces
  /// the target by rename; on any failure the target is left as it was and std::runtime_error is thrown.
  /// The header is padded with spaces to a multiple of 8 bytes; tensors are laid out in name order.
  void write(const std::filesystem::path& path) const {
    const std::string where = detail::file_prefix(path);

    std::string header = "{";
    bool first = true;
    if (!metadata.empty()) {
      header += "\"__metadata__\":{";
      bool first_entry = true;
      for (const auto& [key, value] : metadata) {
        if (!first_entry) header += ',';
        first_entry = false;
        detail::append_json_string(header, key);
        header += ':';
        detail::append_json_string(header, value);
      }
      header += '}';
      first = false;
    }
    std::uint64_t offset = 0;
    for (const auto& [key, t] : tensors_) {
      if (!first) header += ',';
      first = false;
      detail::append_json_string(header, key);
      header += ":{\"dtype\":\"";
      header += name(t.type);
      header += "\",\"shape\":";
      header += detail::shape_string(t.shape);
      header += ",\"data_offsets\":[" + std::to_string(offset) + ',' + std::to_string(offset + t.bytes.size()) + "]}";
      offset += t.bytes.size();
    }
    header += '}';
    header.append((8 - header.size() % 8) % 8, ' ');

    unsigned char length_bytes[8];
    std::uint64_t length = header.size();
    for (unsigned char& b : length_bytes) {
      b = static_cast<unsigned char>(length & 0xff);
      length >>= 8;
    }

    std::filesystem::path temp;
    for (int attempt = 0;; ++attempt) {
      temp = path;
      temp += ".tmp." + detail::random_hex_suffix();
      std::error_code ec;
      if (!std::filesystem::exists(temp, ec) || attempt == 8) break;
    }
    struct remove_guard {
      const std::filesystem::path& p;
      bool active = true;
      ~remove_guard() {
        if (active) {
          std::error_code ignored;
          std::filesystem::remove(p, ignored);
        }
      }
    } guard{temp};

    {
      errno = 0;
      std::ofstream out(temp, std::ios::binary | std::ios::trunc);
      if (!out) {
        const int err = errno;
        guard.active = false;  // nothing was created
        throw std::runtime_error(where + "cannot create the temporary file " + detail::quote_name(temp.string()) +
                                 " next to it" + (err != 0 ? std::string(": ") + std::strerror(err) : std::string()));
      }
      out.write(reinterpret_cast<const char*>(length_bytes), 8);
      out.write(header.data(), static_cast<std::streamsize>(header.size()));
      for (const auto& entry : tensors_) {
        const tensor& t = entry.second;
        if (!t.bytes.empty()) {
          out.write(reinterpret_cast<const char*>(t.bytes.data()), static_cast<std::streamsize>(t.bytes.size()));
        }
      }
      out.flush();
      if (!out) {
        throw std::runtime_error(where + "writing the temporary file " + detail::quote_name(temp.string()) +
                                 " failed: expected " + std::to_string(8 + header.size() + offset) +
                                 " bytes to be written");
      }
      out.close();
      if (!out) {
        throw std::runtime_error(where + "closing the temporary file " + detail::quote_name(temp.string()) + " failed");
      }
    }

    std::error_code ec;
    std::filesystem::rename(temp, path, ec);
    if (ec) {
      throw std::runtime_error(where + "cannot replace the file with the temporary file " +
                               detail::quote_name(temp.string()) + ": " + ec.message());
    }
    guard.active = false;
  }

 private:
  std::map<std::string, tensor, std::less<>> tensors_;

  static std::map<std::string, std::string> parse_metadata(const detail::json_value& v) {
    if (v.type != detail::json_value::kind::object) {
      throw std::runtime_error("__metadata__ must be an object of strings, got " + detail::describe(v));
    }
    std::map<std::string, std::string> out;
    for (std::size_t i = 0; i < v.keys.size(); ++i) {
      if (v.items[i].type != detail::json_value::kind::string) {
        throw std::runtime_error("__metadata__ entry " + detail::quote_name(v.keys[i]) + " must be a string, got " +
                                 detail::describe(v.items[i]));
      }
      out.emplace(v.keys[i], v.items[i].text);
    }
    return out;
  }
};

}  // namespace vwn::safetensors
