// Built by an outside project against the installed vwn package (find_package(vwn CONFIG) + vwn::vwn): the
// umbrella header with the shared math and the generated version header, and one forward pass.
#include <vwn/vwn.hpp>

#include <iostream>

int main() {
  vwn::dghc<3, 5> layer(15);  // D = 15, block width D / m = 5
  vwn::dghc<3, 5>::workspace ws;
  const vwn::matrix<float> H = vwn::matrix<float>::Ones(2, layer.wide_width());
  vwn::matrix<float> X(2, 15), C(2, layer.wide_width());
  layer.forward_width(vwn::host, H, X, C, ws);
  if (!(X.array() == 1).all()) return 1;  // at initialisation X = H[0:m]
  std::cout << "vwn " << VWN_VERSION_STRING << ", vwn::dghc<3,5>: D=15 ok\n";
  return 0;
}
