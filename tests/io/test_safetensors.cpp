// Tests for examples/io/safetensors.hpp: round trips, files laid out the way other writers lay them out,
// validation errors with useful messages, and atomic replacement on write failure.
#include <io/safetensors.hpp>

#include <gtest/gtest.h>

#include <atomic>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <sys/stat.h>

namespace {

namespace fs = std::filesystem;
namespace st = vwn::safetensors;

class Safetensors : public ::testing::Test {
 protected:
  fs::path dir;

  void SetUp() override {
    static std::atomic<int> counter{0};
    std::random_device rd;
    const auto stamp = std::chrono::steady_clock::now().time_since_epoch().count();
    dir = fs::temp_directory_path() /
          ("vwn_safetensors_test_" + std::to_string(stamp) + "_" + std::to_string(rd()) + "_" +
           std::to_string(counter.fetch_add(1)));
    fs::create_directories(dir);
  }

  void TearDown() override {
    std::error_code ec;
    // Restore permissions changed by a test before cleaning up.
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::add, ec);
    for (const auto& entry : fs::recursive_directory_iterator(dir, ec)) {
      if (entry.is_directory(ec)) fs::permissions(entry.path(), fs::perms::owner_all, fs::perm_options::add, ec);
    }
    fs::remove_all(dir, ec);
  }

  static void write_raw(const fs::path& p, const std::string& bytes) {
    std::ofstream out(p, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    ASSERT_TRUE(out.good());
  }

  static std::string read_raw(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }

  // 8-byte little-endian length + header (optionally space-padded to a multiple of 8) + data.
  static std::string assemble(std::string header, const std::string& data, bool pad = true) {
    if (pad) header.append((8 - header.size() % 8) % 8, ' ');
    std::string out(8, '\0');
    std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
    return out + header + data;
  }

  template <class T>
  static std::string bytes_of(const std::vector<T>& v) {
    std::string out(v.size() * sizeof(T), '\0');
    if (!v.empty()) std::memcpy(out.data(), v.data(), out.size());
    return out;
  }

  // Expects file::read to throw std::runtime_error whose message contains every fragment.
  void expect_read_error(const fs::path& p, const std::vector<std::string>& fragments) {
    try {
      (void)st::file::read(p);
      FAIL() << "reading " << p << " should have thrown";
    } catch (const std::runtime_error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("vwn::safetensors"), std::string::npos) << message;
      EXPECT_NE(message.find(p.filename().string()), std::string::npos) << message;
      for (const std::string& fragment : fragments) {
        EXPECT_NE(message.find(fragment), std::string::npos) << "missing '" << fragment << "' in: " << message;
      }
    }
  }

  std::vector<std::string> leftover_temporaries() const {
    std::vector<std::string> out;
    for (const auto& entry : fs::directory_iterator(dir)) {
      const std::string name = entry.path().filename().string();
      if (name.find(".tmp.") != std::string::npos) out.push_back(name);
    }
    return out;
  }
};

TEST_F(Safetensors, DtypeNamesAndSizes) {
  EXPECT_EQ(st::name(st::dtype::f64), "F64");
  EXPECT_EQ(st::name(st::dtype::f32), "F32");
  EXPECT_EQ(st::name(st::dtype::bf16), "BF16");
  EXPECT_EQ(st::name(st::dtype::f16), "F16");
  EXPECT_EQ(st::name(st::dtype::i64), "I64");
  EXPECT_EQ(st::name(st::dtype::i32), "I32");
  EXPECT_EQ(st::name(st::dtype::i16), "I16");
  EXPECT_EQ(st::name(st::dtype::i8), "I8");
  EXPECT_EQ(st::name(st::dtype::u8), "U8");
  EXPECT_EQ(st::name(st::dtype::boolean), "BOOL");
  EXPECT_EQ(st::element_size(st::dtype::f64), 8u);
  EXPECT_EQ(st::element_size(st::dtype::f32), 4u);
  EXPECT_EQ(st::element_size(st::dtype::bf16), 2u);
  EXPECT_EQ(st::element_size(st::dtype::boolean), 1u);
  EXPECT_EQ(st::dtype_from_name("BF16"), st::dtype::bf16);
  EXPECT_FALSE(st::dtype_from_name("F8_E4M3").has_value());
}

