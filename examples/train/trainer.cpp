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

const settings& checked(const settings& s, const parallelism& p) {
  validate(s);
  expect_memory_fits(s, available_memory(), 0, p.micro_batch);
  return s;
}

/// The parts of each batch `p` asks for; throws std::invalid_argument when the batch does not split evenly.
index_t part_count(const settings& s, const parallelism& p, int ranks) {
  const index_t B = s.batch, R = ranks;
  const std::string on = R > 1 ? " on " + std::to_string(R) + " ranks" : std::string();
  if (B % R != 0)
    throw std::invalid_argument("--batch " + std::to_string(B) + on +
                                ": expected a batch that the number of ranks divides, got " + std::to_string(B));
  if (p.micro_batch < 0)
    throw std::invalid_argument("--micro-batch: expected an integer >= 0, got " + std::to_string(p.micro_batch));
  const index_t mu = p.micro_batch > 0 ? p.micro_batch : B / R;
  if ((B / R) % mu != 0)
    throw std::invalid_argument("--micro-batch " + std::to_string(mu) + " with --batch " + std::to_string(B) + on +
                                ": expected a micro-batch that divides each rank's " + std::to_string(B / R) +
                                " sequences, got " + std::to_string(mu));
  return B / mu;
}

/// `count` tokens from `begin` of one of a batch's token vectors (inputs or targets): a part's share; a vector left
/// empty (the next-2-token targets without MTP) stays empty.
std::span<const data::token> tokens_of_part(const std::vector<data::token>& v, std::size_t begin, std::size_t count) {
  return v.empty() ? std::span<const data::token>() : std::span<const data::token>(v).subspan(begin, count);
}

optim::adamw_config adam(const settings& s) {
  optim::adamw_config a;
  a.beta1 = s.beta1, a.beta2 = s.beta2, a.eps = s.adam_eps, a.weight_decay = s.weight_decay;
  return a;
}

}  // namespace

trainer::trainer(const settings& s, const data::text_corpus& corpus, const parallelism& p)
    : s_(checked(s, p)),
      par_(p),
      world_(p.world),
      own_world_(p.world ? nullptr : std::make_shared<single_process>()),
      corpus_(&corpus),
      fingerprint_(corpus_fingerprint(corpus)),
      model_(model::make_transformer(s.shape(), s.model_config())),
      opt_(adam(s)),
      schedule_(s.lr, s.warmup, s.steps, s.schedule, s.min_lr_ratio),
      sampler_(corpus.train(), s.batch, s.model.context, s.seed),
      eval_(data::evaluation_batches(corpus.validation(), s.batch, s.model.context, s.eval_batches)) {
  s_.model.seed = s.seed;
  if (world_ == nullptr) world_ = own_world_.get();
  parts_ = part_count(s_, p, world_->size());
  add_trained_parameters(opt_, *model_, s_);
  if (parts_ > 1) sum_.resize(std::size_t(opt_.parameter_count()));
}

