// vwn's primitives as registered PyTorch operators (torch.ops.vwn.*) and LibTorch modules (vwn_torch.hpp). The work
// is done by the reference transformer's width parts (transformer/width.hpp): vwn's host primitives of every compiled
// shape behind run-time interfaces, compiled once in the transformer libraries. This file holds the glue: argument
// checks, views of torch tensors as Eigen rows, the pool of vwn workspaces the operators compute in, the kernels
// (CPU, Autograd, AutocastCPU, Meta) and the modules.

#include "vwn_torch.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <tuple>
#include <utility>

#include <vwn/core/shapes.hpp>
#include <vwn/embedding.hpp>
#include <vwn/core/connection.hpp>
#include <vwn/ghc.hpp>
#include <vwn/mhc.hpp>
#include <vwn/mtp.hpp>
#include <vwn/reduce.hpp>

#include <train/checkpoint.hpp>
#include <transformer/width.hpp>

namespace vwn::libtorch {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::string compiled_shapes() { return vwn::compiled_shapes_text(); }

namespace {

// ---------------------------------------------------------------------------------------------------------------
// Names and checks
// ---------------------------------------------------------------------------------------------------------------

enum class part_kind { ghc, embedding, head, mixer };

std::string dtype_name(c10::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return "float32";
    case torch::kFloat64: return "float64";
    case torch::kFloat16: return "float16";
    case torch::kBFloat16: return "bfloat16";
    case torch::kInt32: return "int32";
    case torch::kInt64: return "int64";
    default: return c10::toString(t);
  }
}

std::string shape_text(c10::IntArrayRef s) {
  std::ostringstream o;
  o << "[";
  for (std::size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << "]";
  return o.str();
}

// "vwn::dghc<2,3>", "vwn::dghc<1,4,mhc>" (the connection family named when it is not vwn), "vwn::reduce_head<2,3>", ...
std::string part_name(part_kind kind, std::int64_t m, std::int64_t n, bool flag, std::string_view connection = "vwn") {
  const std::string mn = "<" + std::to_string(m) + "," + std::to_string(n) + ">";
  switch (kind) {
    case part_kind::ghc:
      return (flag ? "vwn::dghc" : "vwn::ghc") +
             (connection == vwn_connection::name ? mn : mn.substr(0, mn.size() - 1) + "," + std::string(connection) + ">");
    case part_kind::embedding: return (flag ? "vwn::lowrank_overwidth_embedding" : "vwn::overwidth_embedding") + mn;
    case part_kind::head: return "vwn::reduce_head" + mn;
    case part_kind::mixer: return "vwn::mtp_mixer" + mn;
  }
  return "vwn";
}

// The shape must be compiled; the width a positive multiple of m.
void check_shape(const std::string& what, std::int64_t m, std::int64_t n) {
  bool compiled = false;
  if (m > 0 && n > 0 && m <= 64 && n <= 64) dispatch_shape(int(m), int(n), [&]<int M, int N>() { compiled = true; });
  TORCH_CHECK_VALUE(compiled, what, ": shape (m, n): expected one of the shapes this build compiled, ",
                    compiled_shapes_text(), "; got (", m, ",", n, ")");
}

// A schema `str` argument as a std::string (c10::string_view does not convert to std::string_view in every LibTorch).
std::string text_of(c10::string_view v) { return std::string(v.data(), v.size()); }

// The connection family must be one of vwn's and offered for n (mHC-lite up to n = 5).
void check_connection(const std::string& what, std::string_view connection, std::int64_t n) {
  bool known = false, offered = false;
  dispatch_connection(connection, [&]<class C>() {
    known = true;
    offered = n <= C::max_n;
  });
  TORCH_CHECK_VALUE(known, what, ": connection: expected one of ", connection_names_text(), ", got '", connection, "'");
  TORCH_CHECK_VALUE(offered, what, ": connection '", connection, "': expected n <= ", mhc_lite_connection::max_n,
                    " (mhc-lite mixes all n! permutation matrices), got n = ", n);
}

void check_dtype(const std::string& what, c10::ScalarType dtype) {
  TORCH_CHECK_TYPE(dtype == torch::kFloat32 || dtype == torch::kFloat64, what,
                   ": dtype: expected float32 or float64, got ", dtype_name(dtype));
}

// The leading dimensions of `t` (all but the last).
c10::IntArrayRef lead_of(const Tensor& t) { return t.sizes().slice(0, t.dim() - 1); }

// A CPU tensor of `dtype` whose last dimension is `width` (and, with `like`, whose leading dimensions are those of
// `like`), returned contiguous (copied where it is not, as PyTorch's own operators do).
Tensor expect_rows(const std::string& where, const char* name, const Tensor& t, std::int64_t width,
                   c10::ScalarType dtype, const Tensor* like = nullptr) {
  TORCH_CHECK_VALUE(t.defined(), where, ": ", name, ": expected a tensor, got an undefined one");
  TORCH_CHECK_VALUE(t.device().is_cpu() || t.device().is_meta(), where, ": ", name,
                    ": expected a CPU tensor, got one on ", t.device().str(),
                    " (this build of vwn_torch runs vwn's host back end only; it does not copy to the CPU)");
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, where, ": ", name, ": expected dtype ", dtype_name(dtype),
                   " (the parameters'), got ", dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() >= 1 && t.size(-1) == width, where, ": ", name, ": expected shape [..., ", width,
                    "], got ", shape_text(t.sizes()));
  if (like)
    TORCH_CHECK_VALUE(lead_of(t) == lead_of(*like), where, ": ", name, ": expected the leading dimensions of its partner, ",
                      shape_text(lead_of(*like)), ", got ", shape_text(lead_of(t)));
  TORCH_CHECK_VALUE(t.numel() > 0, where, ": ", name, ": expected at least one token, got shape ", shape_text(t.sizes()));
  return t.contiguous();
}

// The last dimension of an over-width input `[..., D']` -> the backbone width `D = D' m / n`.
std::int64_t dim_of_wide(const std::string& where, const char* name, const Tensor& t, std::int64_t m, std::int64_t n) {
  TORCH_CHECK_VALUE(t.defined() && t.dim() >= 1, where, ": ", name, ": expected a tensor [..., D'], got ",
                    t.defined() ? shape_text(t.sizes()) : "an undefined one");
  const std::int64_t wide = t.size(-1);
  TORCH_CHECK_VALUE(wide > 0 && wide % n == 0, where, ": ", name, ": expected a last dimension D' that is a positive ",
                    "multiple of n = ", n, ", got shape ", shape_text(t.sizes()));
  return wide / n * m;
}

// The dtype of a call: the parameters' (the first input's where there are none); float32 or float64.
c10::ScalarType dtype_of_call(const std::string& where, torch::TensorList params, const Tensor& first) {
  const c10::ScalarType t = params.empty() ? first.scalar_type() : params[0].scalar_type();
  check_dtype(where, t);
  return t;
}

// A gradient from autograd as a contiguous tensor of the given shape (zeros where it is undefined: that output
// was not used).
Tensor incoming(const Tensor& g, c10::IntArrayRef sizes, c10::ScalarType dtype) {
  if (!g.defined()) return torch::zeros(sizes, torch::TensorOptions().dtype(dtype));
  return g.contiguous();
}

// A tensor every operator fills completely. With VWN_TORCH_POISON=1 in the environment (the tests set it) it starts
// as NaN, so that an entry an operator fails to write shows; otherwise it is left uninitialised.
Tensor output(c10::IntArrayRef sizes, const torch::TensorOptions& options) {
  static const bool poison = [] {
    const char* v = std::getenv("VWN_TORCH_POISON");
    return v && std::string_view(v) == "1";
  }();
  if (options.device().is_meta()) return torch::empty(sizes, options);
  return poison ? torch::full(sizes, std::numeric_limits<double>::quiet_NaN(), options) : torch::empty(sizes, options);
}

template <class Scalar>
Eigen::Map<matrix<Scalar>> rows(const Tensor& t, std::int64_t width) {
  return {t.data_ptr<Scalar>(), t.numel() / width, width};
}

template <class F>
void by_dtype(c10::ScalarType dtype, F&& f) {
  if (dtype == torch::kFloat32) f.template operator()<float>();
  else f.template operator()<double>();
}

// ---------------------------------------------------------------------------------------------------------------
// Workspaces: vwn's width parts, in which the operators compute. A workspace holds its own copy of the parameters
// (each call copies the tensors it is handed into it) and its gradient buffers; none is ever visible to the caller.
// Workspaces of one configuration are pooled, so that concurrent calls each get one.
// ---------------------------------------------------------------------------------------------------------------

struct part_config {
  part_kind kind = part_kind::ghc;
  std::int64_t m = 1, n = 1, dim = 0, vocab = 0;
  bool flag = false;  // ghc: dynamic; embedding: low-rank
  c10::ScalarType dtype = torch::kFloat32;
  std::string connection = "vwn";  // ghc: the connection family (<vwn/core/connection.hpp>)
  auto operator<=>(const part_config&) const = default;
  std::int64_t db() const { return dim / m; }
  std::int64_t wide() const { return n * (dim / m); }
  std::string label() const {
    return part_name(kind, m, n, flag, connection) + " (D = " + std::to_string(dim) + ", " + dtype_name(dtype) + ")";
  }
};

struct tensor_info {
  std::string name;
  std::vector<std::int64_t> shape;
  bool decay = false;
  void* param = nullptr;
  void* grad = nullptr;
  std::int64_t size = 0;
};

// The 1-D tensors of vwn's lists (norm weights, the manifold families' gates, mHC-lite's n! carry logits); every
// other tensor is rows x cols.
bool is_vector(const tensor_spec& s) {
  const std::string_view name = s.name;
  return name == "g" || name == "gn_weight" || name == "gn_bias" || name == "gate" ||
         (name == "b_res" && s.cols == 1 && s.rows > 1);
}

struct workspace {
  virtual ~workspace() = default;
  part_config config;
  std::vector<tensor_info> tensors;
};

template <class Scalar>
struct typed_workspace final : workspace {
  std::unique_ptr<model::ghc_layer<Scalar>> ghc;
  std::unique_ptr<model::embedding_layer<Scalar>> embedding;
  std::unique_ptr<model::head_layer<Scalar>> head;
  std::unique_ptr<model::mixer_layer<Scalar>> mixer;

