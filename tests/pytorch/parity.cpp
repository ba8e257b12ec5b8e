// Training parity in LibTorch: a two-layer over-width model trained with torch::optim::AdamW, once with vwn's
// modules (vwn_torch.hpp) and once built from plain LibTorch operations (the math of docs/math.md written here
// independently, differentiated by autograd), from the same initial parameters on the same batches. Prints the loss
// of both at every step and fails (exit 1) where the losses or the final parameters disagree beyond the tolerance
// of their dtype.
//
//   vwn_torch_parity [steps]     (default 20)
//
// Model: tokens -> over-width embedding -> 2 x DGHC sub-layer around tanh(Linear(X)) -> reduce head -> Linear
// unembedding -> cross-entropy on the next token.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include <pytorch/vwn_torch.hpp>

namespace vt = vwn::libtorch;
using torch::Tensor;

namespace {

constexpr double eps = 1e-6;  // every normalisation's epsilon (docs/math.md)

struct sizes {
  int m, n;
  std::int64_t dim, vocab;
  std::int64_t db() const { return dim / m; }
  std::int64_t wide() const { return n * db(); }
};

// The model from vwn's modules.
struct VwnModelImpl : torch::nn::Module {
  explicit VwnModelImpl(const sizes& s, torch::Dtype dtype)
      : embed(register_module("embed", vt::OverWidthEmbedding(vt::OverWidthEmbeddingOptions(s.m, s.n, s.vocab, s.dim).dtype(dtype)))),
        ghc0(register_module("ghc0", vt::GHC(vt::GHCOptions(s.m, s.n, s.dim).dtype(dtype)))),
        ghc1(register_module("ghc1", vt::GHC(vt::GHCOptions(s.m, s.n, s.dim).dtype(dtype)))),
        lin0(register_module("lin0", torch::nn::Linear(s.dim, s.dim))),
        lin1(register_module("lin1", torch::nn::Linear(s.dim, s.dim))),
        head(register_module("head", vt::ReduceHead(vt::WidthOptions(s.m, s.n, s.dim).dtype(dtype)))),
        unembed(register_module("unembed", torch::nn::Linear(s.dim, s.vocab))) {
    for (torch::nn::Linear* l : {&lin0, &lin1, &unembed}) (*l)->to(dtype);  // vwn's modules are built in dtype
  }
  Tensor forward(const Tensor& tokens) {
    Tensor H = embed(tokens);
    H = ghc0(H, [&](const Tensor& X) { return torch::tanh(lin0(X)); });
    H = ghc1(H, [&](const Tensor& X) { return torch::tanh(lin1(X)); });
    return unembed(head(H));
  }
  vt::OverWidthEmbedding embed;
  vt::GHC ghc0, ghc1;
  torch::nn::Linear lin0, lin1;
  vt::ReduceHead head;
  torch::nn::Linear unembed;
};
TORCH_MODULE(VwnModel);

// The same model in plain LibTorch operations: parameters under the same names, values copied from the vwn model.
struct RefModelImpl : torch::nn::Module {
  RefModelImpl(const sizes& s, VwnModel& from) : s_(s) {
    for (const auto& p : from->named_parameters())
      params.push_back(register_parameter(dotless(p.key()), p.value().detach().clone()));
  }
  static std::string dotless(std::string k) {
    for (char& c : k)
      if (c == '.') c = '_';
    return k;
  }
  Tensor p(const std::string& name) { return named_parameters()[dotless(name)]; }

  Tensor ghc(const Tensor& H, const std::string& pre, const std::string& lin) {
    const auto B = H.size(0), T = H.size(1);
    const std::int64_t m = s_.m, n = s_.n, db = s_.db();
    const Tensor Ht = H.reshape({-1, n, db});
    // Dynamic coefficients.
    const Tensor u = Ht / torch::sqrt((Ht * Ht).mean(-1, true) + eps);
    const Tensor Hn = u * p(pre + ".g");
    const Tensor P = torch::tanh(torch::matmul(Hn, torch::cat({p(pre + ".W_alpha"), p(pre + ".W_beta")}, 1)) / std::sqrt(double(db)));
    const Tensor a = p(pre + ".S_alpha") * P.slice(-1, 0, m + n) + p(pre + ".alpha");
    const Tensor b = p(pre + ".S_beta") * P.slice(-1, m + n, 2 * m + n) + p(pre + ".beta");
    const Tensor mix = torch::einsum("tjk,tjd->tkd", {a, Ht});  // a^T H
    const Tensor X = mix.slice(1, 0, m).reshape({B, T, m * db});
    const Tensor C = mix.slice(1, m, m + n);
    const Tensor Z = torch::tanh(torch::nn::functional::linear(X, p(lin + ".weight"), p(lin + ".bias")));
    return (torch::einsum("tjk,tkd->tjd", {b, Z.reshape({-1, m, db})}) + C).reshape({B, T, n * db});
  }

