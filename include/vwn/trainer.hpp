#pragma once
/// \file trainer.hpp
/// Training loop of the reference transformer as used by the `vwn-train` and `vwn-sample` programs: the
/// settings (with their command-line flags and checkpoint keys), a trainer that owns the model, AdamW, the
/// learning-rate schedule and the batch sampler, safetensors checkpoints that resume bit for bit, the CSV
/// log, the loss plot (gnuplot) and text generation. The checkpoint format is documented in
/// docs/checkpoint.md.

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "data.hpp"
#include "model_registry.hpp"
#include "optim.hpp"
#include "random.hpp"
#include "safetensors.hpp"

namespace vwn::train {

namespace fs = std::filesystem;

/// Name written under the `format` metadata key of every checkpoint.
inline constexpr std::string_view checkpoint_format = "vwn-train-checkpoint";
/// Version of the checkpoint layout (metadata keys and tensor names); bumped on any incompatible change.
inline constexpr int checkpoint_version = 1;

/// Every setting of a training run. Fields marked *run* only steer evaluation and checkpointing; all the
/// others determine the trajectory and must match when a run is resumed.
struct settings {
  int m = 2;              ///< GHC shape: backbone blocks `m`
  int n = 3;              ///< GHC shape: over-width blocks `n`
  bool dynamic = true;    ///< dynamic (DGHC) or static GHC
  model::config model{};  ///< sizes; `model.seed` is overwritten with `seed`
  index_t batch = 8;      ///< sequences per step `B`
  double lr = 3e-3;       ///< peak learning rate
  double min_lr_ratio = 0.1;  ///< cosine floor as a fraction of `lr`
  index_t warmup = 30;    ///< linear warm-up steps
  index_t steps = 300;    ///< total optimiser steps
  optim::lr_shape schedule = optim::lr_shape::cosine;  ///< shape after the warm-up
  double weight_decay = 0.1;  ///< AdamW decoupled weight decay
  double clip = 1.0;      ///< global gradient-norm clip; 0 disables clipping
  double beta1 = 0.9;     ///< AdamW first-moment decay
  double beta2 = 0.95;    ///< AdamW second-moment decay
  double adam_eps = 1e-8; ///< AdamW epsilon
  std::uint64_t seed = 1; ///< parameter initialisation and batch order
  double val_fraction = 0.1;  ///< last part of the corpus held out for validation
  index_t eval_every = 50;    ///< *run*: evaluate every K steps (0: only at the end)
  index_t eval_batches = 8;   ///< *run*: validation batches of `B` windows per evaluation

  settings() {
    model.width = 128;
    model.layers = 4;
    model.heads = 4;
    model.context = 128;
    model.mtp = true;
  }
  /// The model settings with the run's seed.
  model::config model_config() const {
    model::config c = model;
    c.seed = seed;
    return c;
  }
};

/// Options of a `vwn-train` invocation that are not settings of the run itself.
struct run_options {
  fs::path data = "data/brown.txt";  ///< corpus file or folder
  bool data_given = false;           ///< whether --data was given
  fs::path out = "out";              ///< output folder
  std::optional<fs::path> resume;    ///< checkpoint to continue from
  int threads = 0;                   ///< OpenMP threads (0: the default)
  index_t save_every = 0;            ///< checkpoint every K steps (0: at every evaluation)
  index_t sample_bytes = 320;        ///< bytes sampled at the end (0: none)
  bool overwrite = false;            ///< start afresh even if `out` holds a checkpoint
  bool help = false;                 ///< --help
};

// -------------------------------------------------------------------------------------------------------
// Value parsing and formatting
// -------------------------------------------------------------------------------------------------------

namespace detail {

/// Shortest text that reads back to the same double.
inline std::string format_double(double x) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, r.ptr);
}

[[noreturn]] inline void bad_value(std::string_view what, std::string_view expected, std::string_view got) {
  throw std::invalid_argument(std::string(what) + ": expected " + std::string(expected) + ", got '" + std::string(got) + "'");
}

inline std::int64_t parse_int(std::string_view what, std::string_view s, std::int64_t lo, std::int64_t hi,
                              std::string_view expected) {
  std::int64_t v = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size() || v < lo || v > hi) bad_value(what, expected, s);
  return v;
}

inline std::uint64_t parse_u64(std::string_view what, std::string_view s) {
  std::uint64_t v = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size()) bad_value(what, "an integer in [0, 2^64)", s);
  return v;
}

/// A finite number accepted by `ok`.
template <class Ok>
double parse_double(std::string_view what, std::string_view s, Ok ok, std::string_view expected) {
  double v = 0;
  const auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || r.ec != std::errc() || r.ptr != s.data() + s.size() || !std::isfinite(v) || !ok(v))
    bad_value(what, expected, s);
  return v;
}

inline bool parse_bool(std::string_view what, std::string_view s) {
  if (s == "true" || s == "1" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "0" || s == "no" || s == "off") return false;
  bad_value(what, "true or false", s);
}

/// FNV-1a, 64 bits.
struct fnv1a {
  std::uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* p, std::size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (std::size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  }
  void add(std::string_view s) {
    add(s.data(), s.size());
    const unsigned char zero = 0;
    add(&zero, 1);
  }
  std::string hex() const {
    static constexpr char digits[] = "0123456789abcdef";
    std::string out(16, '0');
    for (int i = 0; i < 16; ++i) out[std::size_t(15 - i)] = digits[(h >> (4 * i)) & 15];
    return out;
  }
};

/// Throws std::invalid_argument "what: expected E, got G" (the value unquoted).
[[noreturn]] inline void bad_setting(std::string_view what, std::string_view expected, std::string_view got) {
  throw std::invalid_argument(std::string(what) + ": expected " + std::string(expected) + ", got " + std::string(got));
}

constexpr std::int64_t max_size = std::int64_t(1) << 40;

}  // namespace detail

/// FNV-1a 64 fingerprint of a corpus's bytes, as 16 hex digits (stored in checkpoints).
inline std::string corpus_fingerprint(const data::text_corpus& corpus) {
  detail::fnv1a f;
  f.add(corpus.bytes().data(), corpus.bytes().size());
  return f.hex();
}