  void visit(const model::tensor_visitor<Scalar>& f) {
    if (ghc) ghc->visit("", f);
    if (embedding) embedding->visit("", f);
    if (head) head->visit("", f);
    if (mixer) mixer->visit("", f);
  }
};

template <class Scalar>
typed_workspace<Scalar>& typed(workspace& w) {
  return static_cast<typed_workspace<Scalar>&>(w);
}

// Pairs the part's tensors (pointers, in visit order) with the shapes of vwn's tensor list `specs`.
template <class Scalar, class Specs>
void describe_tensors(typed_workspace<Scalar>& w, const Specs& specs) {
  w.visit([&](const std::string& name, Scalar* param, Scalar* grad, index_t size, bool decay) {
    tensor_info t{name, {}, decay, param, grad, size};
    for (const tensor_spec& s : specs)
      if (s.name == name)
        t.shape = is_vector(s) ? std::vector<std::int64_t>{s.rows} : std::vector<std::int64_t>{s.rows, s.cols};
    if (t.shape.empty()) throw std::logic_error("vwn_torch: tensor '" + name + "' is not in vwn's tensor list");
    w.tensors.push_back(std::move(t));
  });
}

// A new workspace of a configuration (checked), drawn with `seed` where the part draws its initial values.
std::unique_ptr<workspace> make_workspace(const part_config& c, std::uint64_t seed) {
  const std::string what = part_name(c.kind, c.m, c.n, c.flag, c.connection);
  check_dtype(what, c.dtype);
  check_shape(what, c.m, c.n);
  if (c.kind == part_kind::ghc) check_connection(what, c.connection, c.n);
  TORCH_CHECK_VALUE(c.dim > 0 && c.dim % c.m == 0, what, ": dim: expected a positive multiple of m = ", c.m, ", got ",
                    c.dim);
  if (c.kind == part_kind::embedding)
    TORCH_CHECK_VALUE(c.vocab > 0 && c.vocab <= std::numeric_limits<std::int32_t>::max(), what,
                      ": vocab: expected a positive vocabulary size below 2^31, got ", c.vocab);
  std::unique_ptr<workspace> out;
  const auto fill = [&]<class Scalar>() {
    auto w = std::make_unique<typed_workspace<Scalar>>();
    const bool ghc = c.kind == part_kind::ghc;
    const auto& factory =
        model::width_parts<Scalar>({int(c.m), int(c.n), ghc && c.flag, ghc ? c.connection : std::string("vwn")});
    dispatch_shape(int(c.m), int(c.n), [&]<int M, int N>() {
      switch (c.kind) {
        case part_kind::ghc:
          w->ghc = factory.ghc(c.dim);
          dispatch_connection(c.connection, [&]<class C>() {
            if constexpr (!C::manifold) {
              if (c.flag) describe_tensors(*w, ghc_tensors<M, N, true>(c.dim / M));
              else describe_tensors(*w, ghc_tensors<M, N, false>(c.dim / M));
            } else if constexpr (connection_offered<C, N>) {
              constexpr bool P = C::rule.permutations;
              if (c.flag) describe_tensors(*w, manifold_tensors<M, N, true, P>(c.dim / M));
              else describe_tensors(*w, manifold_tensors<M, N, false, P>(c.dim / M));
            }
          });
          break;
        case part_kind::embedding:
          w->embedding = factory.embedding(c.vocab, c.dim, c.flag, seed);
          if (c.flag) describe_tensors(*w, lowrank_overwidth_embedding_tensors<M, N>(c.vocab, c.dim));
          else describe_tensors(*w, overwidth_embedding_tensors<M, N>(c.vocab, c.dim));
          break;
        case part_kind::head:
          w->head = factory.head(c.dim, seed);
          describe_tensors(*w, reduce_head_tensors<M, N>(c.dim));
          break;
        case part_kind::mixer:
          w->mixer = factory.mixer(c.dim, seed);
          describe_tensors(*w, mtp_mixer_tensors<M, N>(c.dim));
          break;
      }
    });
    out = std::move(w);
  };
  by_dtype(c.dtype, fill);
  out->config = c;
  return out;
}

// The pool of workspaces per configuration; a lease returns its workspace to the pool.
class pool {
 public:
  static pool& instance() {
    static pool p;
    return p;
  }
  std::unique_ptr<workspace> take(const part_config& c) {
    {
      std::lock_guard lock(mutex_);
      auto& free = free_[c];
      if (!free.empty()) {
        auto w = std::move(free.back());
        free.pop_back();
        return w;
      }
    }
    return make_workspace(c, 1);
  }
  void give(std::unique_ptr<workspace> w) {
    std::lock_guard lock(mutex_);
    free_[w->config].push_back(std::move(w));
  }

