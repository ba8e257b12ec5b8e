#pragma once
/// \file data.hpp
/// Byte-level text data for the reference transformer: a corpus loaded from a file or a folder, split into
/// training and validation bytes, a reproducible and restartable batch sampler, and fixed evaluation batches.
///
/// Tokens are bytes (vocabulary 256); batches hold them as int32. A window of `T + 2` consecutive bytes
/// starting at `o` gives the inputs `x[t] = s[o + t]`, the next-token targets `y1[t] = s[o + t + 1]` and the
/// next-2-token targets `y2[t] = s[o + t + 2]` (for multi-token prediction), `t = 0..T-1`.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <vwn/core/checks.hpp>
#include <vwn/core/config.hpp>
#include <vwn/core/random.hpp>

namespace vwn::data {

/// Size of the byte-level vocabulary.
inline constexpr index_t vocab_size = 256;

/// Token id type of batches.
using token = std::int32_t;

/// Which part of a corpus.
enum class split { train, validation };

/// A byte corpus split deterministically into training and validation parts: the validation part is the
/// last `floor(val_fraction * N)` bytes of the `N` corpus bytes, the training part everything before it.
/// Both parts must hold at least `context + 2` bytes (one window of `context` inputs and two-token-ahead
/// targets).
class text_corpus {
 public:
  /// Loads `path`: a text file, or a folder, in which case every regular file below it (recursively, symlinks
  /// to files included) is read in sorted path order and the contents are joined with a single '\n' between
  /// consecutive files. The bytes are read once, into storage sized beforehand from the files' sizes. Throws
  /// std::runtime_error when the path does not exist, a file cannot be read, the corpus does not fit in memory,
  /// is empty or a split is shorter than `context + 2` bytes; std::invalid_argument when `context < 1` or
  /// `val_fraction` is not in (0, 1).
  static text_corpus load(const std::filesystem::path& path, index_t context, double val_fraction = 0.1) {
    const std::string where = "vwn::data::text_corpus::load";
    std::vector<std::filesystem::path> files = files_of(path);
    // Read once, straight into the corpus's own storage, sized from the files beforehand.
    std::vector<std::uint8_t> bytes;
    const std::uint64_t size = bytes_of(files);
    try {
      bytes.reserve(static_cast<std::size_t>(size));
    } catch (const std::exception&) {  // std::bad_alloc, std::length_error
      throw std::runtime_error(where + ": the corpus '" + path.string() + "' of " + std::to_string(size) +
                               " bytes does not fit in memory");
    }
    for (std::size_t i = 0; i < files.size(); ++i) {
      if (i > 0) bytes.push_back('\n');
      std::ifstream in(files[i], std::ios::binary);
      if (!in) throw std::runtime_error(where + ": cannot open file '" + files[i].string() + "' for reading");
      char buf[1 << 16];
      while (in.read(buf, sizeof buf) || in.gcount() > 0) bytes.insert(bytes.end(), buf, buf + in.gcount());
      if (in.bad()) throw std::runtime_error(where + ": error while reading file '" + files[i].string() + "'");
    }
    text_corpus c = from_vector(std::move(bytes), context, val_fraction, path.string());
    c.files_ = std::move(files);
    return c;
  }

  /// The bytes `load(path, ...)` reads: the sizes of the files it would read plus one per join, from the file
  /// system's listing, without reading any (so that memory can be checked before a large corpus is loaded).
  /// Throws std::runtime_error as `load` does for a path it cannot use.
  static std::uint64_t bytes_at(const std::filesystem::path& path) { return bytes_of(files_of(path)); }

  /// A corpus from bytes in memory; `source` names it in error messages. Same checks as `load`.
  static text_corpus from_bytes(std::string bytes, index_t context, double val_fraction = 0.1,
                                std::string source = "<memory>") {
    return from_vector(std::vector<std::uint8_t>(bytes.begin(), bytes.end()), context, val_fraction, std::move(source));
  }