// -------------------------------------------------------------------------------------------------------
// Settings table: one entry per setting, shared by the command line, the checkpoint metadata, the
// resume comparison and the printed configuration.
// -------------------------------------------------------------------------------------------------------

/// One setting: checkpoint key (`config.<key>`), command-line flag, help text, whether it determines the
/// trajectory, and text conversion both ways.
struct setting_field {
  std::string key;
  std::string flag;
  std::string value_name;  ///< e.g. "N" or "X"; empty for a switch
  std::string help;
  bool trajectory = true;
  std::function<std::string(const settings&)> get;
  std::function<void(settings&, std::string_view)> set;  ///< throws std::invalid_argument naming the flag
};

/// All settings, in the order of `--help`.
inline const std::vector<setting_field>& setting_fields() {
  using detail::parse_int;
  using detail::parse_double;
  static const std::vector<setting_field> fields = [] {
    std::vector<setting_field> f;
    auto integer = [&](std::string key, std::string help, index_t lo, index_t settings::*field_ptr,
                       std::string expected = "") {
      setting_field x;
      x.key = key, x.flag = "--" + key, x.value_name = "N", x.help = std::move(help);
      if (expected.empty()) expected = lo <= 0 ? "an integer >= " + std::to_string(lo) : "a positive integer";
      x.get = [field_ptr](const settings& s) { return std::to_string(s.*field_ptr); };
      x.set = [field_ptr, lo, flag = x.flag, expected](settings& s, std::string_view v) {
        s.*field_ptr = parse_int(flag, v, lo, detail::max_size, expected);
      };
      return x;
    };
    auto model_int = [&](std::string key, std::string help, index_t model::config::*field_ptr, index_t lo) {
      setting_field x;
      x.key = key, x.flag = "--" + key, x.value_name = "N", x.help = std::move(help);
      x.get = [field_ptr](const settings& s) { return std::to_string(s.model.*field_ptr); };
      x.set = [field_ptr, lo, flag = x.flag](settings& s, std::string_view v) {
        s.model.*field_ptr = parse_int(flag, v, lo, detail::max_size, lo <= 0 ? "an integer >= 0" : "a positive integer");
      };
      return x;
    };
    auto real = [&](std::string key, std::string help, double settings::*field_ptr, std::function<bool(double)> ok,
                    std::string expected, bool trajectory = true) {
      setting_field x;
      x.key = key, x.flag = "--" + key, x.value_name = "X", x.help = std::move(help), x.trajectory = trajectory;
      x.get = [field_ptr](const settings& s) { return detail::format_double(s.*field_ptr); };
      x.set = [field_ptr, ok, expected, flag = x.flag](settings& s, std::string_view v) {
        s.*field_ptr = parse_double(flag, v, ok, expected);
      };
      return x;
    };
    auto toggle = [&](std::string key, std::string help, std::function<bool&(settings&)> ref) {
      setting_field x;
      x.key = key, x.flag = "--" + key, x.help = std::move(help);
      x.get = [ref](const settings& s) { return ref(const_cast<settings&>(s)) ? std::string("true") : std::string("false"); };
      x.set = [ref, flag = x.flag](settings& s, std::string_view v) { ref(s) = detail::parse_bool(flag, v); };
      return x;
    };

    {
      setting_field x;
      x.key = "m", x.flag = "--m", x.value_name = "M", x.help = "backbone blocks m of the width shape (m, n)";
      x.get = [](const settings& s) { return std::to_string(s.m); };
      x.set = [](settings& s, std::string_view v) { s.m = int(parse_int("--m", v, 1, 1 << 20, "a positive integer")); };
      f.push_back(x);
      x.key = "n", x.flag = "--n", x.value_name = "N", x.help = "over-width blocks n of the width shape (m, n), n >= m";
      x.get = [](const settings& s) { return std::to_string(s.n); };
      x.set = [](settings& s, std::string_view v) { s.n = int(parse_int("--n", v, 1, 1 << 20, "a positive integer")); };
      f.push_back(x);
    }
    f.push_back(toggle("dynamic", "dynamic GHC (DGHC); --static for static GHC",
                       [](settings& s) -> bool& { return s.dynamic; }));
    f.push_back(model_int("width", "backbone width D (a multiple of m and of heads)", &model::config::width, 1));
    f.push_back(model_int("layers", "transformer blocks L", &model::config::layers, 1));
    f.push_back(model_int("heads", "attention heads (D / heads must be even)", &model::config::heads, 1));
    {
      setting_field x = model_int("ffn", "SwiGLU hidden width F (0: 8/3 D rounded up to a multiple of 8)",
                                  &model::config::ffn_width, 0);
      x.get = [](const settings& s) { return std::to_string(s.model.ffn()); };
      f.push_back(x);
    }
    f.push_back(model_int("context", "sequence length T", &model::config::context, 1));
    f.push_back(integer("batch", "sequences per step B", 1, &settings::batch));
    f.push_back(toggle("lowrank", "low-rank over-width embedding (--no-lowrank: direct V x D' table)",
                       [](settings& s) -> bool& { return s.model.lowrank_embedding; }));
    f.push_back(toggle("mtp", "multi-token-prediction head (--no-mtp to disable)",
                       [](settings& s) -> bool& { return s.model.mtp; }));
    {
      setting_field x;
      x.key = "mtp-lambda", x.flag = "--mtp-lambda", x.value_name = "X", x.help = "weight of the next-2-token loss";
      x.get = [](const settings& s) { return detail::format_double(s.model.mtp_lambda); };
      x.set = [](settings& s, std::string_view v) {
        s.model.mtp_lambda = parse_double("--mtp-lambda", v, [](double d) { return d >= 0; }, "a number >= 0");
      };
      f.push_back(x);
    }
    f.push_back(real("lr", "peak learning rate", &settings::lr, [](double d) { return d >= 0; }, "a number >= 0"));
    f.push_back(real("min-lr-ratio", "cosine floor as a fraction of --lr", &settings::min_lr_ratio,
                     [](double d) { return d >= 0 && d <= 1; }, "a number in [0, 1]"));
    f.push_back(integer("warmup", "linear warm-up steps", 0, &settings::warmup));
    f.push_back(integer("steps", "total optimiser steps", 1, &settings::steps));
    {
      setting_field x;
      x.key = "schedule", x.flag = "--schedule", x.value_name = "S", x.help = "learning-rate shape after warm-up: cosine or constant";
      x.get = [](const settings& s) { return std::string(optim::name(s.schedule)); };
      x.set = [](settings& s, std::string_view v) {
        if (v == "cosine") s.schedule = optim::lr_shape::cosine;
        else if (v == "constant") s.schedule = optim::lr_shape::constant;
        else detail::bad_value("--schedule", "cosine or constant", v);
      };
      f.push_back(x);
    }
    f.push_back(real("weight-decay", "AdamW decoupled weight decay", &settings::weight_decay,
                     [](double d) { return d >= 0; }, "a number >= 0"));
    f.push_back(real("clip", "global gradient-norm clip (0: no clipping)", &settings::clip,
                     [](double d) { return d >= 0; }, "a number >= 0"));
    f.push_back(real("beta1", "AdamW first-moment decay", &settings::beta1, [](double d) { return d >= 0 && d < 1; },
                     "a number in [0, 1)"));
    f.push_back(real("beta2", "AdamW second-moment decay", &settings::beta2, [](double d) { return d >= 0 && d < 1; },
                     "a number in [0, 1)"));
    f.push_back(real("adam-eps", "AdamW epsilon", &settings::adam_eps, [](double d) { return d > 0; }, "a number > 0"));
    {
      setting_field x;
      x.key = "seed", x.flag = "--seed", x.value_name = "N", x.help = "seed of the initialisation and of the batch order";
      x.get = [](const settings& s) { return std::to_string(s.seed); };
      x.set = [](settings& s, std::string_view v) { s.seed = detail::parse_u64("--seed", v); };
      f.push_back(x);
    }
    f.push_back(real("val-fraction", "fraction of the corpus (its end) held out for validation", &settings::val_fraction,
                     [](double d) { return d > 0 && d < 1; }, "a number in (0, 1)"));
    {
      setting_field x = integer("eval-every", "evaluate every K steps (0: only at the end)", 0, &settings::eval_every);
      x.value_name = "K", x.trajectory = false;
      f.push_back(x);
      x = integer("eval-batches", "validation batches of B sequences per evaluation", 1, &settings::eval_batches);
      x.trajectory = false;
      f.push_back(x);
    }
    return f;
  }();
  return fields;
}

