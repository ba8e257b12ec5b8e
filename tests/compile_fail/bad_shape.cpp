// Must not compile: a GHC needs n >= m >= 1, and here m = 3 > n = 2.
// Built only by the ctest entry compile_fail.bad_shape, which expects the
// library's static_assert message.
#include <vwn/vwn.hpp>

void make_bad_shape() {
  vwn::ghc<3, 2> layer(6);
  static_cast<void>(layer);
}