 private:
  /// `from_bytes` on bytes already in the corpus's storage type (no copy).
  static text_corpus from_vector(std::vector<std::uint8_t> bytes, index_t context, double val_fraction,
                                 std::string source) {
    const std::string where = "vwn::data::text_corpus";
    if (context < 1) vwn::detail::fail(where, "context", "a length >= 1", std::to_string(context));
    if (!(val_fraction > 0 && val_fraction < 1))
      vwn::detail::fail(where, "val_fraction", "a value in (0, 1)", std::to_string(val_fraction));
    if (bytes.empty()) throw std::runtime_error(where + ": corpus '" + source + "' is empty (0 bytes)");
    text_corpus c;
    c.source_ = std::move(source);
    c.bytes_ = std::move(bytes);
    const auto n = static_cast<index_t>(c.bytes_.size());
    const auto val = static_cast<index_t>(std::floor(val_fraction * static_cast<double>(n)));
    c.split_ = n - val;
    const index_t need = context + 2;
    auto check = [&](std::string_view part, index_t got) {
      if (got < need)
        throw std::runtime_error(where + ": corpus '" + c.source_ + "' of " + std::to_string(n) + " bytes is too short: " +
                                 std::string(part) + " split: expected at least " + std::to_string(need) +
                                 " bytes (context " + std::to_string(context) + " + 2), got " + std::to_string(got) +
                                 " (val_fraction " + std::to_string(val_fraction) + ")");
    };
    check("training", c.split_);
    check("validation", val);
    return c;
  }

  /// The files `load` reads from `path`, in order (see there).
  static std::vector<std::filesystem::path> files_of(const std::filesystem::path& path) {
    const std::string where = "vwn::data::text_corpus::load";
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    if (ec || !std::filesystem::exists(status))
      throw std::runtime_error(where + ": path '" + path.string() + "' does not exist");
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(status)) {
      try {
        for (const auto& e : std::filesystem::recursive_directory_iterator(path))
          if (e.is_regular_file()) files.push_back(e.path());
      } catch (const std::filesystem::filesystem_error& err) {
        throw std::runtime_error(where + ": cannot list folder '" + path.string() + "': " + err.code().message());
      }
      std::sort(files.begin(), files.end(),
                [](const auto& a, const auto& b) { return a.generic_string() < b.generic_string(); });
      if (files.empty())
        throw std::runtime_error(where + ": folder '" + path.string() + "' contains no regular files (empty corpus)");
    } else if (std::filesystem::is_regular_file(status)) {
      files.push_back(path);
    } else {
      throw std::runtime_error(where + ": path '" + path.string() + "' is neither a regular file nor a folder");
    }
    return files;
  }

  /// The sizes of `files` plus one byte per join.
  static std::uint64_t bytes_of(const std::vector<std::filesystem::path>& files) {
    std::uint64_t total = files.empty() ? 0 : files.size() - 1;
    for (const auto& f : files) {
      std::error_code ec;
      const auto size = std::filesystem::file_size(f, ec);
      if (ec) throw std::runtime_error("vwn::data::text_corpus::load: cannot read the size of '" + f.string() + "': " + ec.message());
      total += size;
    }
    return total;
  }

 public:

  /// All corpus bytes.
  std::span<const std::uint8_t> bytes() const { return bytes_; }
  /// Training bytes (the first part).
  std::span<const std::uint8_t> train() const { return bytes().first(static_cast<std::size_t>(split_)); }
  /// Validation bytes (the last part).
  std::span<const std::uint8_t> validation() const { return bytes().subspan(static_cast<std::size_t>(split_)); }
  /// The bytes of split `s`.
  std::span<const std::uint8_t> tokens(split s) const { return s == split::train ? train() : validation(); }
  /// Total byte count.
  index_t size() const { return static_cast<index_t>(bytes_.size()); }
  /// Files read by `load`, in the order they were joined (empty for `from_bytes`).
  const std::vector<std::filesystem::path>& files() const { return files_; }
  /// The path or name the corpus came from.
  const std::string& source() const { return source_; }

 private:
  std::vector<std::uint8_t> bytes_;
  index_t split_ = 0;
  std::vector<std::filesystem::path> files_;
  std::string source_;
};

/// One batch of `B` windows of `T` tokens, row-major (`b * T + t`).
struct batch {
  std::vector<token> inputs;    ///< `B*T` input tokens
  std::vector<token> targets1;  ///< `B*T` next-token targets (inputs shifted by 1)
  std::vector<token> targets2;  ///< `B*T` next-2-token targets (inputs shifted by 2)
};

