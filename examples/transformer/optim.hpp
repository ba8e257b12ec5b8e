#pragma once
/// \file optim.hpp
/// Training utilities of the reference transformer: the AdamW optimiser with decoupled weight decay,
/// global gradient-norm clipping and the learning-rate schedule (linear warm-up, then cosine or constant).
///
/// The optimiser does not own parameters: it keeps, per registered tensor, a pointer to the parameter, a
/// pointer to its gradient and the two moment buffers. Modules register with `add_module`, which pairs the
/// tensors of `params.visit(f)` with those of `grads.visit(f)` (see `ghc_parameters::visit`).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include <vwn/core/checks.hpp>
#include <vwn/core/config.hpp>
#include <vwn/detail/parallel.hpp>

namespace vwn::optim {

/// Hyper-parameters of AdamW. The learning rate is not here: it is passed to every `adamw::step`.
struct adamw_config {
  double beta1 = 0.9;          ///< decay of the first moment, in [0, 1)
  double beta2 = 0.95;         ///< decay of the second moment, in [0, 1)
  double eps = 1e-8;           ///< added to `sqrt(v_hat)`, > 0
  double weight_decay = 0.1;   ///< decoupled decay coefficient, >= 0; only for tensors registered with `decay`
};

/// AdamW with decoupled weight decay (Loshchilov & Hutter). For every element of a registered tensor, at
/// step `t` (counted from 1):
///
///     m = beta1 m + (1 - beta1) g          v = beta2 v + (1 - beta2) g^2
///     m_hat = m / (1 - beta1^t)            v_hat = v / (1 - beta2^t)
///     p -= lr (m_hat / (sqrt(v_hat) + eps) + wd p)     with wd = weight_decay for decayed tensors, else 0
///
/// The arithmetic is carried out in double; the moments are stored in `Scalar` (the parameter type), so
/// the optimiser state costs two parameter-sized buffers and a checkpoint stores them in the parameter
/// dtype. The update depends only on (parameters, gradients, moments, step count), all of which a
/// checkpoint holds, so resuming from restored state is bit-for-bit identical to continuing.
template <class Scalar>
class adamw {
  static_assert(detail::is_supported_scalar<Scalar>, "vwn::optim::adamw supports float and double");

 public:
  /// One registered tensor: the parameter, its gradient and the moment buffers.
  struct tensor {
    std::string name;         ///< unique name (also the checkpoint key prefix of its state)
    Scalar* param = nullptr;  ///< parameter storage, `size` elements, updated in place by `step`
    Scalar* grad = nullptr;   ///< gradient storage, `size` elements, scaled in place by `clip_grad_norm`
    index_t size = 0;         ///< element count
    bool decay = false;       ///< whether decoupled weight decay applies
    std::vector<Scalar> m;    ///< first moment, `size` elements, starts at 0
    std::vector<Scalar> v;    ///< second moment, `size` elements, starts at 0
  };

  /// An optimiser with the given hyper-parameters and no tensors; throws std::invalid_argument on a value
  /// outside its range.
  explicit adamw(adamw_config config = {}) : config_(config) {
    constexpr std::string_view where = "vwn::optim::adamw";
    auto check = [&](std::string_view what, double x, bool ok, std::string_view expected) {
      if (!ok || !std::isfinite(x)) detail::fail(where, what, expected, std::to_string(x));
    };
    check("beta1", config.beta1, config.beta1 >= 0 && config.beta1 < 1, "a value in [0, 1)");
    check("beta2", config.beta2, config.beta2 >= 0 && config.beta2 < 1, "a value in [0, 1)");
    check("eps", config.eps, config.eps > 0, "a value > 0");
    check("weight_decay", config.weight_decay, config.weight_decay >= 0, "a value >= 0");
  }

  /// Hyper-parameters.
  const adamw_config& config() const { return config_; }