/// The field with this checkpoint key; nullptr when none.
inline const setting_field* find_field(std::string_view key) {
  for (const auto& f : setting_fields())
    if (f.key == key) return &f;
  return nullptr;
}

/// Checks a complete set of settings (ranges and the model's consistency rules: `(m, n)` compiled, `D` a
/// multiple of `m` and of `heads`, even head width, warm-up not longer than the run). Throws
/// std::invalid_argument naming the setting, what was expected and what was given.
inline void validate(const settings& s) {
  const model::shape_choice shape{s.m, s.n, s.dynamic};
  const auto available = model::available_transformers();
  if (std::find(available.begin(), available.end(), shape) == available.end())
    detail::bad_setting("--m/--n/--dynamic", "one of the compiled configurations " + model::available_transformers_text(),
                      shape.label());
  const auto& c = s.model;
  if (c.width % s.m != 0)
    detail::bad_setting("--width", "a multiple of m = " + std::to_string(s.m), std::to_string(c.width));
  if (c.width % c.heads != 0 || (c.width / c.heads) % 2 != 0)
    detail::bad_setting("--heads", "a divisor of --width " + std::to_string(c.width) + " with an even head width",
                      std::to_string(c.heads));
  if (s.warmup > s.steps)
    detail::bad_setting("--warmup", "at most --steps = " + std::to_string(s.steps), std::to_string(s.warmup));
  if (c.vocab != data::vocab_size)
    detail::bad_setting("vocabulary", std::to_string(data::vocab_size) + " (bytes)", std::to_string(c.vocab));
}

/// Multi-line human-readable summary of the settings.
inline std::string describe(const settings& s) {
  const auto& c = s.model;
  std::ostringstream o;
  o << "model    (m, n) = (" << s.m << "," << s.n << ") " << (s.dynamic ? "dynamic" : "static") << " GHC, D = " << c.width
    << " (D' = " << s.n * (c.width / s.m) << "), layers " << c.layers << ", heads " << c.heads << ", FFN " << c.ffn()
    << ", context " << c.context << ", " << (c.lowrank_embedding ? "low-rank" : "direct") << " embedding, MTP "
    << (c.mtp ? "on (lambda " + detail::format_double(c.mtp_lambda) + ")" : std::string("off")) << "\n";
  o << "training batch " << s.batch << " x " << c.context << " = " << s.batch * c.context << " tokens/step, " << s.steps
    << " steps, lr " << detail::format_double(s.lr) << " (" << s.warmup << " warm-up steps, "
    << optim::name(s.schedule);
  if (s.schedule == optim::lr_shape::cosine) o << " to " << detail::format_double(s.min_lr_ratio) << " x lr";
  o << "), AdamW (" << detail::format_double(s.beta1) << ", " << detail::format_double(s.beta2) << ", eps "
    << detail::format_double(s.adam_eps) << ") weight decay " << detail::format_double(s.weight_decay) << ", clip "
    << (s.clip > 0 ? detail::format_double(s.clip) : std::string("off")) << ", seed " << s.seed << "\n";
  o << "eval     every " << (s.eval_every > 0 ? std::to_string(s.eval_every) + " steps" : std::string("run (at the end)"))
    << " on " << s.eval_batches << " batches of " << s.batch << " (validation fraction "
    << detail::format_double(s.val_fraction) << ")\n";
  return o.str();
}

/// Differences between the settings of a checkpoint and those requested, over the fields that determine
/// the trajectory: "width: checkpoint 128, requested 64" per line; empty when they agree.
inline std::vector<std::string> differences(const settings& checkpoint, const settings& requested) {
  std::vector<std::string> out;
  for (const auto& f : setting_fields()) {
    if (!f.trajectory) continue;
    const std::string a = f.get(checkpoint), b = f.get(requested);
    if (a != b) out.push_back(f.flag + ": checkpoint " + a + ", requested " + b);
  }
  return out;
}

