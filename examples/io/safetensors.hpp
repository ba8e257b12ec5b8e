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
//
// Built on two Debian libraries, so that neither JSON nor 16-bit floats are hand-written here:
//   nlohmann-json3-dev  <nlohmann/json.hpp>  parses the header (grammar, escapes, UTF-8 validation) and escapes the
//                                            strings the writer emits; the rules it lacks (no duplicate keys, a
//                                            nesting limit, no byte order mark, no NUL byte) go through its parser
//                                            callback.
//   libeigen3-dev       <Eigen/Core>         matrices for matrix<T> and set(), and Eigen::bfloat16 / Eigen::half for
//                                            the BF16 and F16 conversions.
#pragma once

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>
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

// The conversions below are Eigen's, which give the same bits as IEEE round-to-nearest-even for every value that
// is not a NaN (checked against this library's earlier routines on all 2^32 floats and all 2^16 patterns). NaNs
// keep the earlier treatment, the same on every platform: Eigen maps every float NaN to bfloat16 0x7fc0/0xffc0,
// carries half NaN payloads into float (giving signalling float NaNs), and where it converts with F16C hardware
// (Eigen 3.4 does so under clang with -mf16c or -march=native) carries float NaN payloads into half as well.

namespace detail {
inline bool is_nan_bits(float value) noexcept {  // also under -ffast-math, unlike std::isnan
  return (std::bit_cast<std::uint32_t>(value) & 0x7fffffffu) > 0x7f800000u;
}
}  // namespace detail

/// Converts a bfloat16 bit pattern to float (exact).
inline float bf16_to_float(std::uint16_t bits) noexcept {
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::bfloat16>(bits));
}

/// Converts a float to the nearest bfloat16 bit pattern (round to nearest, ties to even; NaN stays NaN, keeping
/// its sign and the top of its payload).
inline std::uint16_t float_to_bf16(float value) noexcept {
  if (detail::is_nan_bits(value)) {
    return static_cast<std::uint16_t>((std::bit_cast<std::uint32_t>(value) >> 16) | 0x0040u);
  }
  return Eigen::numext::bit_cast<std::uint16_t>(Eigen::bfloat16(value));
}

/// Converts an IEEE half-precision bit pattern to float (exact, including subnormals and inf; a NaN becomes the
/// quiet float NaN with the same sign).
inline float f16_to_float(std::uint16_t bits) noexcept {
  if ((bits & 0x7fffu) > 0x7c00u) {
    const float nan = std::numeric_limits<float>::quiet_NaN();
    return (bits & 0x8000u) != 0 ? -nan : nan;
  }
  return static_cast<float>(Eigen::numext::bit_cast<Eigen::half>(bits));
}

/// Converts a float to the nearest IEEE half-precision bit pattern (round to nearest, ties to even; a NaN becomes
/// the quiet half NaN 0x7e00 with the same sign).
inline std::uint16_t float_to_f16(float value) noexcept {
  if (detail::is_nan_bits(value)) return std::signbit(value) ? 0xfe00u : 0x7e00u;
  return Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(value));
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
// JSON, through nlohmann-json. The header keeps its document order (ordered_json), so that with several
// problems the first one in the file is reported.

using json = nlohmann::ordered_json;

