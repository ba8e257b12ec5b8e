#include <train/trainer.hpp>
#include <train/values.hpp>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

namespace vwn::train {

namespace {

constexpr const char* not_applied = "; the run diverged, nothing of this step was applied";

/// A loss for a message: "NaN", "inf", "-inf" or the number.
std::string number_text(double x) { return std::isnan(x) ? std::string("NaN") : detail::format_double(x); }

const settings& checked(const settings& s) {
  validate(s);
  expect_memory_fits(s, available_memory());
  return s;
}

optim::adamw_config adam(const settings& s) {
  optim::adamw_config a;
  a.beta1 = s.beta1, a.beta2 = s.beta2, a.eps = s.adam_eps, a.weight_decay = s.weight_decay;
  return a;
}

}  // namespace

trainer::trainer(const settings& s, const data::text_corpus& corpus)
    : s_(checked(s)),
      corpus_(&corpus),
      fingerprint_(corpus_fingerprint(corpus)),
      model_(model::make_transformer({s.m, s.n, s.dynamic}, s.model_config())),
      opt_(adam(s)),
      schedule_(s.lr, s.warmup, s.steps, s.schedule, s.min_lr_ratio),
      sampler_(corpus.train(), s.batch, s.model.context, s.seed),
      eval_(data::evaluation_batches(corpus.validation(), s.batch, s.model.context, s.eval_batches)) {
  s_.model.seed = s.seed;
  add_trained_parameters(opt_, *model_, s_);
}

trainer trainer::resume(const std::filesystem::path& path, const settings& requested, const data::text_corpus& corpus) {
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
  detail::expect_checkpoint_fits(c, available_memory(), true);
  settings s = c.config;
  s.eval_every = requested.eval_every;
  s.eval_batches = requested.eval_batches;
  trainer t(s, corpus);
  detail::load_tensors(c, detail::checkpoint_targets(*t.model_, t.opt_));
  t.opt_.set_step_count(c.optimizer_step);
  t.sampler_.restore(c.sampler);
  t.step_ = c.step;
  t.elapsed_before_ = c.elapsed_seconds;
  t.resumed_log_ = c.log;
  return t;
}

step_result trainer::train_step() {
  const auto t0 = std::chrono::steady_clock::now();
  step_result r;
  r.lr = schedule_.at(index_t(opt_.step_count()) + 1);
  sampler_.next(batch_);
  model_->zero_grad();
  r.loss = model_->forward(host, batch_.inputs, batch_.targets1, batch_.targets2, s_.model.context);
  expect_finite(r.loss);
  model_->backward(host);
  try {
    r.grad_norm = opt_.clip_grad_norm(s_.clip > 0 ? s_.clip : std::numeric_limits<double>::infinity());
  } catch (const std::runtime_error& e) {  // a norm that is not finite, naming the first such gradient
    throw non_finite_error(step_text() + e.what() + not_applied);
  }
  opt_.step(r.lr);
  r.step = ++step_;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  elapsed_ += r.seconds;
  return r;
}

void trainer::expect_finite(const model::losses& l) const {
  const bool mtp = s_.model.mtp;
  if (std::isfinite(l.next) && (!mtp || std::isfinite(l.next2)) && std::isfinite(l.total)) return;
  throw non_finite_error(step_text() + "the training loss is " + number_text(l.total) + " (next-token " +
                         number_text(l.next) + (mtp ? ", next-2-token " + number_text(l.next2) : std::string()) + ")" +
                         not_applied);
}

std::string trainer::step_text() const { return "step " + std::to_string(step_ + 1) + ": "; }

evaluation mean_losses(model::transformer<float>& model, const std::vector<data::batch>& batches, index_t T,
                       const std::string& when, const std::string& why) {
  evaluation e;
  for (const auto& b : batches) {
    const model::losses l = model.forward(host, b.inputs, b.targets1, b.targets2, T);
    e.next += l.next;
    e.next2 += l.next2;
  }
  e.next /= double(batches.size());
  e.next2 /= double(batches.size());
  const bool mtp = model.settings().mtp;
  if (!std::isfinite(e.next) || (mtp && !std::isfinite(e.next2)))
    throw non_finite_error(when + ": the validation loss is not finite (next-token " + number_text(e.next) +
                           (mtp ? ", next-2-token " + number_text(e.next2) : std::string()) + ")" + why);
  return e;
}

std::vector<data::batch> whole_split_batches(std::span<const std::uint8_t> split, index_t B, index_t T) {
  const index_t count = data::max_evaluation_batches(split.size(), B, T);
  if (count < 1)
    throw std::invalid_argument("the validation split of " + std::to_string(split.size()) +
                                " bytes: expected room for at least one batch of " + std::to_string(B) + " windows of " +
                                std::to_string(T) + " + 2 bytes, got none");
  return data::evaluation_batches(split, B, T, count);
}

evaluation trainer::evaluate() {
  return mean_losses(*model_, eval_, s_.model.context, "after step " + std::to_string(step_),
                     "; the run diverged in a step whose training loss was still finite");
}

void trainer::save(const std::filesystem::path& path, const std::optional<log_digest>& log,
                   const std::function<void()>& before_rename) const {
  // A diverged update must not be written as a state to continue from (read_checkpoint refuses it anyway).
  model_->visit([&](const std::string& name, float* p, float*, index_t size, bool) {
    for (index_t i = 0; i < size; ++i)
      if (!std::isfinite(p[i]))
        throw non_finite_error("after step " + std::to_string(step_) + ": parameter '" + name + "' holds " +
                               number_text(p[i]) + " at element " + std::to_string(i) + " of " + std::to_string(size) +
                               "; the run diverged, this state was not saved");
  });
  opt_.for_each_state([&](const std::string& name, const float* p, index_t size) {
    for (index_t i = 0; i < size; ++i)
      if (!std::isfinite(p[i]))
        throw non_finite_error("after step " + std::to_string(step_) + ": optimiser state '" + name + "' holds " +
                               number_text(p[i]) + " at element " + std::to_string(i) + " of " + std::to_string(size) +
                               "; the run diverged, this state was not saved");
  });
  checkpoint c;
  c.log = log;
  c.config = s_;
  c.step = step_;
  c.optimizer_step = opt_.step_count();
  c.sampler = sampler_.state();
  c.data_bytes = std::uint64_t(corpus_->size());
  c.data_fingerprint = fingerprint_;
  c.data_source = corpus_->source();
  c.elapsed_seconds = elapsed_before_ + elapsed_;
  c.model_name = model_->name();
  model_->visit([&](const std::string& name, float* p, float*, index_t size, bool) {
    c.file.set("model." + name, safetensors::dtype::f32, {std::int64_t(size)}, p);
  });
  opt_.for_each_state([&](const std::string& name, const float* p, index_t size) {
    c.file.set("optim." + name, safetensors::dtype::f32, {std::int64_t(size)}, p);
  });
  write_checkpoint(path, std::move(c), before_rename);
}

}  // namespace vwn::train