TEST_F(Safetensors, HalfAndBfloatConversionsRoundTripEveryPattern) {
  for (std::uint32_t bits = 0; bits < 0x10000u; ++bits) {
    const auto h = static_cast<std::uint16_t>(bits);
    const float f16 = st::f16_to_float(h);
    if (!std::isnan(f16)) {
      ASSERT_EQ(st::float_to_f16(f16), h) << "F16 pattern " << bits;
    }
    const float bf = st::bf16_to_float(h);
    if (!std::isnan(bf)) {
      ASSERT_EQ(st::float_to_bf16(bf), h) << "BF16 pattern " << bits;
    }
  }
  EXPECT_EQ(st::f16_to_float(0x3c00), 1.0f);
  EXPECT_EQ(st::f16_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(st::float_to_f16(65520.0f), 0x7c00);          // ties to even overflows to inf
  EXPECT_EQ(st::float_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie rounds to even
  EXPECT_EQ(st::float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie rounds to even
  EXPECT_TRUE(std::isnan(st::bf16_to_float(st::float_to_bf16(std::nanf("")))));
}

TEST_F(Safetensors, NanConversionsKeepTheirBits) {
  // Eigen's conversions differ from these only for NaNs (bfloat16: every NaN becomes 0x7fc0/0xffc0; half to float:
  // the payload is carried over; float to half with F16C hardware: the payload is carried over).
  const auto nan_with_payload = [](std::uint32_t bits) { return std::bit_cast<float>(bits); };
  EXPECT_EQ(st::float_to_bf16(nan_with_payload(0x7fa00000u)), 0x7fe0);  // quieted, top payload bits kept
  EXPECT_EQ(st::float_to_bf16(nan_with_payload(0xff812345u)), 0xffc1);
  EXPECT_EQ(st::float_to_f16(nan_with_payload(0x7fa00000u)), 0x7e00);
  EXPECT_EQ(st::float_to_f16(nan_with_payload(0xffa00000u)), 0xfe00);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(st::f16_to_float(0x7c01)), 0x7fc00000u);  // the quiet NaN, sign kept
  EXPECT_EQ(std::bit_cast<std::uint32_t>(st::f16_to_float(0xfd55)), 0xffc00000u);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(st::bf16_to_float(0x7f81)), 0x7f810000u);  // exact, payload and all
}

TEST_F(Safetensors, RoundTripMixedDtypesWithMetadata) {
  Eigen::MatrixXd a(3, 4);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) a(i, j) = 0.1 * i - 1.7 * j + 1e-300 * (i + j);
  Eigen::MatrixXf b(2, 5);
  b.setRandom();
  const std::vector<std::int32_t> ints = {-7, 0, 2147483647, -2147483647 - 1, 42, 5};
  const std::vector<float> bf_source = {1.0f, -2.5f, 3.140625f, 0.0f, 1e30f, -1e-30f};
  std::vector<std::uint16_t> bf_bits;
  for (float v : bf_source) bf_bits.push_back(st::float_to_bf16(v));
  const std::int64_t scalar = -123456789012345LL;

  st::file f;
  f.set("A", a);
  f.set("B", b);
  f.set("ints", st::dtype::i32, {2, 3}, ints.data());
  f.set("bf", st::dtype::bf16, {1, 2, 3}, bf_bits.data());
  f.set("scalar", st::dtype::i64, {}, &scalar);
  f.set("empty", st::dtype::f32, {0, 3}, nullptr);
  f.metadata["m"] = "2";
  f.metadata["quote\"and\\slash"] = "line\nbreak\ttab \x01 caf\xc3\xa9";
  const fs::path p = dir / "round_trip.safetensors";
  f.write(p);

  // Header length is such that the data section starts at a multiple of 8.
  const std::string raw = read_raw(p);
  ASSERT_GE(raw.size(), 8u);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(raw[static_cast<std::size_t>(i)]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw[8], '{');

  const st::file g = st::file::read(p);
  EXPECT_EQ(g.metadata, f.metadata);
  EXPECT_EQ(g.names(), (std::vector<std::string>{"A", "B", "bf", "empty", "ints", "scalar"}));
  EXPECT_EQ(g.size(), 6u);
  for (const std::string& name : g.names()) {
    EXPECT_EQ(g.at(name).type, f.at(name).type) << name;
    EXPECT_EQ(g.at(name).shape, f.at(name).shape) << name;
    EXPECT_EQ(g.at(name).bytes, f.at(name).bytes) << name;
  }

  EXPECT_EQ(g.at("A").type, st::dtype::f64);
  EXPECT_EQ(g.at("A").shape, (std::vector<std::int64_t>{3, 4}));
  const auto a2 = g.matrix<double>("A");
  EXPECT_EQ(a2.rows(), 3);
  EXPECT_EQ(a2.cols(), 4);
  EXPECT_TRUE(a2 == a) << "F64 must round-trip bit for bit";
  EXPECT_EQ(g.values<double>("A")[1], a(0, 1)) << "row-major order";

  EXPECT_EQ(g.at("B").type, st::dtype::f32);
  EXPECT_TRUE(g.matrix<float>("B") == b);
  EXPECT_TRUE(g.matrix<double>("B") == b.cast<double>());

  EXPECT_EQ(g.values<std::int32_t>("ints"), ints);
  EXPECT_EQ(g.values<std::int64_t>("ints")[2], 2147483647);
  const auto ints_m = g.matrix<double>("ints");
  EXPECT_EQ(ints_m.rows(), 2);
  EXPECT_EQ(ints_m(1, 1), 42.0);

  const std::vector<float> bf_back = g.values<float>("bf");
  ASSERT_EQ(bf_back.size(), bf_source.size());
  for (std::size_t i = 0; i < bf_source.size(); ++i) {
    EXPECT_NEAR(bf_back[i], bf_source[i], std::abs(bf_source[i]) * (1.0f / 128)) << i;
  }
  EXPECT_EQ(bf_back[0], 1.0f);
  EXPECT_EQ(bf_back[2], 3.140625f);  // exactly representable in bfloat16
  const auto bf_m = g.matrix<float>("bf");  // rank 3 -> shape[0] x rest
  EXPECT_EQ(bf_m.rows(), 1);
  EXPECT_EQ(bf_m.cols(), 6);

  EXPECT_EQ(g.at("scalar").shape.size(), 0u);
  EXPECT_EQ(g.at("scalar").numel(), 1);
  EXPECT_EQ(g.values<std::int64_t>("scalar"), std::vector<std::int64_t>{scalar});
  const auto s_m = g.matrix<double>("scalar");
  EXPECT_EQ(s_m.rows(), 1);
  EXPECT_EQ(s_m.cols(), 1);

  EXPECT_EQ(g.at("empty").numel(), 0);
  EXPECT_TRUE(g.values<float>("empty").empty());
  EXPECT_EQ(g.matrix<float>("empty").rows(), 0);
  EXPECT_EQ(g.matrix<float>("empty").cols(), 3);

  // Writing what was read gives the same bytes.
  const fs::path p2 = dir / "round_trip_again.safetensors";
  g.write(p2);
  EXPECT_EQ(read_raw(p2), raw);
  EXPECT_TRUE(leftover_temporaries().empty());
}