// -------------------------------------------------------------------------------------------------------
// Command line
// -------------------------------------------------------------------------------------------------------

/// A parsed `vwn-train` command line: settings assignments in order (checkpoint key, value) and the run
/// options. Assignments are applied with `apply` onto defaults or onto a checkpoint's settings.
struct command_line {
  std::vector<std::pair<std::string, std::string>> assignments;
  run_options run;
};

/// Walks a command line of `--flag VALUE` / `--flag=VALUE` arguments and switches, one flag at a time:
/// `for (argument_reader r(args); r.next();) { if (r.flag() == "--x") x = r.value(); ... }`.
/// Errors are std::invalid_argument naming the flag, what was expected and what was given.
class argument_reader {
 public:
  explicit argument_reader(std::span<const std::string> args) : args_(args) {}

  /// Moves to the next flag; false after the last one.
  bool next() {
    if (++i_ >= args_.size()) return false;
    flag_ = args_[i_];
    inline_.reset();
    if (const auto eq = flag_.find('='); flag_.rfind("--", 0) == 0 && eq != std::string::npos) {
      inline_ = flag_.substr(eq + 1);
      flag_ = flag_.substr(0, eq);
    }
    return true;
  }
  /// The current flag, without an `=VALUE` part.
  const std::string& flag() const { return flag_; }
  /// The `=VALUE` part of the current flag, if it had one.
  const std::optional<std::string>& inline_value() const { return inline_; }
  /// The current flag's value: its `=VALUE` part, or else the next argument (consumed).
  std::string value() {
    if (inline_) return *inline_;
    if (i_ + 1 >= args_.size())
      throw std::invalid_argument(flag_ + ": expected a value, got the end of the command line");
    return args_[++i_];
  }
  /// Checks that a switch was given without `=VALUE`.
  void no_value() const {
    if (inline_) throw std::invalid_argument(flag_ + ": expected no value, got '" + *inline_ + "'");
  }
  /// Throws the "unknown option" error for the current argument.
  [[noreturn]] void unknown() const {
    throw std::invalid_argument("unknown option '" + args_[i_] + "' (try --help)");
  }

 private:
  std::span<const std::string> args_;
  std::size_t i_ = std::size_t(-1);
  std::string flag_;
  std::optional<std::string> inline_;
};

/// Parses `vwn-train` arguments (`--flag VALUE` or `--flag=VALUE`; switches `--dynamic`/`--static`,
/// `--mtp`/`--no-mtp`, `--lowrank`/`--no-lowrank`, `--overwrite`). Values are checked here; throws
/// std::invalid_argument naming the flag, what was expected and what was given.
inline command_line parse_command_line(std::span<const std::string> args) {
  command_line out;
  for (argument_reader r(args); r.next();) {
    const std::string& arg = r.flag();
    const std::optional<std::string>& inline_value = r.inline_value();
    auto value = [&] { return r.value(); };
    auto no_value = [&] { r.no_value(); };
    if (arg == "-h" || arg == "--help") {
      out.run.help = true;
    } else if (arg == "--static" || arg == "--no-mtp" || arg == "--no-lowrank") {
      no_value();
      out.assignments.push_back({arg == "--static" ? "dynamic" : arg.substr(5), "false"});
    } else if (arg == "--dynamic" || arg == "--mtp" || arg == "--lowrank") {
      out.assignments.push_back({arg.substr(2), inline_value ? *inline_value : "true"});
      settings probe;
      find_field(arg.substr(2))->set(probe, out.assignments.back().second);
    } else if (arg == "--data") {
      out.run.data = value();
      out.run.data_given = true;
    } else if (arg == "--out") {
      out.run.out = value();
      if (out.run.out.empty()) throw std::invalid_argument("--out: expected a folder, got ''");
    } else if (arg == "--resume") {
      out.run.resume = fs::path(value());
    } else if (arg == "--threads") {
      out.run.threads = int(detail::parse_int("--threads", value(), 0, 4096, "an integer >= 0 (0: the default)"));
    } else if (arg == "--save-every") {
      out.run.save_every = detail::parse_int("--save-every", value(), 0, detail::max_size, "an integer >= 0");
    } else if (arg == "--sample") {
      out.run.sample_bytes = detail::parse_int("--sample", value(), 0, 1 << 20, "an integer in [0, 1048576]");
    } else if (arg == "--overwrite") {
      no_value();
      out.run.overwrite = true;
    } else {
      const setting_field* f = arg.rfind("--", 0) == 0 ? find_field(arg.substr(2)) : nullptr;
      if (!f) r.unknown();
      std::string v = value();
      settings probe;
      f->set(probe, v);  // check the value now, whatever it is later applied to
      out.assignments.push_back({f->key, std::move(v)});
    }
  }
  return out;
}

/// Applies parsed assignments to `s`.
inline void apply(settings& s, const std::vector<std::pair<std::string, std::string>>& assignments) {
  for (const auto& [key, value] : assignments) find_field(key)->set(s, value);
}

/// `--help` text of the settings flags (one line each) with their default values.
inline std::string settings_help() {
  const settings d;
  std::string out;
  for (const auto& f : setting_fields()) {
    std::string left = "  " + f.flag;
    if (f.key == "dynamic") left = "  --dynamic | --static";
    else if (f.key == "mtp") left = "  --mtp | --no-mtp";
    else if (f.key == "lowrank") left = "  --lowrank | --no-lowrank";
    else left += " " + f.value_name;
    if (left.size() < 26) left.append(26 - left.size(), ' ');
    else left += "  ";
    std::string def = f.get(d);
    if (f.key == "ffn") def = "0 = 8/3 D";
    if (f.key == "dynamic") def = d.dynamic ? "dynamic" : "static";
    out += left + f.help + " [" + def + "]\n";
  }
  return out;
}

// -------------------------------------------------------------------------------------------------------
// Checkpoints
// -------------------------------------------------------------------------------------------------------

