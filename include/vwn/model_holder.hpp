#pragma once
/// \file model_holder.hpp
/// Definition of `registry_detail::make_holder`, declared in <vwn/model_registry.hpp>: the
/// `any_transformer` that holds one `transformer<M, N, Dynamic, float>`. Include it only where the model
/// code is to be compiled, and instantiate it there with `VWN_INSTANTIATE_TRANSFORMER_SHAPE(m, n)` (both
/// static and dynamic GHC of that shape); the `vwn_models` library (examples/models/) does this for every
/// shape of `VWN_MODEL_REGISTRY_SHAPES`.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "model_registry.hpp"

namespace vwn::model {

namespace registry_detail {

/// `any_transformer` holding one `transformer<M, N, Dynamic, float>`.
template <int M, int N, bool Dynamic>
class transformer_holder final : public any_transformer {
  using model_type = transformer<M, N, Dynamic, float>;

 public:
  explicit transformer_holder(const config& c) : model_(c) {}

  shape_choice shape() const override { return {M, N, Dynamic}; }
  std::string name() const override { return model_type::name(); }
  const config& settings() const override { return model_.settings(); }
  index_t wide_width() const override { return model_.wide_width(); }

  losses forward(host_t, std::span<const std::int32_t> inputs, std::span<const std::int32_t> next,
                 std::span<const std::int32_t> next2, index_t T) override {
    return model_.forward(host, inputs, next, next2, T);
  }
  void backward(host_t) override { model_.backward(host); }
  void visit(const visitor& f) override {
    model_.visit([&](const std::string& n, float* p, float* g, index_t size, bool decay) { f(n, p, g, size, decay); });
  }
  void zero_grad() override { model_.zero_grad(); }
  const matrix<float>& logits() const override { return model_.logits(); }

  std::vector<float> next_logits(std::span<const std::int32_t> tokens) override {
    const std::string where = model_type::name() + "::next_logits";
    const config& c = model_.settings();
    if (tokens.empty()) vwn::detail::fail(where, "token count", "at least 1 token", "0");
    for (std::size_t i = 0; i < tokens.size(); ++i)
      if (tokens[i] < 0 || tokens[i] >= c.vocab)
        vwn::detail::fail(where, "token at position " + std::to_string(i), "a value in [0, " + std::to_string(c.vocab) + ")",
                          std::to_string(tokens[i]));
    sync_probe();
    const std::size_t T = std::min<std::size_t>(tokens.size(), static_cast<std::size_t>(c.context));
    const std::span<const std::int32_t> window = tokens.last(T);
    // The targets only feed the loss, which is not used here.
    std::vector<std::int32_t> next(window.begin() + 1, window.end());
    next.push_back(0);
    (void)probe_->forward(host, window, next, {}, index_t(T));
    const matrix<float>& z = probe_->logits();  // (T, V)
    std::vector<float> logits(static_cast<std::size_t>(c.vocab));
    for (index_t v = 0; v < c.vocab; ++v) logits[std::size_t(v)] = z(index_t(T) - 1, v);
    return logits;
  }

 private:
  // Builds the evaluation copy on first use and copies the current parameters into it.
  void sync_probe() {
    if (!probe_) {
      config pc = model_.settings();
      pc.mtp = false;
      probe_ = std::make_unique<model_type>(pc);
      std::vector<std::pair<std::string, std::pair<float*, index_t>>> mine;
      model_.visit([&](const std::string& n, float* p, float*, index_t size, bool) { mine.push_back({n, {p, size}}); });
      probe_->visit([&](const std::string& n, float* p, float*, index_t size, bool) {
        for (const auto& [name, ps] : mine)
          if (name == n && ps.second == size) {
            copies_.push_back({ps.first, p, size});
            break;
          }
      });
    }
    for (const copy& c : copies_) std::copy(c.from, c.from + c.size, c.to);
  }

  struct copy {
    const float* from;
    float* to;
    index_t size;
  };

  model_type model_;
  std::unique_ptr<model_type> probe_;
  std::vector<copy> copies_;
};

template <int M, int N, bool Dynamic>
std::unique_ptr<any_transformer> make_holder(const config& c) {
  return std::make_unique<transformer_holder<M, N, Dynamic>>(c);
}

}  // namespace registry_detail
}  // namespace vwn::model

/// Explicit instantiation of `make_holder` for shape `(m, n)`, static and dynamic GHC. Write it at global
/// scope in exactly one source file per shape.
#define VWN_INSTANTIATE_TRANSFORMER_SHAPE(m, n)                                             \
  namespace vwn::model::registry_detail {                                                   \
  template std::unique_ptr<any_transformer> make_holder<m, n, false>(const config&);        \
  template std::unique_ptr<any_transformer> make_holder<m, n, true>(const config&);         \
  }