TEST_F(Safetensors, VectorBecomesRowMatrix) {
  st::file f;
  const std::vector<double> v = {1.5, -2.0, 4.25};
  f.set("v", st::dtype::f64, {3}, v.data());
  const auto m = f.matrix<double>("v");
  EXPECT_EQ(m.rows(), 1);
  EXPECT_EQ(m.cols(), 3);
  EXPECT_EQ(m(0, 2), 4.25);
  Eigen::VectorXd col(2);
  col << 3.0, 4.0;
  f.set("col", col);
  EXPECT_EQ(f.at("col").shape, (std::vector<std::int64_t>{2, 1}));
}

TEST_F(Safetensors, ReadsFileLaidOutLikePythonWriter) {
  // The Python safetensors writer puts __metadata__ first, orders the data by dtype alignment (so offsets
  // need not follow name order) and pads the header with spaces. This one also has free whitespace,
  // shuffled keys and escaped names.
  const std::vector<double> weight = {1.0, -2.0, 0.5, 1e-3};
  const std::vector<std::int64_t> tokens = {3, 1, 4, 1, 5};
  const std::vector<float> bias = {0.25f, -8.0f, 3.0f};
  const std::vector<std::uint16_t> half = {0x3c00, 0xc000, 0x3555};  // 1, -2, ~1/3
  const std::vector<std::uint16_t> brain = {0x3f80, 0x4049};         // 1, ~3.14
  const std::string data = bytes_of(weight) + bytes_of(tokens) + bytes_of(bias) + bytes_of(half) + bytes_of(brain);
  const std::string header =
      "{\n  \"__metadata__\" : { \"format\" : \"pt\", \"note\": \"\\u00e9\\ud83d\\ude00\\\"x\\\"\" },\n"
      "  \"weight\": {\"shape\": [2, 2], \"dtype\": \"F64\", \"data_offsets\": [0, 32]},\n"
      "  \"tok\\u0065ns\": {\"data_offsets\":[32,72],\"dtype\":\"I64\",\"shape\":[5]},\r\n"
      "\t\"layer.0\\/bias\": { \"dtype\": \"F32\", \"data_offsets\": [ 72 , 84 ], \"shape\": [ 3 ] },\n"
      "  \"half\": {\"dtype\": \"F16\", \"shape\": [3], \"data_offsets\": [84, 90]},\n"
      "  \"brain\": {\"dtype\": \"BF16\", \"shape\": [1, 2], \"data_offsets\": [90, 94]}\n}";
  const fs::path p = dir / "python_style.safetensors";
  write_raw(p, assemble(header, data));

  const st::file f = st::file::read(p);
  EXPECT_EQ(f.metadata.at("format"), "pt");
  EXPECT_EQ(f.metadata.at("note"), "\xc3\xa9\xf0\x9f\x98\x80\"x\"");
  EXPECT_EQ(f.names(), (std::vector<std::string>{"brain", "half", "layer.0/bias", "tokens", "weight"}));
  EXPECT_TRUE(f.contains("tokens"));
  EXPECT_FALSE(f.contains("tok"));
  EXPECT_EQ(f.values<double>("weight"), weight);
  EXPECT_EQ(f.values<std::int64_t>("tokens"), tokens);
  EXPECT_EQ(f.values<std::int32_t>("tokens"), (std::vector<std::int32_t>{3, 1, 4, 1, 5}));
  EXPECT_EQ(f.values<float>("layer.0/bias"), bias);
  const std::vector<double> h = f.values<double>("half");
  EXPECT_EQ(h[0], 1.0);
  EXPECT_EQ(h[1], -2.0);
  EXPECT_NEAR(h[2], 1.0 / 3.0, 1e-3);
  const std::vector<float> bfv = f.values<float>("brain");
  EXPECT_EQ(bfv[0], 1.0f);
  EXPECT_NEAR(bfv[1], 3.14f, 0.01f);
  const auto w = f.matrix<double>("weight");
  EXPECT_EQ(w(1, 0), 0.5);

  // An unpadded header is fine too.
  const fs::path q = dir / "unpadded.safetensors";
  write_raw(q, assemble("{\"x\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[0,3]}}", "\x01\x02\xff", false));
  EXPECT_EQ(st::file::read(q).values<std::int32_t>("x"), (std::vector<std::int32_t>{1, 2, 255}));
}