// The part of a nlohmann-json exception message after its "[json.exception...] parse error at line L, column C: "
// prefix, with bytes outside ASCII written as \xNN so that the message stays printable.
inline std::string library_message(const nlohmann::json::exception& e) {
  std::string_view m = e.what();
  if (const std::size_t p = m.find("] "); p != std::string_view::npos) m.remove_prefix(p + 2);
  if (m.starts_with("parse error")) {
    if (const std::size_t p = m.find(": "); p != std::string_view::npos) m.remove_prefix(p + 2);
  }
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  for (const char ch : m) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x80) {
      out += ch;
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

// "at byte N: expected valid UTF-8 ..., got the bytes 0x..", for the ill-formed byte at index bad of a string.
// nlohmann-json reports the byte where decoding failed; the sequence shown starts at the lead byte of the
// character it belongs to, when that character started before it (the bytes before bad are valid UTF-8).
inline std::string utf8_error(std::string_view text, std::size_t bad) {
  std::size_t start = bad;
  std::size_t lead = bad;
  while (lead > 0 && bad - lead < 3 && (static_cast<unsigned char>(text[lead - 1]) & 0xc0u) == 0x80u) --lead;
  if (lead > 0) {
    const auto c = static_cast<unsigned char>(text[lead - 1]);
    const std::size_t length = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
    if (c >= 0xc0 && lead - 1 + length > bad) start = lead - 1;
  }
  static constexpr char hex[] = "0123456789abcdef";
  std::string got;
  for (std::size_t i = start; i <= bad; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    got += std::string(i == start ? "" : " ") + "0x" + hex[c >> 4] + hex[c & 15];
  }
  return "at byte " + std::to_string(start) + ": expected valid UTF-8 inside a string, got the " +
         (start == bad ? "byte " : "bytes ") + got;
}

// Index of the '"' that opens the JSON string whose closing '"' is at close: the nearest quote before it that is
// not escaped, i.e. preceded by an even number of backslashes.
inline std::size_t string_start(std::string_view text, std::size_t close) {
  std::size_t open = close;
  std::size_t backslashes = 1;
  while (open > 0 && backslashes % 2 == 1) {
    open = text.rfind('"', open - 1);
    backslashes = 0;
    while (backslashes < open && text[open - backslashes - 1] == '\\') ++backslashes;
  }
  return open;
}

// Parses a header. On top of JSON (RFC 8259, which nlohmann-json checks, UTF-8 included) it rejects duplicate keys,
// more than max_depth nested arrays and objects, a leading byte order mark (which nlohmann-json would skip) and
// NUL bytes (which nlohmann-json takes for the end of the input). Throws std::runtime_error with what was
// expected and what was found: "header is not valid JSON: at byte N: ..." and the like.
inline json parse_header(const std::string& text) {
  constexpr int max_depth = 64;
  if (text.starts_with("\xef\xbb\xbf")) {
    throw std::runtime_error("header is not valid JSON: at byte 0: expected a JSON value, got byte 0xef");
  }
  std::istringstream in(text);
  // Bytes nlohmann-json has taken from the stream so far. At each callback below that is up to and including the
  // '{' or '[' that opened a container, the closing '"' of a key, or the byte after a number.
  const auto consumed = [&in] {
    return static_cast<std::size_t>(in.rdbuf()->pubseekoff(0, std::ios::cur, std::ios::in));
  };
  std::vector<std::set<std::string, std::less<>>> keys;  // keys seen so far in each open object
  const json::parser_callback_t check = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) {
      if (depth >= max_depth) {  // depth counts the containers around this one
        throw std::runtime_error("header is not valid JSON: at byte " + std::to_string(consumed() - 1) +
                                 ": expected less deeply nested JSON, got '" +
                                 (event == json::parse_event_t::object_start ? "{" : "[") + "'");
      }
      if (event == json::parse_event_t::object_start) keys.emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      keys.pop_back();
    } else if (event == json::parse_event_t::key) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!keys.back().insert(key).second) {
        throw std::runtime_error("header is not valid JSON: at byte " +
                                 std::to_string(string_start(text, consumed() - 1)) + ": duplicate key " +
                                 quote_name(key));
      }
    } else if (event == json::parse_event_t::value && parsed.is_number_float()) {
      // No header field takes a floating-point number, so this one ends up in an error message; it keeps its
      // literal (1e3, not 1000.0) as a binary value, a type that JSON text cannot produce (see describe()).
      std::size_t end = consumed();
      if (text[end - 1] < '0' || text[end - 1] > '9') --end;  // the byte after the number was read
      const std::size_t begin = text.find_last_not_of("0123456789+-.eE", end - 1) + 1;  // npos + 1 == 0
      parsed = json::binary(json::binary_t::container_type(text.begin() + static_cast<std::ptrdiff_t>(begin),
                                                           text.begin() + static_cast<std::ptrdiff_t>(end)));
    }
    return true;
  };
  const std::size_t nul = text.find('\0');
  try {
    json root = json::parse(in, check);
    if (nul != std::string::npos) {  // nlohmann-json stopped at the NUL byte
      throw std::runtime_error("header is not valid JSON: at byte " + std::to_string(nul) +
                               ": expected end of header after the top-level value, got byte 0x00");
    }
    return root;
  } catch (const json::parse_error& e) {
    const std::size_t at = e.byte > 0 ? e.byte - 1 : 0;  // e.byte counts the offending byte
    std::string message = library_message(e);
    if (message.find("ill-formed UTF-8") != std::string::npos && at < text.size()) {
      throw std::runtime_error("header is not valid UTF-8: " + utf8_error(text, at));
    }
    if (at == nul) {  // the "end of input" nlohmann-json reports is a NUL byte
      if (const std::size_t p = message.find("end of input"); p != std::string::npos) {
        message.replace(p, 12, "byte 0x00");
      }
    }
    throw std::runtime_error("header is not valid JSON: at byte " + std::to_string(at) + ": " + message);
  } catch (const json::exception& e) {  // out_of_range 406: a number beyond the range of a double
    throw std::runtime_error("header has a number out of range: " + library_message(e) +
                             " (expected a number that fits a double)");
  }
}

