// vwn's primitives as LibTorch autograd operators and modules (vwn_torch.hpp). The work is done by the reference
// transformer's width parts (transformer/width.hpp): vwn's host primitives of every compiled shape behind run-time
// interfaces, compiled once in the transformer libraries. This file holds the glue: argument checks, views of
// torch tensors as Eigen rows, the autograd nodes and the modules.

#include "vwn_torch.hpp"

#include <cstdlib>
#include <cstring>
#include <limits>
#include <string_view>
#include <mutex>
#include <set>
#include <sstream>
#include <stdexcept>
#include <utility>

#include <vwn/core/shapes.hpp>
#include <vwn/embedding.hpp>
#include <vwn/ghc.hpp>
#include <vwn/mtp.hpp>
#include <vwn/reduce.hpp>

#include <train/checkpoint.hpp>
#include <transformer/width.hpp>

namespace vwn::libtorch {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::string compiled_shapes() { return vwn::compiled_shapes_text(); }

// ---------------------------------------------------------------------------------------------------------------
// The primitive: one width part of the transformer in float or double, its tensors' names and shapes, its lock.
// ---------------------------------------------------------------------------------------------------------------

enum class part_kind { ghc, embedding, head, mixer };

struct tensor_info {
  std::string name;
  std::vector<std::int64_t> shape;
  bool decay = false;
  void* param = nullptr;
  void* grad = nullptr;
  std::int64_t size = 0;
};

class primitive {
 public:
  virtual ~primitive() = default;
  part_kind kind{};
  std::string label;  // "vwn::dghc<2,3> (D = 512, float32)"
  torch::Dtype dtype = torch::kFloat32;
  int m = 1, n = 1;
  std::int64_t dim = 0, wide = 0, vocab = 0;
  std::vector<tensor_info> tensors;
  std::mutex mutex;
};

namespace {

template <class Scalar>
constexpr torch::Dtype dtype_of = std::is_same_v<Scalar, float> ? torch::kFloat32 : torch::kFloat64;

template <class Scalar>
class typed_primitive final : public primitive {
 public:
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

std::string dtype_name(torch::Dtype t) {
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

// The 1-D tensors of vwn's lists (norm weights); every other tensor is rows x cols.
bool is_vector(std::string_view name) { return name == "g" || name == "gn_weight" || name == "gn_bias"; }

// Builds the typed primitive of a compiled shape, or refuses the shape naming the compiled ones.
template <class Make>
std::shared_ptr<primitive> build(const std::string& what, int m, int n, std::int64_t dim, torch::Dtype dtype,
                                 const Make& make) {
  TORCH_CHECK_TYPE(dtype == torch::kFloat32 || dtype == torch::kFloat64, what,
                   ": dtype: expected float32 or float64, got ", dtype_name(dtype));
  bool compiled = false;
  dispatch_shape(m, n, [&]<int M, int N>() { compiled = true; });
  TORCH_CHECK_VALUE(compiled, what, ": shape (m, n): expected one of the shapes this build compiled, ",
                    compiled_shapes_text(), "; got (", m, ",", n, ")");
  TORCH_CHECK_VALUE(dim > 0 && dim % m == 0, what, ": dim: expected a positive multiple of m = ", m, ", got ", dim);
  std::shared_ptr<primitive> out;
  if (dtype == torch::kFloat32) {
    auto p = std::make_shared<typed_primitive<float>>();
    make(*p, model::width_parts<float>({m, n, false}), model::width_parts<float>({m, n, true}));
    out = p;
  } else {
    auto p = std::make_shared<typed_primitive<double>>();
    make(*p, model::width_parts<double>({m, n, false}), model::width_parts<double>({m, n, true}));
    out = p;
  }
  out->dtype = dtype;
  out->m = m;
  out->n = n;
  out->dim = dim;
  out->wide = n * (dim / m);
  out->label = what + " (D = " + std::to_string(dim) + ", " + dtype_name(dtype) + ")";
  return out;
}

// Pairs the part's tensors (pointers, in visit order) with the shapes of vwn's tensor list `specs`.
template <class Scalar, class Specs>
void describe_tensors(typed_primitive<Scalar>& p, const Specs& specs) {
  p.visit([&](const std::string& name, Scalar* param, Scalar* grad, index_t size, bool decay) {
    tensor_info t{name, {}, decay, param, grad, size};
    for (const tensor_spec& s : specs)
      if (s.name == name) t.shape = is_vector(name) ? std::vector<std::int64_t>{s.rows} : std::vector<std::int64_t>{s.rows, s.cols};
    if (t.shape.empty()) throw std::logic_error("vwn_torch: tensor '" + name + "' is not in vwn's tensor list");
    p.tensors.push_back(std::move(t));
  });
}

template <class Scalar>
typed_primitive<Scalar>& typed(primitive& p) {
  return static_cast<typed_primitive<Scalar>&>(p);
}

// ---------------------------------------------------------------------------------------------------------------
// Checks and views
// ---------------------------------------------------------------------------------------------------------------

// A contiguous CPU tensor of the primitive's dtype whose last dimension is `width` (and, with `lead`, whose
// leading dimensions are `lead`); returns the token count (the product of the leading dimensions).
std::int64_t expect_rows(const primitive& p, const char* name, const Tensor& t, std::int64_t width,
                         const Tensor* like = nullptr) {
  TORCH_CHECK_VALUE(t.defined(), p.label, ": ", name, ": expected a tensor, got an undefined one");
  TORCH_CHECK_VALUE(t.device().is_cpu(), p.label, ": ", name, ": expected a CPU tensor, got one on ", t.device().str(),
                    " (this build of vwn_torch runs vwn's host back end only; it does not copy to the CPU)");
  TORCH_CHECK_TYPE(t.scalar_type() == p.dtype, p.label, ": ", name, ": expected dtype ", dtype_name(p.dtype),
                   " (the module's), got ", dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.dim() >= 1 && t.size(-1) == width, p.label, ": ", name, ": expected shape [..., ", width,
                    "], got ", shape_text(t.sizes()));
  if (like)
    TORCH_CHECK_VALUE(t.sizes().slice(0, t.dim() - 1) == like->sizes().slice(0, like->dim() - 1), p.label, ": ", name,
                      ": expected the leading dimensions of its partner, ", shape_text(like->sizes().slice(0, like->dim() - 1)),
                      ", got ", shape_text(t.sizes().slice(0, t.dim() - 1)));
  TORCH_CHECK_VALUE(t.is_contiguous(), p.label, ": ", name, ": expected a contiguous (row-major) tensor, got strides ",
                    shape_text(t.strides()), " for shape ", shape_text(t.sizes()), "; call .contiguous() first");
  TORCH_CHECK_VALUE(t.numel() > 0, p.label, ": ", name, ": expected at least one token, got shape ",
                    shape_text(t.sizes()));
  return t.numel() / width;
}

// A tensor every operator fills completely. With VWN_TORCH_POISON=1 in the environment (the tests set it) it starts
// as NaN, so that an entry an operator fails to write shows; otherwise it is left uninitialised.
Tensor output(c10::IntArrayRef sizes, const torch::TensorOptions& options) {
  static const bool poison = [] {
    const char* v = std::getenv("VWN_TORCH_POISON");
    return v && std::string_view(v) == "1";
  }();
  return poison ? torch::full(sizes, std::numeric_limits<double>::quiet_NaN(), options) : torch::empty(sizes, options);
}

template <class Scalar>
Eigen::Map<matrix<Scalar>> rows(const Tensor& t, std::int64_t width) {
  return {t.data_ptr<Scalar>(), t.numel() / width, width};
}

// A gradient from autograd as a contiguous tensor of the given shape (zeros where it is undefined: that output
// was not used).
Tensor incoming(const Tensor& g, c10::IntArrayRef sizes, torch::Dtype dtype) {
  if (!g.defined()) return torch::zeros(sizes, torch::TensorOptions().dtype(dtype));
  return g.contiguous();
}

// The parameters passed to an operator must be the primitive's (same count, shapes, dtype, CPU); a tensor that does
// not share the primitive's memory is copied into it (the parameter the caller passed is what the call uses).
void use_parameters(primitive& p, torch::TensorList params) {
  TORCH_CHECK_VALUE(params.size() == p.tensors.size(), p.label, ": params: expected ", p.tensors.size(),
                    " tensors (as parameters_of gives them), got ", params.size());
  const std::size_t elem = p.dtype == torch::kFloat32 ? sizeof(float) : sizeof(double);
  for (std::size_t i = 0; i < params.size(); ++i) {
    const tensor_info& t = p.tensors[i];
    const Tensor& x = params[i];
    TORCH_CHECK_VALUE(x.defined() && x.device().is_cpu(), p.label, ": parameter ", t.name,
                      ": expected a CPU tensor, got ", x.defined() ? x.device().str() : "an undefined tensor");
    TORCH_CHECK_TYPE(x.scalar_type() == p.dtype, p.label, ": parameter ", t.name, ": expected dtype ",
                     dtype_name(p.dtype), " (the module was built for it), got ", dtype_name(x.scalar_type()),
                     "; build the module with that dtype and load the state dict into it instead of converting it");
    TORCH_CHECK_VALUE(x.sizes() == c10::IntArrayRef(t.shape), p.label, ": parameter ", t.name, ": expected shape ",
                      shape_text(t.shape), ", got ", shape_text(x.sizes()));
    if (x.data_ptr() == t.param) continue;
    const Tensor c = x.contiguous();
    std::memcpy(t.param, c.data_ptr(), std::size_t(t.size) * elem);
  }
}

void zero_grads(primitive& p) {
  const std::size_t elem = p.dtype == torch::kFloat32 ? sizeof(float) : sizeof(double);
  for (const tensor_info& t : p.tensors) std::memset(t.grad, 0, std::size_t(t.size) * elem);
}

// The accumulated gradients, copied out (the primitive's buffers are reused by the next call).
void grads_out(primitive& p, variable_list& out) {
  for (const tensor_info& t : p.tensors)
    out.push_back(torch::from_blob(t.grad, t.shape, torch::TensorOptions().dtype(p.dtype)).clone());
}

// ---------------------------------------------------------------------------------------------------------------
// GHC
// ---------------------------------------------------------------------------------------------------------------

// What an autograd node keeps of its call: the primitive (alive while the node is) and, for GHC and the reduce head,
// the call's saved state. The width and depth nodes of one GHC use share one.
struct saved_call : torch::CustomClassHolder {
  std::shared_ptr<primitive> p;
  std::unique_ptr<model::ghc_layer<float>::state> ghc_f;
  std::unique_ptr<model::ghc_layer<double>::state> ghc_d;
  std::unique_ptr<model::head_layer<float>::state> head_f;
  std::unique_ptr<model::head_layer<double>::state> head_d;
  bool depth_used = false;      // GHC: a depth connection consumed the carry
  bool depth_backward = false;  // GHC: its backward ran (it fills the coefficient gradients the width backward reads)

  explicit saved_call(std::shared_ptr<primitive> core) : p(std::move(core)) {}
  template <class Scalar>
  auto& ghc_state() {
    if constexpr (std::is_same_v<Scalar, float>) return ghc_f;
    else return ghc_d;
  }
  template <class Scalar>
  auto& head_state() {
    if constexpr (std::is_same_v<Scalar, float>) return head_f;
    else return head_d;
  }
};

c10::IValue capsule(const c10::intrusive_ptr<saved_call>& c) {
  return c10::IValue::make_capsule(c10::intrusive_ptr<torch::CustomClassHolder>(c));
}

c10::intrusive_ptr<saved_call> call_of(const c10::IValue& v) {
  return c10::static_intrusive_pointer_cast<saved_call>(v.toCapsule());
}

template <class Scalar>
void width_forward(saved_call& call, const Tensor& H, const Tensor& X, const Tensor& C) {
  auto& p = typed<Scalar>(*call.p);
  call.ghc_state<Scalar>() = p.ghc->make_state();
  p.ghc->forward_width(rows<Scalar>(H, p.wide), rows<Scalar>(X, p.dim), rows<Scalar>(C, p.wide), *call.ghc_state<Scalar>());
}

template <class Scalar>
void width_backward(saved_call& call, const Tensor& H, const Tensor& dX, const Tensor& dC, const Tensor& dH) {
  auto& p = typed<Scalar>(*call.p);
  const std::int64_t T = H.numel() / p.wide;
  if (!call.depth_backward) {
    // No depth backward ran for this use (its output did not reach the loss, or no depth connection consumed the
    // carry): the coefficient gradients it would have left are zero.
    matrix<Scalar> zero_wide = matrix<Scalar>::Zero(T, p.wide), zero_dim = matrix<Scalar>::Zero(T, p.dim), dZ(T, p.dim);
    p.ghc->backward_depth(zero_wide, zero_dim, dZ, *call.ghc_state<Scalar>());
  }
  p.ghc->backward_width(rows<Scalar>(H, p.wide), rows<Scalar>(dX, p.dim), rows<Scalar>(dC, p.wide),
                        rows<Scalar>(dH, p.wide), *call.ghc_state<Scalar>());
}

template <class Scalar>
void depth_forward(saved_call& call, const Tensor& Z, const Tensor& C, const Tensor& H_out) {
  auto& p = typed<Scalar>(*call.p);
  p.ghc->forward_depth(rows<Scalar>(Z, p.dim), rows<Scalar>(C, p.wide), rows<Scalar>(H_out, p.wide),
                       *call.ghc_state<Scalar>());
}

template <class Scalar>
void depth_backward(saved_call& call, const Tensor& dH_out, const Tensor& Z, const Tensor& dZ) {
  auto& p = typed<Scalar>(*call.p);
  p.ghc->backward_depth(rows<Scalar>(dH_out, p.wide), rows<Scalar>(Z, p.dim), rows<Scalar>(dZ, p.dim),
                        *call.ghc_state<Scalar>());
}

template <class F>
void by_dtype(const primitive& p, F&& f) {
  if (p.dtype == torch::kFloat32) f.template operator()<float>();
  else f.template operator()<double>();
}

// The frame of every forward: under the primitive's lock and with `params` in use, runs `f<Scalar>()`; then saves the
// tensors `keep` and the parameters for the backward, and the call.
template <class F>
void run_forward(AutogradContext* ctx, const c10::intrusive_ptr<saved_call>& call, std::vector<Tensor> keep,
                 torch::TensorList params, F&& f) {
  primitive& p = *call->p;
  {
    std::lock_guard lock(p.mutex);
    use_parameters(p, params);
    by_dtype(p, f);
  }
  const std::size_t count = keep.size();
  keep.insert(keep.end(), params.begin(), params.end());
  ctx->save_for_backward(keep);
  ctx->saved_data["call"] = capsule(call);
  ctx->saved_data["count"] = std::int64_t(count);
}

// What a backward finds of its forward.
struct restored {
  c10::intrusive_ptr<saved_call> call;
  primitive& p;
  variable_list tensors;      // the forward's `keep`
  std::vector<Tensor> params;  // the parameters it used
};

restored restore(AutogradContext* ctx) {
  auto call = call_of(ctx->saved_data["call"]);
  const variable_list saved = ctx->get_saved_variables();
  const auto count = std::ptrdiff_t(ctx->saved_data["count"].toInt());
  return {call, *call->p, {saved.begin(), saved.begin() + count}, {saved.begin() + count, saved.end()}};
}

// The frame of every backward: under the lock, with the forward's parameters in use and the primitive's gradients
// cleared, runs `f<Scalar>()`, then appends the parameter gradients to `out`.
template <class F>
void run_backward(const restored& r, variable_list& out, F&& f) {
  std::lock_guard lock(r.p.mutex);
  use_parameters(r.p, r.params);
  zero_grads(r.p);
  by_dtype(r.p, f);
  grads_out(r.p, out);
}

struct ghc_width_fn : torch::autograd::Function<ghc_width_fn> {
  static variable_list forward(AutogradContext* ctx, c10::intrusive_ptr<saved_call> call, const Tensor& H,
                               torch::TensorList params) {
    primitive& p = *call->p;
    expect_rows(p, "H", H, p.wide);
    auto lead = H.sizes().vec();
    lead.back() = p.dim;
    Tensor X = output(lead, H.options()), C = output(H.sizes(), H.options());
    run_forward(ctx, call, {H}, params, [&]<class Scalar>() { width_forward<Scalar>(*call, H, X, C); });
    return {X, C};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const restored r = restore(ctx);
    const Tensor& H = r.tensors[0];
    auto lead = H.sizes().vec();
    lead.back() = r.p.dim;
    const Tensor dX = incoming(grads[0], lead, r.p.dtype), dC = incoming(grads[1], H.sizes(), r.p.dtype);
    Tensor dH = output(H.sizes(), H.options());
    variable_list out{Tensor(), dH};
    run_backward(r, out, [&]<class Scalar>() { width_backward<Scalar>(*r.call, H, dX, dC, dH); });
    return out;
  }
};

struct ghc_depth_fn : torch::autograd::Function<ghc_depth_fn> {
  static Tensor forward(AutogradContext* ctx, c10::intrusive_ptr<saved_call> call, const Tensor& Z, const Tensor& C,
                        torch::TensorList params) {
    primitive& p = *call->p;
    expect_rows(p, "C", C, p.wide);
    expect_rows(p, "Z", Z, p.dim, &C);
    Tensor H_out = output(C.sizes(), C.options());
    run_forward(ctx, call, {Z}, params, [&]<class Scalar>() {
      TORCH_CHECK_VALUE(!call->depth_used, p.label,
                        ": depth: expected the carry of a width connection not yet used, got one that a depth "
                        "connection already consumed (call width again for a second use)");
      depth_forward<Scalar>(*call, Z, C, H_out);
      call->depth_used = true;
    });
    return H_out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const restored r = restore(ctx);
    const Tensor& Z = r.tensors[0];
    auto lead = Z.sizes().vec();
    lead.back() = r.p.wide;
    const Tensor dH_out = incoming(grads[0], lead, r.p.dtype);
    Tensor dZ = output(Z.sizes(), Z.options());
    variable_list out{Tensor(), dZ, dH_out};
    run_backward(r, out, [&]<class Scalar>() {
      depth_backward<Scalar>(*r.call, dH_out, Z, dZ);
      r.call->depth_backward = true;
    });
    return out;
  }
};

// ---------------------------------------------------------------------------------------------------------------
// Embedding, reduce head, MTP mixer
// ---------------------------------------------------------------------------------------------------------------

// Tokens as int32 after checking every value against the vocabulary (an int64 token is never narrowed unchecked).
Tensor checked_tokens(const primitive& p, const Tensor& tokens) {
  TORCH_CHECK_VALUE(tokens.defined() && tokens.device().is_cpu(), p.label, ": tokens: expected a CPU tensor, got ",
                    tokens.defined() ? tokens.device().str() : "an undefined tensor");
  TORCH_CHECK_TYPE(tokens.scalar_type() == torch::kInt64 || tokens.scalar_type() == torch::kInt32, p.label,
                   ": tokens: expected dtype int64 or int32, got ", c10::toString(tokens.scalar_type()));
  TORCH_CHECK_VALUE(tokens.numel() > 0, p.label, ": tokens: expected at least one token, got shape ",
                    shape_text(tokens.sizes()));
  const Tensor bad = ((tokens < 0) | (tokens >= p.vocab)).reshape({-1}).nonzero();
  if (bad.numel() > 0) {
    const std::int64_t i = bad[0][0].item<std::int64_t>();
    TORCH_CHECK_INDEX(false, p.label, ": tokens: expected 0 <= token < vocabulary size ", p.vocab, ", got ",
                      tokens.reshape({-1})[i].item<std::int64_t>(), " at flat position ", i);
  }
  return tokens.to(torch::kInt32).contiguous();
}

std::span<const std::int32_t> token_span(const Tensor& tok) {
  return {tok.data_ptr<std::int32_t>(), std::size_t(tok.numel())};
}

struct embedding_fn : torch::autograd::Function<embedding_fn> {
  static Tensor forward(AutogradContext* ctx, std::shared_ptr<primitive> core, const Tensor& tokens,
                        torch::TensorList params) {
    primitive& p = *core;
    const Tensor tok = checked_tokens(p, tokens);
    auto shape = tokens.sizes().vec();
    shape.push_back(p.wide);
    Tensor H0 = output(shape, torch::TensorOptions().dtype(p.dtype));
    run_forward(ctx, c10::make_intrusive<saved_call>(core), {tok}, params, [&]<class Scalar>() {
      typed<Scalar>(p).embedding->forward(token_span(tok), rows<Scalar>(H0, p.wide));
    });
    return H0;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const restored r = restore(ctx);
    const Tensor& tok = r.tensors[0];
    auto shape = tok.sizes().vec();
    shape.push_back(r.p.wide);
    const Tensor dH0 = incoming(grads[0], shape, r.p.dtype);
    variable_list out{Tensor(), Tensor()};
    run_backward(r, out, [&]<class Scalar>() {
      typed<Scalar>(r.p).embedding->backward(token_span(tok), rows<Scalar>(dH0, r.p.wide));
    });
    return out;
  }
};

struct head_fn : torch::autograd::Function<head_fn> {
  static Tensor forward(AutogradContext* ctx, std::shared_ptr<primitive> core, const Tensor& H, torch::TensorList params) {
    primitive& p = *core;
    expect_rows(p, "H", H, p.wide);
    auto shape = H.sizes().vec();
    shape.back() = p.dim;
    Tensor h = output(shape, H.options());
    auto call = c10::make_intrusive<saved_call>(core);
    run_forward(ctx, call, {H}, params, [&]<class Scalar>() {
      auto& t = typed<Scalar>(p);
      call->head_state<Scalar>() = t.head->make_state();
      t.head->forward(rows<Scalar>(H, p.wide), rows<Scalar>(h, p.dim), *call->head_state<Scalar>());
    });
    return h;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const restored r = restore(ctx);
    const Tensor& H = r.tensors[0];
    auto shape = H.sizes().vec();
    shape.back() = r.p.dim;
    const Tensor dh = incoming(grads[0], shape, r.p.dtype);
    Tensor dH = output(H.sizes(), H.options());
    variable_list out{Tensor(), dH};
    run_backward(r, out, [&]<class Scalar>() {
      typed<Scalar>(r.p).head->backward(rows<Scalar>(H, r.p.wide), rows<Scalar>(dh, r.p.dim), rows<Scalar>(dH, r.p.wide),
                                        *r.call->head_state<Scalar>());
    });
    return out;
  }
};

struct mixer_fn : torch::autograd::Function<mixer_fn> {
  static Tensor forward(AutogradContext* ctx, std::shared_ptr<primitive> core, const Tensor& A, const Tensor& B,
                        torch::TensorList params) {
    primitive& p = *core;
    expect_rows(p, "A", A, p.wide);
    expect_rows(p, "B", B, p.wide, &A);
    Tensor U = output(A.sizes(), A.options());
    run_forward(ctx, c10::make_intrusive<saved_call>(core), {A, B}, params, [&]<class Scalar>() {
      typed<Scalar>(p).mixer->forward(rows<Scalar>(A, p.wide), rows<Scalar>(B, p.wide), rows<Scalar>(U, p.wide));
    });
    return U;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const restored r = restore(ctx);
    const Tensor &A = r.tensors[0], &B = r.tensors[1];
    const Tensor dU = incoming(grads[0], A.sizes(), r.p.dtype);
    Tensor dA = output(A.sizes(), A.options()), dB = output(B.sizes(), B.options());
    variable_list out{Tensor(), dA, dB};
    run_backward(r, out, [&]<class Scalar>() {
      typed<Scalar>(r.p).mixer->backward(rows<Scalar>(A, r.p.wide), rows<Scalar>(B, r.p.wide), rows<Scalar>(dU, r.p.wide),
                                         rows<Scalar>(dA, r.p.wide), rows<Scalar>(dB, r.p.wide));
    });
    return out;
  }
};

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// The public functions
// ---------------------------------------------------------------------------------------------------------------

std::string describe(const primitive& p) { return p.label; }

std::vector<parameter> parameters_of(const std::shared_ptr<primitive>& p) {
  std::vector<parameter> out;
  for (const tensor_info& t : p->tensors) {
    // The tensor shares the primitive's memory and keeps the primitive alive.
    Tensor x = torch::from_blob(t.param, t.shape, [keep = p](void*) {}, torch::TensorOptions().dtype(p->dtype));
    out.push_back({t.name, x, t.decay});
  }
  return out;
}

std::shared_ptr<primitive> make_ghc(int m, int n, std::int64_t dim, bool dynamic, torch::Dtype dtype) {
  const std::string what = std::string(dynamic ? "vwn::dghc<" : "vwn::ghc<") + std::to_string(m) + "," +
                           std::to_string(n) + ">";
  return build(what, m, n, dim, dtype, [&]<class Scalar>(typed_primitive<Scalar>& p, const auto& fixed, const auto& dyn) {
    p.kind = part_kind::ghc;
    p.ghc = (dynamic ? dyn : fixed).ghc(dim);
    dispatch_shape(m, n, [&]<int M, int N>() {
      if (dynamic) describe_tensors(p, ghc_tensors<M, N, true>(dim / M));
      else describe_tensors(p, ghc_tensors<M, N, false>(dim / M));
    });
  });
}

ghc_width_result ghc_width(const std::shared_ptr<primitive>& ghc, const Tensor& H, torch::TensorList params) {
  TORCH_CHECK_VALUE(ghc && ghc->kind == part_kind::ghc, "vwn_torch: ghc_width: expected a GHC primitive, got ",
                    ghc ? ghc->label : "none");
  auto call = c10::make_intrusive<saved_call>(ghc);
  variable_list xc = ghc_width_fn::apply(call, H, params);
  return {xc[0], {xc[1], c10::intrusive_ptr<torch::CustomClassHolder>(call)}};
}

Tensor ghc_depth(const Tensor& Z, const ghc_carry& carry, torch::TensorList params) {
  TORCH_CHECK_VALUE(carry.saved, "vwn_torch: ghc_depth: expected the carry of a width connection, got an empty one");
  auto call = c10::static_intrusive_pointer_cast<saved_call>(carry.saved);
  return ghc_depth_fn::apply(call, Z, carry.C, params);
}

std::shared_ptr<primitive> make_embedding(int m, int n, std::int64_t vocab, std::int64_t dim, bool lowrank,
                                          std::uint64_t seed, torch::Dtype dtype) {
  const std::string what = std::string(lowrank ? "vwn::lowrank_overwidth_embedding<" : "vwn::overwidth_embedding<") +
                           std::to_string(m) + "," + std::to_string(n) + ">";
  TORCH_CHECK_VALUE(vocab > 0, what, ": vocab: expected a positive vocabulary size, got ", vocab);
  auto p = build(what, m, n, dim, dtype, [&]<class Scalar>(typed_primitive<Scalar>& p, const auto& fixed, const auto&) {
    p.kind = part_kind::embedding;
    p.embedding = fixed.embedding(vocab, dim, lowrank, seed);
    dispatch_shape(m, n, [&]<int M, int N>() {
      if (lowrank) describe_tensors(p, lowrank_overwidth_embedding_tensors<M, N>(vocab, dim));
      else describe_tensors(p, overwidth_embedding_tensors<M, N>(vocab, dim));
    });
  });
  p->vocab = vocab;
  return p;
}

Tensor embedding_forward(const std::shared_ptr<primitive>& embedding, const Tensor& tokens, torch::TensorList params) {
  TORCH_CHECK_VALUE(embedding && embedding->kind == part_kind::embedding,
                    "vwn_torch: embedding_forward: expected an embedding primitive, got ", embedding ? embedding->label : "none");
  return embedding_fn::apply(embedding, tokens, params);
}

std::shared_ptr<primitive> make_reduce_head(int m, int n, std::int64_t dim, std::uint64_t seed, torch::Dtype dtype) {
  const std::string what = "vwn::reduce_head<" + std::to_string(m) + "," + std::to_string(n) + ">";
  return build(what, m, n, dim, dtype, [&]<class Scalar>(typed_primitive<Scalar>& p, const auto& fixed, const auto&) {
    p.kind = part_kind::head;
    p.head = fixed.head(dim, seed);
    dispatch_shape(m, n, [&]<int M, int N>() { describe_tensors(p, reduce_head_tensors<M, N>(dim)); });
  });
}

Tensor reduce_head_forward(const std::shared_ptr<primitive>& head, const Tensor& H, torch::TensorList params) {
  TORCH_CHECK_VALUE(head && head->kind == part_kind::head, "vwn_torch: reduce_head_forward: expected a reduce head, got ",
                    head ? head->label : "none");
  return head_fn::apply(head, H, params);
}

std::shared_ptr<primitive> make_mtp_mixer(int m, int n, std::int64_t dim, std::uint64_t seed, torch::Dtype dtype) {
  const std::string what = "vwn::mtp_mixer<" + std::to_string(m) + "," + std::to_string(n) + ">";
  return build(what, m, n, dim, dtype, [&]<class Scalar>(typed_primitive<Scalar>& p, const auto& fixed, const auto&) {
    p.kind = part_kind::mixer;
    p.mixer = fixed.mixer(dim, seed);
    dispatch_shape(m, n, [&]<int M, int N>() { describe_tensors(p, mtp_mixer_tensors<M, N>(dim)); });
  });
}

Tensor mtp_mixer_forward(const std::shared_ptr<primitive>& mixer, const Tensor& A, const Tensor& B,
                         torch::TensorList params) {
  TORCH_CHECK_VALUE(mixer && mixer->kind == part_kind::mixer, "vwn_torch: mtp_mixer_forward: expected an MTP mixer, got ",
                    mixer ? mixer->label : "none");
  return mixer_fn::apply(mixer, A, B, params);
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

void load_parameters(const std::shared_ptr<primitive>& p, const std::vector<Tensor>& params,
                     const std::map<std::string, Tensor>& tensors, const std::string& prefix) {
  TORCH_CHECK_VALUE(params.size() == p->tensors.size(), p->label, ": load: expected ", p->tensors.size(),
                    " parameters, got ", params.size());
  // Every tensor first, then the copies: a failed load changes nothing.
  std::vector<Tensor> found;
  for (const tensor_info& t : p->tensors) {
    const auto it = tensors.find(prefix + t.name);
    TORCH_CHECK_VALUE(it != tensors.end(), p->label, ": load: expected a tensor '", prefix + t.name, "', got none");
    TORCH_CHECK_VALUE(it->second.numel() == t.size, p->label, ": load: tensor '", prefix + t.name, "': expected ",
                      t.size, " values (shape ", shape_text(t.shape), "), got ", it->second.numel(), " (shape ",
                      shape_text(it->second.sizes()), ")");
    found.push_back(it->second);
  }
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < found.size(); ++i)
    params[i].copy_(found[i].reshape(p->tensors[i].shape).to(p->dtype));
}

// ---------------------------------------------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------------------------------------------

PrimitiveModule::PrimitiveModule(std::shared_ptr<primitive> p) : core(std::move(p)) {
  for (parameter& x : parameters_of(core)) params_.push_back(register_parameter(x.name, x.tensor));
}
void PrimitiveModule::load_from(const std::map<std::string, Tensor>& tensors, const std::string& prefix) {
  load_parameters(core, params_, tensors, prefix);
}

GHCImpl::GHCImpl(const GHCOptions& o)
    : PrimitiveModule(make_ghc(o.m(), o.n(), o.dim(), o.dynamic(), o.dtype())), options(o) {}
Tensor GHCImpl::forward(const Tensor& H, const std::function<Tensor(const Tensor&)>& backbone) {
  ghc_width_result w = width(H);
  return depth(backbone(w.X), w.carry);
}
ghc_width_result GHCImpl::width(const Tensor& H) { return ghc_width(core, H, params_); }
Tensor GHCImpl::depth(const Tensor& Z, const ghc_carry& carry) { return ghc_depth(Z, carry, params_); }

OverWidthEmbeddingImpl::OverWidthEmbeddingImpl(const OverWidthEmbeddingOptions& o)
    : PrimitiveModule(make_embedding(o.m(), o.n(), o.vocab(), o.dim(), o.lowrank(), o.seed(), o.dtype())), options(o) {}
Tensor OverWidthEmbeddingImpl::forward(const Tensor& tokens) { return embedding_forward(core, tokens, params_); }

ReduceHeadImpl::ReduceHeadImpl(const WidthOptions& o)
    : PrimitiveModule(make_reduce_head(o.m(), o.n(), o.dim(), o.seed(), o.dtype())), options(o) {}
Tensor ReduceHeadImpl::forward(const Tensor& H) { return reduce_head_forward(core, H, params_); }

MTPMixerImpl::MTPMixerImpl(const WidthOptions& o)
    : PrimitiveModule(make_mtp_mixer(o.m(), o.n(), o.dim(), o.seed(), o.dtype())), options(o) {}
Tensor MTPMixerImpl::forward(const Tensor& A, const Tensor& B) { return mtp_mixer_forward(core, A, B, params_); }

}  // namespace vwn::libtorch