TEST_F(Safetensors, ValueConversionsCheckRange) {
  st::file f;
  const std::vector<double> fractional = {1.0, 2.5};
  const std::vector<double> whole = {-3.0, 1e15};
  const std::vector<std::int64_t> big = {1, 1LL << 40};
  f.set("fractional", st::dtype::f64, {2}, fractional.data());
  f.set("whole", st::dtype::f64, {2}, whole.data());
  f.set("big", st::dtype::i64, {2}, big.data());
  EXPECT_THROW((void)f.values<std::int32_t>("fractional"), std::range_error);
  EXPECT_EQ(f.values<std::int64_t>("whole"), (std::vector<std::int64_t>{-3, 1000000000000000LL}));
  EXPECT_THROW((void)f.values<std::int32_t>("whole"), std::range_error);
  EXPECT_THROW((void)f.values<std::int32_t>("big"), std::range_error);
  EXPECT_EQ(f.values<double>("big")[1], 1099511627776.0);
}

TEST_F(Safetensors, SetRejectsInvalidArguments) {
  st::file f;
  const double x = 1.0;
  EXPECT_THROW(f.set("__metadata__", st::dtype::f64, {}, &x), std::invalid_argument);
  EXPECT_THROW(f.set("neg", st::dtype::f64, {2, -1}, &x), std::invalid_argument);
  EXPECT_THROW(f.set("null", st::dtype::f64, {2}, nullptr), std::invalid_argument);
  f.set("x", st::dtype::f64, {}, &x);
  const float y = 2.0f;
  f.set("x", st::dtype::f32, {1}, &y);  // replaces
  EXPECT_EQ(f.at("x").type, st::dtype::f32);
  EXPECT_EQ(f.size(), 1u);
}

TEST_F(Safetensors, MissingTensorNameListsAvailableNames) {
  st::file f;
  const double x = 1.0;
  f.set("alpha", st::dtype::f64, {}, &x);
  f.set("beta", st::dtype::f64, {}, &x);
  try {
    (void)f.at("gamma");
    FAIL() << "expected std::out_of_range";
  } catch (const std::out_of_range& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("'gamma'"), std::string::npos) << message;
    EXPECT_NE(message.find("'alpha'"), std::string::npos) << message;
    EXPECT_NE(message.find("'beta'"), std::string::npos) << message;
  }
  EXPECT_THROW((void)f.values<double>("gamma"), std::out_of_range);
  EXPECT_THROW((void)f.matrix<double>("gamma"), std::out_of_range);
}

TEST_F(Safetensors, RejectsMissingAndTruncatedFiles) {
  expect_read_error(dir / "does_not_exist.safetensors", {"no such file"});

  const fs::path tiny = dir / "tiny.safetensors";
  write_raw(tiny, std::string("\x10\x00\x00", 3));
  expect_read_error(tiny, {"too short", "at least 8 bytes", "got 3"});

  const fs::path empty = dir / "empty.safetensors";
  write_raw(empty, "");
  expect_read_error(empty, {"too short", "got 0"});

  // A valid file cut short in its data section.
  st::file f;
  Eigen::MatrixXd m = Eigen::MatrixXd::Ones(5, 2);
  f.set("H", m);
  const fs::path whole = dir / "whole.safetensors";
  f.write(whole);
  const std::string raw = read_raw(whole);
  const fs::path cut = dir / "cut.safetensors";
  write_raw(cut, raw.substr(0, raw.size() - 8));
  expect_read_error(cut, {"'H'", "beyond the end of the data section", "72"});
}

