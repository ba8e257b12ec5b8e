// A checkpoint written by vwn 0.1.0 (tests/data/checkpoint_v1_step2.safetensors: a (2,3) dynamic GHC model with MTP,
// D = 8, one layer, trained 2 of 4 steps on tests/data/checkpoint_v1_corpus.txt) still loads, and resumes bit for
// bit: its last 2 steps give exactly the tensors (parameters and AdamW moments) of checkpoint_v1_step4.safetensors,
// written by the same run going on uninterrupted. Both files were written by that version; any later change of
// the host arithmetic, of the checkpoint layout or of the batch order fails this test.

#include <train/trainer.hpp>

#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>

namespace {

namespace fs = std::filesystem;
namespace train = vwn::train;

const fs::path data_dir = VWN_TEST_DATA_DIR;

TEST(CheckpointFixture, VersionOneCheckpointResumesBitForBit) {
  const train::checkpoint start = train::read_checkpoint(data_dir / "checkpoint_v1_step2.safetensors");
  const train::checkpoint end = train::read_checkpoint(data_dir / "checkpoint_v1_step4.safetensors");
  ASSERT_EQ(start.step, 2);
  ASSERT_EQ(end.step, 4);
  const auto corpus = vwn::data::text_corpus::load(data_dir / "checkpoint_v1_corpus.txt", start.config.model.context,
                                                   start.config.val_fraction);
  train::trainer t = train::trainer::resume(start.path, start.config, corpus);
  while (t.steps_done() < end.step) t.train_step();
#ifdef VWN_TEST_NATIVE
  GTEST_SKIP() << "built with -march=native: the fixture was written with the default instruction set, and fused "
                  "multiply-adds change the rounding";
#endif
  const fs::path out = fs::temp_directory_path() / ("vwn_fixture_" + std::to_string(::getpid()) + ".safetensors");
  t.save(out);
  const train::checkpoint got = train::read_checkpoint(out);
  fs::remove(out);
  EXPECT_EQ(got.step, end.step);
  EXPECT_EQ(got.optimizer_step, end.optimizer_step);
  EXPECT_EQ(got.sampler.batch_index, end.sampler.batch_index);
  EXPECT_EQ(got.file.names(), end.file.names());
  for (const std::string& name : end.file.names()) {
    ASSERT_TRUE(got.file.contains(name)) << name;
    EXPECT_TRUE(got.file.at(name).bytes == end.file.at(name).bytes) << "tensor " << name << " differs";
  }
}

}  // namespace
