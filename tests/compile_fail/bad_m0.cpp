// Must not compile: a dynamic GHC needs n >= m >= 1, and here m = 0.
// Built only by the ctest entry compile_fail.bad_m0, which expects the
// library's static_assert message.
#include <vwn/vwn.hpp>

void make_bad_m0() {
  vwn::dghc<0, 2> layer(4);
  static_cast<void>(layer);
}
