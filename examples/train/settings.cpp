#include <train/settings.hpp>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <type_traits>
#include <utility>

#include <train/values.hpp>
#include <transformer/data.hpp>
#include <transformer/memory.hpp>

namespace vwn::train {

namespace {

// Builders of the table's entries. `ref` is a generic lambda `[](auto& s) -> auto& { return s.field; }`,
// so that one accessor serves `get` (on a const settings) and `set`.

setting_field field(std::string key, std::string value_name, std::string help) {
  setting_field x;
  x.flag = "--" + key;
  x.key = std::move(key);
  x.value_name = std::move(value_name);
  x.help = std::move(help);
  return x;
}

/// An integer in [lo, hi]: "a positive integer" for lo = 1, "an integer >= lo" otherwise.
template <class Ref>
setting_field integer(std::string key, std::string value_name, std::string help, Ref ref, std::int64_t lo,
                      std::int64_t hi = detail::max_size) {
  setting_field x = field(std::move(key), std::move(value_name), std::move(help));
  const std::string expected = lo == 1 ? "a positive integer" : "an integer >= " + std::to_string(lo);
  x.get = [ref](const settings& s) { return std::to_string(ref(s)); };
  x.set = [ref, lo, hi, expected, flag = x.flag](settings& s, std::string_view v) {
    using T = std::remove_reference_t<decltype(ref(s))>;
    ref(s) = T(detail::parse_int(flag, v, lo, hi, expected));
  };
  return x;
}

/// A finite number accepted by `ok`.
template <class Ref>
setting_field real(std::string key, std::string help, Ref ref, bool (*ok)(double), std::string expected) {
  setting_field x = field(std::move(key), "X", std::move(help));
  x.get = [ref](const settings& s) { return detail::format_double(ref(s)); };
  x.set = [ref, ok, expected, flag = x.flag](settings& s, std::string_view v) {
    ref(s) = detail::parse_double(flag, v, ok, expected);
  };
  return x;
}

/// A switch `--key` (also `--key=BOOL`) with its opposite `negation`.
template <class Ref>
setting_field toggle(std::string key, std::string negation, std::string help, Ref ref) {
  setting_field x = field(std::move(key), "", std::move(help));
  x.negation = std::move(negation);
  x.get = [ref](const settings& s) { return std::string(ref(s) ? "true" : "false"); };
  x.set = [ref, flag = x.flag](settings& s, std::string_view v) { ref(s) = detail::parse_bool(flag, v); };
  return x;
}

// The ranges of the real settings: finite, and such that a run can train (docs/checkpoint.md).
bool up_to_100(double d) { return d >= 0 && d <= 100; }
bool up_to_1e6(double d) { return d >= 0 && d <= 1e6; }
bool unit_left_open(double d) { return d > 0 && d <= 1; }
bool unit_closed(double d) { return d >= 0 && d <= 1; }
bool unit_open(double d) { return d > 0 && d < 1; }
bool unit_right_open(double d) { return d >= 0 && d < 1; }

std::vector<setting_field> make_fields() {
  std::vector<setting_field> f;
  f.push_back(integer("m", "M", "backbone blocks m of the width shape (m, n)", [](auto& s) -> auto& { return s.m; }, 1,
                      1 << 20));
  f.push_back(integer("n", "N", "over-width blocks n of the width shape (m, n), n >= m",
                      [](auto& s) -> auto& { return s.n; }, 1, 1 << 20));
  f.push_back(toggle("dynamic", "--static", "dynamic GHC (DGHC); --static for static GHC",
                     [](auto& s) -> auto& { return s.dynamic; }));
  f.back().default_text = "dynamic";
  {
    setting_field x = field("connection", "C",
                            "GHC connection family: vwn (the VWN paper's), mhc (Sinkhorn-projected carry), mhc-lite "
                            "(permutation mixture, n <= 5), mhc-v4 (DeepSeek-V4's variant of mhc); docs/mhc.md");
    x.get = [](const settings& s) { return s.connection; };
    x.set = [](settings& s, std::string_view v) {
      if (!dispatch_connection(v, []<class>() {})) detail::bad_value("--connection", connection_names_text(), v);
      s.connection = std::string(v);
    };
    x.absent = "vwn";  // checkpoints written before the setting existed used the VWN family
    f.push_back(std::move(x));
  }
  f.push_back(integer("width", "N", "backbone width D (a multiple of m and of heads)",
                      [](auto& s) -> auto& { return s.model.width; }, 1));
  f.push_back(integer("layers", "N", "transformer blocks L", [](auto& s) -> auto& { return s.model.layers; }, 1));
  f.push_back(integer("heads", "N", "attention heads (D / heads must be even)",
                      [](auto& s) -> auto& { return s.model.heads; }, 1));
  {
    setting_field x = integer("ffn", "N", "SwiGLU hidden width F (0: 8/3 D rounded up to a multiple of 8)",
                              [](auto& s) -> auto& { return s.model.ffn_width; }, 0);
    x.get = [](const settings& s) { return std::to_string(s.model.ffn()); };  // the width in use, never 0
    x.default_text = "0 = 8/3 D";
    f.push_back(std::move(x));
  }
  f.push_back(integer("context", "N", "sequence length T", [](auto& s) -> auto& { return s.model.context; }, 1));
  f.push_back(integer("batch", "N", "sequences per step B", [](auto& s) -> auto& { return s.batch; }, 1));
  f.push_back(toggle("lowrank", "--no-lowrank", "low-rank over-width embedding (--no-lowrank: direct V x D' table)",
                     [](auto& s) -> auto& { return s.model.lowrank_embedding; }));
  f.push_back(toggle("mtp", "--no-mtp", "multi-token-prediction head (--no-mtp to disable)",
                     [](auto& s) -> auto& { return s.model.mtp; }));
  f.push_back(toggle("freeze-ghc", "--train-ghc",
                     "keep every GHC parameter at its initial value (with --m 1 --n 1 --static: the plain pre-norm "
                     "transformer); --train-ghc trains them",
                     [](auto& s) -> auto& { return s.freeze_ghc; }));
  f.back().default_text = "trained";
  f.back().absent = "false";  // checkpoints written before the setting existed trained them
  f.push_back(real("mtp-lambda", "weight of the next-2-token loss", [](auto& s) -> auto& { return s.model.mtp_lambda; },
                   up_to_100, "a number in [0, 100]"));
  f.push_back(real("lr", "peak learning rate", [](auto& s) -> auto& { return s.lr; }, unit_closed, "a number in [0, 1]"));
  f.push_back(real("min-lr-ratio", "cosine floor as a fraction of --lr", [](auto& s) -> auto& { return s.min_lr_ratio; },
                   unit_closed, "a number in [0, 1]"));
  f.push_back(integer("warmup", "N", "linear warm-up steps", [](auto& s) -> auto& { return s.warmup; }, 0));
  f.push_back(integer("steps", "N", "total optimiser steps", [](auto& s) -> auto& { return s.steps; }, 1));
  {
    setting_field x = field("schedule", "S", "learning-rate shape after warm-up: cosine or constant");
    x.get = [](const settings& s) { return std::string(optim::name(s.schedule)); };
    x.set = [](settings& s, std::string_view v) {
      if (v == "cosine") s.schedule = optim::lr_shape::cosine;
      else if (v == "constant") s.schedule = optim::lr_shape::constant;
      else detail::bad_value("--schedule", "cosine or constant", v);
    };
    f.push_back(std::move(x));
  }
  f.push_back(real("weight-decay", "AdamW decoupled weight decay", [](auto& s) -> auto& { return s.weight_decay; },
                   unit_closed, "a number in [0, 1]"));
  f.push_back(real("clip", "global gradient-norm clip (0: no clipping)", [](auto& s) -> auto& { return s.clip; },
                   up_to_1e6, "a number in [0, 1e6]"));
  f.push_back(real("beta1", "AdamW first-moment decay", [](auto& s) -> auto& { return s.beta1; }, unit_right_open,
                   "a number in [0, 1)"));
  f.push_back(real("beta2", "AdamW second-moment decay", [](auto& s) -> auto& { return s.beta2; }, unit_right_open,
                   "a number in [0, 1)"));
  f.push_back(real("adam-eps", "AdamW epsilon", [](auto& s) -> auto& { return s.adam_eps; }, unit_left_open,
                   "a number in (0, 1]"));
  {
    setting_field x = field("seed", "N", "seed of the initialisation and of the batch order");
    x.get = [](const settings& s) { return std::to_string(s.seed); };
    x.set = [](settings& s, std::string_view v) { s.seed = detail::parse_u64("--seed", v); };
    f.push_back(std::move(x));
  }
  f.push_back(real("val-fraction", "fraction of the corpus (its end) held out for validation",
                   [](auto& s) -> auto& { return s.val_fraction; }, unit_open, "a number in (0, 1)"));
  f.push_back(integer("eval-every", "K", "evaluate every K steps (0: only at the end)",
                      [](auto& s) -> auto& { return s.eval_every; }, 0));
  f.back().trajectory = false;
  f.push_back(integer("eval-batches", "N", "validation batches of B sequences per evaluation",
                      [](auto& s) -> auto& { return s.eval_batches; }, 1));
  f.back().trajectory = false;
  return f;
}

}  // namespace

const std::vector<setting_field>& setting_fields() {
  static const std::vector<setting_field> fields = make_fields();
  return fields;
}

bool trained(const settings& s, std::string_view name) {
  if (!s.freeze_ghc) return true;
  return name.find("ghc_attn.") == std::string_view::npos && name.find("ghc_ffn.") == std::string_view::npos;
}

const setting_field* find_field(std::string_view key) {
  for (const auto& f : setting_fields())
    if (f.key == key) return &f;
  return nullptr;
}

std::string default_text(const setting_field& f) { return f.default_text.empty() ? f.get(settings()) : f.default_text; }

void validate(const settings& s) {
  const model::shape_choice shape = s.shape();
  const auto available = model::available_shapes();
  if (std::find(available.begin(), available.end(), shape) == available.end())
    detail::bad_setting("--m/--n/--dynamic/--connection", "one of the compiled configurations " + model::available_shapes_text(),
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

memory_need estimate_memory(const settings& s, double corpus_bytes, index_t micro_batch) {
  const bool parts = micro_batch > 0 && micro_batch < s.batch;
  const model::value_count v = model::count_values(s.model_config(), parts ? micro_batch : s.batch);
  constexpr double value = sizeof(float);
  memory_need need;
  need.parameters = (parts ? 8 : 7) * v.parameters * value;
  // The validation batches: inputs and two targets per token.
  const double eval_tokens = 3.0 * double(s.eval_batches) * double(s.batch) * double(s.model.context);
  need.activations = (v.activations + eval_tokens) * value;
  need.corpus = corpus_bytes;
  return need;
}

namespace {

/// The first number in the file `path` (e.g. a cgroup limit, "max" gives none).
std::optional<double> number_in(const char* path) {
  std::ifstream in(path);
  double x;
  if (in >> x) return x;
  return std::nullopt;
}

}  // namespace

std::optional<double> available_memory() {
  std::optional<double> available;
  {
    std::ifstream in("/proc/meminfo");
    std::string key, unit;
    double kb;
    while (in >> key >> kb) {
      std::getline(in, unit);
      if (key == "MemAvailable:") {
        available = kb * 1024.0;
        break;
      }
    }
  }
  // A container's limit: what is left under it.
  const std::optional<double> limit = number_in("/sys/fs/cgroup/memory.max"),
                              used = number_in("/sys/fs/cgroup/memory.current");
  const std::optional<double> limit_v1 = number_in("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
                              used_v1 = number_in("/sys/fs/cgroup/memory/memory.usage_in_bytes");
  for (const auto& [l, u] : {std::pair{limit, used}, std::pair{limit_v1, used_v1}}) {
    if (!l || *l >= 1e18) continue;  // no limit (v1 reports a huge number)
    const double left = std::max(0.0, *l - u.value_or(0.0));
    available = available ? std::min(*available, left) : left;
  }
  return available;
}

std::string byte_text(double bytes) {
  static constexpr const char* units[] = {"bytes", "kB", "MB", "GB", "TB", "PB", "EB"};
  int u = 0;
  while (bytes >= 999.5 && u < 6) bytes /= 1000, ++u;
  char buf[48];
  if (u == 0)
    std::snprintf(buf, sizeof buf, "%.0f bytes", bytes);
  else
    std::snprintf(buf, sizeof buf, "%.3g %s", bytes, units[u]);
  return buf;
}

void expect_memory_fits(const settings& s, std::optional<double> available, double corpus_bytes, index_t micro_batch) {
  if (!available) return;
  const memory_need need = estimate_memory(s, corpus_bytes, micro_batch);
  if (need.total() <= *available) return;
  if (corpus_bytes > *available)
    throw std::invalid_argument("--data: the corpus of " + byte_text(corpus_bytes) + " does not fit in the " +
                                byte_text(*available) + " of memory available (it is read into memory whole); this run "
                                "would need about " + byte_text(need.total()) + " in all");
  // The flag to blame: the one whose default value would lower the need the most.
  struct size_flag {
    const char* flag;
    index_t settings::*field;
    index_t model::config::*model_field;
  };
  static constexpr size_flag flags[] = {{"--batch", &settings::batch, nullptr},
                                        {"--context", nullptr, &model::config::context},
                                        {"--width", nullptr, &model::config::width},
                                        {"--layers", nullptr, &model::config::layers},
                                        {"--ffn", nullptr, &model::config::ffn_width}};
  const settings defaults;
  const size_flag* blamed = nullptr;
  double best = need.total();
  index_t blamed_value = 0;
  for (const size_flag& f : flags) {
    settings t = s;
    index_t& value = f.field ? t.*f.field : t.model.*f.model_field;
    const index_t given = value;
    value = f.field ? defaults.*f.field : defaults.model.*f.model_field;
    const double total = estimate_memory(t, corpus_bytes, micro_batch).total();
    if (total < best) best = total, blamed = &f, blamed_value = given;
  }
  const auto& c = s.model;
  std::string msg = blamed ? std::string(blamed->flag) + " " + std::to_string(blamed_value) + ": " : std::string();
  msg += "this run needs about " + byte_text(need.total()) + " of memory, more than the " + byte_text(*available) +
         " available (the parameters with their gradients, optimiser state and checkpoint copy need " +
         byte_text(need.parameters) + " at --width " + std::to_string(c.width) + ", --layers " + std::to_string(c.layers) +
         ", --ffn " + std::to_string(c.ffn()) + ", shape " + s.shape().label() +
         "; the activations of " +
         (micro_batch > 0 && micro_batch < s.batch ? "a part of --micro-batch " + std::to_string(micro_batch)
                                                   : "a batch of --batch " + std::to_string(s.batch)) +
         " x --context " + std::to_string(c.context) + " tokens need " + byte_text(need.activations) +
         (corpus_bytes > 0 ? "; the corpus needs " + byte_text(corpus_bytes) : std::string()) + ")";
  if (blamed)
    msg += "; with the default " + std::string(blamed->flag) + " it would need " + byte_text(best);
  throw std::invalid_argument(msg);
}

std::string describe(const settings& s) {
  using detail::format_double;
  const auto& c = s.model;
  std::ostringstream o;
  o << "model    (m, n) = " << s.shape().label() << " GHC, D = " << c.width
    << " (D' = " << s.n * (c.width / s.m) << "), layers " << c.layers << ", heads " << c.heads << ", FFN " << c.ffn()
    << ", context " << c.context << ", " << (c.lowrank_embedding ? "low-rank" : "direct") << " embedding, MTP "
    << (c.mtp ? "on (lambda " + format_double(c.mtp_lambda) + ")" : std::string("off")) << "\n";
  o << "training batch " << s.batch << " x " << c.context << " = " << s.batch * c.context << " tokens/step, " << s.steps
    << " steps, lr " << format_double(s.lr) << " (" << s.warmup << " warm-up steps, " << optim::name(s.schedule);
  if (s.schedule == optim::lr_shape::cosine) o << " to " << format_double(s.min_lr_ratio) << " x lr";
  o << "), AdamW (" << format_double(s.beta1) << ", " << format_double(s.beta2) << ", eps " << format_double(s.adam_eps)
    << ") weight decay " << format_double(s.weight_decay) << ", clip "
    << (s.clip > 0 ? format_double(s.clip) : std::string("off")) << ", seed " << s.seed << "\n";
  o << "eval     every " << (s.eval_every > 0 ? std::to_string(s.eval_every) + " steps" : std::string("run (at the end)"))
    << " on " << s.eval_batches << " batches of " << s.batch << " (validation fraction " << format_double(s.val_fraction)
    << ")\n";
  return o.str();
}

std::vector<std::string> differences(const settings& checkpoint, const settings& requested) {
  std::vector<std::string> out;
  for (const auto& f : setting_fields()) {
    if (!f.trajectory) continue;
    const std::string a = f.get(checkpoint), b = f.get(requested);
    if (a != b) out.push_back(f.flag + ": checkpoint " + a + ", requested " + b);
  }
  return out;
}

}  // namespace vwn::train