  /// Registers one tensor of `size` elements: `param` is updated by `step`, `grad` is read by `step` and
  /// scaled by `clip_grad_norm` (so it is not const). Both must stay valid while the optimiser is used.
  /// Weight decay applies only when `decay`. Throws std::invalid_argument for an empty or duplicate name,
  /// a negative size or a null pointer with a non-zero size.
  void add(std::string name, Scalar* param, Scalar* grad, index_t size, bool decay) {
    constexpr std::string_view where = "vwn::optim::adamw::add";
    if (name.empty()) detail::fail(where, "tensor name", "a non-empty name", "\"\"");
    if (names_.count(name)) detail::fail(where, "tensor name", "a name not registered yet", "duplicate \"" + name + "\"");
    if (size < 0) detail::fail(where, "size of \"" + name + "\"", "a size >= 0", std::to_string(size));
    if (size > 0 && (param == nullptr || grad == nullptr))
      detail::fail(where, "storage of \"" + name + "\"", "non-null parameter and gradient pointers",
                   param == nullptr ? "a null parameter pointer" : "a null gradient pointer");
    tensor t;
    t.name = name;
    t.param = param;
    t.grad = grad;
    t.size = size;
    t.decay = decay;
    t.m.assign(static_cast<std::size_t>(size), Scalar(0));
    t.v.assign(static_cast<std::size_t>(size), Scalar(0));
    names_.insert(std::move(name));
    tensors_.push_back(std::move(t));
  }

  /// Registers every tensor of a module: `params.visit(f)` and `grads.visit(f)` (with
  /// `f(std::string_view name, Scalar* data, index_t size, bool weight_decay)`) are visited in order and
  /// paired one to one; the decay flag comes from `params`. The registered name is `prefix + "." + name`,
  /// or `name` when `prefix` is empty. Throws std::invalid_argument when the two visits differ in count,
  /// names or sizes; nothing is registered then.
  template <class Params, class Grads>
  void add_module(std::string_view prefix, Params& params, Grads& grads) {
    constexpr std::string_view where = "vwn::optim::adamw::add_module";
    struct item {
      std::string name;
      Scalar* data;
      index_t size;
      bool decay;
    };
    std::vector<item> p, g;
    params.visit([&](std::string_view name, Scalar* data, index_t size, bool decay) {
      p.push_back({std::string(name), data, size, decay});
    });
    grads.visit([&](std::string_view name, Scalar* data, index_t size, bool decay) {
      g.push_back({std::string(name), data, size, decay});
    });
    const std::string module = prefix.empty() ? std::string("module") : "module \"" + std::string(prefix) + "\"";
    if (p.size() != g.size())
      detail::fail(where, module + " gradient tensor count", std::to_string(p.size()) + " (as many as parameters)",
                   std::to_string(g.size()));
    for (std::size_t i = 0; i < p.size(); ++i) {
      if (p[i].name != g[i].name)
        detail::fail(where, module + " gradient tensor #" + std::to_string(i) + " name", "\"" + p[i].name + "\"",
                     "\"" + g[i].name + "\"");
      if (p[i].size != g[i].size)
        detail::fail(where, module + " gradient \"" + p[i].name + "\" size", std::to_string(p[i].size),
                     std::to_string(g[i].size));
    }
    // Check every full name before registering any, so that a failure leaves the optimiser unchanged.
    std::unordered_set<std::string> fresh;
    for (const item& x : p) {
      std::string full = prefix.empty() ? x.name : std::string(prefix) + "." + x.name;
      if (names_.count(full) || !fresh.insert(full).second)
        detail::fail(where, "tensor name", "a name not registered yet", "duplicate \"" + full + "\"");
    }
    for (std::size_t i = 0; i < p.size(); ++i)
      add(prefix.empty() ? p[i].name : std::string(prefix) + "." + p[i].name, p[i].data, g[i].data, p[i].size,
          p[i].decay);
  }

