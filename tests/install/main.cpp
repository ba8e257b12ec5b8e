// Built by an outside project against vwn in each of the ways tests/install shows (find_package, add_subdirectory,
// FetchContent, pkg-config, a plain compiler line): the umbrella header with the shared math and the version
// header, and one forward pass.
#include <vwn/vwn.hpp>

#include <iostream>

int main() {
  vwn::dghc<3, 5> layer(15);  // D = 15, block width D / m = 5
  vwn::dghc<3, 5>::workspace ws;
  const vwn::matrix<float> H = vwn::matrix<float>::Ones(2, layer.wide_width());
  vwn::matrix<float> X(2, 15), C(2, layer.wide_width());
  X.setConstant(-7);  // poison: the forward must overwrite every entry
  layer.forward_width(vwn::host, H, X, C, ws);
  if (!(X.array() == 1).all()) return 1;  // at initialisation X = H[0:m]
  std::cout << "vwn " << VWN_VERSION_STRING << ", vwn::dghc<3,5>: D=15 ok\n";
  return 0;
}