/// A checkpoint read and verified by `read_checkpoint` (format, version, checksum and metadata parsed).
struct checkpoint {
  fs::path path;
  settings config;
  index_t step = 0;                   ///< completed training steps
  std::int64_t optimizer_step = 0;    ///< AdamW step count
  data::sampler_state sampler;        ///< position of the training batch sampler
  std::uint64_t data_bytes = 0;       ///< corpus size
  std::string data_fingerprint;       ///< FNV-1a 64 of the corpus bytes
  std::string data_source;            ///< corpus path at training time (informative)
  double elapsed_seconds = 0;         ///< training time so far (informative)
  std::string model_name;             ///< e.g. "vwn::model::transformer<2,3,dynamic>"
  safetensors::file file;             ///< the tensors
};

namespace detail {

/// Checksum over metadata (except the checksum itself) and every tensor's name, dtype, shape and bytes.
inline std::string checksum(const safetensors::file& f) {
  fnv1a h;
  for (const auto& [k, v] : f.metadata) {
    if (k == "checksum") continue;
    h.add(k);
    h.add(v);
  }
  for (const std::string& name : f.names()) {
    const safetensors::tensor& t = f.at(name);
    h.add(name);
    h.add(safetensors::name(t.type));
    std::string shape;
    for (auto d : t.shape) shape += std::to_string(d) + ",";
    h.add(shape);
    h.add(t.bytes.data(), t.bytes.size());
  }
  return h.hex();
}

inline std::string checkpoint_error_prefix(const fs::path& p) {
  return "cannot use checkpoint '" + p.string() + "': ";
}

}  // namespace detail

/// Reads and verifies a checkpoint: a valid safetensors file with `format`, `format_version` and a
/// matching checksum, and every metadata key present and well formed. Throws std::runtime_error ("cannot use
/// checkpoint 'PATH': ...") for a missing, truncated, corrupted or foreign file. Never writes anything.
inline checkpoint read_checkpoint(const fs::path& path) {
  const std::string where = detail::checkpoint_error_prefix(path);
  checkpoint c;
  c.path = path;
  try {
    c.file = safetensors::file::read(path);
  } catch (const std::exception& e) {
    throw std::runtime_error(where + e.what() + " (truncated or corrupted file?)");
  }
  const auto& md = c.file.metadata;
  auto get = [&](const std::string& key) -> const std::string& {
    const auto it = md.find(key);
    if (it == md.end()) throw std::runtime_error(where + "metadata key '" + key + "' is missing");
    return it->second;
  };
  if (!md.count("format") || md.at("format") != checkpoint_format)
    throw std::runtime_error(where + "not a vwn-train checkpoint: expected metadata format '" + std::string(checkpoint_format) +
                             "', got " + (md.count("format") ? "'" + md.at("format") + "'" : std::string("none")));
  if (get("format_version") != std::to_string(checkpoint_version))
    throw std::runtime_error(where + "unsupported format_version: expected " + std::to_string(checkpoint_version) + ", got '" +
                             get("format_version") + "'");
  const std::string stored = get("checksum"), actual = detail::checksum(c.file);
  if (stored != actual)
    throw std::runtime_error(where + "checksum mismatch: expected " + stored + " (stored), got " + actual +
                             " (computed): the file is corrupted");
  try {
    for (const auto& f : setting_fields()) f.set(c.config, get("config." + f.key));
    c.step = detail::parse_int("step", get("step"), 0, detail::max_size, "an integer >= 0");
    c.optimizer_step = detail::parse_int("optimizer_step", get("optimizer_step"), 0, detail::max_size, "an integer >= 0");
    c.sampler.seed = detail::parse_u64("sampler_seed", get("sampler_seed"));
    c.sampler.batch_index = detail::parse_u64("sampler_batch_index", get("sampler_batch_index"));
    c.data_bytes = detail::parse_u64("data_bytes", get("data_bytes"));
    c.data_fingerprint = get("data_fnv1a64");
    c.data_source = md.count("data_source") ? md.at("data_source") : "";
    c.elapsed_seconds = md.count("elapsed_seconds")
                            ? detail::parse_double("elapsed_seconds", md.at("elapsed_seconds"), [](double) { return true; }, "a number")
                            : 0.0;
    c.model_name = md.count("model") ? md.at("model") : "";
    validate(c.config);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(where + "bad metadata: " + e.what());
  }
  return c;
}

namespace detail {

/// Copies the tensors `prefix + name` of `f` into the visited buffers; checks everything first (presence,
/// F32 dtype, shape `[size]`), so nothing is written unless every tensor is fine.
struct tensor_target {
  std::string name;
  float* data;
  index_t size;
};

inline void load_tensors(const checkpoint& c, const std::vector<tensor_target>& targets) {
  const std::string where = checkpoint_error_prefix(c.path);
  std::map<std::string, bool> expected;
  for (const auto& t : targets) {
    expected[t.name] = true;
    if (!c.file.contains(t.name)) throw std::runtime_error(where + "tensor '" + t.name + "' is missing");
    const safetensors::tensor& st = c.file.at(t.name);
    if (st.type != safetensors::dtype::f32)
      throw std::runtime_error(where + "tensor '" + t.name + "': expected dtype F32, got " + std::string(safetensors::name(st.type)));
    if (st.shape != std::vector<std::int64_t>{t.size})
      throw std::runtime_error(where + "tensor '" + t.name + "': expected shape [" + std::to_string(t.size) + "], got " +
                               safetensors::detail::shape_string(st.shape));
  }
  for (const std::string& name : c.file.names())
    if (!expected.count(name)) throw std::runtime_error(where + "unexpected tensor '" + name + "' (another model?)");
  for (const auto& t : targets)
    if (t.size > 0) std::memcpy(t.data, c.file.at(t.name).bytes.data(), std::size_t(t.size) * sizeof(float));
}

}  // namespace detail