  /// Registered tensors, in registration order.
  const std::vector<tensor>& tensors() const { return tensors_; }

  /// Total number of registered parameter elements.
  index_t parameter_count() const {
    index_t n = 0;
    for (const tensor& t : tensors_) n += t.size;
    return n;
  }

  /// Sets every registered gradient to zero.
  void zero_grad() {
    for (tensor& t : tensors_) std::fill(t.grad, t.grad + t.size, Scalar(0));
  }

  /// Global L2 norm of all registered gradients, accumulated in double: fixed pieces of each tensor (see
  /// `piece_size`) are summed in parallel and their sums added in registration order, so the result does not
  /// depend on the thread count. NaN or infinity when some gradient is not finite.
  double grad_norm() const {
    const std::vector<piece>& ps = pieces();
    std::vector<double> sums(ps.size());
    detail::for_tasks(index_t(ps.size()), [&](index_t k) {
      const piece& pc = ps[std::size_t(k)];
      const Scalar* g = tensors_[pc.tensor].grad;
      double sum = 0;
      for (index_t i = pc.begin; i < pc.end; ++i) sum += static_cast<double>(g[i]) * static_cast<double>(g[i]);
      sums[std::size_t(k)] = sum;
    });
    double sum = 0;
    for (double x : sums) sum += x;
    return std::sqrt(sum);
  }

  /// Clips the global gradient norm: when the norm exceeds `max_norm`, every gradient is multiplied by
  /// `max_norm / norm`; otherwise nothing is modified. Returns the norm before clipping. Throws
  /// std::runtime_error when the norm is NaN or infinite (naming the first tensor with a non-finite
  /// gradient), so that training never continues silently on NaN; std::invalid_argument when `max_norm`
  /// is not > 0 (infinity is allowed: check only, never clip).
  double clip_grad_norm(double max_norm) {
    if (!(max_norm > 0)) detail::fail("vwn::optim::clip_grad_norm", "max_norm", "a value > 0", std::to_string(max_norm));
    const double norm = grad_norm();
    if (!std::isfinite(norm)) {
      std::string culprit = "(none: the sum of squares overflowed)";
      for (const tensor& t : tensors_) {
        bool bad = false;
        for (index_t i = 0; i < t.size && !bad; ++i) bad = !std::isfinite(t.grad[i]);
        if (bad) {
          culprit = "\"" + t.name + "\"";
          break;
        }
      }
      throw std::runtime_error("vwn::optim::clip_grad_norm: gradient norm is " +
                               std::string(std::isnan(norm) ? "NaN" : "infinite") +
                               ": expected a finite norm; first tensor with a non-finite gradient: " + culprit);
    }
    if (norm > max_norm) {
      const double scale = max_norm / norm;
      const std::vector<piece>& ps = pieces();
      detail::for_tasks(index_t(ps.size()), [&](index_t k) {
        const piece& pc = ps[std::size_t(k)];
        Scalar* g = tensors_[pc.tensor].grad;
        for (index_t i = pc.begin; i < pc.end; ++i) g[i] = static_cast<Scalar>(static_cast<double>(g[i]) * scale);
      });
    }
    return norm;
  }