TEST_F(Safetensors, OpensOnlyRegularFiles) {
  const fs::path folder = dir / "folder.safetensors";
  fs::create_directory(folder);
  EXPECT_THROW((void)st::file::read(folder), st::open_error);
  expect_read_error(folder, {"is a directory", "expected a safetensors file"});
  EXPECT_THROW((void)st::file::read(dir / "missing.safetensors"), st::open_error);
  // A FIFO with no writer would block an open for reading forever: it must be refused without being opened.
  const fs::path fifo = dir / "fifo.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  EXPECT_THROW((void)st::file::read(fifo), st::open_error);
  expect_read_error(fifo, {"is a FIFO", "expected a regular safetensors file"});
  // A symbolic link to a regular file is read like the file.
  st::file f;
  f.set("x", Eigen::MatrixXd::Ones(2, 2));
  f.write(dir / "target.safetensors");
  fs::create_symlink(dir / "target.safetensors", dir / "link.safetensors");
  EXPECT_EQ(st::file::read(dir / "link.safetensors").names(), f.names());
}

TEST_F(Safetensors, RejectsHeaderLengthBeyondFile) {
  const fs::path p = dir / "long_header.safetensors";
  std::string bytes = assemble("{}", "");
  bytes[0] = static_cast<char>(0xe8);  // 1000
  bytes[1] = static_cast<char>(0x03);
  write_raw(p, bytes);
  expect_read_error(p, {"header length 1000", "larger than the file", "at most 8"});

  const fs::path huge = dir / "huge_header.safetensors";
  write_raw(huge, std::string(8, '\xff') + "{}");
  expect_read_error(huge, {"header length 18446744073709551615", "larger than the file"});
}

TEST_F(Safetensors, RejectsBadJson) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"garbage", "not json at all"},
      {"unterminated", "{\"a\": {\"dtype\": \"F64\""},
      {"trailing_comma", "{\"a\": 1,}"},
      {"trailing_text", "{} x"},
      {"bad_escape", "{\"a\\q\": 1}"},
      {"lone_surrogate", "{\"\\udc00\": 1}"},
      {"control_char", "{\"a\nb\": 1}"},
      {"duplicate", "{\"__metadata__\": {}, \"__metadata__\": {}}"},
      {"nested_too_deep", std::string(100, '[') + std::string(100, ']')},
  };
  for (const auto& [name, header] : cases) {
    SCOPED_TRACE(name);
    const fs::path p = dir / (name + ".safetensors");
    write_raw(p, assemble(header, ""));
    expect_read_error(p, {"not valid JSON", "at byte"});
  }
  const fs::path dup = dir / "duplicate.safetensors";
  expect_read_error(dup, {"duplicate key '__metadata__'"});
  const fs::path arr = dir / "array.safetensors";
  write_raw(arr, assemble("[1, 2]", ""));
  expect_read_error(arr, {"must be a JSON object", "an array"});
}