 private:
  std::mutex mutex_;
  std::map<part_config, std::vector<std::unique_ptr<workspace>>> free_;
};

struct lease {
  explicit lease(const part_config& c) : w(pool::instance().take(c)) {}
  ~lease() { pool::instance().give(std::move(w)); }
  lease(const lease&) = delete;
  lease& operator=(const lease&) = delete;
  workspace& operator*() { return *w; }
  workspace* operator->() { return w.get(); }
  std::unique_ptr<workspace> w;
};

std::size_t element_size(c10::ScalarType t) { return t == torch::kFloat32 ? sizeof(float) : sizeof(double); }

// The parameters a call is handed, checked against the part's list (count, shapes, dtype, CPU).
void check_parameters(const std::string& where, const workspace& w, torch::TensorList params) {
  TORCH_CHECK_VALUE(params.size() == w.tensors.size(), where, ": params: expected ", w.tensors.size(),
                    " tensors (", [&] {
                      std::string names;
                      for (const tensor_info& t : w.tensors) names += (names.empty() ? "" : ", ") + t.name;
                      return names.empty() ? std::string("none") : names;
                    }(), "), got ", params.size());
  for (std::size_t i = 0; i < params.size(); ++i) {
    const tensor_info& t = w.tensors[i];
    const Tensor& x = params[i];
    TORCH_CHECK_VALUE(x.defined() && x.device().is_cpu(), where, ": parameter ", t.name, ": expected a CPU tensor, got ",
                      x.defined() ? "one on " + x.device().str() : std::string("an undefined tensor"));
    TORCH_CHECK_TYPE(x.scalar_type() == w.config.dtype, where, ": parameter ", t.name, ": expected dtype ",
                     dtype_name(w.config.dtype), " (the other parameters' and inputs'), got ",
                     dtype_name(x.scalar_type()));
    TORCH_CHECK_VALUE(x.sizes() == c10::IntArrayRef(t.shape), where, ": parameter ", t.name, ": expected shape ",
                      shape_text(t.shape), ", got ", shape_text(x.sizes()));
  }
}

// Copies the handed parameters into the workspace (the caller's tensors are only read).
void use_parameters(workspace& w, torch::TensorList params) {
  check_parameters(w.config.label(), w, params);
  const std::size_t elem = element_size(w.config.dtype);
  for (std::size_t i = 0; i < params.size(); ++i) {
    const Tensor c = params[i].contiguous();
    std::memcpy(w.tensors[i].param, c.data_ptr(), std::size_t(w.tensors[i].size) * elem);
  }
}

void zero_grads(workspace& w) {
  const std::size_t elem = element_size(w.config.dtype);
  for (const tensor_info& t : w.tensors) std::memset(t.grad, 0, std::size_t(t.size) * elem);
}

// The accumulated gradients, copied out (the workspace's buffers are reused by the next call).
void grads_out(workspace& w, variable_list& out) {
  for (const tensor_info& t : w.tensors)
    out.push_back(torch::from_blob(t.grad, t.shape, torch::TensorOptions().dtype(w.config.dtype)).clone());
}

// Undefined gradients for `count` parameters (a node that contributes none to them).
void no_grads(std::size_t count, variable_list& out) { out.insert(out.end(), count, Tensor()); }

// What a backward returns, made to raise an error naming the operator if anything differentiates it again (the
// gradients are computed by vwn's hand-written backward, which is not differentiable), as PyTorch's
// `once_differentiable` does; only when autograd records the backward (`create_graph`). The error node is connected
// to what the gradients depend on (the incoming gradients, the saved inputs and parameters), so that a gradient of
// a gradient with respect to any of them reaches it and raises, instead of finding no path and returning zeros.
variable_list once_differentiable(variable_list grads, const variable_list& incoming_grads,
                                  const variable_list& saved, const std::string& where) {
  if (!torch::GradMode::is_enabled()) return grads;
  variable_list depends_on;
  for (const variable_list* list : {&incoming_grads, &saved})
    for (const Tensor& t : *list)
      if (t.defined() && t.requires_grad()) depends_on.push_back(t);
  if (depends_on.empty()) return grads;
  auto error = std::make_shared<torch::autograd::Error>(
      where + ": double backward is not implemented: vwn's backward is hand-written and not differentiable (a "
              "gradient of this gradient was asked for: create_graph=True followed by another backward, a Hessian, "
              "gradgradcheck)",
      torch::autograd::collect_next_edges(depends_on));
  for (Tensor& g : grads)
    if (g.defined()) {
      g = g.detach();
      torch::autograd::create_gradient_edge(g, error);
    }
  return grads;
}

// ---------------------------------------------------------------------------------------------------------------
// GHC. The width connection returns each token's depth coefficients `b` in a tensor whose memory also holds the
// call's saved state (through its storage's context): the depth connection and both backward passes find the state
// there, and the gradient of `b` flows from the depth backward to the width backward through autograd.
// ---------------------------------------------------------------------------------------------------------------

struct ghc_saved {
  part_config config;
  std::int64_t owner = 0;
  std::int64_t tokens = 0;
  std::unique_ptr<model::ghc_layer<float>::state> state_f;
  std::unique_ptr<model::ghc_layer<double>::state> state_d;
  std::vector<double> b;  // the values of the tensor b (float or double, T n m of them)
  std::mutex mutex;       // one backward at a time on this state