/// Position of a `batch_sampler`: enough to reproduce every later batch exactly.
struct sampler_state {
  std::uint64_t seed = 0;         ///< seed of the stream
  std::uint64_t batch_index = 0;  ///< number of batches drawn so far
  bool operator==(const sampler_state&) const = default;
};

namespace detail {

/// SplitMix64 finaliser: a bijective 64-bit mix.
constexpr std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/// Uniform integer in [0, n) from `r` without modulo bias (rejection sampling), n >= 1.
inline std::uint64_t uniform_below(rng& r, std::uint64_t n) {
  const std::uint64_t limit = ~std::uint64_t(0) - (~std::uint64_t(0) % n);  // multiple of n
  std::uint64_t x = r.next();
  while (x >= limit) x = r.next();
  return x % n;
}

/// Writes the window of `T + 2` bytes at `offset` into row `row` of `out`.
inline void fill_window(std::span<const std::uint8_t> s, std::size_t offset, index_t T, index_t row, batch& out) {
  const std::size_t base = static_cast<std::size_t>(row * T);
  for (index_t t = 0; t < T; ++t) {
    const std::size_t o = offset + static_cast<std::size_t>(t);
    out.inputs[base + static_cast<std::size_t>(t)] = s[o];
    out.targets1[base + static_cast<std::size_t>(t)] = s[o + 1];
    out.targets2[base + static_cast<std::size_t>(t)] = s[o + 2];
  }
}

/// Checks B, T and the split length for a window sampler.
inline void check_windows(std::string_view where, std::size_t length, index_t B, index_t T) {
  if (B < 1) vwn::detail::fail(where, "batch size", "B >= 1", std::to_string(B));
  if (T < 1) vwn::detail::fail(where, "context", "T >= 1", std::to_string(T));
  if (length < static_cast<std::size_t>(T) + 2)
    vwn::detail::fail(where, "split length", "at least T + 2 = " + std::to_string(T + 2) + " tokens",
                      std::to_string(length));
}

/// Resizes the three vectors of `out` to `B*T`.
inline void resize(batch& out, index_t B, index_t T) {
  const auto n = static_cast<std::size_t>(B * T);
  out.inputs.resize(n);
  out.targets1.resize(n);
  out.targets2.resize(n);
}

}  // namespace detail

/// Draws batches of `B` random windows of `T + 2` bytes from a split. The window offsets of batch `k` are a
/// pure function of `(seed, k)` (uniform over all `length - T - 1` offsets, drawn with `vwn::rng`), so the
/// sampler's whole state is `(seed, batch_index)`: saving `state()` in a checkpoint and calling
/// `restore(state)` later yields exactly the batches that would have come next.
///
/// The sampler views the split's bytes; the corpus must outlive it.
class batch_sampler {
 public:
  /// Samples from `tokens` (e.g. `corpus.train()`); throws std::invalid_argument when `B < 1`, `T < 1` or the
  /// split holds fewer than `T + 2` bytes.
  batch_sampler(std::span<const std::uint8_t> tokens, index_t B, index_t T, std::uint64_t seed)
      : tokens_(tokens), B_(B), T_(T), state_{seed, 0} {
    detail::check_windows("vwn::data::batch_sampler", tokens.size(), B, T);
  }

  /// Fills `out` with batch number `state().batch_index` (resizing its vectors to `B*T`) and advances.
  void next(batch& out) {
    fill(state_.batch_index, out);
    ++state_.batch_index;
  }

  /// Same as `next(batch&)`, into three separate vectors (each resized to `B*T`).
  void next(std::vector<token>& inputs, std::vector<token>& targets1, std::vector<token>& targets2) {
    batch b{std::move(inputs), std::move(targets1), std::move(targets2)};
    next(b);
    inputs = std::move(b.inputs);
    targets1 = std::move(b.targets1);
    targets2 = std::move(b.targets2);
  }

  /// Batch number `index` of this seed, without changing the position.
  void fill(std::uint64_t index, batch& out) const {
    detail::resize(out, B_, T_);
    rng r = window_rng(index);
    const std::uint64_t offsets = offset_count();
    for (index_t b = 0; b < B_; ++b)
      detail::fill_window(tokens_, static_cast<std::size_t>(detail::uniform_below(r, offsets)), T_, b, out);
  }