TEST_F(Safetensors, RejectsInconsistentTensorEntries) {
  const std::string eighty(80, '\0');
  struct bad_case {
    std::string name;
    std::string header;
    std::string data;
    std::vector<std::string> fragments;
  };
  const std::vector<bad_case> cases = {
      {"offsets_mismatch", "{\"H\":{\"dtype\":\"F64\",\"shape\":[5,2],\"data_offsets\":[0,40]}}", std::string(40, '\0'),
       {"tensor 'H'", "data_offsets [0, 40]", "shape [5, 2] of F64 needs 80 bytes"}},
      {"unknown_dtype", "{\"H\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]}}", std::string(1, '\0'),
       {"tensor 'H'", "unknown dtype 'F8_E4M3'", "expected one of"}},
      {"overlap",
       "{\"a\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]},"
       "\"b\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[8,24]}}",
       std::string(24, '\0'), {"'a' [0, 16]", "'b' [8, 24]", "overlap"}},
      {"gap",
       "{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[16,24]}}",
       std::string(24, '\0'), {"gap", "[8, 16)", "'b'"}},
      {"extra_data", "{\"H\":{\"dtype\":\"F64\",\"shape\":[5,2],\"data_offsets\":[0,80]}}", eighty + "12345678",
       {"data section size mismatch", "cover 80 bytes", "88 bytes"}},
      {"end_before_begin", "{\"H\":{\"dtype\":\"F64\",\"shape\":[0],\"data_offsets\":[8,0]}}", std::string(8, '\0'),
       {"tensor 'H'", "end before begin"}},
      {"out_of_range", "{\"H\":{\"dtype\":\"F64\",\"shape\":[5,2],\"data_offsets\":[80,160]}}", eighty,
       {"tensor 'H'", "[80, 160]", "beyond the end", "80"}},
      {"negative_dim", "{\"H\":{\"dtype\":\"F64\",\"shape\":[-1],\"data_offsets\":[0,0]}}", "",
       {"tensor 'H': shape", "non-negative integers", "-1"}},
      {"float_dim", "{\"H\":{\"dtype\":\"F64\",\"shape\":[1.5],\"data_offsets\":[0,0]}}", "",
       {"shape", "1.5"}},
      {"three_offsets", "{\"H\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8,8]}}", std::string(8, '\0'),
       {"data_offsets must have 2 entries", "got 3"}},
      {"missing_field", "{\"H\":{\"dtype\":\"F64\",\"shape\":[1]}}", std::string(8, '\0'),
       {"tensor 'H' is missing \"data_offsets\""}},
      {"extra_field", "{\"H\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8],\"x\":1}}", std::string(8, '\0'),
       {"unexpected field 'x'"}},
      {"entry_not_object", "{\"H\":[1,2]}", "", {"tensor 'H'", "expected an object", "an array"}},
      {"metadata_not_string", "{\"__metadata__\":{\"m\":2}}", "", {"__metadata__", "'m'", "the number 2"}},
      {"overflow", "{\"H\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", "",
       {"overflows"}},
  };
  for (const bad_case& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path p = dir / (c.name + ".safetensors");
    write_raw(p, assemble(c.header, c.data));
    expect_read_error(p, c.fragments);
  }
}

TEST_F(Safetensors, RejectsInvalidUtf8InTheHeader) {
  const std::string entry = "{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}";
  const std::string eight(8, '\0');
  struct bad_case {
    std::string name;
    std::string header;
    std::string data;
    std::vector<std::string> fragments;
  };
  const std::vector<bad_case> cases = {
      {"name_stray_byte", "{\"w\xff\":" + entry + "}", eight, {"at byte 3", "got the byte 0xff"}},
      {"name_latin1", "{\"caf\xe9 au lait\":" + entry + "}", eight, {"at byte 5", "got the bytes 0xe9 0x20"}},
      {"name_overlong", "{\"\xc0\xaf\":" + entry + "}", eight, {"at byte 2", "got the byte 0xc0"}},
      {"metadata_value_truncated", "{\"__metadata__\":{\"note\":\"smile \xf0\x9f\x98\"}}", "",
       {"at byte 31", "got the bytes 0xf0 0x9f 0x98 0x22"}},
      {"metadata_value_surrogate", "{\"__metadata__\":{\"note\":\"\xed\xa0\x80\"}}", "", {"at byte 25", "0xed 0xa0"}},
      {"metadata_key", "{\"__metadata__\":{\"n\xc3\x28\":\"v\"}}", "", {"at byte 19", "got the bytes 0xc3 0x28"}},
  };
  for (const bad_case& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path p = dir / (c.name + ".safetensors");
    write_raw(p, assemble(c.header, c.data));
    std::vector<std::string> fragments = {"header is not valid UTF-8", "expected valid UTF-8 inside a string"};
    fragments.insert(fragments.end(), c.fragments.begin(), c.fragments.end());
    expect_read_error(p, fragments);
  }
  // The same names, correctly encoded, are fine.
  const fs::path good = dir / "good_utf8.safetensors";
  write_raw(good,
            assemble("{\"__metadata__\":{\"note\":\"smile \xf0\x9f\x98\x80\"},\"caf\xc3\xa9\":" + entry + "}", eight));
  const st::file f = st::file::read(good);
  EXPECT_TRUE(f.contains("caf\xc3\xa9"));
  EXPECT_EQ(f.metadata.at("note"), "smile \xf0\x9f\x98\x80");
}