  template <class Scalar>
  auto& state() {
    if constexpr (std::is_same_v<Scalar, float>) return state_f;
    else return state_d;
  }
};

void delete_ghc_saved(void* p) { delete static_cast<ghc_saved*>(p); }

// The saved state behind `b`, checked to belong to a width connection of the same configuration and owner.
ghc_saved& saved_of(const std::string& where, const Tensor& b, const part_config& c, std::int64_t owner) {
  TORCH_CHECK_VALUE(b.defined() && b.has_storage(), where, ": b: expected the tensor b returned by the width ",
                    "connection (the carry's b), got ", b.defined() ? "another tensor" : "an undefined one");
  const c10::DataPtr& data = b.storage().data_ptr();
  TORCH_CHECK_VALUE(data.get_deleter() == &delete_ghc_saved, where,
                    ": b: expected the very tensor b returned by a width connection (the carry's b, not a copy or a "
                    "view of it), got another tensor of shape ",
                    shape_text(b.sizes()));
  auto& s = *static_cast<ghc_saved*>(data.get_context());
  TORCH_CHECK_VALUE(s.config == c, where, ": carry: expected the carry of a width connection of ", c.label(),
                    ", got the carry of ", s.config.label());
  TORCH_CHECK_VALUE(s.owner == owner, where, ": carry: expected the carry of this module's width connection (module #",
                    owner, "), got the carry of module #", s.owner, " (", s.config.label(),
                    "): a depth connection takes only its own module's carry");
  return s;
}

part_config ghc_config(const std::string& where, const Tensor& H, torch::TensorList params, std::int64_t m,
                       std::int64_t n, bool dynamic, c10::string_view connection) {
  part_config c;
  c.kind = part_kind::ghc;
  c.m = m;
  c.n = n;
  c.flag = dynamic;
  c.connection = text_of(connection);
  check_shape(where, m, n);
  check_connection(where, c.connection, n);
  c.dim = dim_of_wide(where, "H", H, m, n);
  c.dtype = dtype_of_call(where, params, H);
  return c;
}

std::tuple<Tensor, Tensor, Tensor> ghc_width_cpu(const Tensor& H_in, torch::TensorList params, std::int64_t m,
                                                 std::int64_t n, bool dynamic, std::int64_t owner,
                                                 c10::string_view connection) {
  const std::string where = part_name(part_kind::ghc, m, n, dynamic, text_of(connection)) + " width";
  const part_config c = ghc_config(where, H_in, params, m, n, dynamic, connection);
  const Tensor H = expect_rows(where, "H", H_in, c.wide(), c.dtype);
  auto lead = lead_of(H).vec();
  auto x_shape = lead, b_shape = lead;
  x_shape.push_back(c.dim);
  b_shape.push_back(n);
  b_shape.push_back(m);
  const auto options = torch::TensorOptions().dtype(c.dtype);
  Tensor X = output(x_shape, options), C = output(H.sizes(), options);
  const std::int64_t T = H.numel() / c.wide();

  auto saved = std::make_unique<ghc_saved>();
  saved->config = c;
  saved->owner = owner;
  saved->tokens = T;
  saved->b.resize(std::size_t(T * n * m));  // doubles: room for either scalar type
  {
    lease w(c);
    use_parameters(*w, params);
    by_dtype(c.dtype, [&]<class Scalar>() {
      auto& ghc = *typed<Scalar>(*w).ghc;
      auto& state = saved->state<Scalar>();
      state = ghc.make_state();
      ghc.forward_width(rows<Scalar>(H, c.wide()), rows<Scalar>(X, c.dim), rows<Scalar>(C, c.wide()), *state);
      ghc.depth_coefficients(*state, {reinterpret_cast<Scalar*>(saved->b.data()), std::size_t(T * n * m)});
    });
  }
  void* data = saved->b.data();
  Tensor b = at::for_blob(data, b_shape).context(saved.release(), &delete_ghc_saved).options(options).make_tensor();
  return {X, C, b};
}

Tensor ghc_depth_cpu(const Tensor& Z_in, const Tensor& C_in, const Tensor& b, torch::TensorList params,
                     std::int64_t m, std::int64_t n, bool dynamic, std::int64_t owner, c10::string_view connection) {
  const std::string where = part_name(part_kind::ghc, m, n, dynamic, text_of(connection)) + " depth";
  const part_config c = ghc_config(where, C_in, params, m, n, dynamic, connection);
  const Tensor C = expect_rows(where, "C", C_in, c.wide(), c.dtype);
  const Tensor Z = expect_rows(where, "Z", Z_in, c.dim, c.dtype, &C);
  ghc_saved& s = saved_of(where, b, c, owner);
  TORCH_CHECK_VALUE(s.tokens == C.numel() / c.wide(), where, ": C: expected the ", s.tokens,
                    " tokens of the width connection, got ", C.numel() / c.wide());
  Tensor H_out = output(C.sizes(), C.options());
  lease w(c);
  use_parameters(*w, params);
  by_dtype(c.dtype, [&]<class Scalar>() {
    typed<Scalar>(*w).ghc->forward_depth(rows<Scalar>(Z, c.dim), rows<Scalar>(C, c.wide()),
                                         rows<Scalar>(H_out, c.wide()), *s.state<Scalar>());
  });
  return H_out;
}

struct ghc_width_fn : torch::autograd::Function<ghc_width_fn> {
  static variable_list forward(AutogradContext* ctx, const Tensor& H, torch::TensorList params, std::int64_t m,
                               std::int64_t n, bool dynamic, std::int64_t owner, const std::string& connection) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [X, C, b] = ghc_width_cpu(H, params, m, n, dynamic, owner, connection);
    std::vector<Tensor> keep{H.contiguous(), b};
    keep.insert(keep.end(), params.begin(), params.end());
    ctx->save_for_backward(keep);
    // Static GHC: b is a function of the parameters alone (beta, or the manifold families' map of b_post), whose
    // gradient the depth backward accumulates itself.
    if (!dynamic) ctx->mark_non_differentiable({b});
    return {X, C, b};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &H = saved[0], &b = saved[1];
    const std::vector<Tensor> params(saved.begin() + 2, saved.end());
    auto& s = *static_cast<ghc_saved*>(b.storage().data_ptr().get_context());
    const part_config& c = s.config;
    auto lead = lead_of(H).vec();
    lead.push_back(c.dim);
    const Tensor dX = incoming(grads[0], lead, c.dtype), dC = incoming(grads[1], H.sizes(), c.dtype);
    Tensor dH = output(H.sizes(), H.options());
    variable_list out{dH};
    {
      std::lock_guard state_lock(s.mutex);
      lease w(c);
      use_parameters(*w, params);
      zero_grads(*w);
      by_dtype(c.dtype, [&]<class Scalar>() {
        auto& ghc = *typed<Scalar>(*w).ghc;
        auto& state = *s.state<Scalar>();
        if (c.flag) {
          // The gradient of each token's b: what reached the carry's b (the depth connections' backward passes and
          // any other use), zero where nothing did.
          const std::span<Scalar> db = ghc.depth_gradient(state);
          if (grads[2].defined()) {
            const Tensor g = grads[2].contiguous();
            std::memcpy(db.data(), g.data_ptr<Scalar>(), db.size() * sizeof(Scalar));
          } else {
            std::fill(db.begin(), db.end(), Scalar(0));
          }
        }
        ghc.backward_width(rows<Scalar>(H, c.wide()), rows<Scalar>(dX, c.dim), rows<Scalar>(dC, c.wide()),
                           rows<Scalar>(dH, c.wide()), state);
      });
      grads_out(*w, out);
    }
    no_grads(5, out);  // m, n, dynamic, owner, connection
    return once_differentiable(std::move(out), grads, saved, c.label() + " width");
  }
};