/// Rebuilds the model of a verified checkpoint with its parameters (for sampling).
inline std::unique_ptr<model::any_transformer> load_model(const checkpoint& c) {
  auto m = model::make_transformer(c.config.m, c.config.n, c.config.dynamic, c.config.model_config());
  std::vector<detail::tensor_target> targets;
  m->visit([&](const std::string& name, float* p, float*, index_t size, bool) { targets.push_back({"model." + name, p, size}); });
  // Only the model's tensors are needed here: the optimiser's are checked for presence, not loaded.
  const std::string where = detail::checkpoint_error_prefix(c.path);
  for (const auto& t : targets) {
    if (!c.file.contains(t.name)) throw std::runtime_error(where + "tensor '" + t.name + "' is missing");
    const auto& st = c.file.at(t.name);
    if (st.type != safetensors::dtype::f32 || st.shape != std::vector<std::int64_t>{t.size})
      throw std::runtime_error(where + "tensor '" + t.name + "': expected F32 of shape [" + std::to_string(t.size) + "], got " +
                               std::string(safetensors::name(st.type)) + " " + safetensors::detail::shape_string(st.shape));
  }
  for (const auto& t : targets)
    if (t.size > 0) std::memcpy(t.data, c.file.at(t.name).bytes.data(), std::size_t(t.size) * sizeof(float));
  return m;
}

// -------------------------------------------------------------------------------------------------------
// Trainer
// -------------------------------------------------------------------------------------------------------

/// Result of one optimiser step.
struct step_result {
  index_t step = 0;        ///< steps completed, this one included (1 for the first)
  double lr = 0;           ///< learning rate used
  model::losses loss;      ///< training losses of the batch (before the update)
  double grad_norm = 0;    ///< gradient norm before clipping
  double seconds = 0;      ///< wall time of the step
};

/// Validation losses, averaged over the evaluation batches.
struct evaluation {
  double next = 0;   ///< next-token cross-entropy (nats)
  double next2 = 0;  ///< next-2-token cross-entropy (0 without MTP)
};

/// Owns the model, AdamW, the schedule and the batch sampler of one run on one corpus (which must outlive
/// the trainer). Deterministic: the same settings and corpus give bit-identical losses and parameters, and a
/// run resumed from a checkpoint continues exactly as the uninterrupted run would have (with the same thread
/// count).
class trainer {
 public:
  /// A fresh run. Throws std::invalid_argument for invalid settings, std::runtime_error when the corpus is
  /// too short for the context.
  trainer(const settings& s, const data::text_corpus& corpus) : trainer(s, corpus, 0) {}

  /// Continues the run saved in `path`. The checkpoint must be valid and its settings must equal
  /// `requested` on every field that determines the trajectory (std::invalid_argument listing each
  /// difference otherwise), and `corpus` must be the same corpus (same bytes). Reads only; leaves every
  /// file untouched.
  static trainer resume(const fs::path& path, const settings& requested, const data::text_corpus& corpus) {
    const checkpoint c = read_checkpoint(path);
    const auto diff = differences(c.config, requested);
    if (!diff.empty()) {
      std::string msg = detail::checkpoint_error_prefix(path) + "it was written with different settings:";
      for (const auto& d : diff) msg += "\n  " + d;
      throw std::invalid_argument(msg);
    }
    const std::string fp = corpus_fingerprint(corpus);
    if (c.data_bytes != std::uint64_t(corpus.size()) || c.data_fingerprint != fp)
      throw std::invalid_argument(detail::checkpoint_error_prefix(path) + "it was trained on another corpus: expected " +
                                  std::to_string(c.data_bytes) + " bytes with fingerprint " + c.data_fingerprint + " ('" +
                                  c.data_source + "'), got " + std::to_string(corpus.size()) + " bytes with fingerprint " +
                                  fp + " ('" + corpus.source() + "')");
    if (c.optimizer_step != std::int64_t(c.step) || c.sampler.batch_index != std::uint64_t(c.step))
      throw std::runtime_error(detail::checkpoint_error_prefix(path) + "inconsistent counters: step " + std::to_string(c.step) +
                               ", optimizer_step " + std::to_string(c.optimizer_step) + ", sampler_batch_index " +
                               std::to_string(c.sampler.batch_index) + " (expected all equal)");
    settings s = c.config;
    s.eval_every = requested.eval_every;
    s.eval_batches = requested.eval_batches;
    trainer t(s, corpus, 0);
    std::vector<detail::tensor_target> targets;
    t.model_->visit([&](const std::string& name, float* p, float*, index_t size, bool) {
      targets.push_back({"model." + name, p, size});
    });
    t.opt_.for_each_state([&](const std::string& name, float* p, index_t size) { targets.push_back({"optim." + name, p, size}); });
    detail::load_tensors(c, targets);
    t.opt_.set_step_count(c.optimizer_step);
    t.sampler_.restore(c.sampler);
    t.step_ = c.step;
    t.elapsed_before_ = c.elapsed_seconds;
    return t;
  }

  trainer(trainer&&) = default;

  /// One optimiser step on the next training batch.
  step_result train_step() {
    const auto t0 = std::chrono::steady_clock::now();
    step_result r;
    r.lr = schedule_.at(index_t(opt_.step_count()) + 1);
    sampler_.next(batch_);
    model_->zero_grad();
    r.loss = model_->forward(host, batch_.inputs, batch_.targets1, batch_.targets2, s_.model.context);
    model_->backward(host);
    r.grad_norm = opt_.clip_grad_norm(s_.clip > 0 ? s_.clip : std::numeric_limits<double>::infinity());
    opt_.step(r.lr);
    r.step = ++step_;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    elapsed_ += r.seconds;
    return r;
  }

  /// Mean validation losses over the fixed evaluation batches (does not change the training state).
  evaluation evaluate() {
    evaluation e;
    for (const auto& b : eval_) {
      const model::losses l = model_->forward(host, b.inputs, b.targets1, b.targets2, s_.model.context);
      e.next += l.next;
      e.next2 += l.next2;
    }
    e.next /= double(eval_.size());
    e.next2 /= double(eval_.size());
    return e;
  }