inline std::string describe(const json& v) {
  if (v.is_binary()) return "the number " + std::string(v.get_binary().begin(), v.get_binary().end());
  if (v.is_number()) return "the number " + v.dump();
  if (v.is_string()) return "the string " + quote_name(v.get_ref<const std::string&>());
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  if (v.is_boolean()) return "a boolean";
  return "null";
}

// Reads a JSON array of non-negative integers. Only integer literals count (1.0 and 1e3 are floating-point
// numbers), up to the largest int64; nlohmann-json stores those without a sign as unsigned.
inline std::vector<std::int64_t> integer_array(const json& v, const std::string& where) {
  if (!v.is_array()) {
    throw std::runtime_error(where + " must be an array of non-negative integers, got " + describe(v));
  }
  std::vector<std::int64_t> out;
  out.reserve(v.size());
  constexpr auto max = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  for (const json& item : v) {
    const bool valid = item.is_number_unsigned() ? item.get<std::uint64_t>() <= max
                                                 : item.is_number_integer() && item.get<std::int64_t>() >= 0;
    if (!valid) {
      throw std::runtime_error(where + " must be an array of non-negative integers, got element " + describe(item));
    }
    out.push_back(item.get<std::int64_t>());
  }
  return out;
}

// Appends s as a JSON string, escaped by nlohmann-json. A string that is not valid UTF-8 (which the reader
// would reject) throws std::runtime_error naming it, with the bad bytes shown as U+FFFD.
inline void append_json_string(std::string& out, const std::string& s, std::string_view role) {
  try {
    out += nlohmann::json(s).dump();
  } catch (const nlohmann::json::type_error& e) {
    throw std::runtime_error(std::string(role) + " " +
                             nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
                             " is not valid UTF-8: expected UTF-8 text, got " + library_message(e));
  }
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

/// Thrown by `file::read` when the path cannot be opened as a safetensors file at all: missing, a directory, not a
/// regular file (a FIFO, a device, a socket: never opened, so reading cannot block), or not readable. Every
/// problem with the content of an opened file is a plain std::runtime_error.
class open_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

/// What kind of file `type` is, for error messages.
inline std::string_view file_kind(std::filesystem::file_type type) {
  switch (type) {
    case std::filesystem::file_type::directory: return "a directory";
    case std::filesystem::file_type::fifo: return "a FIFO";
    case std::filesystem::file_type::socket: return "a socket";
    case std::filesystem::file_type::block: return "a block device";
    case std::filesystem::file_type::character: return "a character device";
    case std::filesystem::file_type::symlink: return "a symbolic link";
    default: return "not a regular file";
  }
}

/// Opens `path` with `flags` and syncs it to disk (fsync); false with errno set when either fails.
inline bool sync_path(const std::filesystem::path& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  errno = err;
  return ok;
}

/// Throws open_error unless `path` is an existing regular file (after following symbolic links).
inline void expect_regular_file(const std::filesystem::path& path, const std::string& where) {
  std::error_code ec;
  const std::filesystem::file_status st = std::filesystem::status(path, ec);
  if (st.type() == std::filesystem::file_type::not_found) throw open_error(where + "no such file");
  if (ec) throw open_error(where + "cannot open the file for reading: " + ec.message());
  if (st.type() == std::filesystem::file_type::directory)
    throw open_error(where + "is a directory, expected a safetensors file");
  if (st.type() != std::filesystem::file_type::regular)
    throw open_error(where + "is " + std::string(file_kind(st.type())) + ", expected a regular safetensors file");
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
    detail::expect_regular_file(path, where);
    std::ifstream in(path, std::ios::binary);
    if (!in) throw open_error(where + "cannot open the file for reading");
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

    detail::json root;
    try {
      root = detail::parse_header(header);
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(where + e.what());
    }
    if (!root.is_object()) {
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
      for (auto item = root.begin(); item != root.end(); ++item) {
        const std::string& key = item.key();
        const detail::json& entry = item.value();
        if (key == "__metadata__") {
          result.metadata = parse_metadata(entry);
          continue;
        }
        const std::string tname = "tensor " + detail::quote_name(key);
        if (!entry.is_object()) {
          throw std::runtime_error(tname + ": expected an object with dtype, shape and data_offsets, got " +
                                   detail::describe(entry));
        }
        for (auto field = entry.begin(); field != entry.end(); ++field) {
          if (field.key() != "dtype" && field.key() != "shape" && field.key() != "data_offsets") {
            throw std::runtime_error(tname + " has an unexpected field " + detail::quote_name(field.key()) +
                                     " (expected only dtype, shape and data_offsets)");
          }
        }
        const auto find = [&entry](const char* field) -> const detail::json* {
          const auto it = entry.find(field);
          return it == entry.end() ? nullptr : &*it;
        };
        const detail::json* type_v = find("dtype");
        const detail::json* shape_v = find("shape");
        const detail::json* offsets_v = find("data_offsets");
        if (type_v == nullptr || shape_v == nullptr || offsets_v == nullptr) {
          throw std::runtime_error(tname + " is missing " +
                                   std::string(type_v == nullptr    ? "\"dtype\""
                                               : shape_v == nullptr ? "\"shape\""
                                                                    : "\"data_offsets\""));
        }
        if (!type_v->is_string()) {
          throw std::runtime_error(tname + ": dtype must be a string, got " + detail::describe(*type_v));
        }
        const std::string& type_name = type_v->get_ref<const std::string&>();
        const std::optional<dtype> type = dtype_from_name(type_name);
        if (!type) {
          throw std::runtime_error(tname + " has unknown dtype " + detail::quote_name(type_name) +
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

  /// Writes the file atomically and durably: the bytes go to a temporary file next to the target
  /// (`PATH.tmp.<16 hex digits>`), which is synced to disk and then replaces the target by rename, and the folder is
  /// synced after the rename; on any failure the target is left as it was, the temporary file is removed and
  /// std::runtime_error is thrown. `before_rename`, when given, is called between the sync and the rename (a test
  /// stops the process there). The header is padded with spaces to a multiple of 8 bytes; tensors are laid out in
  /// name order. A tensor name or metadata string that is not valid UTF-8 (which read() would reject) is refused
  /// before anything is written.
  void write(const std::filesystem::path& path, const std::function<void()>& before_rename = {}) const {
    const std::string where = detail::file_prefix(path);

    std::string header = "{";
    std::uint64_t offset = 0;
    try {  // names and metadata that are not valid UTF-8 are refused here, before any file is touched
      bool first = true;
      if (!metadata.empty()) {
        header += "\"__metadata__\":{";
        bool first_entry = true;
        for (const auto& [key, value] : metadata) {
          if (!first_entry) header += ',';
          first_entry = false;
          detail::append_json_string(header, key, "metadata key");
          header += ':';
          detail::append_json_string(header, value, "the value of metadata key " + detail::quote_name(key));
        }
        header += '}';
        first = false;
      }
      for (const auto& [key, t] : tensors_) {
        if (!first) header += ',';
        first = false;
        detail::append_json_string(header, key, "tensor name");
        header += ":{\"dtype\":\"";
        header += name(t.type);
        header += "\",\"shape\":";
        header += detail::shape_string(t.shape);
        header += ",\"data_offsets\":[" + std::to_string(offset) + ',' + std::to_string(offset + t.bytes.size()) + "]}";
        offset += t.bytes.size();
      }
    } catch (const std::runtime_error& e) {
      throw std::runtime_error(where + "cannot write the header: " + e.what());
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
    if (!detail::sync_path(temp, O_RDONLY)) {
      throw std::runtime_error(where + "cannot write the temporary file " + detail::quote_name(temp.string()) +
                               " to disk: " + std::strerror(errno));
    }
    if (before_rename) before_rename();

    std::error_code ec;
    std::filesystem::rename(temp, path, ec);
    if (ec) {
      throw std::runtime_error(where + "cannot replace the file with the temporary file " +
                               detail::quote_name(temp.string()) + ": " + ec.message());
    }
    guard.active = false;
    // The rename itself reaches the disk with the folder (best effort: not every file system syncs a folder).
    const std::filesystem::path folder = path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
    (void)detail::sync_path(folder, O_RDONLY | O_DIRECTORY);
  }

 private:
  std::map<std::string, tensor, std::less<>> tensors_;

  static std::map<std::string, std::string> parse_metadata(const detail::json& v) {
    if (!v.is_object()) {
      throw std::runtime_error("__metadata__ must be an object of strings, got " + detail::describe(v));
    }
    std::map<std::string, std::string> out;
    for (auto item = v.begin(); item != v.end(); ++item) {
      if (!item->is_string()) {
        throw std::runtime_error("__metadata__ entry " + detail::quote_name(item.key()) + " must be a string, got " +
                                 detail::describe(*item));
      }
      out.emplace(item.key(), item->get<std::string>());
    }
    return out;
  }
};

}  // namespace vwn::safetensors
