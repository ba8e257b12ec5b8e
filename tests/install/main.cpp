// Built by an outside project against the installed vwn package
// (find_package(vwn CONFIG) + vwn::vwn).
#include <vwn/vwn.hpp>

#include <iostream>

int main() {
  vwn::dghc<3, 5> layer(15);  // D = 15, block width D / m = 5
  static_cast<void>(layer);
  std::cout << "vwn::dghc<3,5>: D=15 ok\n";
  return 0;
}
