// The staged width connection of the device (forward, and the dynamic backward), run on the host
// (tests/cuda/emulated_backend.cuh): the GHC test bodies every back end shares, with float and bf16 storage, on any
// machine with nvcc. And the plans and layouts the
// staged kernel is built on.
#include "emulated_backend.cuh"

#include <primitives/ghc_body.hpp>

namespace {

VWN_GHC_TESTS(EmulatedStagedFloatGhc, vwn_test::emulated_backend<float>)
VWN_GHC_TESTS(EmulatedStagedBf16Ghc, vwn_test::emulated_backend<vwn::cuda::bf16>)
VWN_GHC_LONG_TESTS(EmulatedStagedBf16GhcLong, vwn_test::emulated_backend<vwn::cuda::bf16>)

namespace d = vwn::cuda::detail;

// The projection tiles: every product owned once, at most 32 accumulators, and the reuse docs/cuda.md counts on.
TEST(StagedWidth, ProjectionTilesCoverEveryProductOnce) {
  const auto check = [](int R, int Kc, d::tile_plan p) {
    SCOPED_TRACE(std::to_string(R) + " x " + std::to_string(Kc));
    EXPECT_LE(p.tj * p.tk, 32);
    EXPECT_GE(p.parts, 1);
    EXPECT_LE(p.tiles * p.parts, d::block_threads);
    std::vector<int> owned(std::size_t(R * Kc), 0);
    for (int tile = 0; tile < p.tiles; ++tile)
      for (int u = 0; u < p.tj; ++u)
        for (int v = 0; v < p.tk; ++v) {
          const int r = (tile / p.tiles_k) * p.tj + u, k = (tile % p.tiles_k) * p.tk + v;
          if (r < R && k < Kc) ++owned[std::size_t(r * Kc + k)];
        }
    for (int o : owned) EXPECT_EQ(o, 1);
  };
  for (int R : {1, 2, 3, 4, 8, 16, 32, 64})
    for (int Kc : {1, 3, 4, 7, 16, 32, 48, 80}) check(R, Kc, d::plan_staged_tiles(R, Kc));
  // (2,3): one 3 x 7 tile, every thread a part; (4,8): four 4 x 8 tiles, 64 parts; (8,64): 160 tiles of 4 x 8
  // (no padding), one part each.
  constexpr d::tile_plan p23 = d::plan_staged_tiles(3, 7), p48 = d::plan_staged_tiles(8, 16),
                         p864 = d::plan_staged_tiles(64, 80);
  EXPECT_EQ(p23.tiles, 1);
  EXPECT_EQ(p23.parts, d::block_threads);
  EXPECT_EQ(p48.tiles, 4);
  EXPECT_EQ(p48.tj * p48.tk, 32);
  EXPECT_EQ(p48.parts, 64);
  EXPECT_EQ(p864.tiles, 160);
  EXPECT_EQ(p864.tj * p864.tk, 32);
  EXPECT_EQ(p864.parts, 1);
}

// The vector path needs aligned bases, 16-byte row strides and a slot width that is a multiple of 4.
TEST(StagedWidth, VectorPathOnlyWhereTheLayoutAllows) {
  alignas(16) static float buf[64];
  EXPECT_TRUE(d::staged_width_vector<float>(4, {{buf, 12}, {buf, 8}, {buf, 12}}));
  EXPECT_FALSE(d::staged_width_vector<float>(6, {{buf, 12}, {buf, 8}, {buf, 12}}));   // db not a multiple of 4
  EXPECT_FALSE(d::staged_width_vector<float>(4, {{buf, 13}, {buf, 8}, {buf, 12}}));   // a stride of 52 bytes
  EXPECT_FALSE(d::staged_width_vector<float>(4, {{buf + 1, 12}, {buf, 8}, {buf, 12}}));  // H not aligned
  EXPECT_TRUE(d::staged_width_vector<vwn::cuda::bf16>(4, {{buf, 24}, {buf, 8}, {buf, 24}}));
  EXPECT_FALSE(d::staged_width_vector<vwn::cuda::bf16>(4, {{buf, 12}, {buf, 8}, {buf, 12}}));  // 24-byte strides
}

// The four-value store of the staged kernels' vector path: the values rounded to the storage type, in memory order,
// the neighbours untouched; the packed vector is built from the values' bits (the device stores it as one 16- or
// 8-byte word, the host copies it).
template <class S>
void store4_writes_in_order() {
  std::mt19937_64 gen(vwn_test::fresh_seed());
  std::normal_distribution<float> nd(0.f, 3.f);
  alignas(16) S out[12];
  for (int round = 0; round < 8; ++round) {
    const float v[4] = {nd(gen), nd(gen), nd(gen), nd(gen)};
    for (auto& o : out) o = vwn::cuda::from_float<S>(-99.f);
    d::store4(out + 4, v);
    for (int i = 0; i < 12; ++i) {
      const float want = i >= 4 && i < 8 ? vwn::cuda::to_float(vwn::cuda::from_float<S>(v[i - 4])) : -99.f;
      EXPECT_EQ(vwn::cuda::to_float(out[i]), want) << "element " << i << ", values " << v[0] << " " << v[1] << " "
                                                   << v[2] << " " << v[3];
    }
  }
}

TEST(StagedWidth, Store4WritesTheRoundedValuesInOrder) {
  store4_writes_in_order<float>();
  store4_writes_in_order<vwn::cuda::bf16>();
  static_assert(std::is_same_v<decltype(d::pack4<float>({1, 2, 3, 4})), uint4>);
  static_assert(std::is_same_v<decltype(d::pack4<vwn::cuda::bf16>({1, 2, 3, 4})), uint2>);
}

// The token groups of the column reductions: about column_grid blocks with the column blocks, between min_groups
// and max_groups, never more than the tokens (every group at least one token); a function of T and the width only.
TEST(StagedWidth, TokenGroupsFillTheColumnGrid) {
  for (const vwn::index_t T : {1, 5, 37, 127, 128, 129, 4133, 16384, 65536})
    for (const vwn::index_t cols : {1, 2, 4, 8, 16, 17, 64}) {
      const vwn::index_t g = d::token_groups(T, cols);
      SCOPED_TRACE("T " + std::to_string(T) + ", column blocks " + std::to_string(cols) + ": " + std::to_string(g));
      EXPECT_GE(g, 1);
      EXPECT_LE(g, T);
      EXPECT_LE(g, d::max_groups);
      EXPECT_GE(g, std::min(T, d::min_groups));
      if (T >= d::max_groups) EXPECT_TRUE(g * cols >= d::column_grid || g == d::max_groups);
    }
  EXPECT_EQ(d::token_groups(16384, 4), 512u);   // (2,3) at D = 1024: db 512, four column blocks
  EXPECT_EQ(d::token_groups(16384, 16), 128u);  // (2,3) at D = 4096: sixteen column blocks
  EXPECT_EQ(d::token_groups(4133, 1), 1024u);   // the long sequence at db 15: about four tokens a group
}

// Shared memory of the staged kernel at the shapes docs/cuda.md tabulates (D = 4096, bf16): within an H100's 227 KiB.
TEST(StagedWidth, SharedMemoryOfTheDocumentedShapes) {
  EXPECT_EQ((d::staged_width_layout<2, 3, vwn::cuda::bf16, true>::slab_bytes(2048)), 3u * 2048 * 2);
  // slab + floats of partials, second level, totals and coefficients: 256 x 24 + 10 x 24 + 24 + 21 (38 KB);
  // 64 x 136 + 136 + 128 (52 KB); (8,64) has one part per tile: 5184 + 5120 (106 KB).
  EXPECT_EQ((d::staged_width_layout<2, 3, vwn::cuda::bf16, true>::bytes(2048)), 12288u + 4 * 6429);
  EXPECT_EQ((d::staged_width_layout<4, 8, vwn::cuda::bf16, true>::bytes(1024)), 16384u + 4 * 8968);
  EXPECT_EQ((d::staged_width_layout<8, 64, vwn::cuda::bf16, true>::bytes(512)), 65536u + 4 * 10304);
  EXPECT_GT((d::staged_width_layout<8, 64, float, true>::bytes(1000)), 227u * 1024);  // the tiled kernel's case
}

}  // namespace