  /// One AdamW update of every registered tensor with learning rate `lr` (>= 0 and finite, else
  /// std::invalid_argument). Increments the step count first, so the first update uses `t = 1`.
  void step(double lr) {
    if (!(lr >= 0) || !std::isfinite(lr))
      detail::fail("vwn::optim::adamw::step", "learning rate", "a finite value >= 0", std::to_string(lr));
    ++step_;
    const double b1 = config_.beta1, b2 = config_.beta2, eps = config_.eps;
    const double bc1 = 1.0 - std::pow(b1, static_cast<double>(step_));
    const double bc2 = 1.0 - std::pow(b2, static_cast<double>(step_));
    // Element-wise: fixed pieces of the tensors, in parallel.
    const std::vector<piece>& ps = pieces();
    detail::for_tasks(index_t(ps.size()), [&](index_t k) {
      const piece& pc = ps[std::size_t(k)];
      tensor& t = tensors_[pc.tensor];
      const double wd = t.decay ? config_.weight_decay : 0.0;
      Scalar* __restrict p = t.param + pc.begin;
      const Scalar* __restrict g = t.grad + pc.begin;
      Scalar* __restrict m = t.m.data() + pc.begin;
      Scalar* __restrict v = t.v.data() + pc.begin;
      const index_t n = pc.end - pc.begin;
      for (index_t i = 0; i < n; ++i) {
        const double gi = static_cast<double>(g[i]);
        m[i] = static_cast<Scalar>(b1 * static_cast<double>(m[i]) + (1.0 - b1) * gi);
        v[i] = static_cast<Scalar>(b2 * static_cast<double>(v[i]) + (1.0 - b2) * gi * gi);
        const double m_hat = static_cast<double>(m[i]) / bc1;
        const double v_hat = static_cast<double>(v[i]) / bc2;
        const double pi = static_cast<double>(p[i]);
        p[i] = static_cast<Scalar>(pi - lr * (m_hat / (std::sqrt(v_hat) + eps) + wd * pi));
      }
    });
  }

  /// Number of updates done so far (0 before the first `step`).
  std::int64_t step_count() const { return step_; }

  /// Sets the step count (when resuming from a checkpoint); must be >= 0.
  void set_step_count(std::int64_t count) {
    if (count < 0) detail::fail("vwn::optim::adamw::set_step_count", "step count", "a value >= 0", std::to_string(count));
    step_ = count;
  }

  /// Visits `f(std::string name, Scalar* data, index_t size)` for the optimiser state, in registration
  /// order: for every tensor first `name + ".m"` (first moment), then `name + ".v"` (second moment). A
  /// checkpoint writer reads `data`, a loader writes into it; together with `step_count()` this is the
  /// whole state.
  template <class F>
  void for_each_state(F&& f) {
    for (tensor& t : tensors_) {
      f(t.name + ".m", t.m.data(), t.size);
      f(t.name + ".v", t.v.data(), t.size);
    }
  }

  /// Read-only variant: `f(std::string name, const Scalar* data, index_t size)`.
  template <class F>
  void for_each_state(F&& f) const {
    for (const tensor& t : tensors_) {
      f(t.name + ".m", static_cast<const Scalar*>(t.m.data()), t.size);
      f(t.name + ".v", static_cast<const Scalar*>(t.v.data()), t.size);
    }
  }

 private:
  /// Elements per piece of the parallel element-wise loops (a tensor's last piece may be shorter).
  static constexpr index_t piece_size = index_t(1) << 16;
  struct piece {
    std::size_t tensor;
    index_t begin, end;
  };
  // The pieces of every registered tensor, rebuilt when a tensor is added.
  const std::vector<piece>& pieces() const {
    if (pieces_of_ != tensors_.size()) {
      pieces_.clear();
      for (std::size_t k = 0; k < tensors_.size(); ++k)
        for (index_t b = 0; b < tensors_[k].size; b += piece_size)
          pieces_.push_back({k, b, std::min(tensors_[k].size, b + piece_size)});
      pieces_of_ = tensors_.size();
    }
    return pieces_;
  }