struct ghc_depth_fn : torch::autograd::Function<ghc_depth_fn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& Z, const Tensor& C, const Tensor& b,
                        torch::TensorList params, std::int64_t m, std::int64_t n, bool dynamic, std::int64_t owner,
                        const std::string& connection) {
    at::AutoDispatchBelowADInplaceOrView guard;
    Tensor H_out = ghc_depth_cpu(Z, C, b, params, m, n, dynamic, owner, connection);
    std::vector<Tensor> keep{Z.contiguous(), b};
    keep.insert(keep.end(), params.begin(), params.end());
    ctx->save_for_backward(keep);
    ctx->saved_data["lead"] = lead_of(C).vec();
    return H_out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &Z = saved[0], &b = saved[1];
    const std::vector<Tensor> params(saved.begin() + 2, saved.end());
    auto& s = *static_cast<ghc_saved*>(b.storage().data_ptr().get_context());
    const part_config& c = s.config;
    auto shape = ctx->saved_data["lead"].toIntVector();
    shape.push_back(c.wide());
    const Tensor dH_out = incoming(grads[0], shape, c.dtype);
    Tensor dZ = output(Z.sizes(), Z.options());
    Tensor db;
    variable_list out{dZ, dH_out};
    {
      std::lock_guard state_lock(s.mutex);
      lease w(c);
      use_parameters(*w, params);
      zero_grads(*w);
      by_dtype(c.dtype, [&]<class Scalar>() {
        auto& ghc = *typed<Scalar>(*w).ghc;
        auto& state = *s.state<Scalar>();
        ghc.backward_depth(rows<Scalar>(dH_out, c.wide()), rows<Scalar>(Z, c.dim), rows<Scalar>(dZ, c.dim), state);
        if (c.flag) {
          const std::span<Scalar> g = ghc.depth_gradient(state);
          db = torch::from_blob(g.data(), b.sizes(), b.options()).clone();
        }
      });
      out.push_back(db);
      // Static GHC: the gradient of beta (b_post); dynamic: none here (the width backward takes it from the gradient
      // of b).
      if (c.flag) no_grads(params.size(), out);
      else grads_out(*w, out);
    }
    no_grads(5, out);  // m, n, dynamic, owner, connection
    return once_differentiable(std::move(out), grads, saved, c.label() + " depth");
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Embedding, reduce head, MTP mixer
// ---------------------------------------------------------------------------------------------------------------

// Tokens as int32 after checking every value against the vocabulary (an int64 token is never narrowed unchecked).
Tensor checked_tokens(const std::string& where, const Tensor& tokens, std::int64_t vocab) {
  TORCH_CHECK_VALUE(tokens.defined() && tokens.device().is_cpu(), where, ": tokens: expected a CPU tensor, got ",
                    tokens.defined() ? "one on " + tokens.device().str() : std::string("an undefined tensor"));
  TORCH_CHECK_TYPE(tokens.scalar_type() == torch::kInt64 || tokens.scalar_type() == torch::kInt32, where,
                   ": tokens: expected dtype int64 or int32, got ", dtype_name(tokens.scalar_type()));
  TORCH_CHECK_VALUE(tokens.numel() > 0, where, ": tokens: expected at least one token, got shape ",
                    shape_text(tokens.sizes()));
  const Tensor bad = ((tokens < 0) | (tokens >= vocab)).reshape({-1}).nonzero();
  if (bad.numel() > 0) {
    const std::int64_t i = bad[0][0].item<std::int64_t>();
    TORCH_CHECK_INDEX(false, where, ": tokens: expected 0 <= token < vocabulary size ", vocab, ", got ",
                      tokens.reshape({-1})[i].item<std::int64_t>(), " at flat position ", i);
  }
  return tokens.to(torch::kInt32).contiguous();
}

std::span<const std::int32_t> token_span(const Tensor& tok) {
  return {tok.data_ptr<std::int32_t>(), std::size_t(tok.numel())};
}

// The embedding's configuration, read from its parameters: `E` (`V x D'`), or `E_base` (`V x D`) and `W_expand`.
part_config embedding_config(const std::string& where, torch::TensorList params, std::int64_t m, std::int64_t n,
                             bool lowrank) {
  check_shape(where, m, n);
  const std::size_t count = lowrank ? 2 : 1;
  TORCH_CHECK_VALUE(params.size() == count, where, ": params: expected ", count, lowrank ? " tensors (E_base, W_expand)" : " tensor (E)",
                    ", got ", params.size());
  TORCH_CHECK_VALUE(params[0].defined() && params[0].dim() == 2, where, ": parameter ", lowrank ? "E_base" : "E",
                    ": expected a matrix, got ", params[0].defined() ? shape_text(params[0].sizes()) : "an undefined tensor");
  part_config c;
  c.kind = part_kind::embedding;
  c.m = m;
  c.n = n;
  c.flag = lowrank;
  c.vocab = params[0].size(0);
  c.dim = lowrank ? params[0].size(1) : dim_of_wide(where, "parameter E", params[0], m, n);
  c.dtype = params[0].scalar_type();
  check_dtype(where, c.dtype);
  return c;
}

// The direct embedding is a row lookup and its gradient a scatter-add of rows: both run on the tensors themselves
// (the table the caller hands over is read where it is; the gradient is accumulated with vwn's sparse row sums, then
// written into a fresh dense tensor that autograd keeps as the table's gradient), so that no workspace holds a second
// table or a spare gradient buffer the size of the table. The low-rank one runs in a workspace (its table is `V x D`).
template <class Scalar>
void direct_embedding_forward(const Tensor& E, const Tensor& tok, const Tensor& H0, std::int64_t wide) {
  const Eigen::Map<const matrix<Scalar>> table(E.data_ptr<Scalar>(), E.size(0), wide);
  auto out = rows<Scalar>(H0, wide);
  const std::span<const std::int32_t> t = token_span(tok);
  for (std::size_t i = 0; i < t.size(); ++i) out.row(index_t(i)) = table.row(t[i]);
}

template <class Scalar>
void direct_embedding_backward(const Tensor& tok, const Tensor& dH0, const Tensor& dE, std::int64_t wide) {
  sparse_rows<Scalar> g;
  g.values.resize(0, wide);
  vwn::detail::accumulate_sparse(g, token_span(tok), rows<Scalar>(dH0, wide));
  g.add_to(rows<Scalar>(dE, wide));
}

std::pair<Tensor, Tensor> embedding_run(const Tensor& tokens, torch::TensorList params, std::int64_t m, std::int64_t n,
                                        bool lowrank) {
  const std::string where = part_name(part_kind::embedding, m, n, lowrank);
  const part_config c = embedding_config(where, params, m, n, lowrank);
  const Tensor tok = checked_tokens(where, tokens, c.vocab);
  auto shape = tokens.sizes().vec();
  shape.push_back(c.wide());
  Tensor H0 = output(shape, torch::TensorOptions().dtype(c.dtype));
  if (!lowrank) {
    std::vector<std::int64_t> table{c.vocab, c.wide()};
    TORCH_CHECK_VALUE(params[0].sizes() == c10::IntArrayRef(table) && params[0].device().is_cpu(), where,
                      ": parameter E: expected a CPU tensor of shape ", shape_text(table), ", got ",
                      shape_text(params[0].sizes()), " on ", params[0].device().str());
    const Tensor E = params[0].contiguous();
    by_dtype(c.dtype, [&]<class Scalar>() { direct_embedding_forward<Scalar>(E, tok, H0, c.wide()); });
    return {H0, tok};
  }
  lease w(c);
  use_parameters(*w, params);
  by_dtype(c.dtype, [&]<class Scalar>() {
    typed<Scalar>(*w).embedding->forward(token_span(tok), rows<Scalar>(H0, c.wide()));
  });
  return {H0, tok};
}

Tensor embedding_cpu(const Tensor& tokens, torch::TensorList params, std::int64_t m, std::int64_t n, bool lowrank) {
  return embedding_run(tokens, params, m, n, lowrank).first;
}

struct embedding_fn : torch::autograd::Function<embedding_fn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& tokens, torch::TensorList params, std::int64_t m,
                        std::int64_t n, bool lowrank) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [H0, tok] = embedding_run(tokens, params, m, n, lowrank);
    std::vector<Tensor> keep{tok};
    keep.insert(keep.end(), params.begin(), params.end());
    ctx->save_for_backward(keep);
    ctx->saved_data["m"] = m;
    ctx->saved_data["n"] = n;
    ctx->saved_data["lowrank"] = lowrank;
    return H0;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& tok = saved[0];
    const std::vector<Tensor> params(saved.begin() + 1, saved.end());
    const bool lowrank = ctx->saved_data["lowrank"].toBool();
    const std::string where = part_name(part_kind::embedding, ctx->saved_data["m"].toInt(), ctx->saved_data["n"].toInt(), lowrank);
    const part_config c = embedding_config(where, params, ctx->saved_data["m"].toInt(), ctx->saved_data["n"].toInt(), lowrank);
    auto shape = tok.sizes().vec();
    shape.push_back(c.wide());
    const Tensor dH0 = incoming(grads[0], shape, c.dtype);
    variable_list out{Tensor()};
    if (!lowrank) {
      Tensor dE = torch::zeros({c.vocab, c.wide()}, torch::TensorOptions().dtype(c.dtype));
      by_dtype(c.dtype, [&]<class Scalar>() { direct_embedding_backward<Scalar>(tok, dH0, dE, c.wide()); });
      out.push_back(dE);
    } else {
      lease w(c);
      use_parameters(*w, params);
      zero_grads(*w);
      by_dtype(c.dtype, [&]<class Scalar>() {
        typed<Scalar>(*w).embedding->backward(token_span(tok), rows<Scalar>(dH0, c.wide()));
      });
      grads_out(*w, out);
    }
    no_grads(3, out);  // m, n, lowrank
    return once_differentiable(std::move(out), grads, saved, c.label());
  }
};