trainer trainer::resume(const std::filesystem::path& path, const settings& requested, const data::text_corpus& corpus,
                        const parallelism& p) {
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
  trainer t(s, corpus, p);
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
  const bool stop_here = par_.stop != nullptr && *par_.stop != 0;
  if (parts_ == 1) {
    model_->zero_grad();
    r.loss = model_->forward(host, batch_.inputs, batch_.targets1, batch_.targets2, s_.model.context);
    expect_finite(r.loss);
    model_->backward(host);
    r.stop = stop_here;
  } else {
    r.loss = step_in_parts(stop_here, r);
    if (world_->size() > 1) r.sum_bytes = double(sum_.size() * sizeof(float) + 4 * sizeof(double));
    expect_finite(r.loss);
  }
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

model::losses trainer::step_in_parts(bool stop_here, step_result& r) {
  const index_t T = s_.model.context, mu = part_size(), k = parts_ / world_->size();
  const auto& tensors = opt_.tensors();
  // The losses of this rank's parts, and whether this rank was asked to stop, summed over the ranks with the
  // gradients: [total, next, next2, stop].
  double losses[4] = {0, 0, 0, stop_here ? 1.0 : 0.0};
  for (index_t j = 0; j < k; ++j) {
    const std::size_t begin = std::size_t((world_->rank() * k + j) * mu * T), count = std::size_t(mu * T);
    const auto part = [&](const std::vector<data::token>& v) { return tokens_of_part(v, begin, count); };
    model_->zero_grad();
    const model::losses l = model_->forward(host, part(batch_.inputs), part(batch_.targets1), part(batch_.targets2), T);
    model_->backward(host);
    losses[0] += l.total, losses[1] += l.next, losses[2] += l.next2;
    // This rank's parts in order: the first part's gradient, then each next one added to the sum.
    float* out = sum_.data();
    for (const auto& t : tensors) {
      if (j == 0)
        std::copy(t.grad, t.grad + t.size, out);
      else
        for (index_t i = 0; i < t.size; ++i) out[i] += t.grad[i];
      out += t.size;
    }
  }
  // The sum over the ranks, timed apart from the wait for the slowest rank (one barrier more per step where there are
  // several ranks).
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  if (world_->size() > 1) world_->barrier();
  const auto t1 = clock::now();
  world_->sum(sum_);
  world_->sum(std::span<double>(losses));
  r.wait_seconds = std::chrono::duration<double>(t1 - t0).count();
  r.sum_seconds = std::chrono::duration<double>(clock::now() - t1).count();
  // The gradient of the batch's mean loss: the sum over its P parts, divided by P.
  const float P = float(parts_);
  const float* in = sum_.data();
  for (const auto& t : tensors) {
    for (index_t i = 0; i < t.size; ++i) t.grad[i] = in[i] / P;
    in += t.size;
  }
  r.stop = losses[3] > 0;
  return {losses[0] / double(parts_), losses[1] / double(parts_), losses[2] / double(parts_)};
}

void trainer::expect_finite(const model::losses& l) const {
  const bool mtp = s_.model.mtp;
  if (std::isfinite(l.next) && (!mtp || std::isfinite(l.next2)) && std::isfinite(l.total)) return;
  throw non_finite_error(step_text() + "the training loss is " + number_text(l.total) + " (next-token " +
                         number_text(l.next) + (mtp ? ", next-2-token " + number_text(l.next2) : std::string()) + ")" +
                         not_applied);
}

std::string trainer::step_text() const { return "step " + std::to_string(step_ + 1) + ": "; }

namespace {

/// The mean of `count` losses whose sums are `next` and `next2`; throws non_finite_error (see `mean_losses`).
evaluation checked_mean(double next, double next2, double count, bool mtp, const std::string& when,
                        const std::string& why) {
  evaluation e{next / count, next2 / count};
  if (!std::isfinite(e.next) || (mtp && !std::isfinite(e.next2)))
    throw non_finite_error(when + ": the validation loss is not finite (next-token " + number_text(e.next) +
                           (mtp ? ", next-2-token " + number_text(e.next2) : std::string()) + ")" + why);
  return e;
}

}  // namespace

evaluation mean_losses(model::transformer<float>& model, const std::vector<data::batch>& batches, index_t T,
                       const std::string& when, const std::string& why) {
  double next = 0, next2 = 0;
  for (const auto& b : batches) {
    const model::losses l = model.forward(host, b.inputs, b.targets1, b.targets2, T);
    next += l.next;
    next2 += l.next2;
  }
  return checked_mean(next, next2, double(batches.size()), model.settings().mtp, when, why);
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
  if (parts_ > 1) return evaluate_in_parts();
  return mean_losses(*model_, eval_, s_.model.context, "after step " + std::to_string(step_),
                     "; the run diverged in a step whose training loss was still finite");
}

evaluation trainer::evaluate_in_parts() {
  const index_t T = s_.model.context, mu = part_size(), R = world_->size();
  const index_t pieces = index_t(eval_.size()) * parts_;
  // Piece q of batch i is piece i P + q; rank r scores the pieces r, r + R, ...; the others stay 0, so the sum over
  // the ranks gathers every piece's losses exactly (x + 0 = x).
  std::vector<double> losses(std::size_t(2 * pieces), 0.0);
  for (index_t piece = world_->rank(); piece < pieces; piece += R) {
    const data::batch& b = eval_[std::size_t(piece / parts_)];
    const std::size_t begin = std::size_t((piece % parts_) * mu * T), count = std::size_t(mu * T);
    const auto part = [&](const std::vector<data::token>& v) { return tokens_of_part(v, begin, count); };
    const model::losses l = model_->forward(host, part(b.inputs), part(b.targets1), part(b.targets2), T);
    losses[std::size_t(2 * piece)] = l.next;
    losses[std::size_t(2 * piece + 1)] = l.next2;
  }
  world_->sum(losses);
  double next = 0, next2 = 0;
  for (index_t piece = 0; piece < pieces; ++piece) next += losses[std::size_t(2 * piece)];
  for (index_t piece = 0; piece < pieces; ++piece) next2 += losses[std::size_t(2 * piece + 1)];
  return checked_mean(next, next2, double(pieces), s_.model.mtp, "after step " + std::to_string(step_),
                      "; the run diverged in a step whose training loss was still finite");
}

std::uint64_t trainer::state_hash() const {
  detail::fnv1a h;
  model_->visit([&](const std::string&, float* p, float*, index_t size, bool) { h.add(p, std::size_t(size) * sizeof(float)); });
  opt_.for_each_state([&](const std::string&, const float* p, index_t size) { h.add(p, std::size_t(size) * sizeof(float)); });
  const std::int64_t counts[2] = {std::int64_t(step_), opt_.step_count()};
  const data::sampler_state st = sampler_.state();
  const std::uint64_t position[2] = {st.seed, st.batch_index};
  h.add(counts, sizeof counts);
  h.add(position, sizeof position);
  return h.h;
}

void trainer::expect_replicas_agree() const {
  if (world_->size() == 1) return;
  const std::vector<std::uint64_t> all = world_->gather(state_hash());
  std::string differ;
  for (std::size_t r = 1; r < all.size(); ++r)
    if (all[r] != all[0]) differ += (differ.empty() ? "" : ", ") + std::to_string(r);
  if (differ.empty()) return;
  const bool several = differ.find(',') != std::string::npos;
  throw std::runtime_error("after step " + std::to_string(step_) + ": rank" + (several ? "s " : " ") + differ +
                           (several ? " hold" : " holds") + " another state than rank 0 (parameters, optimiser moments, step or batch position "
                           "differ; state hash of rank 0 " + std::to_string(all[0]) +
                           "): the replicas diverged, nothing was saved");
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
