// A checkpoint written by vwn 0.1.0 (tests/data/checkpoint_v1_step2.safetensors: a (2,3) dynamic GHC model with MTP,
// D = 8, one layer, trained 2 of 4 steps on tests/data/checkpoint_v1_corpus.txt) still loads, and resumes bit for
// bit: its last 2 steps give exactly the tensors (parameters and AdamW moments) of
// checkpoint_v1_resumed_step4.safetensors. That file was written by resuming the 0.1.0 file with the host arithmetic
// of 0.2.0, whose DGHC forms its projection from the folded weight and its slot-width reductions in register tiles
// (docs/checkpoint.md): 0.1.0's own uninterrupted run (its step-4 file, in the history of tests/data) differs from it
// in the last bits. Any later change of the host arithmetic, of the checkpoint layout or of the batch order fails
// this test; a deliberate change of the arithmetic writes the file again, with VWN_TEST_WRITE_FIXTURE=<path> set for
// this test in a build without -march=native, and says so in docs/checkpoint.md.

#include <train/trainer.hpp>

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

namespace {

namespace fs = std::filesystem;
namespace train = vwn::train;

const fs::path data_dir = VWN_TEST_DATA_DIR;

TEST(CheckpointFixture, VersionOneCheckpointResumesBitForBit) {
  const train::checkpoint start = train::read_checkpoint(data_dir / "checkpoint_v1_step2.safetensors");
  ASSERT_EQ(start.step, 2);
  ASSERT_EQ(start.config.steps, 4);
  const auto corpus = vwn::data::text_corpus::load(data_dir / "checkpoint_v1_corpus.txt", start.config.model.context,
                                                   start.config.val_fraction);
  train::trainer t = train::trainer::resume(start.path, start.config, corpus);
  while (t.steps_done() < start.config.steps) t.train_step();
#ifdef VWN_TEST_NATIVE
  GTEST_SKIP() << "built with -march=native: the fixture was written with the default instruction set, and fused "
                  "multiply-adds change the rounding";
#endif
  if (const char* write = std::getenv("VWN_TEST_WRITE_FIXTURE"); write != nullptr && *write != '\0') {
    t.save(write);
    GTEST_SKIP() << "wrote the resumed run's checkpoint to " << write;
  }
  const train::checkpoint end = train::read_checkpoint(data_dir / "checkpoint_v1_resumed_step4.safetensors");
  ASSERT_EQ(end.step, 4);
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