  Tensor forward(const Tensor& tokens) {
    Tensor H = p("embed.E").index({tokens});
    H = ghc(H, "ghc0", "lin0");
    H = ghc(H, "ghc1", "lin1");
    Tensor x = H;
    if (s_.n != s_.m) {
      if (s_.n % s_.m == 0) {  // GroupNorm over groups of D contiguous values, biased variance
        const Tensor g = H.reshape({H.size(0), H.size(1), s_.n / s_.m, s_.dim});
        const Tensor mean = g.mean(-1, true);
        const Tensor var = (g - mean).square().mean(-1, true);
        x = ((g - mean) / torch::sqrt(var + eps)).reshape(H.sizes()) * p("head.gn_weight") + p("head.gn_bias");
      }
      x = torch::matmul(x, p("head.W_reduce").t());
    }
    return torch::nn::functional::linear(x, p("unembed.weight"), p("unembed.bias"));
  }
  sizes s_;
  std::vector<Tensor> params;
};
TORCH_MODULE(RefModel);

// Runs both models side by side; returns whether they agree.
bool run(const sizes& s, torch::Dtype dtype, int steps) {
  torch::manual_seed(7);
  VwnModel vwn_model(s, dtype);
  {  // move the dynamic GHC off its initialisation (W = 0 makes the coefficient path dead) and the norm too
    torch::NoGradGuard no_grad;
    for (auto& p : vwn_model->named_parameters())
      if (p.key().find("ghc") != std::string::npos || p.key().find("head.gn") != std::string::npos)
        p.value().add_(0.2 * torch::randn(p.value().sizes(), torch::TensorOptions().dtype(dtype)));
  }
  RefModel ref_model(s, vwn_model);
  const torch::optim::AdamWOptions opts = torch::optim::AdamWOptions(1e-2).weight_decay(0.1);
  torch::optim::AdamW opt_vwn(vwn_model->parameters(), opts), opt_ref(ref_model->parameters(), opts);
  // Relative tolerance on the loss and on the final parameters: the two models sum the same products in different
  // orders (round-off ~1e-16 in double, ~1e-7 in float per operation), which AdamW's normalised steps can amplify
  // where a gradient entry is near zero; 1e-9 / 1e-4 leave that margin and still catch any wrong term (a wrong
  // gradient changes the loss in the second or third digit within a few steps).
  const double rtol = dtype == torch::kFloat64 ? 1e-9 : 1e-4;
  std::printf("\n(%d,%d) DGHC, D = %lld, D' = %lld, %s, AdamW lr 1e-2, weight decay 0.1\n", s.m, s.n, (long long)s.dim,
              (long long)s.wide(), dtype == torch::kFloat64 ? "float64" : "float32");
  std::printf("step  loss (vwn)          loss (LibTorch ops)  |difference|\n");
  double worst = 0;
  for (int step = 0; step < steps; ++step) {
    const Tensor tokens = torch::randint(0, s.vocab, {4, 9}, torch::kInt64);
    const Tensor in = tokens.slice(1, 0, 8).contiguous(), target = tokens.slice(1, 1, 9).reshape({-1});
    opt_vwn.zero_grad();
    opt_ref.zero_grad();
    const Tensor lv = torch::nn::functional::cross_entropy(vwn_model(in).reshape({-1, s.vocab}), target);
    const Tensor lr = torch::nn::functional::cross_entropy(ref_model(in).reshape({-1, s.vocab}), target);
    lv.backward();
    lr.backward();
    opt_vwn.step();
    opt_ref.step();
    const double a = lv.item<double>(), b = lr.item<double>();
    worst = std::max(worst, std::abs(a - b) / std::abs(b));
    std::printf("%4d  %.15f  %.15f  %.3e\n", step, a, b, std::abs(a - b));
  }
  double worst_param = 0;
  std::string worst_name;
  auto ref_params = ref_model->named_parameters();
  for (const auto& p : vwn_model->named_parameters()) {
    const Tensor r = ref_params[RefModelImpl::dotless(p.key())];
    const double d = ((p.value() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item<double>();
    if (d > worst_param) worst_param = d, worst_name = p.key();
  }
  const bool ok = worst <= rtol && worst_param <= rtol;
  std::printf("largest relative loss difference %.3e, largest relative parameter difference after %d steps %.3e (%s); "
              "tolerance %.0e: %s\n",
              worst, steps, worst_param, worst_name.c_str(), rtol, ok ? "agree" : "DISAGREE");
  return ok;
}

}  // namespace

int main(int argc, char** argv) try {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 20;
  bool ok = true;
  for (const sizes s : {sizes{2, 3, 16, 32}, sizes{4, 8, 32, 32}})
    for (const torch::Dtype dtype : {torch::kFloat64, torch::kFloat32}) ok = run(s, dtype, steps) && ok;
  std::printf("\nvwn_torch_parity: %s\n", ok ? "all runs agree" : "FAILED");
  return ok ? 0 : 1;
} catch (const std::exception& e) {
  std::fprintf(stderr, "vwn_torch_parity: error: %s\n", e.what());
  return 1;
}