part_config width_config(part_kind kind, const std::string& where, const Tensor& first, torch::TensorList params,
                         std::int64_t m, std::int64_t n) {
  check_shape(where, m, n);
  part_config c;
  c.kind = kind;
  c.m = m;
  c.n = n;
  c.dim = dim_of_wide(where, kind == part_kind::head ? "H" : "A", first, m, n);
  c.dtype = dtype_of_call(where, params, first);
  return c;
}

struct head_saved : torch::CustomClassHolder {
  std::unique_ptr<model::head_layer<float>::state> state_f;
  std::unique_ptr<model::head_layer<double>::state> state_d;
  template <class Scalar>
  auto& state() {
    if constexpr (std::is_same_v<Scalar, float>) return state_f;
    else return state_d;
  }
};

std::pair<Tensor, c10::intrusive_ptr<head_saved>> head_run(const Tensor& H_in, torch::TensorList params,
                                                           std::int64_t m, std::int64_t n) {
  const std::string where = part_name(part_kind::head, m, n, false);
  const part_config c = width_config(part_kind::head, where, H_in, params, m, n);
  const Tensor H = expect_rows(where, "H", H_in, c.wide(), c.dtype);
  auto shape = lead_of(H).vec();
  shape.push_back(c.dim);
  Tensor h = output(shape, H.options());
  auto saved = c10::make_intrusive<head_saved>();
  lease w(c);
  use_parameters(*w, params);
  by_dtype(c.dtype, [&]<class Scalar>() {
    auto& head = *typed<Scalar>(*w).head;
    saved->state<Scalar>() = head.make_state();
    head.forward(rows<Scalar>(H, c.wide()), rows<Scalar>(h, c.dim), *saved->state<Scalar>());
  });
  return {h, saved};
}

Tensor head_cpu(const Tensor& H, torch::TensorList params, std::int64_t m, std::int64_t n) {
  return head_run(H, params, m, n).first;
}

struct head_fn : torch::autograd::Function<head_fn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& H, torch::TensorList params, std::int64_t m,
                        std::int64_t n) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [h, saved] = head_run(H, params, m, n);
    std::vector<Tensor> keep{H.contiguous()};
    keep.insert(keep.end(), params.begin(), params.end());
    ctx->save_for_backward(keep);
    ctx->saved_data["state"] = c10::IValue::make_capsule(c10::intrusive_ptr<torch::CustomClassHolder>(saved));
    ctx->saved_data["m"] = m;
    ctx->saved_data["n"] = n;
    return h;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& H = saved[0];
    const std::vector<Tensor> params(saved.begin() + 1, saved.end());
    const std::int64_t m = ctx->saved_data["m"].toInt(), n = ctx->saved_data["n"].toInt();
    const part_config c = width_config(part_kind::head, part_name(part_kind::head, m, n, false), H, params, m, n);
    auto state = c10::static_intrusive_pointer_cast<head_saved>(ctx->saved_data["state"].toCapsule());
    auto shape = lead_of(H).vec();
    shape.push_back(c.dim);
    const Tensor dh = incoming(grads[0], shape, c.dtype);
    Tensor dH = output(H.sizes(), H.options());
    variable_list out{dH};
    {
      lease w(c);
      use_parameters(*w, params);
      zero_grads(*w);
      by_dtype(c.dtype, [&]<class Scalar>() {
        typed<Scalar>(*w).head->backward(rows<Scalar>(H, c.wide()), rows<Scalar>(dh, c.dim), rows<Scalar>(dH, c.wide()),
                                         *state->state<Scalar>());
      });
      grads_out(*w, out);
    }
    no_grads(2, out);  // m, n
    return once_differentiable(std::move(out), grads, saved, c.label());
  }
};

Tensor mixer_cpu(const Tensor& A_in, const Tensor& B_in, torch::TensorList params, std::int64_t m, std::int64_t n) {
  const std::string where = part_name(part_kind::mixer, m, n, false);
  const part_config c = width_config(part_kind::mixer, where, A_in, params, m, n);
  const Tensor A = expect_rows(where, "A", A_in, c.wide(), c.dtype);
  const Tensor B = expect_rows(where, "B", B_in, c.wide(), c.dtype, &A);
  Tensor U = output(A.sizes(), A.options());
  lease w(c);
  use_parameters(*w, params);
  by_dtype(c.dtype, [&]<class Scalar>() {
    typed<Scalar>(*w).mixer->forward(rows<Scalar>(A, c.wide()), rows<Scalar>(B, c.wide()), rows<Scalar>(U, c.wide()));
  });
  return U;
}

struct mixer_fn : torch::autograd::Function<mixer_fn> {
  static Tensor forward(AutogradContext* ctx, const Tensor& A, const Tensor& B, torch::TensorList params,
                        std::int64_t m, std::int64_t n) {
    at::AutoDispatchBelowADInplaceOrView guard;
    Tensor U = mixer_cpu(A, B, params, m, n);
    std::vector<Tensor> keep{A.contiguous(), B.contiguous()};
    keep.insert(keep.end(), params.begin(), params.end());
    ctx->save_for_backward(keep);
    ctx->saved_data["m"] = m;
    ctx->saved_data["n"] = n;
    return U;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &A = saved[0], &B = saved[1];
    const std::vector<Tensor> params(saved.begin() + 2, saved.end());
    const std::int64_t m = ctx->saved_data["m"].toInt(), n = ctx->saved_data["n"].toInt();
    const part_config c = width_config(part_kind::mixer, part_name(part_kind::mixer, m, n, false), A, params, m, n);
    const Tensor dU = incoming(grads[0], A.sizes(), c.dtype);
    Tensor dA = output(A.sizes(), A.options()), dB = output(B.sizes(), B.options());
    variable_list out{dA, dB};
    {
      lease w(c);
      use_parameters(*w, params);
      zero_grads(*w);
      by_dtype(c.dtype, [&]<class Scalar>() {
        typed<Scalar>(*w).mixer->backward(rows<Scalar>(A, c.wide()), rows<Scalar>(B, c.wide()), rows<Scalar>(dU, c.wide()),
                                          rows<Scalar>(dA, c.wide()), rows<Scalar>(dB, c.wide()));
      });
      grads_out(*w, out);
    }
    no_grads(2, out);  // m, n
    return once_differentiable(std::move(out), grads, saved, c.label());
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Kernels: Autograd (the autograd nodes above), AutocastCPU (inputs cast to the parameters' dtype), Meta (shapes
// only, for tracing with fake tensors)
// ---------------------------------------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor> ghc_width_autograd(const Tensor& H, torch::TensorList params, std::int64_t m,
                                                      std::int64_t n, bool dynamic, std::int64_t owner,
                                                      c10::string_view connection) {
  variable_list r = ghc_width_fn::apply(H, params, m, n, dynamic, owner, text_of(connection));
  return {r[0], r[1], r[2]};
}
Tensor ghc_depth_autograd(const Tensor& Z, const Tensor& C, const Tensor& b, torch::TensorList params, std::int64_t m,
                          std::int64_t n, bool dynamic, std::int64_t owner, c10::string_view connection) {
  return ghc_depth_fn::apply(Z, C, b, params, m, n, dynamic, owner, text_of(connection));
}
Tensor embedding_autograd(const Tensor& tokens, torch::TensorList params, std::int64_t m, std::int64_t n, bool lowrank) {
  return embedding_fn::apply(tokens, params, m, n, lowrank);
}
Tensor head_autograd(const Tensor& H, torch::TensorList params, std::int64_t m, std::int64_t n) {
  return head_fn::apply(H, params, m, n);
}
Tensor mixer_autograd(const Tensor& A, const Tensor& B, torch::TensorList params, std::int64_t m, std::int64_t n) {
  return mixer_fn::apply(A, B, params, m, n);
}

// Under CPU autocast a backbone returns bfloat16: the operators compute in the parameters' dtype, so floating inputs
// are cast to it (PyTorch's autocast does the same for the operators it runs in float32).
Tensor cast_to(const Tensor& t, torch::TensorList params) {
  if (params.empty() || !t.defined() || !t.is_floating_point() || t.scalar_type() == params[0].scalar_type()) return t;
  return t.to(params[0].scalar_type());
}

template <class Op>
auto typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Op>();
}

using width_op = std::tuple<Tensor, Tensor, Tensor>(const Tensor&, torch::TensorList, std::int64_t, std::int64_t, bool,
                                                    std::int64_t, c10::string_view);
using depth_op = Tensor(const Tensor&, const Tensor&, const Tensor&, torch::TensorList, std::int64_t, std::int64_t,
                        bool, std::int64_t, c10::string_view);
using embedding_op = Tensor(const Tensor&, torch::TensorList, std::int64_t, std::int64_t, bool);
using head_op = Tensor(const Tensor&, torch::TensorList, std::int64_t, std::int64_t);
using mixer_op = Tensor(const Tensor&, const Tensor&, torch::TensorList, std::int64_t, std::int64_t);

std::tuple<Tensor, Tensor, Tensor> ghc_width_autocast(const Tensor& H, torch::TensorList params, std::int64_t m,
                                                      std::int64_t n, bool dynamic, std::int64_t owner,
                                                      c10::string_view connection) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  static auto op = typed_op<width_op>("vwn::ghc_width");
  return op.call(cast_to(H, params), params, m, n, dynamic, owner, connection);
}
Tensor ghc_depth_autocast(const Tensor& Z, const Tensor& C, const Tensor& b, torch::TensorList params, std::int64_t m,
                          std::int64_t n, bool dynamic, std::int64_t owner, c10::string_view connection) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  static auto op = typed_op<depth_op>("vwn::ghc_depth");
  return op.call(cast_to(Z, params), cast_to(C, params), b, params, m, n, dynamic, owner, connection);
}
Tensor head_autocast(const Tensor& H, torch::TensorList params, std::int64_t m, std::int64_t n) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  static auto op = typed_op<head_op>("vwn::reduce_head");
  return op.call(cast_to(H, params), params, m, n);
}
Tensor mixer_autocast(const Tensor& A, const Tensor& B, torch::TensorList params, std::int64_t m, std::int64_t n) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCPU);
  static auto op = typed_op<mixer_op>("vwn::mtp_mixer");
  return op.call(cast_to(A, params), cast_to(B, params), params, m, n);
}