TEST_F(Safetensors, WriteRefusesInvalidUtf8AndLeavesTheFileAlone) {
  const fs::path p = dir / "kept.safetensors";
  const double x = 1.0;
  const auto expect_refused = [&](const st::file& f, const std::vector<std::string>& fragments) {
    write_raw(p, "old contents");
    try {
      f.write(p);
      FAIL() << "write should have thrown";
    } catch (const std::runtime_error& e) {
      const std::string message = e.what();
      EXPECT_NE(message.find("vwn::safetensors: '"), std::string::npos) << message;
      EXPECT_NE(message.find("kept.safetensors"), std::string::npos) << message;
      EXPECT_NE(message.find("is not valid UTF-8"), std::string::npos) << message;
      for (const std::string& fragment : fragments) {
        EXPECT_NE(message.find(fragment), std::string::npos) << "missing '" << fragment << "' in: " << message;
      }
    }
    EXPECT_EQ(read_raw(p), "old contents");
    EXPECT_TRUE(leftover_temporaries().empty());
  };
  st::file bad_name;
  bad_name.set("w\xff", st::dtype::f64, {}, &x);
  expect_refused(bad_name, {"tensor name", "0xFF"});
  st::file bad_value;
  bad_value.set("w", st::dtype::f64, {}, &x);
  bad_value.metadata["note"] = "caf\xe9";
  expect_refused(bad_value, {"metadata key 'note'", "0xE9"});
  st::file bad_key;
  bad_key.metadata["caf\xe9"] = "v";
  expect_refused(bad_key, {"metadata key", "0xE9"});
}

TEST_F(Safetensors, RejectsDuplicateKeysAtEveryLevel) {
  const std::string entry = "{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}";
  struct bad_case {
    std::string name;
    std::string header;
    std::string second;  // where the duplicate starts: the last occurrence of this text
    std::string key;
  };
  const std::vector<bad_case> cases = {
      {"in_metadata", "{\"__metadata__\":{\"step\":\"1\",\"note\":\"x\",\"step\":\"2\"}}", "\"step\"", "step"},
      {"in_tensor_entry", "{\"H\":{\"dtype\":\"F64\",\"shape\":[1],\"dtype\":\"F32\",\"data_offsets\":[0,8]}}",
       "\"dtype\"", "dtype"},
      {"tensor_name_spelled_differently", "{\"a\":" + entry + ", \"\\u0061\":" + entry + "}", "\"\\u0061\"", "a"},
      {"escaped_quote_in_name", "{\"a\\\"\":" + entry + ",\"a\\\"\":" + entry + "}", "\"a\\\"\"", "a\""},
  };
  for (const bad_case& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path p = dir / (c.name + ".safetensors");
    write_raw(p, assemble(c.header, std::string(8, '\0')));
    const std::string at = "at byte " + std::to_string(c.header.rfind(c.second));
    expect_read_error(p, {"not valid JSON", at + ": duplicate key '" + c.key + "'"});
  }
  // The same key in different objects is not a duplicate.
  const fs::path p = dir / "same_key_elsewhere.safetensors";
  write_raw(p, assemble("{\"__metadata__\":{\"dtype\":\"x\"},\"dtype\":" + entry + "}", std::string(8, '\0')));
  EXPECT_EQ(st::file::read(p).metadata.at("dtype"), "x");
}

TEST_F(Safetensors, KeepsItsOwnJsonRules) {
  struct bad_case {
    std::string name;
    std::string header;
    std::vector<std::string> fragments;
  };
  const std::string deepest_array = std::string(65, '[') + std::string(65, ']');
  std::string deepest_object;
  for (int i = 0; i < 65; ++i) deepest_object += "{\"k\":";
  deepest_object += "1" + std::string(65, '}');
  const std::vector<bad_case> cases = {
      {"byte_order_mark", "\xef\xbb\xbf{}", {"not valid JSON", "at byte 0", "got byte 0xef"}},
      {"nul_padding", "{}" + std::string(6, '\0'), {"not valid JSON", "at byte 2", "got byte 0x00"}},
      {"nul_inside", std::string("{\"a\":\0 1}", 9), {"not valid JSON", "at byte 5", "byte 0x00"}},
      {"array_depth_65", deepest_array, {"not valid JSON", "at byte 64", "less deeply nested", "got '['"}},
      {"object_depth_65", deepest_object, {"not valid JSON", "at byte 320", "less deeply nested", "got '{'"}},
      {"array_depth_64", std::string(64, '[') + std::string(64, ']'), {"header must be a JSON object, got an array"}},
      {"float_with_zero_fraction", "{\"H\":{\"dtype\":\"F64\",\"shape\":[1.0],\"data_offsets\":[0,0]}}",
       {"tensor 'H': shape", "got element the number 1.0"}},
      {"float_exponent", "{\"H\":{\"dtype\":\"F64\",\"shape\":[1E3],\"data_offsets\":[0,0]}}",
       {"tensor 'H': shape", "got element the number 1E3"}},
      {"beyond_int64", "{\"H\":{\"dtype\":\"F64\",\"shape\":[9223372036854775808],\"data_offsets\":[0,0]}}",
       {"tensor 'H': shape", "got element the number 9223372036854775808"}},
      {"beyond_uint64", "{\"H\":{\"dtype\":\"F64\",\"shape\":[0],\"data_offsets\":[0,18446744073709551616]}}",
       {"tensor 'H': data_offsets", "got element the number 18446744073709551616"}},
      {"int64_max_is_an_integer", "{\"H\":{\"dtype\":\"U8\",\"shape\":[9223372036854775807,2],\"data_offsets\":[0,0]}}",
       {"tensor 'H' has shape [9223372036854775807, 2]", "overflows"}},
  };
  for (const bad_case& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path p = dir / (c.name + ".safetensors");
    write_raw(p, assemble(c.header, "", false));
    expect_read_error(p, c.fragments);
  }
  // "-0" is an integer literal, and zero.
  const fs::path p = dir / "minus_zero.safetensors";
  write_raw(p, assemble("{\"H\":{\"dtype\":\"F64\",\"shape\":[-0, 3],\"data_offsets\":[0,-0]}}", ""));
  EXPECT_EQ(st::file::read(p).at("H").shape, (std::vector<std::int64_t>{0, 3}));
}