  /// Writes the checkpoint (atomically: a temporary file next to `path`, then a rename; the folder must
  /// exist). `elapsed_seconds` is informative.
  void save(const fs::path& path) const {
    safetensors::file f;
    auto& md = f.metadata;
    md["format"] = std::string(checkpoint_format);
    md["format_version"] = std::to_string(checkpoint_version);
    md["vwn_version"] = std::to_string(VWN_VERSION_MAJOR) + "." + std::to_string(VWN_VERSION_MINOR) + "." +
                        std::to_string(VWN_VERSION_PATCH);
    md["model"] = model_->name();
    for (const auto& field : setting_fields()) md["config." + field.key] = field.get(s_);
    md["step"] = std::to_string(step_);
    md["optimizer_step"] = std::to_string(opt_.step_count());
    md["sampler_seed"] = std::to_string(sampler_.state().seed);
    md["sampler_batch_index"] = std::to_string(sampler_.state().batch_index);
    md["data_bytes"] = std::to_string(corpus_->size());
    md["data_fnv1a64"] = fingerprint_;
    md["data_source"] = corpus_->source();
    md["elapsed_seconds"] = detail::format_double(elapsed_before_ + elapsed_);
    model_->visit([&](const std::string& name, float* p, float*, index_t size, bool) {
      f.set("model." + name, safetensors::dtype::f32, {std::int64_t(size)}, p);
    });
    opt_.for_each_state([&](const std::string& name, const float* p, index_t size) {
      f.set("optim." + name, safetensors::dtype::f32, {std::int64_t(size)}, p);
    });
    md["checksum"] = detail::checksum(f);
    f.write(path);
  }

  /// Completed steps.
  index_t steps_done() const { return step_; }
  /// The settings of the run.
  const settings& config() const { return s_; }
  /// The model.
  model::any_transformer& model() { return *model_; }
  /// The optimiser.
  const optim::adamw<float>& optimizer() const { return opt_; }
  /// The learning-rate schedule.
  const optim::lr_schedule& schedule() const { return schedule_; }
  /// Position of the batch sampler.
  data::sampler_state sampler_state() const { return sampler_.state(); }
  /// Training seconds of this run including those before the last resume.
  double elapsed_seconds() const { return elapsed_before_ + elapsed_; }
  /// Tokens per training step.
  index_t tokens_per_step() const { return s_.batch * s_.model.context; }

 private:
  static const settings& checked(const settings& s) {
    validate(s);
    return s;
  }
  static optim::adamw_config adam(const settings& s) {
    optim::adamw_config a;
    a.beta1 = s.beta1, a.beta2 = s.beta2, a.eps = s.adam_eps, a.weight_decay = s.weight_decay;
    return a;
  }

  trainer(const settings& s, const data::text_corpus& corpus, int)
      : s_(checked(s)),
        corpus_(&corpus),
        fingerprint_(corpus_fingerprint(corpus)),
        model_(model::make_transformer(s.m, s.n, s.dynamic, s.model_config())),
        opt_(adam(s)),
        schedule_(s.lr, s.warmup, s.steps, s.schedule, s.min_lr_ratio),
        sampler_(corpus.train(), s.batch, s.model.context, s.seed),
        eval_(data::evaluation_batches(corpus.validation(), s.batch, s.model.context, s.eval_batches)) {
    s_.model.seed = s.seed;
    model_->visit([&](const std::string& name, float* p, float* g, index_t size, bool decay) { opt_.add(name, p, g, size, decay); });
  }

  settings s_;
  const data::text_corpus* corpus_;
  std::string fingerprint_;
  std::unique_ptr<model::any_transformer> model_;
  optim::adamw<float> opt_;
  optim::lr_schedule schedule_;
  data::batch_sampler sampler_;
  std::vector<data::batch> eval_;
  data::batch batch_;
  index_t step_ = 0;
  double elapsed_before_ = 0;
  double elapsed_ = 0;
};

// -------------------------------------------------------------------------------------------------------
// CSV log
// -------------------------------------------------------------------------------------------------------

/// One row of `log.csv`.
struct log_row {
  index_t step = 0;
  double lr = 0;
  double loss = 0, next = 0;
  std::optional<double> next2;                 ///< empty without MTP
  std::optional<double> val_next, val_next2;   ///< only on evaluation steps (val_next2 only with MTP)
  double tokens_per_s = 0;
  double elapsed_s = 0;
};

/// The training log: one CSV row per step, appended and flushed line by line so that a crash leaves at most
/// an incomplete last line, which the next `open` for a resumed run drops (together with rows past the
/// checkpoint's step).
class csv_log {
 public:
  static constexpr std::string_view header = "step,lr,train_loss,train_next,train_next2,val_next,val_next2,tokens_per_s,elapsed_s";

  /// Opens `path`. A fresh run (`resume_step` empty) starts a new file with the header; a resumed run keeps
  /// the rows with step <= `*resume_step` (rewritten atomically through a temporary file) and appends after
  /// them. Throws std::runtime_error when the file cannot be written.
  csv_log(const fs::path& path, std::optional<index_t> resume_step) : path_(path) {
    std::vector<std::string> keep;
    if (resume_step) {
      std::ifstream in(path);
      std::string line;
      bool first = true;
      while (std::getline(in, line)) {
        if (first) {
          first = false;
          if (line == header) continue;
        }
        if (in.eof()) break;  // last line without its newline: incomplete
        log_row r;
        if (parse(line, r) && r.step <= *resume_step) keep.push_back(line);
      }
    }
    const fs::path tmp = fs::path(path_.string() + ".tmp");
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << header << '\n';
      for (const auto& l : keep) out << l << '\n';
      out.flush();
      if (!out) throw std::runtime_error("cannot write the log '" + tmp.string() + "'");
    }
    std::error_code ec;
    fs::rename(tmp, path_, ec);
    if (ec) throw std::runtime_error("cannot replace the log '" + path_.string() + "': " + ec.message());
    out_.open(path_, std::ios::app);
    if (!out_) throw std::runtime_error("cannot open the log '" + path_.string() + "' for appending");
  }

  /// Appends one row and flushes it.
  void append(const log_row& r) {
    out_ << format(r) << '\n';
    out_.flush();
    if (!out_) throw std::runtime_error("cannot append to the log '" + path_.string() + "'");
  }

  /// The CSV line of a row (without newline).
  static std::string format(const log_row& r) {
    auto num = [](const std::optional<double>& x) {
      if (!x) return std::string();
      char buf[32];
      std::snprintf(buf, sizeof buf, "%.6f", *x);
      return std::string(buf);
    };
    char lr[32], tps[32], el[32];
    std::snprintf(lr, sizeof lr, "%.6g", r.lr);
    std::snprintf(tps, sizeof tps, "%.1f", r.tokens_per_s);
    std::snprintf(el, sizeof el, "%.3f", r.elapsed_s);
    return std::to_string(r.step) + "," + lr + "," + num(r.loss) + "," + num(r.next) + "," + num(r.next2) + "," +
           num(r.val_next) + "," + num(r.val_next2) + "," + tps + "," + el;
  }

  /// Parses a data line; false when it is malformed.
  static bool parse(const std::string& line, log_row& r) {
    std::vector<std::string> cells;
    std::string cell;
    std::istringstream s(line);
    while (std::getline(s, cell, ',')) cells.push_back(cell);
    if (!line.empty() && line.back() == ',') cells.emplace_back();
    if (cells.size() != 9) return false;
    auto num = [](const std::string& c, double& x) {
      const auto res = std::from_chars(c.data(), c.data() + c.size(), x);
      return !c.empty() && res.ec == std::errc() && res.ptr == c.data() + c.size();
    };
    auto opt = [&](const std::string& c, std::optional<double>& x) {
      if (c.empty()) return x.reset(), true;
      double v;
      if (!num(c, v)) return false;
      x = v;
      return true;
    };
    double step;
    if (!num(cells[0], step) || step < 0) return false;
    r.step = index_t(step);
    return num(cells[1], r.lr) && num(cells[2], r.loss) && num(cells[3], r.next) && opt(cells[4], r.next2) &&
           opt(cells[5], r.val_next) && opt(cells[6], r.val_next2) && num(cells[7], r.tokens_per_s) &&
           num(cells[8], r.elapsed_s);
  }

  /// The well-formed rows of a log file (empty when it cannot be read).
  static std::vector<log_row> read(const fs::path& path) {
    std::vector<log_row> rows;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      log_row r;
      if (parse(line, r)) rows.push_back(r);
    }
    return rows;
  }

 private:
  fs::path path_;
  std::ofstream out_;
};

