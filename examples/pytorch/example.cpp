// vwn inside LibTorch in two minutes: a tiny over-width language model (embedding, two DGHC sub-layers around MLP
// backbones, reduce head, unembedding) trained with torch::optim::AdamW on a repeating token pattern. The (m, n)
// shape is chosen at run time: vwn_torch_example [m n] (default 2 3).
#include <cstdio>
#include <cstdlib>
#include <exception>

#include <pytorch/vwn_torch.hpp>

namespace vt = vwn::libtorch;

struct TinyModelImpl : torch::nn::Module {
  TinyModelImpl(int m, int n, std::int64_t vocab, std::int64_t dim)
      : embed(register_module("embed", vt::OverWidthEmbedding(vt::OverWidthEmbeddingOptions(m, n, vocab, dim)))),
        ghc1(register_module("ghc1", vt::GHC(vt::GHCOptions(m, n, dim)))),
        ghc2(register_module("ghc2", vt::GHC(vt::GHCOptions(m, n, dim)))),
        mlp1(register_module("mlp1", torch::nn::Linear(dim, dim))),
        mlp2(register_module("mlp2", torch::nn::Linear(dim, dim))),
        head(register_module("head", vt::ReduceHead(vt::WidthOptions(m, n, dim)))),
        unembed(register_module("unembed", torch::nn::Linear(dim, vocab))) {}

  torch::Tensor forward(const torch::Tensor& tokens) {
    torch::Tensor H = embed(tokens);                                               // [B, T, D']
    H = ghc1(H, [&](const torch::Tensor& X) { return torch::gelu(mlp1(X)); });     // the backbone sees [B, T, D]
    H = ghc2(H, [&](const torch::Tensor& X) { return torch::gelu(mlp2(X)); });
    return unembed(head(H));                                                       // [B, T, V]
  }

  vt::OverWidthEmbedding embed;
  vt::GHC ghc1, ghc2;
  torch::nn::Linear mlp1, mlp2;
  vt::ReduceHead head;
  torch::nn::Linear unembed;
};
TORCH_MODULE(TinyModel);

int main(int argc, char** argv) try {
  const int m = argc > 2 ? std::atoi(argv[1]) : 2, n = argc > 2 ? std::atoi(argv[2]) : 3;
  torch::manual_seed(0);
  const std::int64_t vocab = 16, dim = 32;
  TinyModel model(m, n, vocab, dim);
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(3e-3));
  // Next-token prediction on the sequence 0 1 2 ... 15 0 1 ...: learnable exactly.
  const torch::Tensor seq = torch::arange(0, 65, torch::kInt64).remainder(vocab).unsqueeze(0).repeat({4, 1});
  const torch::Tensor inputs = seq.slice(1, 0, 64).contiguous(), targets = seq.slice(1, 1, 65).contiguous();
  std::printf("vwn_torch_example: shape (%d,%d), D = %lld, D' = %lld, compiled shapes %s\n", m, n, (long long)dim,
              (long long)(n * dim / m), vt::compiled_shapes().c_str());
  for (int step = 0; step <= 200; ++step) {
    opt.zero_grad();
    const torch::Tensor logits = model(inputs);
    const torch::Tensor loss = torch::nn::functional::cross_entropy(logits.reshape({-1, vocab}), targets.reshape({-1}));
    loss.backward();
    opt.step();
    if (step % 50 == 0) std::printf("step %3d  loss %.4f\n", step, loss.item<double>());
  }
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "vwn_torch_example: error: %s\n", e.what());
  return 1;
}