  /// Offset of window `row` of batch `index` in the split (for inspection and tests).
  std::size_t offset(std::uint64_t index, index_t row) const {
    if (row < 0 || row >= B_) vwn::detail::fail("vwn::data::batch_sampler::offset", "row", "a row in [0, B)", std::to_string(row));
    rng r = window_rng(index);
    const std::uint64_t offsets = offset_count();
    std::uint64_t o = 0;
    for (index_t b = 0; b <= row; ++b) o = detail::uniform_below(r, offsets);
    return static_cast<std::size_t>(o);
  }

  /// Current position (seed and number of batches drawn).
  sampler_state state() const { return state_; }
  /// Continues from a saved position: the next batch is batch `state.batch_index` of seed `state.seed`.
  void restore(const sampler_state& state) { state_ = state; }

  index_t batch_size() const { return B_; }  ///< B
  index_t context() const { return T_; }     ///< T

 private:
  /// The stream of batch `index`: seeded by a mix of (seed, index), independent of every other batch.
  rng window_rng(std::uint64_t index) const {
    return rng(detail::mix64(state_.seed ^ detail::mix64(index + 0x632be59bd9b4e019ull)));
  }
  /// Number of possible window offsets, `length - T - 1` (offsets 0 .. length - T - 2).
  std::uint64_t offset_count() const { return tokens_.size() - static_cast<std::size_t>(T_) - 1; }

  std::span<const std::uint8_t> tokens_;
  index_t B_;
  index_t T_;
  sampler_state state_;
};

/// `count` fixed batches of `B` windows for evaluation (e.g. validation loss), covering `tokens` in order:
/// the `K = count * B` window offsets are spread evenly from the first possible (0) to the last possible
/// (`length - T - 2`), `o_k = floor(k * (length - T - 2) / (K - 1))`, so the first window starts the split and
/// the last one ends it. Windows overlap when `K * T` exceeds the split, leave gaps when it is smaller (use
/// `max_evaluation_batches` for non-overlapping coverage). Throws std::invalid_argument when `B`, `T` or
/// `count` is < 1 or the split holds fewer than `T + 2` bytes.
inline std::vector<batch> evaluation_batches(std::span<const std::uint8_t> tokens, index_t B, index_t T, index_t count) {
  constexpr std::string_view where = "vwn::data::evaluation_batches";
  detail::check_windows(where, tokens.size(), B, T);
  if (count < 1) vwn::detail::fail(where, "batch count", "count >= 1", std::to_string(count));
  const std::uint64_t last = tokens.size() - static_cast<std::size_t>(T) - 2;
  const auto K = static_cast<std::uint64_t>(count * B);
  std::vector<batch> out(static_cast<std::size_t>(count));
  for (index_t c = 0; c < count; ++c) {
    detail::resize(out[static_cast<std::size_t>(c)], B, T);
    for (index_t b = 0; b < B; ++b) {
      const auto k = static_cast<std::uint64_t>(c * B + b);
      // k * last fits in 64 bits for any realistic corpus (k < 2^32 and last < 2^32); use long double otherwise.
      const std::uint64_t o =
          K == 1 ? 0
                 : (k < (1ull << 32) && last < (1ull << 32)
                        ? k * last / (K - 1)
                        : static_cast<std::uint64_t>(std::floor(static_cast<long double>(k) * last / (K - 1))));
      detail::fill_window(tokens, static_cast<std::size_t>(o), T, b, out[static_cast<std::size_t>(c)]);
    }
  }
  return out;
}

/// Largest number of evaluation batches whose `B` windows of `T` inputs (plus the 2 look-ahead bytes) fit
/// in `length` bytes without the inputs overlapping: `floor(floor((length - 2) / T) / B)`; 0 when none fit.
inline index_t max_evaluation_batches(std::size_t length, index_t B, index_t T) {
  if (B < 1 || T < 1 || length < static_cast<std::size_t>(T) + 2) return 0;
  return static_cast<index_t>((length - 2) / static_cast<std::size_t>(T)) / B;
}

}  // namespace vwn::data