// -------------------------------------------------------------------------------------------------------
// Loss plot
// -------------------------------------------------------------------------------------------------------

/// Whether a `gnuplot` program is on the PATH.
inline bool have_gnuplot() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

namespace detail {
inline std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}
}  // namespace detail

/// Plots the training loss and the validation next / next-2-token losses of a log against the step into
/// `png`, through a gnuplot script written next to it (`png` with extension `.gp`, data inline). Returns
/// an empty string on success, otherwise why no plot was made (gnuplot missing or failing, no data).
inline std::string plot_losses(const std::vector<log_row>& rows, const fs::path& png, const std::string& title) {
  if (rows.empty()) return "the log holds no rows";
  if (!have_gnuplot()) return "gnuplot not found (install gnuplot-nox, e.g. with scripts/setup.sh)";
  fs::path script = png;
  script.replace_extension(".gp");
  std::ofstream o(script, std::ios::trunc);
  auto quoted = [](std::string s) {
    std::string out;
    for (char c : s) out += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
    return "\"" + out + "\"";
  };
  o << "# Loss curves of " << title << "; regenerate with: gnuplot " << script.filename().string() << "\n";
  o << "$train << EOD\n";
  for (const auto& r : rows) o << r.step << " " << r.loss << " " << r.next << "\n";
  o << "EOD\n$val << EOD\n";
  bool any_val = false, any_val2 = false;
  for (const auto& r : rows)
    if (r.val_next) {
      any_val = true;
      any_val2 = any_val2 || r.val_next2.has_value();
      o << r.step << " " << *r.val_next << " " << (r.val_next2 ? *r.val_next2 : 0.0) << "\n";
    }
  o << "EOD\n";
  o << "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) { set terminal pngcairo size 1000,600 } else { set terminal png size 1000,600 }\n";
  o << "set output " << quoted(png.string()) << "\n";
  o << "set title " << quoted(title) << " noenhanced\n";
  o << "set xlabel \"step\"\nset ylabel \"cross-entropy (nats)\"\nset grid\nset key top right\n";
  o << "plot $train using 1:2 with lines lw 1 lc rgb \"#9ab8d8\" title \"train loss\"";
  if (rows.front().next2) o << ", $train using 1:3 with lines lw 1 lc rgb \"#d8b89a\" title \"train next-token\"";
  if (any_val) o << ", $val using 1:2 with linespoints lw 2 pt 7 lc rgb \"#c03020\" title \"val next-token\"";
  if (any_val2) o << ", $val using 1:3 with linespoints lw 2 pt 5 lc rgb \"#2060c0\" title \"val next-2-token\"";
  o << "\n";
  o.close();
  if (!o) return "cannot write the gnuplot script '" + script.string() + "'";
  const int rc = std::system(("gnuplot " + detail::shell_quote(script.string()) + " 2>&1").c_str());
  if (rc != 0) return "gnuplot failed on '" + script.string() + "' (status " + std::to_string(rc) + ")";
  return {};
}

// -------------------------------------------------------------------------------------------------------
// Text generation
// -------------------------------------------------------------------------------------------------------

/// Sampling settings of `generate`.
struct sample_options {
  index_t tokens = 200;       ///< bytes to generate
  double temperature = 0.8;   ///< softmax temperature; 0 picks the most likely byte
  index_t top_k = 40;         ///< sample among the k most likely bytes (0: all)
  std::uint64_t seed = 1;     ///< sampling seed
};

/// Generates `o.tokens` bytes after `prompt` (an empty prompt starts from a newline, which is not part of
/// the result). Returns only the generated bytes.
inline std::string generate(model::any_transformer& m, std::string_view prompt, const sample_options& o) {
  if (!(o.temperature >= 0) || !std::isfinite(o.temperature))
    vwn::detail::fail("vwn::train::generate", "temperature", "a finite number >= 0", std::to_string(o.temperature));
  std::vector<std::int32_t> ctx;
  for (unsigned char c : (prompt.empty() ? std::string_view("\n") : prompt)) ctx.push_back(c);
  rng r(o.seed);
  std::string out;
  for (index_t i = 0; i < o.tokens; ++i) {
    const std::vector<float> logits = m.next_logits(ctx);
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
  }
  return out;
}

/// Bytes as printable text: printable ASCII and newlines as they are, a backslash as `\\`, a tab as `\t`,
/// every other byte as `\xNN`.
inline std::string printable(std::string_view bytes) {
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
