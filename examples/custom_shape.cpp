// The custom (m, n) example of docs/api.md, compiled so that the documentation stays true.
#include <vwn/vwn.hpp>

int main() {
  constexpr int m = 3, n = 5;                  // 5/3 = 1.67x virtual width
  const vwn::index_t D = 960, T = 128;         // backbone width, tokens
  vwn::dghc<m, n> layer(D);                    // db = 320, D' = 1600
  vwn::dghc<m, n>::workspace ws;

  vwn::matrix<float> H = vwn::matrix<float>::Random(T, layer.wide_width());
  vwn::matrix<float> X(T, D), C(T, layer.wide_width()), H_out(T, layer.wide_width());
  layer.forward_width(vwn::host, H, X, C, ws);      // X: backbone input
  vwn::matrix<float> Z = X;                         // Z = your attention / FFN of X
  layer.forward_depth(vwn::host, Z, C, H_out, ws);  // next over-width state

  vwn::matrix<float> dH_out = vwn::matrix<float>::Ones(T, layer.wide_width());
  vwn::matrix<float> dZ(T, D), dH(T, layer.wide_width());
  layer.zero_grad();
  layer.backward_depth(vwn::host, dH_out, Z, dZ, ws);
  vwn::matrix<float> dX = dZ;                       // your backbone's backward of dZ
  layer.backward_width(vwn::host, H, dX, dH_out, dH, ws);
  layer.grads.visit([](std::string_view name, float* g, vwn::index_t size, bool decay) { (void)name, (void)g, (void)size, (void)decay; /* optimiser */ });
}