std::tuple<Tensor, Tensor, Tensor> ghc_width_meta(const Tensor& H, torch::TensorList params, std::int64_t m,
                                                  std::int64_t n, bool dynamic, std::int64_t,
                                                  c10::string_view connection) {
  const std::string where = part_name(part_kind::ghc, m, n, dynamic, text_of(connection)) + " width";
  const part_config c = ghc_config(where, H, params, m, n, dynamic, connection);
  auto x_shape = lead_of(H).vec(), b_shape = lead_of(H).vec();
  x_shape.push_back(c.dim);
  b_shape.push_back(n);
  b_shape.push_back(m);
  return {torch::empty(x_shape, H.options()), torch::empty(H.sizes(), H.options()), torch::empty(b_shape, H.options())};
}
Tensor ghc_depth_meta(const Tensor&, const Tensor& C, const Tensor&, torch::TensorList, std::int64_t, std::int64_t,
                      bool, std::int64_t, c10::string_view) {
  return torch::empty(C.sizes(), C.options());
}
Tensor embedding_meta(const Tensor& tokens, torch::TensorList params, std::int64_t m, std::int64_t n, bool lowrank) {
  const part_config c = embedding_config(part_name(part_kind::embedding, m, n, lowrank), params, m, n, lowrank);
  auto shape = tokens.sizes().vec();
  shape.push_back(c.wide());
  return torch::empty(shape, params[0].options().device(tokens.device()));
}
Tensor head_meta(const Tensor& H, torch::TensorList params, std::int64_t m, std::int64_t n) {
  const part_config c = width_config(part_kind::head, part_name(part_kind::head, m, n, false), H, params, m, n);
  auto shape = lead_of(H).vec();
  shape.push_back(c.dim);
  return torch::empty(shape, H.options());
}
Tensor mixer_meta(const Tensor& A, const Tensor&, torch::TensorList, std::int64_t, std::int64_t) {
  return torch::empty(A.sizes(), A.options());
}

}  // namespace

TORCH_LIBRARY(vwn, lib) {
  lib.def("ghc_width(Tensor H, Tensor[] params, int m, int n, bool dynamic, int owner=0, str connection=\"vwn\") -> "
          "(Tensor X, Tensor C, Tensor b)");
  lib.def("ghc_depth(Tensor Z, Tensor C, Tensor b, Tensor[] params, int m, int n, bool dynamic, int owner=0, "
          "str connection=\"vwn\") -> Tensor");
  lib.def("overwidth_embedding(Tensor tokens, Tensor[] params, int m, int n, bool lowrank) -> Tensor");
  lib.def("reduce_head(Tensor H, Tensor[] params, int m, int n) -> Tensor");
  lib.def("mtp_mixer(Tensor A, Tensor B, Tensor[] params, int m, int n) -> Tensor");
}

TORCH_LIBRARY_IMPL(vwn, CPU, lib) {
  lib.impl("ghc_width", &ghc_width_cpu);
  lib.impl("ghc_depth", &ghc_depth_cpu);
  lib.impl("overwidth_embedding", &embedding_cpu);
  lib.impl("reduce_head", &head_cpu);
  lib.impl("mtp_mixer", &mixer_cpu);
}

TORCH_LIBRARY_IMPL(vwn, Autograd, lib) {
  lib.impl("ghc_width", &ghc_width_autograd);
  lib.impl("ghc_depth", &ghc_depth_autograd);
  lib.impl("overwidth_embedding", &embedding_autograd);
  lib.impl("reduce_head", &head_autograd);
  lib.impl("mtp_mixer", &mixer_autograd);
}

TORCH_LIBRARY_IMPL(vwn, AutocastCPU, lib) {
  lib.impl("ghc_width", &ghc_width_autocast);
  lib.impl("ghc_depth", &ghc_depth_autocast);
  lib.impl("reduce_head", &head_autocast);
  lib.impl("mtp_mixer", &mixer_autocast);
}

TORCH_LIBRARY_IMPL(vwn, Meta, lib) {
  lib.impl("ghc_width", &ghc_width_meta);
  lib.impl("ghc_depth", &ghc_depth_meta);
  lib.impl("overwidth_embedding", &embedding_meta);
  lib.impl("reduce_head", &head_meta);
  lib.impl("mtp_mixer", &mixer_meta);
}

// ---------------------------------------------------------------------------------------------------------------
// The public functions
// ---------------------------------------------------------------------------------------------------------------

namespace {
std::vector<parameter> initial(const part_config& c, std::uint64_t seed) {
  std::unique_ptr<workspace> w = make_workspace(c, seed);
  std::vector<parameter> out;
  for (const tensor_info& t : w->tensors)
    out.push_back({t.name, torch::from_blob(t.param, t.shape, torch::TensorOptions().dtype(c.dtype)).clone(), t.decay});
  return out;
}
}  // namespace

