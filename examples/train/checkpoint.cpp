#include <train/checkpoint.hpp>

#include <cmath>
#include <cstring>
#include <map>
#include <stdexcept>
#include <utility>

#include <train/values.hpp>
#include <transformer/memory.hpp>
#include <vwn/core/version.hpp>

namespace vwn::train {

namespace fs = std::filesystem;

using detail::fnv1a;

namespace detail {

std::string checkpoint_checksum(const safetensors::file& f) {
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

}  // namespace detail

std::string corpus_fingerprint(const data::text_corpus& corpus) {
  fnv1a f;
  f.add(corpus.bytes().data(), corpus.bytes().size());
  return f.hex();
}

namespace detail {

std::string checkpoint_error_prefix(const fs::path& p) { return "cannot use checkpoint '" + p.string() + "': "; }

void expect_checkpoint_fits(const checkpoint& c, std::optional<double> available, bool training) {
  // The settings must describe the model the file holds: compared by value count before any model is built, so
  // that settings edited into a file (config.layers = 100000) cost no allocation.
  double held = 0;
  for (const std::string& name : c.file.names()) {
    if (name.rfind("model.", 0) != 0) continue;
    double size = 1;
    for (const auto d : c.file.at(name).shape) size *= double(d);
    held += size;
  }
  const double described = model::count_values(c.config.model_config(), c.config.batch).parameters;
  if (held != described)
    throw std::runtime_error(checkpoint_error_prefix(c.path) + "its settings describe a model of " +
                             detail::format_double(described) + " parameters (--width " + std::to_string(c.config.model.width) +
                             ", --layers " + std::to_string(c.config.model.layers) + ", shape " +
                             c.config.shape().label() + "), but the file holds " +
                             detail::format_double(held) + " model values");
  // Sampling runs one sequence at a time: the run's batch does not matter there.
  settings needs = c.config;
  if (!training) needs.batch = 1, needs.eval_batches = 1;
  try {
    expect_memory_fits(needs, available);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(checkpoint_error_prefix(c.path) + "its settings cannot run here: " + e.what());
  }
}

std::vector<tensor_target> checkpoint_targets(model::transformer<float>& model, optim::adamw<float>& opt) {
  std::vector<tensor_target> targets;
  model.visit([&](const std::string& name, float* p, float*, index_t size, bool) { targets.push_back({"model." + name, p, size}); });
  opt.for_each_state([&](const std::string& name, float* p, index_t size) { targets.push_back({"optim." + name, p, size}); });
  return targets;
}

void load_tensors(const checkpoint& c, const std::vector<tensor_target>& targets) {
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
  // A run that diverged must not be continued or sampled from as if it had not: a checksum only says the file
  // holds what was written.
  for (const auto& t : targets) {
    const auto& bytes = c.file.at(t.name).bytes;
    for (index_t i = 0; i < t.size; ++i) {
      float x;
      std::memcpy(&x, bytes.data() + std::size_t(i) * sizeof(float), sizeof(float));
      if (!std::isfinite(x))
        throw std::runtime_error(where + "tensor '" + t.name + "' holds " + (std::isnan(x) ? "NaN" : "an infinity") +
                                 " at element " + std::to_string(i) + " of " + std::to_string(t.size) +
                                 ": expected finite values (the run had diverged when this checkpoint was written)");
    }
  }
  for (const auto& t : targets)
    if (t.size > 0) std::memcpy(t.data, c.file.at(t.name).bytes.data(), std::size_t(t.size) * sizeof(float));
}

}  // namespace detail

checkpoint read_checkpoint(const fs::path& path) {
  const std::string where = detail::checkpoint_error_prefix(path);
  checkpoint c;
  c.path = path;
  try {
    c.file = safetensors::file::read(path);
  } catch (const safetensors::open_error& e) {
    throw std::runtime_error(where + e.what());
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
  const std::string stored = get("checksum"), actual = detail::checkpoint_checksum(c.file);
  if (stored != actual)
    throw std::runtime_error(where + "checksum mismatch: expected " + stored + " (stored), got " + actual +
                             " (computed): the file is corrupted");
  try {
    for (const auto& f : setting_fields())
      f.set(c.config, f.absent.empty() || md.count("config." + f.key) ? get("config." + f.key) : f.absent);
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
    if (md.count("log_rows") || md.count("log_fnv1a64")) {
      log_digest d;
      d.rows = detail::parse_u64("log_rows", get("log_rows"));
      d.fnv1a64 = get("log_fnv1a64");
      c.log = d;
    }
    validate(c.config);
    if (c.step > c.config.steps)
      throw std::invalid_argument("step " + std::to_string(c.step) + " is beyond config.steps " +
                                  std::to_string(c.config.steps) + ": expected a step between 0 and the run's length");
    if (c.optimizer_step != std::int64_t(c.step) || c.sampler.batch_index != std::uint64_t(c.step))
      throw std::invalid_argument("inconsistent counters: step " + std::to_string(c.step) + ", optimizer_step " +
                                  std::to_string(c.optimizer_step) + ", sampler_batch_index " +
                                  std::to_string(c.sampler.batch_index) + " (expected all equal)");
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(where + "bad metadata: " + e.what());
  }
  return c;
}

void write_checkpoint(const fs::path& path, checkpoint c, const std::function<void()>& before_rename) {
  auto& md = c.file.metadata;
  md.clear();
  md["format"] = std::string(checkpoint_format);
  md["format_version"] = std::to_string(checkpoint_version);
  md["vwn_version"] = std::to_string(VWN_VERSION_MAJOR) + "." + std::to_string(VWN_VERSION_MINOR) + "." +
                      std::to_string(VWN_VERSION_PATCH);
  md["model"] = c.model_name;
  for (const auto& field : setting_fields()) md["config." + field.key] = field.get(c.config);
  md["step"] = std::to_string(c.step);
  md["optimizer_step"] = std::to_string(c.optimizer_step);
  md["sampler_seed"] = std::to_string(c.sampler.seed);
  md["sampler_batch_index"] = std::to_string(c.sampler.batch_index);
  md["data_bytes"] = std::to_string(c.data_bytes);
  md["data_fnv1a64"] = c.data_fingerprint;
  md["data_source"] = c.data_source;
  md["elapsed_seconds"] = detail::format_double(c.elapsed_seconds);
  if (c.log) {
    md["log_rows"] = std::to_string(c.log->rows);
    md["log_fnv1a64"] = c.log->fnv1a64;
  }
  md["checksum"] = detail::checkpoint_checksum(c.file);
  c.file.write(path, before_rename);
}

void add_trained_parameters(optim::adamw<float>& opt, model::transformer<float>& model, const settings& s) {
  model.visit([&](const std::string& name, float* p, float* g, index_t size, bool decay) {
    if (trained(s, name)) opt.add(name, p, g, size, decay);
  });
}

std::unique_ptr<model::transformer<float>> load_model(const checkpoint& c) {
  detail::expect_checkpoint_fits(c, available_memory(), false);
  auto m = model::make_transformer(c.config.shape(), c.config.model_config());
  // The optimiser's moments are checked and read like a resume does (so both programs accept exactly the same
  // files), into a state that is then dropped.
  optim::adamw<float> opt;
  add_trained_parameters(opt, *m, c.config);
  detail::load_tensors(c, detail::checkpoint_targets(*m, opt));
  return m;
}

void expect_output_folder(const fs::path& out, const std::optional<fs::path>& resume, bool overwrite) {
  if (overwrite) return;
  const fs::path checkpoint_path = out / "checkpoint.safetensors", log_path = out / "log.csv";
  std::error_code ec;
  const bool has_checkpoint = fs::exists(checkpoint_path, ec), has_log = fs::exists(log_path, ec);
  if (!resume) {
    if (has_checkpoint)
      throw std::runtime_error(checkpoint_path.string() + " already exists: continue that run with --resume " +
                               checkpoint_path.string() + ", or start afresh with --overwrite or another --out");
    return;
  }
  if (!has_checkpoint && !has_log) return;  // a new folder for the continued run
  if (has_checkpoint && fs::equivalent(checkpoint_path, *resume, ec)) return;  // the run's own folder
  const fs::path real = fs::weakly_canonical(*resume, ec);  // the folder of the file, through any link
  const std::string run_folder = (ec ? resume->parent_path() : real.parent_path()).string();
  throw std::runtime_error("--out " + out.string() + " holds another run (" +
                           (has_checkpoint ? checkpoint_path.string() + " is not the checkpoint being resumed, " +
                                                 resume->string()
                                           : log_path.string() + " without its checkpoint") +
                           "): continuing there would replace that run's checkpoint and mix two runs in its log. "
                           "Resume into the run's own folder (--out " +
                           run_folder +
                           "), an empty folder, or pass --overwrite to replace the run in " + out.string());
}

}  // namespace vwn::train