  adamw_config config_;
  std::vector<tensor> tensors_;
  mutable std::vector<piece> pieces_;
  mutable std::size_t pieces_of_ = 0;
  std::unordered_set<std::string> names_;
  std::int64_t step_ = 0;
};

/// Free-function form of `adamw::clip_grad_norm`: clips the global norm of the optimiser's registered
/// gradients to `max_norm` and returns the norm before clipping.
template <class Scalar>
double clip_grad_norm(adamw<Scalar>& optimizer, double max_norm) {
  return optimizer.clip_grad_norm(max_norm);
}

/// Shape of the learning rate after the warm-up.
enum class lr_shape {
  cosine,   ///< half cosine from the peak down to `min_lr_ratio * max_lr` at step `total`, then flat
  constant  ///< the peak rate from the end of the warm-up on
};

/// Name of a schedule shape ("cosine", "constant").
constexpr std::string_view name(lr_shape s) { return s == lr_shape::cosine ? "cosine" : "constant"; }

/// Parses "cosine" or "constant"; throws std::invalid_argument naming the accepted values otherwise.
inline lr_shape parse_lr_shape(std::string_view s) {
  if (s == "cosine") return lr_shape::cosine;
  if (s == "constant") return lr_shape::constant;
  detail::fail("vwn::optim::parse_lr_shape", "schedule", "\"cosine\" or \"constant\"", "\"" + std::string(s) + "\"");
}

/// Learning-rate schedule: linear warm-up from 0 to `max_lr` over `warmup` steps, then cosine decay to
/// `min_lr_ratio * max_lr` at step `total` (flat afterwards), or constant.
///
/// Steps are counted from 1: update `k` (the `k`-th call of `adamw::step`) should use `at(k)`, i.e.
/// `at(optimizer.step_count() + 1)`. So `at(0) = 0`, `at(warmup) = max_lr`, and for cosine
/// `at(total) = min_lr_ratio * max_lr`. With `total == warmup` the cosine part is empty and the rate stays at
/// `max_lr` after the warm-up.
class lr_schedule {
 public:
  /// Throws std::invalid_argument unless `max_lr` is finite and >= 0, `warmup >= 0`, `total >= warmup`
  /// and `min_lr_ratio` is in [0, 1].
  lr_schedule(double max_lr, index_t warmup, index_t total, lr_shape shape = lr_shape::cosine,
              double min_lr_ratio = 0.1)
      : max_lr_(max_lr), warmup_(warmup), total_(total), shape_(shape), min_lr_ratio_(min_lr_ratio) {
    constexpr std::string_view where = "vwn::optim::lr_schedule";
    if (!(max_lr >= 0) || !std::isfinite(max_lr))
      detail::fail(where, "max_lr", "a finite value >= 0", std::to_string(max_lr));
    if (warmup < 0) detail::fail(where, "warmup", "a step count >= 0", std::to_string(warmup));
    if (total < warmup)
      detail::fail(where, "total", "a step count >= warmup (" + std::to_string(warmup) + ")", std::to_string(total));
    if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1))
      detail::fail(where, "min_lr_ratio", "a value in [0, 1]", std::to_string(min_lr_ratio));
  }

  /// Learning rate of update `step` (counted from 1; see the class comment). Negative steps give 0.
  double at(index_t step) const {
    if (step <= 0) return 0.0;
    if (step < warmup_) return max_lr_ * static_cast<double>(step) / static_cast<double>(warmup_);
    if (shape_ == lr_shape::constant) return max_lr_;
    const double min_lr = min_lr_ratio_ * max_lr_;
    if (step >= total_) return total_ == warmup_ ? max_lr_ : min_lr;
    const double progress = static_cast<double>(step - warmup_) / static_cast<double>(total_ - warmup_);
    return min_lr + (max_lr_ - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  }

  double max_lr() const { return max_lr_; }              ///< peak rate
  index_t warmup() const { return warmup_; }             ///< warm-up steps
  index_t total() const { return total_; }               ///< step at which the cosine reaches its floor
  lr_shape shape() const { return shape_; }              ///< shape after the warm-up
  double min_lr_ratio() const { return min_lr_ratio_; }  ///< cosine floor as a fraction of `max_lr`

 private:
  double max_lr_;
  index_t warmup_;
  index_t total_;
  lr_shape shape_;
  double min_lr_ratio_;
};

}  // namespace vwn::optim
