#pragma once
/// \file model_registry.hpp
/// Run-time choice of the reference transformer's width shape. `transformer<M, N, Dynamic, Scalar>` fixes
/// `(m, n)` and static/dynamic GHC at compile time; a program that picks them from a command line uses the
/// type-erased `any_transformer` built by `make_transformer(m, n, dynamic, config)`, which covers a closed
/// set of compiled configurations (`available_transformers()`), all in float.
///
/// The model code of every configuration is compiled once, in the `vwn_models` library (examples/models/),
/// which a program using `make_transformer` links. A project of its own can instead include
/// <vwn/model_holder.hpp> in one source file and write `VWN_INSTANTIATE_TRANSFORMER_SHAPE(m, n)` there for
/// every shape of `VWN_MODEL_REGISTRY_SHAPES`.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "model.hpp"

namespace vwn::model {

/// One compiled configuration: shape `(m, n)` and static or dynamic GHC.
struct shape_choice {
  int m = 1;
  int n = 1;
  bool dynamic = false;
  /// "(2,3) dynamic".
  std::string label() const {
    return "(" + std::to_string(m) + "," + std::to_string(n) + ") " + (dynamic ? "dynamic" : "static");
  }
  bool operator==(const shape_choice&) const = default;
};

/// The reference transformer behind a virtual interface (float parameters). The member functions have the
/// meaning of those of `transformer<M, N, Dynamic, float>`.
class any_transformer {
 public:
  using scalar = float;
  /// `f(name, param, grad, size, weight_decay)`, as in `transformer::visit`.
  using visitor = std::function<void(const std::string& name, float* param, float* grad, index_t size, bool decay)>;

  virtual ~any_transformer() = default;
  any_transformer() = default;
  any_transformer(const any_transformer&) = delete;
  any_transformer& operator=(const any_transformer&) = delete;

  /// The configuration (shape and GHC kind).
  virtual shape_choice shape() const = 0;
  /// Library name with shape, e.g. "vwn::model::transformer<2,3,dynamic>".
  virtual std::string name() const = 0;
  /// The run-time settings.
  virtual const config& settings() const = 0;
  /// Over-width `D'`.
  virtual index_t wide_width() const = 0;

  /// See `transformer::forward`.
  virtual losses forward(host_t, std::span<const std::int32_t> inputs, std::span<const std::int32_t> next,
                         std::span<const std::int32_t> next2, index_t T) = 0;
  /// See `transformer::backward`.
  virtual void backward(host_t) = 0;
  /// Visits every parameter with its gradient, in the checkpoint order of `transformer::visit`.
  virtual void visit(const visitor& f) = 0;
  /// Clears every gradient.
  virtual void zero_grad() = 0;
  /// Main-head logits (`B*T x V`) of the last `forward`, as `transformer::logits`.
  virtual const matrix<float>& logits() const = 0;

  /// Next-token logits (`V` values) after the byte sequence `tokens` (at least one token, each in
  /// `[0, V)`); only the last `context` tokens are used. Uses a separate evaluation copy of the parameters
  /// (without the multi-token-prediction head, which does not affect the next-token logits), so the saved
  /// activations and gradients of this model are left untouched.
  virtual std::vector<float> next_logits(std::span<const std::int32_t> tokens) = 0;

  /// Number of parameter elements.
  index_t parameter_count() {
    index_t count = 0;
    visit([&](const std::string&, float*, float*, index_t size, bool) { count += size; });
    return count;
  }
};

namespace registry_detail {

/// The compiled configurations, in the order they are listed; each shape is compiled with static and with
/// dynamic GHC. `X(m, n)` is applied to every shape.
#define VWN_MODEL_REGISTRY_SHAPES(X) \
  X(1, 1)                            \
  X(1, 2)                            \
  X(1, 4)                            \
  X(2, 3)                            \
  X(2, 4)                            \
  X(4, 8)                            \
  X(4, 16)                           \
  X(8, 16)                           \
  X(8, 32)                           \
  X(8, 64)

/// Builds the `any_transformer` holding a `transformer<M, N, Dynamic, float>`. Declared here and defined in
/// <vwn/model_holder.hpp>; explicitly instantiated for every shape of `VWN_MODEL_REGISTRY_SHAPES` by the
/// translation units of the `vwn_models` library (examples/models/), so that the 20 model instantiations
/// are compiled once, in parallel, instead of in every file that picks a shape at run time.
template <int M, int N, bool Dynamic>
std::unique_ptr<any_transformer> make_holder(const config& c);

struct registry_entry {
  shape_choice shape;
  std::unique_ptr<any_transformer> (*make)(const config&);
};

inline const std::vector<registry_entry>& registry() {
#define VWN_MODEL_REGISTRY_ENTRY(m, n) {{m, n, false}, &make_holder<m, n, false>}, {{m, n, true}, &make_holder<m, n, true>},
  static const std::vector<registry_entry> entries = {VWN_MODEL_REGISTRY_SHAPES(VWN_MODEL_REGISTRY_ENTRY)};
#undef VWN_MODEL_REGISTRY_ENTRY
  return entries;
}

}  // namespace registry_detail

/// The compiled configurations, e.g. `{1,1,false}, {1,1,true}, {1,2,false}, ...`.
inline std::vector<shape_choice> available_transformers() {
  std::vector<shape_choice> out;
  for (const auto& e : registry_detail::registry()) out.push_back(e.shape);
  return out;
}

/// The compiled configurations as text: "(1,1) (1,2) ... (8,64), each static or dynamic" (shapes compiled
/// in only one kind are marked with it).
inline std::string available_transformers_text() {
  std::vector<std::pair<std::pair<int, int>, std::pair<bool, bool>>> shapes;  // (m, n) -> (static, dynamic)
  for (const auto& e : registry_detail::registry()) {
    auto it = std::find_if(shapes.begin(), shapes.end(), [&](const auto& s) {
      return s.first == std::pair<int, int>(e.shape.m, e.shape.n);
    });
    if (it == shapes.end()) it = shapes.insert(shapes.end(), {{e.shape.m, e.shape.n}, {false, false}});
    (e.shape.dynamic ? it->second.second : it->second.first) = true;
  }
  std::string out;
  bool all_both = true;
  for (const auto& [mn, kinds] : shapes) {
    if (!out.empty()) out += ' ';
    out += "(" + std::to_string(mn.first) + "," + std::to_string(mn.second) + ")";
    if (!(kinds.first && kinds.second)) {
      out += kinds.first ? "[static only]" : "[dynamic only]";
      all_both = false;
    }
  }
  return out + (all_both ? ", each static or dynamic" : ", others static or dynamic");
}

/// Builds the transformer of shape `(m, n)` with static (`dynamic == false`) or dynamic GHC and settings
/// `c`. Throws std::invalid_argument listing the compiled configurations when `(m, n, dynamic)` is not one
/// of them, and the model's own std::invalid_argument for inconsistent settings.
inline std::unique_ptr<any_transformer> make_transformer(int m, int n, bool dynamic, const config& c) {
  for (const auto& e : registry_detail::registry())
    if (e.shape == shape_choice{m, n, dynamic}) return e.make(c);
  vwn::detail::fail("vwn::model::make_transformer", "shape (m, n)",
                    "one of the compiled configurations " + available_transformers_text(),
                    shape_choice{m, n, dynamic}.label());
}

}  // namespace vwn::model