TEST_F(Safetensors, OverwriteReplacesFileWithoutLeftovers) {
  const fs::path p = dir / "model.safetensors";
  st::file first;
  first.set("x", Eigen::MatrixXd::Constant(2, 2, 1.0));
  first.write(p);
  st::file second;
  second.set("y", Eigen::MatrixXf::Constant(1, 3, 2.0f));
  second.metadata["step"] = "2";
  second.write(p);
  const st::file back = st::file::read(p);
  EXPECT_FALSE(back.contains("x"));
  EXPECT_EQ(back.values<float>("y"), (std::vector<float>{2.0f, 2.0f, 2.0f}));
  EXPECT_EQ(back.metadata.at("step"), "2");
  EXPECT_TRUE(leftover_temporaries().empty());
}

TEST_F(Safetensors, FailedWriteLeavesExistingFileIntact) {
  st::file f;
  f.set("x", Eigen::MatrixXd::Constant(3, 3, 7.0));

  // 1. Directory that does not exist: nothing is created.
  const fs::path missing_dir = dir / "no_such_dir" / "out.safetensors";
  EXPECT_THROW(f.write(missing_dir), std::runtime_error);
  EXPECT_FALSE(fs::exists(missing_dir.parent_path()));

  // 2. Target is an existing directory: rename fails, the directory and its contents stay, no temporaries.
  const fs::path target_dir = dir / "target_is_dir.safetensors";
  fs::create_directories(target_dir);
  write_raw(target_dir / "keep.txt", "keep");
  try {
    f.write(target_dir);
    FAIL() << "writing over a directory should throw";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot replace"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::is_directory(target_dir));
  EXPECT_EQ(read_raw(target_dir / "keep.txt"), "keep");
  EXPECT_TRUE(leftover_temporaries().empty());

  // 3. An existing file whose name leaves no room for the temporary suffix (NAME_MAX is 255 on common
  //    file systems): the write fails before the old file is touched.
  const fs::path long_name = dir / (std::string(248, 'L') + ".st");
  write_raw(long_name, "old contents");
  bool threw = false;
  try {
    f.write(long_name);
  } catch (const std::runtime_error& e) {
    threw = true;
    EXPECT_NE(std::string(e.what()).find("temporary"), std::string::npos) << e.what();
  }
  if (threw) {
    EXPECT_EQ(read_raw(long_name), "old contents");
  } else {
    EXPECT_EQ(st::file::read(long_name).values<double>("x").size(), 9u);
  }
  EXPECT_TRUE(leftover_temporaries().empty());
}

TEST_F(Safetensors, FailedWriteInReadOnlyDirectoryLeavesExistingFileIntact) {
  // Skipped where directory permissions are not enforced (e.g. when running as root).
  st::file f;
  f.set("x", Eigen::MatrixXd::Constant(3, 3, 7.0));
  const fs::path ro_dir = dir / "read_only";
  fs::create_directories(ro_dir);
  const fs::path old_file = ro_dir / "old.safetensors";
  write_raw(old_file, "previous bytes");
  fs::permissions(ro_dir, fs::perms::owner_read | fs::perms::owner_exec, fs::perm_options::replace);
  const fs::path probe = ro_dir / "probe";
  bool enforced = false;
  {
    std::ofstream out(probe);
    enforced = !out.is_open();
  }
  if (enforced) {
    EXPECT_THROW(f.write(old_file), std::runtime_error);
    EXPECT_EQ(read_raw(old_file), "previous bytes");
    std::size_t entries = 0;
    for (const auto& entry : fs::directory_iterator(ro_dir)) {
      (void)entry;
      ++entries;
    }
    EXPECT_EQ(entries, 1u);
  }
  std::error_code ec;
  fs::remove(probe, ec);
  fs::permissions(ro_dir, fs::perms::owner_all, fs::perm_options::replace);
  if (!enforced) GTEST_SKIP() << "directory permissions are not enforced for this user; read-only case skipped";
}

}  // namespace