std::vector<parameter> ghc_parameters(int m, int n, std::int64_t dim, bool dynamic, torch::Dtype dtype,
                                      const std::string& connection) {
  return initial({part_kind::ghc, m, n, dim, 0, dynamic, dtype, connection}, 1);
}
std::vector<parameter> embedding_parameters(int m, int n, std::int64_t vocab, std::int64_t dim, bool lowrank,
                                            std::uint64_t seed, torch::Dtype dtype) {
  return initial({part_kind::embedding, m, n, dim, vocab, lowrank, dtype}, seed);
}
std::vector<parameter> reduce_head_parameters(int m, int n, std::int64_t dim, std::uint64_t seed, torch::Dtype dtype) {
  return initial({part_kind::head, m, n, dim, 0, false, dtype}, seed);
}
std::vector<parameter> mtp_mixer_parameters(int m, int n, std::int64_t dim, std::uint64_t seed, torch::Dtype dtype) {
  return initial({part_kind::mixer, m, n, dim, 0, false, dtype}, seed);
}

std::uint64_t seed_from_torch() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard lock(gen.mutex());
  return gen.get<at::CPUGeneratorImpl>()->random64();
}

ghc_width_result ghc_width(const Tensor& H, torch::TensorList params, int m, int n, bool dynamic, std::int64_t owner,
                           const std::string& connection) {
  static auto op = typed_op<width_op>("vwn::ghc_width");
  auto [X, C, b] = op.call(H, params, m, n, dynamic, owner, connection);
  return {X, {C, b}};
}
Tensor ghc_depth(const Tensor& Z, const ghc_carry& carry, torch::TensorList params, int m, int n, bool dynamic,
                 std::int64_t owner, const std::string& connection) {
  static auto op = typed_op<depth_op>("vwn::ghc_depth");
  return op.call(Z, carry.C, carry.b, params, m, n, dynamic, owner, connection);
}
Tensor overwidth_embedding(const Tensor& tokens, torch::TensorList params, int m, int n, bool lowrank) {
  static auto op = typed_op<embedding_op>("vwn::overwidth_embedding");
  return op.call(tokens, params, m, n, lowrank);
}
Tensor reduce_head(const Tensor& H, torch::TensorList params, int m, int n) {
  static auto op = typed_op<head_op>("vwn::reduce_head");
  return op.call(H, params, m, n);
}
Tensor mtp_mixer(const Tensor& A, const Tensor& B, torch::TensorList params, int m, int n) {
  static auto op = typed_op<mixer_op>("vwn::mtp_mixer");
  return op.call(A, B, params, m, n);
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------------------------------

checkpoint_tensors read_checkpoint(const std::string& path) {
  const train::checkpoint c = train::read_checkpoint(path);
  checkpoint_tensors out;
  out.metadata = c.file.metadata;
  for (const std::string& name : c.file.names()) {
    std::vector<float> v = c.file.values<float>(name);
    out.tensors[name] = torch::from_blob(v.data(), {std::int64_t(v.size())}, torch::kFloat32).clone();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------------------------------------------

namespace {
std::atomic<std::int64_t> next_module_id{1};
}

PrimitiveModule::PrimitiveModule() : id_(next_module_id++) {}

void PrimitiveModule::register_vwn(std::vector<parameter> params) {
  for (parameter& p : params) {
    register_parameter(p.name, p.tensor);
    names_.push_back(p.name);
    if (p.weight_decay) decay_.push_back(p.name);
  }
}

std::vector<Tensor> PrimitiveModule::vwn_parameters() const {
  const auto all = named_parameters(false);  // once per call, not once per parameter
  std::vector<Tensor> out;
  for (const std::string& name : names_) out.push_back(all[name]);
  return out;
}

std::vector<std::string> PrimitiveModule::weight_decay_names() const { return decay_; }

void PrimitiveModule::assign(const std::vector<parameter>& params) {
  torch::NoGradGuard no_grad;
  const std::vector<Tensor> mine = vwn_parameters();
  for (std::size_t i = 0; i < mine.size(); ++i) mine[i].copy_(params[i].tensor);
}

void PrimitiveModule::load_from(const std::map<std::string, Tensor>& tensors, const std::string& prefix) {
  const std::vector<Tensor> params = vwn_parameters();
  // Every tensor first, then the copies: a failed load changes nothing.
  std::vector<Tensor> found;
  for (std::size_t i = 0; i < names_.size(); ++i) {
    const std::string key = prefix + names_[i];
    const auto it = tensors.find(key);
    TORCH_CHECK_VALUE(it != tensors.end(), name(), ": load: expected a tensor '", key, "', got none");
    TORCH_CHECK_VALUE(it->second.numel() == params[i].numel(), name(), ": load: tensor '", key, "': expected ",
                      params[i].numel(), " values (shape ", shape_text(params[i].sizes()), "), got ",
                      it->second.numel(), " (shape ", shape_text(it->second.sizes()), ")");
    found.push_back(it->second);
  }
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < found.size(); ++i)
    params[i].copy_(found[i].reshape(params[i].sizes()).to(params[i].scalar_type()));
}

GHCImpl::GHCImpl(const GHCOptions& o) : options(o) {
  register_vwn(ghc_parameters(o.m(), o.n(), o.dim(), o.dynamic(), o.dtype(), o.connection()));
}
Tensor GHCImpl::forward(const Tensor& H, const std::function<Tensor(const Tensor&)>& backbone) {
  ghc_width_result w = width(H);
  return depth(backbone(w.X), w.carry);
}
ghc_width_result GHCImpl::width(const Tensor& H) {
  return ghc_width(H, vwn_parameters(), options.m(), options.n(), options.dynamic(), id(), options.connection());
}
Tensor GHCImpl::depth(const Tensor& Z, const ghc_carry& carry) {
  return ghc_depth(Z, carry, vwn_parameters(), options.m(), options.n(), options.dynamic(), id(), options.connection());
}
void GHCImpl::reset_parameters() {
  assign(ghc_parameters(options.m(), options.n(), options.dim(), options.dynamic(), options.dtype(),
                        options.connection()));
}

OverWidthEmbeddingImpl::OverWidthEmbeddingImpl(const OverWidthEmbeddingOptions& o) : options(o) {
  register_vwn(embedding_parameters(o.m(), o.n(), o.vocab(), o.dim(), o.lowrank(), o.seed().value_or(seed_from_torch()),
                                    o.dtype()));
}
Tensor OverWidthEmbeddingImpl::forward(const Tensor& tokens) {
  return overwidth_embedding(tokens, vwn_parameters(), options.m(), options.n(), options.lowrank());
}
void OverWidthEmbeddingImpl::reset_parameters() {
  assign(embedding_parameters(options.m(), options.n(), options.vocab(), options.dim(), options.lowrank(),
                              seed_from_torch(), options.dtype()));
}

ReduceHeadImpl::ReduceHeadImpl(const WidthOptions& o) : options(o) {
  register_vwn(reduce_head_parameters(o.m(), o.n(), o.dim(), o.seed().value_or(seed_from_torch()), o.dtype()));
}
Tensor ReduceHeadImpl::forward(const Tensor& H) { return reduce_head(H, vwn_parameters(), options.m(), options.n()); }
void ReduceHeadImpl::reset_parameters() {
  assign(reduce_head_parameters(options.m(), options.n(), options.dim(), seed_from_torch(), options.dtype()));
}

MTPMixerImpl::MTPMixerImpl(const WidthOptions& o) : options(o) {
  register_vwn(mtp_mixer_parameters(o.m(), o.n(), o.dim(), o.seed().value_or(seed_from_torch()), o.dtype()));
}
Tensor MTPMixerImpl::forward(const Tensor& A, const Tensor& B) {
  return mtp_mixer(A, B, vwn_parameters(), options.m(), options.n());
}
void MTPMixerImpl::reset_parameters() {
  assign(mtp_mixer_parameters(options.m(), options.n(), options.dim(), seed_from_torch(), options.dtype()));
}

}  // namespace vwn::libtorch
