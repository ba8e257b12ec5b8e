// Tests for the run-time choice of the width shape (examples/transformer/width.hpp, model.hpp) and for the
// vwn_train library (examples/train/: settings and the command lines of vwn-train and vwn-sample, checkpoints
// and resume, log, sampling).
#include <train/trainer.hpp>
#include <transformer/blas.hpp>
#include <transformer/memory.hpp>

#include <gtest/gtest.h>

#include <support/common.hpp>
#include <support/training.hpp>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <sys/stat.h>

namespace {

namespace fs = std::filesystem;
namespace train = vwn::train;
namespace model = vwn::model;
namespace data = vwn::data;
using vwn::index_t;

using vwn_test::error_of;
using vwn_test::same_bits;
using vwn_test::state_bytes;

// A fresh, empty folder under the system temp folder, removed at the end of the test.
struct temp_dir {
  fs::path path;
  temp_dir() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("vwn_trainer_test_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void dump(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << bytes;
}

std::set<std::string> listing(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// A tiny run: one block, D = 32, T = 16, B = 2.
train::settings tiny(int m, int n, bool dynamic, bool mtp, bool lowrank = false) {
  train::settings s;
  s.m = m, s.n = n, s.dynamic = dynamic;
  s.model.width = 32;
  s.model.layers = 1;
  s.model.heads = 2;
  s.model.context = 16;
  s.model.mtp = mtp;
  s.model.lowrank_embedding = lowrank;
  s.batch = 2;
  s.lr = 1e-2;
  s.warmup = 3;
  s.steps = 12;
  s.eval_every = 4;
  s.eval_batches = 2;
  s.seed = 11;
  return s;
}

// ---------------------------------------------------------------------------------------------------------
// Registry
// ---------------------------------------------------------------------------------------------------------

TEST(TrainerRegistry, RejectsAnUnknownShapeListingTheAvailableOnes) {
  model::config c;
  c.width = 30;  // a multiple of m = 3
  c.heads = 3;   // head width 10: only the shape is wrong
  const std::string msg = error_of<std::invalid_argument>([&] { (void)model::make_transformer({3, 5, false}, c); });
  EXPECT_NE(msg.find("(3,5) static"), std::string::npos) << msg;
  for (const vwn::shape_id s : vwn::compiled_shapes)
    EXPECT_NE(msg.find(s.name()), std::string::npos) << s.name() << " missing from: " << msg;
  EXPECT_NE(msg.find("static or dynamic"), std::string::npos) << msg;
}

TEST(TrainerRegistry, EveryListedConfigurationBuildsAndRuns) {
  const auto shapes = model::available_shapes();
  // Every compiled shape, static and dynamic, in vwn, mhc and mhc-v4, and in mhc-lite where n <= 5.
  std::size_t expected = 0;
  for (const vwn::shape_id s : vwn::compiled_shapes) expected += 2 * (s.n <= vwn::mhc_lite_connection::max_n ? 4 : 3);
  EXPECT_EQ(shapes.size(), expected);
  std::vector<std::int32_t> x(8), y(8);
  for (int i = 0; i < 8; ++i) x[std::size_t(i)] = 40 + i, y[std::size_t(i)] = 41 + i;
  for (const auto& shape : shapes) {
    SCOPED_TRACE(shape.label());
    model::config c;
    c.width = 32, c.layers = 1, c.heads = 2, c.context = 8, c.mtp = true;
    auto m = model::make_transformer(shape, c);
    EXPECT_EQ(m->shape(), shape);
    EXPECT_EQ(m->name(), "vwn::model::transformer<" + std::to_string(shape.m) + "," + std::to_string(shape.n) +
                             (shape.dynamic ? ",dynamic" : ",static") +
                             (shape.connection == "vwn" ? ">" : "," + shape.connection + ">"));
    EXPECT_EQ(m->wide_width(), shape.n * (32 / shape.m));
    const model::losses l = m->forward(vwn::host, x, y, y, 8);
    EXPECT_TRUE(std::isfinite(l.total));
    EXPECT_NEAR(l.next, std::log(256.0), 0.5);  // near uniform at initialisation
    m->backward(vwn::host);
  }
}

TEST(TrainerRegistry, NextLogitsAgreeWithTheLossAndLeaveTheModelAlone) {
  model::config c;
  c.width = 32, c.layers = 2, c.heads = 2, c.context = 12, c.mtp = true, c.seed = 5;
  auto m = model::make_transformer({2, 3, true}, c);
  // Move away from the initialisation so that the logits are far from uniform.
  m->visit([](const std::string&, float* p, float*, index_t size, bool) {
    for (index_t i = 0; i < size; ++i) p[i] += 0.05f * std::sin(float(i) * 0.37f);
  });
  const std::vector<std::int32_t> tokens = {84, 104, 101, 32, 99, 97, 116, 32, 115, 97};
  const index_t T = index_t(tokens.size());
  m->zero_grad();
  const std::vector<float> logits = m->next_logits(tokens);
  ASSERT_EQ(logits.size(), 256u);
  m->visit([](const std::string& name, float*, float* g, index_t size, bool) {
    for (index_t i = 0; i < size; ++i) ASSERT_EQ(g[i], 0.0f) << name;
  });
  // The mean next-token loss changes with the last target y by -logit(y) / T (the log-sum-exp cancels).
  std::vector<std::int32_t> next(tokens.begin() + 1, tokens.end()), next2(std::size_t(T), 0);
  next.push_back(0);
  auto loss_with_last = [&](std::int32_t y) {
    next.back() = y;
    return m->forward(vwn::host, tokens, next, next2, T).next;
  };
  double spread = 0;
  for (std::int32_t y : {1, 32, 97, 101, 200}) {
    const double diff = (loss_with_last(0) - loss_with_last(y)) * double(T);  // logit(y) - logit(0)
    EXPECT_NEAR(double(logits[std::size_t(y)] - logits[0]), diff, 2e-4 + 1e-3 * std::abs(diff)) << "y = " << y;
    spread = std::max(spread, std::abs(diff));
  }
  EXPECT_GT(spread, 0.01);
  // The same logits as the last row of the model's own forward (with its MTP head).
  (void)loss_with_last(0);
  const vwn::matrix<float>& z = m->logits();
  ASSERT_EQ(z.rows(), T);
  for (index_t v = 0; v < 256; ++v) EXPECT_NEAR(z(T - 1, v), logits[std::size_t(v)], 1e-5f) << "v = " << v;
  // Only the last `context` tokens matter.
  std::vector<std::int32_t> longer = {1, 2, 3, 4, 5};
  longer.insert(longer.end(), tokens.begin(), tokens.end());
  std::vector<std::int32_t> window(longer.end() - c.context, longer.end());
  EXPECT_EQ(m->next_logits(longer), m->next_logits(window));
  EXPECT_THROW((void)m->next_logits({}), std::invalid_argument);
  EXPECT_THROW((void)m->next_logits(std::vector<std::int32_t>{300}), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------------------
// Settings and command line
// ---------------------------------------------------------------------------------------------------------

TEST(TrainerCli, ParsesEverySettingFlag) {
  const std::vector<std::string> args = {
      "--m", "4", "--n=8", "--static", "--connection", "mhc", "--width", "64", "--layers", "3", "--heads", "2", "--ffn", "96",
      "--context", "32", "--batch", "5", "--lowrank", "--no-mtp", "--mtp-lambda", "0.5", "--lr", "0.002",
      "--min-lr-ratio", "0.05", "--warmup", "7", "--steps", "70", "--schedule", "constant", "--weight-decay", "0.01",
      "--clip", "0", "--seed", "99", "--val-fraction", "0.2", "--eval-every", "10", "--eval-batches", "3",
      "--data", "corpus/", "--out", "runs/a", "--threads", "2", "--save-every", "20", "--sample", "0", "--overwrite"};
  const train::command_line cl = train::parse_command_line(args);
  train::settings s;
  train::apply(s, cl.assignments);
  EXPECT_EQ(s.m, 4);
  EXPECT_EQ(s.n, 8);
  EXPECT_FALSE(s.dynamic);
  EXPECT_EQ(s.connection, "mhc");
  EXPECT_EQ(s.model.width, 64);
  EXPECT_EQ(s.model.layers, 3);
  EXPECT_EQ(s.model.heads, 2);
  EXPECT_EQ(s.model.ffn(), 96);
  EXPECT_EQ(s.model.context, 32);
  EXPECT_EQ(s.batch, 5);
  EXPECT_TRUE(s.model.lowrank_embedding);
  EXPECT_FALSE(s.model.mtp);
  EXPECT_EQ(s.model.mtp_lambda, 0.5);
  EXPECT_EQ(s.lr, 0.002);
  EXPECT_EQ(s.min_lr_ratio, 0.05);
  EXPECT_EQ(s.warmup, 7);
  EXPECT_EQ(s.steps, 70);
  EXPECT_EQ(s.schedule, vwn::optim::lr_shape::constant);
  EXPECT_EQ(s.weight_decay, 0.01);
  EXPECT_EQ(s.clip, 0.0);
  EXPECT_EQ(s.seed, 99u);
  EXPECT_EQ(s.val_fraction, 0.2);
  EXPECT_EQ(s.eval_every, 10);
  EXPECT_EQ(s.eval_batches, 3);
  EXPECT_EQ(cl.run.data, fs::path("corpus/"));
  EXPECT_TRUE(cl.run.data_given);
  EXPECT_EQ(cl.run.out, fs::path("runs/a"));
  EXPECT_EQ(cl.run.threads, 2);
  EXPECT_EQ(cl.run.save_every, 20);
  EXPECT_EQ(cl.run.sample_bytes, 0);
  EXPECT_TRUE(cl.run.overwrite);
  EXPECT_FALSE(cl.run.resume.has_value());
  EXPECT_NO_THROW(train::validate(s));
}

TEST(TrainerCli, InlineAndSeparateValuesAgreeAndALaterFlagWins) {
  auto parsed = [](std::vector<std::string> args) {
    train::settings s;
    train::apply(s, train::parse_command_line(args).assignments);
    return s;
  };
  const train::settings a = parsed({"--width", "64", "--lr=0.5", "--mtp=false", "--dynamic=0"});
  const train::settings b = parsed({"--width=64", "--lr", "0.5", "--no-mtp", "--static"});
  EXPECT_TRUE(train::differences(a, b).empty());
  EXPECT_EQ(a.model.width, 64);
  EXPECT_EQ(a.lr, 0.5);
  EXPECT_FALSE(a.model.mtp);
  EXPECT_FALSE(a.dynamic);
  // In command-line order, the last one counts, for values and for switch pairs alike.
  const train::settings c = parsed({"--width", "64", "--no-mtp", "--static", "--width=96", "--mtp", "--dynamic=yes",
                                    "--no-lowrank", "--lowrank=on"});
  EXPECT_EQ(c.model.width, 96);
  EXPECT_TRUE(c.model.mtp);
  EXPECT_TRUE(c.dynamic);
  EXPECT_TRUE(c.model.lowrank_embedding);
  // A value is the next argument whatever it looks like; `--flag=` is the empty value.
  EXPECT_EQ(train::parse_command_line(std::vector<std::string>{"--data", "--weird-name"}).run.data, fs::path("--weird-name"));
  EXPECT_EQ(train::parse_command_line(std::vector<std::string>{"--data=-x", "--resume", "-"}).run.resume, fs::path("-"));
  // Nothing given: the defaults, no settings assigned.
  const train::command_line none = train::parse_command_line(std::vector<std::string>{});
  EXPECT_TRUE(none.assignments.empty());
  EXPECT_FALSE(none.run.data_given);
  EXPECT_FALSE(none.run.help);
  EXPECT_EQ(none.run.out, fs::path("out"));
  EXPECT_EQ(none.run.sample_bytes, 320);
  EXPECT_TRUE(train::parse_command_line(std::vector<std::string>{"-h"}).run.help);
  EXPECT_TRUE(train::parse_command_line(std::vector<std::string>{"--steps", "3", "--help"}).run.help);
  EXPECT_TRUE(train::parse_command_line(std::vector<std::string>{"--help=x"}).run.help);
  EXPECT_TRUE(train::parse_command_line(std::vector<std::string>{"--overwrite"}).run.overwrite);
}

TEST(TrainerCli, MoreBadArgumentsAreReportedInOurWords) {
  auto parse_error = [](std::vector<std::string> args) {
    return error_of<std::invalid_argument>([&] { (void)train::parse_command_line(args); });
  };
  EXPECT_EQ(parse_error({"--lr=-1"}), "--lr: expected a number in [0, 1], got '-1'");
  EXPECT_EQ(parse_error({"--steps", "--width", "3"}), "--steps: expected a positive integer, got '--width'");
  EXPECT_EQ(parse_error({"--steps="}), "--steps: expected a positive integer, got ''");
  EXPECT_EQ(parse_error({"--steps=", "5"}), "--steps: expected a positive integer, got ''");
  EXPECT_EQ(parse_error({"--width", "64", "--lr"}), "--lr: expected a value, got the end of the command line");
  EXPECT_EQ(parse_error({"--out="}), "--out: expected a folder, got ''");
  EXPECT_EQ(parse_error({"--out", ""}), "--out: expected a folder, got ''");
  EXPECT_EQ(parse_error({"--threads", "-1"}), "--threads: expected an integer >= 0 (0: the default), got '-1'");
  EXPECT_EQ(parse_error({"--sample", "2000000"}), "--sample: expected an integer in [0, 1048576], got '2000000'");
  EXPECT_EQ(parse_error({"--save-every", "x"}), "--save-every: expected an integer >= 0, got 'x'");
  EXPECT_EQ(parse_error({"--seed", "-3"}), "--seed: expected an integer in [0, 2^64), got '-3'");
  EXPECT_EQ(parse_error({"--m", "0"}), "--m: expected a positive integer, got '0'");
  EXPECT_EQ(parse_error({"--eval-every", "-1"}), "--eval-every: expected an integer >= 0, got '-1'");
  EXPECT_EQ(parse_error({"--dynamic=maybe"}), "--dynamic: expected true or false, got 'maybe'");
  EXPECT_EQ(parse_error({"--no-mtp=false"}), "--no-mtp: expected no value, got 'false'");
  EXPECT_EQ(parse_error({"--no-lowrank=1"}), "--no-lowrank: expected no value, got '1'");
  EXPECT_EQ(parse_error({"--overwrite=no"}), "--overwrite: expected no value, got 'no'");
  EXPECT_EQ(parse_error({"--overwrite="}), "--overwrite: expected no value, got ''");
  EXPECT_EQ(parse_error({"--static=true"}), "--static: expected no value, got 'true'");
  EXPECT_EQ(parse_error({"--mtp="}), "--mtp: expected true or false, got ''");
  EXPECT_EQ(parse_error({"--lowrank={}"}), "--lowrank: expected true or false, got '{}'");
  EXPECT_EQ(parse_error({"--frobnicate=3"}), "unknown option '--frobnicate=3' (try --help)");
  EXPECT_EQ(parse_error({"--steps", "5", "stray"}), "unknown option 'stray' (try --help)");
  EXPECT_EQ(parse_error({"-x"}), "unknown option '-x' (try --help)");
  EXPECT_EQ(parse_error({"--", "--steps", "5"}), "unknown option '--' (try --help)");
  EXPECT_EQ(parse_error({"--Width", "5"}), "unknown option '--Width' (try --help)");
}

TEST(TrainerCli, HelpListsEverySettingWithItsDefaultAndTheCompiledShapes) {
  const std::string help = train::train_help();
  const train::settings d;
  for (const train::setting_field& f : train::setting_fields()) {
    SCOPED_TRACE(f.flag);
    const std::size_t at = help.find("\n  " + f.flag + " ");
    ASSERT_NE(at, std::string::npos) << help;
    // The entry: its line, and the indented line its help goes on when the flags fill their column.
    std::size_t end = help.find('\n', at + 1);
    while (end != std::string::npos && help.compare(end + 1, 4, "    ") == 0) end = help.find('\n', end + 1);
    const std::string line = help.substr(at + 1, end - at - 1);
    EXPECT_NE(line.find(f.help), std::string::npos) << line;
    const std::string def = f.key == "ffn"          ? "0 = 8/3 D"
                            : f.key == "dynamic"    ? "dynamic"
                            : f.key == "freeze-ghc" ? "trained"
                                                    : f.get(d);
    EXPECT_NE(line.find(" [" + def + "]"), std::string::npos) << line;
    if (!f.negation.empty()) {
      EXPECT_NE(line.find("| " + f.negation), std::string::npos) << line;
    }
  }
  EXPECT_NE(help.find("  --width N "), std::string::npos) << help;
  EXPECT_NE(help.find("[128]"), std::string::npos) << help;
  for (const char* run_flag : {"--data PATH", "--out DIR", "--resume CHECKPOINT", "--threads N", "--save-every K",
                               "--sample N", "--overwrite", "  -h, --help "})
    EXPECT_NE(help.find(run_flag), std::string::npos) << run_flag << " missing from:\n" << help;
  EXPECT_NE(help.find("[data/brown.txt"), std::string::npos) << help;
  EXPECT_NE(help.find("[320]"), std::string::npos) << help;
  EXPECT_NE(help.find(model::available_shapes_text()), std::string::npos) << help;
  EXPECT_EQ(help.rfind("usage: vwn-train", 0), 0u) << help;

  const std::string sample = train::sample_help();
  for (const char* flag : {"--checkpoint PATH", "--prompt TEXT", "--tokens N", "--temperature T", "--top-k K",
                           "--seed S", "  -h, --help ", "[400]", "[0.8]", "[40]"})
    EXPECT_NE(sample.find(flag), std::string::npos) << flag << " missing from:\n" << sample;
}

TEST(TrainerCli, SampleCommandLine) {
  auto parse = [](std::vector<std::string> args) { return train::parse_sample_command_line(args); };
  const train::sample_command_line d = parse({"--checkpoint", "c.safetensors"});
  EXPECT_EQ(d.checkpoint, fs::path("c.safetensors"));
  EXPECT_EQ(d.prompt, "The ");
  EXPECT_EQ(d.sampling.tokens, 400);
  EXPECT_EQ(d.sampling.temperature, 0.8);
  EXPECT_EQ(d.sampling.top_k, 40);
  EXPECT_EQ(d.sampling.seed, 1u);
  EXPECT_FALSE(d.help);
  const train::sample_command_line a = parse({"--prompt=-- hi", "--checkpoint=x", "--tokens", "7", "--temperature=0",
                                              "--top-k", "0", "--seed", "18446744073709551615"});
  EXPECT_EQ(a.checkpoint, fs::path("x"));
  EXPECT_EQ(a.prompt, "-- hi");
  EXPECT_EQ(a.sampling.tokens, 7);
  EXPECT_EQ(a.sampling.temperature, 0.0);
  EXPECT_EQ(a.sampling.top_k, 0);
  EXPECT_EQ(a.sampling.seed, 18446744073709551615ull);
  EXPECT_EQ(parse({"--checkpoint", "x", "--prompt="}).prompt, "");
  EXPECT_EQ(parse({"--checkpoint", "x", "--prompt", ""}).prompt, "");
  EXPECT_EQ(parse({"--checkpoint", "x", "--prompt", "-n"}).prompt, "-n");
  EXPECT_EQ(parse({"--checkpoint", "x", "--prompt", "{}"}).prompt, "{}");
  EXPECT_EQ(parse({"--checkpoint", "x", "--prompt", "[a,b]"}).prompt, "[a,b]");
  EXPECT_EQ(parse({"--prompt", "--checkpoint", "--checkpoint", "y"}).prompt, "--checkpoint");
  EXPECT_EQ(parse({"--prompt", "--tokens=", "--checkpoint", "y"}).prompt, "--tokens=");
  EXPECT_TRUE(parse({"--help"}).help);  // no --checkpoint needed

  auto parse_error = [&](std::vector<std::string> args) {
    return error_of<std::invalid_argument>([&] { (void)parse(args); });
  };
  EXPECT_EQ(parse_error({}), "--checkpoint: expected a checkpoint path, got none (try --help)");
  EXPECT_EQ(parse_error({"--checkpoint", "x", "--tokens", "abc"}), "--tokens: expected an integer in [0, 16777216], got 'abc'");
  EXPECT_EQ(parse_error({"--checkpoint", "x", "--temperature=-1"}), "--temperature: expected a number in [0, 100], got '-1'");
  EXPECT_EQ(parse_error({"--checkpoint", "x", "--top-k", "-1"}), "--top-k: expected an integer >= 0, got '-1'");
  EXPECT_EQ(parse_error({"--checkpoint", "x", "--seed", "1.5"}), "--seed: expected an integer in [0, 2^64), got '1.5'");
  EXPECT_EQ(parse_error({"--checkpoint"}), "--checkpoint: expected a value, got the end of the command line");
  EXPECT_EQ(parse_error({"--checkpoint", "x", "--width", "3"}), "unknown option '--width' (try --help)");
}

TEST(TrainerCli, BadValuesNameTheFlagTheExpectationAndTheValue) {
  auto parse_error = [](std::vector<std::string> args) {
    return error_of<std::invalid_argument>([&] { (void)train::parse_command_line(args); });
  };
  EXPECT_EQ(parse_error({"--width", "abc"}), "--width: expected a positive integer, got 'abc'");
  EXPECT_EQ(parse_error({"--width", "0"}), "--width: expected a positive integer, got '0'");
  EXPECT_EQ(parse_error({"--lr", "-1"}), "--lr: expected a number in [0, 1], got '-1'");
  // Every real setting is finite and within a range in which a run can train.
  EXPECT_EQ(parse_error({"--lr", "1e308"}), "--lr: expected a number in [0, 1], got '1e308'");
  EXPECT_EQ(parse_error({"--lr", "inf"}), "--lr: expected a number in [0, 1], got 'inf'");
  EXPECT_EQ(parse_error({"--lr", "nan"}), "--lr: expected a number in [0, 1], got 'nan'");
  EXPECT_EQ(parse_error({"--weight-decay", "2"}), "--weight-decay: expected a number in [0, 1], got '2'");
  EXPECT_EQ(parse_error({"--mtp-lambda", "1e9"}), "--mtp-lambda: expected a number in [0, 100], got '1e9'");
  EXPECT_EQ(parse_error({"--clip", "1e7"}), "--clip: expected a number in [0, 1e6], got '1e7'");
  EXPECT_EQ(parse_error({"--adam-eps", "0"}), "--adam-eps: expected a number in (0, 1], got '0'");
  EXPECT_EQ(parse_error({"--adam-eps", "2"}), "--adam-eps: expected a number in (0, 1], got '2'");
  EXPECT_EQ(parse_error({"--beta2", "1"}), "--beta2: expected a number in [0, 1), got '1'");
  EXPECT_NO_THROW((void)train::parse_command_line(
      std::vector<std::string>{"--lr", "1", "--weight-decay", "1", "--clip", "1e6", "--adam-eps", "1"}));
  // Control characters in --out are refused by name (a newline would otherwise reach file names and scripts).
  EXPECT_EQ(parse_error({"--out", "a\nb"}),
            "--out: expected a folder name without control characters, got 'a\\x0ab' (\\x0a at byte 2)");
  EXPECT_EQ(parse_error({"--out=x\ty\x1b"}),
            "--out: expected a folder name without control characters, got 'x\\x09y\\x1b' (\\x09 at byte 2)");
  EXPECT_EQ(parse_error({"--val-fraction", "1.5"}), "--val-fraction: expected a number in (0, 1), got '1.5'");
  EXPECT_EQ(parse_error({"--schedule", "linear"}), "--schedule: expected cosine or constant, got 'linear'");
  EXPECT_EQ(parse_error({"--connection", "sinkhorn"}),
            "--connection: expected vwn mhc mhc-lite mhc-v4, got 'sinkhorn'");
  EXPECT_EQ(parse_error({"--mtp=maybe"}), "--mtp: expected true or false, got 'maybe'");
  EXPECT_EQ(parse_error({"--steps"}), "--steps: expected a value, got the end of the command line");
  EXPECT_EQ(parse_error({"--frobnicate", "3"}), "unknown option '--frobnicate' (try --help)");
  EXPECT_EQ(parse_error({"--static=yes"}), "--static: expected no value, got 'yes'");

  train::settings s;
  s.m = 3, s.n = 5;
  std::string msg = error_of<std::invalid_argument>([&] { train::validate(s); });
  EXPECT_NE(msg.find(vwn::compiled_shapes_text() + ", each static or dynamic, with connection vwn mhc mhc-lite mhc-v4 "
                     "(mhc-lite up to n = 5), got (3,5) dynamic"),
            std::string::npos)
      << msg;
  // A family not offered for the shape: mHC-lite's n! permutations stop at n = 5.
  s = train::settings();
  s.m = 8, s.n = 32, s.connection = "mhc-lite";
  msg = error_of<std::invalid_argument>([&] { train::validate(s); });
  EXPECT_NE(msg.find("--m/--n/--dynamic/--connection"), std::string::npos) << msg;
  EXPECT_NE(msg.find("got (8,32) dynamic mhc-lite"), std::string::npos) << msg;
  s = train::settings();
  s.m = 4, s.n = 8, s.model.width = 30, s.model.heads = 3;
  EXPECT_EQ(error_of<std::invalid_argument>([&] { train::validate(s); }),
            "--width: expected a multiple of m = 4, got 30");
  s = train::settings();
  s.warmup = 500, s.steps = 100;
  EXPECT_EQ(error_of<std::invalid_argument>([&] { train::validate(s); }),
            "--warmup: expected at most --steps = 100, got 500");
}

// ---------------------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------------------

TEST(TrainerOverfit, TinyModelLearnsOneFixedBatch) {
  // The training split is exactly one window of T + 2 bytes, so every batch is the same.
  train::settings s = tiny(2, 3, true, true);
  s.model.context = 24;
  s.batch = 2;
  s.steps = 300;
  s.warmup = 10;
  s.lr = 1e-2;
  s.schedule = vwn::optim::lr_shape::constant;
  s.weight_decay = 0;
  const std::string window = "the cat sat on the mat.\nab";  // 26 bytes = T + 2
  ASSERT_EQ(window.size(), 26u);
  const data::text_corpus corpus = data::text_corpus::from_bytes(window + window, 24, 0.5);
  ASSERT_EQ(corpus.train().size(), 26u);
  train::trainer t(s, corpus);
  train::step_result first, last;
  for (index_t i = 0; i < s.steps; ++i) {
    last = t.train_step();
    if (i == 0) first = last;
  }
  EXPECT_GT(first.loss.next, 5.0);
  EXPECT_LT(last.loss.next, 0.05) << "next-token loss after " << s.steps << " steps";
  EXPECT_LT(last.loss.next2, 0.05) << "next-2-token loss after " << s.steps << " steps";
  EXPECT_EQ(t.steps_done(), 300);
}

// Trains `s` for s.steps steps, saving a checkpoint after step k and evaluating every eval_every steps;
// then resumes from the checkpoint and checks that every later loss and the final state are bit-identical.
void check_resume_is_exact(const train::settings& s, index_t k) {
  temp_dir dir;
  const data::text_corpus corpus = data::text_corpus::from_bytes(vwn_test::english_text(6000), s.model.context, 0.2);
  const fs::path ck = dir.path / "checkpoint.safetensors";

  train::trainer a(s, corpus);
  std::vector<train::step_result> ref;
  std::vector<train::evaluation> ref_eval;
  while (a.steps_done() < s.steps) {
    ref.push_back(a.train_step());
    if (a.steps_done() % s.eval_every == 0) ref_eval.push_back(a.evaluate());
    if (a.steps_done() == k) a.save(ck);
  }
  EXPECT_EQ(listing(dir.path), std::set<std::string>{"checkpoint.safetensors"});  // no temporary file left

  const train::checkpoint c = train::read_checkpoint(ck);
  EXPECT_EQ(c.step, k);
  EXPECT_EQ(c.optimizer_step, k);
  EXPECT_EQ(c.sampler, (data::sampler_state{s.seed, std::uint64_t(k)}));
  EXPECT_TRUE(train::differences(c.config, s).empty());
  EXPECT_EQ(c.model_name, a.model().name());

  train::trainer b = train::trainer::resume(ck, s, corpus);
  EXPECT_EQ(b.steps_done(), k);
  std::size_t e = std::size_t(k / s.eval_every);
  for (index_t i = k; i < s.steps; ++i) {
    const train::step_result r = b.train_step();
    const train::step_result& want = ref[std::size_t(i)];
    EXPECT_EQ(r.step, want.step);
    EXPECT_TRUE(same_bits(r.lr, want.lr)) << "step " << r.step;
    EXPECT_TRUE(same_bits(r.loss.total, want.loss.total)) << "step " << r.step << ": " << r.loss.total << " vs " << want.loss.total;
    EXPECT_TRUE(same_bits(r.loss.next, want.loss.next)) << "step " << r.step;
    EXPECT_TRUE(same_bits(r.loss.next2, want.loss.next2)) << "step " << r.step;
    EXPECT_TRUE(same_bits(r.grad_norm, want.grad_norm)) << "step " << r.step;
    if (r.step % s.eval_every == 0) {
      const train::evaluation ev = b.evaluate();
      EXPECT_TRUE(same_bits(ev.next, ref_eval[e].next)) << "evaluation at step " << r.step;
      EXPECT_TRUE(same_bits(ev.next2, ref_eval[e].next2)) << "evaluation at step " << r.step;
      ++e;
    }
  }
  EXPECT_EQ(b.sampler_state(), a.sampler_state());
  EXPECT_EQ(b.optimizer().step_count(), a.optimizer().step_count());
  EXPECT_TRUE(state_bytes(a) == state_bytes(b)) << "parameters or optimiser moments differ after the resumed run";
  if (s.model.mtp) {
    EXPECT_GT(ref.back().loss.next2, 0.0);
  }
  EXPECT_LT(ref.back().loss.next, ref.front().loss.next);
}

TEST(TrainerCheckpoint, ResumeContinuesBitForBitDynamicMtpLowRank) {
  check_resume_is_exact(tiny(2, 3, true, true, true), 5);
}

TEST(TrainerCheckpoint, ResumeContinuesBitForBitDynamicMhc) {
  train::settings s = tiny(2, 3, true, true);
  s.connection = "mhc";
  check_resume_is_exact(s, 5);
}

TEST(TrainerCheckpoint, ResumeContinuesBitForBitStaticMhcLite) {
  train::settings s = tiny(2, 3, false, false);
  s.connection = "mhc-lite";
  check_resume_is_exact(s, 6);
}

TEST(TrainerCheckpoint, ResumeContinuesBitForBitStaticPlain) {
  train::settings s = tiny(1, 2, false, false);
  s.schedule = vwn::optim::lr_shape::constant;
  s.clip = 0;
  check_resume_is_exact(s, 8);
}

// The host products on the configured BLAS, as vwn-train runs them (examples/transformer/blas.hpp): a resumed run
// continues bit for bit there too. A counting wrapper around the BLAS kernel shows that the products went through it;
// the model is wide enough (256 token rows) that the products are split into row panels.
std::atomic<long> blas_calls{0};
vwn::detail::host_gemm_kernel<float> blas_kernel = nullptr;
void counting_kernel(bool ta, bool tb, index_t m, index_t n, index_t k, const float* a, index_t lda, const float* b,
                     index_t ldb, bool accumulate, float* c, index_t ldc) {
  ++blas_calls;
  blas_kernel(ta, tb, m, n, k, a, lda, b, ldb, accumulate, c, ldc);
}

TEST(TrainerCheckpoint, ResumeContinuesBitForBitWithBlas) {
  const std::string path = model::configured_blas_path();
  if (path.empty()) GTEST_SKIP() << "configured without a BLAS (VWN_BLAS)";
  ASSERT_TRUE(model::use_blas(path).active);
  struct restore {
    ~restore() { model::use_eigen_products(); }
  } restore_eigen;
  blas_kernel = vwn::detail::host_gemm<float>;
  vwn::detail::set_host_gemm_kernel<float>(&counting_kernel);
  train::settings s = tiny(2, 3, true, true, true);
  s.model.width = 64;
  s.model.context = 64;
  s.batch = 4;
  check_resume_is_exact(s, 5);
  EXPECT_GT(blas_calls.load(), 0);
}

TEST(TrainerCheckpoint, SavedModelSamplesLikeTheTrainedOne) {
  temp_dir dir;
  const train::settings s = tiny(4, 8, true, true);
  const data::text_corpus corpus = data::text_corpus::from_bytes(vwn_test::english_text(4000), s.model.context, 0.2);
  train::trainer t(s, corpus);
  for (int i = 0; i < 4; ++i) (void)t.train_step();
  t.save(dir.path / "c.safetensors");
  auto m = train::load_model(train::read_checkpoint(dir.path / "c.safetensors"));
  train::sample_options o;
  o.tokens = 12;
  const std::string a = train::generate(t.model(), "the ", o), b = train::generate(*m, "the ", o);
  EXPECT_EQ(a.size(), 12u);
  EXPECT_EQ(a, b);
  o.seed = 2;
  EXPECT_EQ(train::generate(*m, "the ", o).size(), 12u);
  o.temperature = 0;  // greedy: the most likely byte every time
  const std::string g = train::generate(*m, "the ", o);
  const std::vector<float> logits = m->next_logits(std::vector<std::int32_t>{'t', 'h', 'e', ' '});
  EXPECT_EQ(static_cast<unsigned char>(g[0]), std::max_element(logits.begin(), logits.end()) - logits.begin());
  EXPECT_EQ(train::printable(std::string("a\\b\tc\n\x01\xff", 8)), "a\\\\b\\tc\n\\x01\\xff");
}

// A saved checkpoint in a folder with a second file, for the error tests.
struct saved_run {
  temp_dir dir;
  train::settings s = tiny(2, 4, true, true);
  data::text_corpus corpus = data::text_corpus::from_bytes(vwn_test::english_text(4000), 16, 0.2);
  fs::path ck = dir.path / "checkpoint.safetensors";
  std::string bytes;
  saved_run() {
    train::trainer t(s, corpus);
    for (int i = 0; i < 3; ++i) (void)t.train_step();
    t.save(ck);
    bytes = slurp(ck);
    dump(dir.path / "log.csv", "step\n");
  }
};

TEST(TrainerCheckpoint, TruncatedCheckpointIsRejectedAndLeftUntouched) {
  saved_run run;
  for (std::size_t keep : {std::size_t(0), std::size_t(5), std::size_t(100), run.bytes.size() / 2, run.bytes.size() - 1}) {
    SCOPED_TRACE("truncated to " + std::to_string(keep) + " bytes");
    const std::string cut = run.bytes.substr(0, keep);
    dump(run.ck, cut);
    const auto before = listing(run.dir.path);
    const std::string msg = error_of<std::runtime_error>([&] { (void)train::trainer::resume(run.ck, run.s, run.corpus); });
    EXPECT_NE(msg.find("cannot use checkpoint '" + run.ck.string() + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("truncated or corrupted"), std::string::npos) << msg;
    EXPECT_EQ(slurp(run.ck), cut);
    EXPECT_EQ(listing(run.dir.path), before);
    EXPECT_EQ(slurp(run.dir.path / "log.csv"), "step\n");
  }
}

TEST(TrainerCheckpoint, OnlyRegularFilesAreOpenedAsCheckpoints) {
  saved_run run;
  const fs::path folder = run.dir.path / "folder.safetensors";
  fs::create_directory(folder);
  const fs::path fifo = run.dir.path / "fifo.safetensors";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0) << std::strerror(errno);
  const std::pair<fs::path, std::string> cases[] = {
      {run.dir.path / "missing.safetensors", "no such file"},
      {folder, "is a directory"},
      {fifo, "is a FIFO"},  // refused without opening it: an open for reading would wait for a writer forever
  };
  for (const auto& c : cases) {
    const fs::path& path = c.first;  // not a structured binding: lambdas capture it (C++20, not yet clang 14)
    const std::string& what = c.second;
    SCOPED_TRACE(path.string());
    const std::string msg = error_of<std::runtime_error>([&] { (void)train::trainer::resume(path, run.s, run.corpus); });
    EXPECT_NE(msg.find("cannot use checkpoint '" + path.string() + "'"), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << msg;
    EXPECT_EQ(msg.find("truncated or corrupted"), std::string::npos) << msg;
    const std::string read_msg = error_of<std::runtime_error>([&] { (void)train::read_checkpoint(path); });
    EXPECT_NE(read_msg.find(what), std::string::npos) << read_msg;
  }
}

TEST(Trainer, NonFiniteStepStopsBeforeTheUpdate) {
  const auto corpus = data::text_corpus::from_bytes(vwn_test::english_text(4000), 16, 0.2);
  for (const bool mtp : {false, true}) {
    SCOPED_TRACE(mtp ? "MTP" : "no MTP");
    train::trainer t(tiny(2, 3, true, mtp), corpus);
    (void)t.train_step();
    // A NaN in one parameter: the loss of the next step is NaN.
    std::map<std::string, std::vector<float>> before;
    bool poisoned = false;
    t.model().visit([&](const std::string& name, float* p, float*, index_t size, bool) {
      if (name == "final_norm.w") {  // used by every token
        p[2] = std::numeric_limits<float>::quiet_NaN();
        poisoned = true;
      }
      before[name].assign(p, p + size);
    });
    ASSERT_TRUE(poisoned);
    const std::int64_t adam_steps = t.optimizer().step_count();
    const std::string msg = error_of<train::non_finite_error>([&] { (void)t.train_step(); });
    EXPECT_NE(msg.find("step 2: the training loss is NaN"), std::string::npos) << msg;
    EXPECT_NE(msg.find("nothing of this step was applied"), std::string::npos) << msg;
    EXPECT_EQ(t.steps_done(), 1);
    EXPECT_EQ(t.optimizer().step_count(), adam_steps);
    t.model().visit([&](const std::string& name, float* p, float*, index_t size, bool) {
      const std::vector<float> now(p, p + size);
      EXPECT_EQ(std::memcmp(now.data(), before[name].data(), std::size_t(size) * sizeof(float)), 0) << name;
    });
  }
}

// A step can leave finite parameters that give a non-finite validation loss (the run diverged in an update
// whose own loss was finite): the evaluation refuses to report it as a number, so nothing saves that state.
TEST(Trainer, NonFiniteValidationLossStopsTheRun) {
  const auto corpus = data::text_corpus::from_bytes(vwn_test::english_text(4000), 16, 0.2);
  for (const bool mtp : {false, true}) {
    SCOPED_TRACE(mtp ? "MTP" : "no MTP");
    train::trainer t(tiny(2, 3, true, mtp), corpus);
    (void)t.train_step();
    const train::evaluation good = t.evaluate();
    EXPECT_TRUE(std::isfinite(good.next));
    t.model().visit([&](const std::string& name, float* p, float*, index_t, bool) {
      if (name == "final_norm.w") p[0] = std::numeric_limits<float>::infinity();
    });
    const std::string msg = error_of<train::non_finite_error>([&] { (void)t.evaluate(); });
    EXPECT_NE(msg.find("after step 1: the validation loss is not finite (next-token "), std::string::npos) << msg;
    EXPECT_EQ(msg.find("next-2-token") != std::string::npos, mtp) << msg;
  }
}

// Rewrites the checkpoint of `run` (valid checksum) after `edit` changed its contents.
template <class Edit>
void rewrite_checkpoint(const saved_run& run, Edit edit) {
  train::checkpoint c = train::read_checkpoint(run.ck);
  edit(c);
  train::write_checkpoint(run.ck, std::move(c));
}

// `f` without the tensor `skip`.
vwn::safetensors::file without(const vwn::safetensors::file& f, const std::string& skip) {
  vwn::safetensors::file out;
  out.metadata = f.metadata;
  for (const std::string& name : f.names())
    if (name != skip) out.set(name, f.at(name).type, f.at(name).shape, f.at(name).bytes.data());
  return out;
}

TEST(TrainerCheckpoint, StepBeyondTheRunIsRejected) {
  saved_run run;
  rewrite_checkpoint(run, [&](train::checkpoint& c) { c.step = c.config.steps + 2; });
  const std::string msg = error_of<std::runtime_error>([&] { (void)train::read_checkpoint(run.ck); });
  EXPECT_NE(msg.find("step " + std::to_string(run.s.steps + 2) + " is beyond config.steps " + std::to_string(run.s.steps)),
            std::string::npos) << msg;
}

// Counters that disagree with the step are refused by the one reader both programs use, so vwn-sample refuses
// what --resume refuses.
TEST(TrainerCheckpoint, InconsistentCountersAreRejectedByResumeAndSampling) {
  for (const bool optimizer : {true, false}) {
    SCOPED_TRACE(optimizer ? "optimizer_step" : "sampler_batch_index");
    saved_run run;
    rewrite_checkpoint(run, [&](train::checkpoint& c) {
      if (optimizer)
        c.optimizer_step += 1;
      else
        c.sampler.batch_index += 5;
    });
    const std::string expected = optimizer ? "inconsistent counters: step 3, optimizer_step 4, sampler_batch_index 3"
                                           : "inconsistent counters: step 3, optimizer_step 3, sampler_batch_index 8";
    for (const std::string& msg :
         {error_of<std::runtime_error>([&] { (void)train::trainer::resume(run.ck, run.s, run.corpus); }),
          error_of<std::runtime_error>([&] { (void)train::load_model(train::read_checkpoint(run.ck)); })})
      EXPECT_NE(msg.find(expected), std::string::npos) << msg;
  }
}

// A diverged update whose loss was still finite: the save refuses the state before writing anything, so the
// checkpoint a message calls the last good one is one both programs load.
TEST(TrainerCheckpoint, NonFiniteParametersAreNeverSaved) {
  saved_run run;
  const std::string before = slurp(run.ck);
  for (const bool moment : {false, true}) {
    SCOPED_TRACE(moment ? "optimiser moment" : "parameter");
    train::trainer t(run.s, run.corpus);
    (void)t.train_step();
    bool poisoned = false;
    if (moment)
      t.optimizer().for_each_state([&](const std::string&, const float* p, index_t size) {
        if (!poisoned && size > 2) const_cast<float*>(p)[2] = std::numeric_limits<float>::infinity(), poisoned = true;
      });
    else
      t.model().visit([&](const std::string&, float* p, float*, index_t size, bool) {
        if (!poisoned && size > 2) p[2] = std::numeric_limits<float>::infinity(), poisoned = true;
      });
    ASSERT_TRUE(poisoned);
    const auto names = listing(run.dir.path);
    const std::string msg = error_of<train::non_finite_error>([&] { t.save(run.ck); });
    EXPECT_NE(msg.find("holds inf at element 2"), std::string::npos) << msg;
    EXPECT_NE(msg.find("this state was not saved"), std::string::npos) << msg;
    EXPECT_EQ(slurp(run.ck), before);
    EXPECT_EQ(listing(run.dir.path), names);
  }
}

TEST(TrainerCheckpoint, NonFiniteTensorsAreRejectedByResumeAndSampling) {
  for (const std::string prefix : {"model.", "optim."}) {
    for (const float bad : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
      SCOPED_TRACE(prefix + " " + std::to_string(bad));
      saved_run run;
      std::string name;
      rewrite_checkpoint(run, [&](train::checkpoint& c) {
        for (const std::string& n : c.file.names())
          if (n.rfind(prefix, 0) == 0 && c.file.at(n).shape[0] > 3) name = n;
        ASSERT_FALSE(name.empty());
        vwn::safetensors::tensor t = c.file.at(name);
        std::memcpy(t.bytes.data() + 3 * sizeof(float), &bad, sizeof(float));
        c.file.set(name, t.type, t.shape, t.bytes.data());
      });
      const std::string what = std::isnan(bad) ? "holds NaN at element 3" : "holds an infinity at element 3";
      const train::checkpoint c = train::read_checkpoint(run.ck);  // the file itself is intact
      for (const std::string& msg :
           {error_of<std::runtime_error>([&] { (void)train::trainer::resume(run.ck, run.s, run.corpus); }),
            error_of<std::runtime_error>([&] { (void)train::load_model(c); })}) {
        EXPECT_NE(msg.find("tensor '" + name + "' " + what), std::string::npos) << msg;
        EXPECT_NE(msg.find("diverged"), std::string::npos) << msg;
      }
    }
  }
}

// Settings that pass every range check but describe another model than the file holds (a crafted
// `config.layers`), or one that cannot fit, are refused by both programs before anything is allocated for the model.
TEST(TrainerCheckpoint, SettingsOfAnotherModelOrThatCannotFitAreRefusedByResumeAndSampling) {
  saved_run run;
  rewrite_checkpoint(run, [&](train::checkpoint& c) { c.config.model.layers = 100'000; });
  const train::checkpoint c = train::read_checkpoint(run.ck);  // the file itself is intact and its settings valid
  const std::string described =
      vwn::train::detail::format_double(vwn::model::count_values(c.config.model_config(), c.config.batch).parameters);
  for (const std::string& msg : {error_of<std::runtime_error>([&] { (void)train::trainer::resume(run.ck, c.config, run.corpus); }),
                                 error_of<std::runtime_error>([&] { (void)train::load_model(c); })}) {
    EXPECT_NE(msg.find("cannot use checkpoint '" + run.ck.string() + "': its settings describe a model of " + described +
                       " parameters (--width 32, --layers 100000, shape "), std::string::npos) << msg;
    EXPECT_NE(msg.find("but the file holds "), std::string::npos) << msg;
  }
  // A consistent checkpoint whose model does not fit in the memory left (here a made-up 1 kB).
  dump(run.ck, run.bytes);
  const train::checkpoint good = train::read_checkpoint(run.ck);
  EXPECT_NO_THROW(train::detail::expect_checkpoint_fits(good, std::nullopt, true));
  for (const bool training : {true, false}) {
    const std::string msg = error_of<std::runtime_error>([&] { train::detail::expect_checkpoint_fits(good, 1000.0, training); });
    EXPECT_EQ(msg.rfind("cannot use checkpoint '" + run.ck.string() + "': its settings cannot run here: ", 0), 0u) << msg;
    EXPECT_NE(msg.find("more than the 1 kB available"), std::string::npos) << msg;
  }
  // Sampling needs one sequence's activations, not the run's batch: a checkpoint of a run with a large batch
  // samples where it could not train.
  train::settings big_batch = run.s;
  big_batch.batch = 4096;
  train::checkpoint wide = good;
  wide.config = big_batch;
  const double sampling = train::estimate_memory([&] { train::settings t = big_batch; t.batch = 1, t.eval_batches = 1; return t; }()).total();
  EXPECT_NO_THROW(train::detail::expect_checkpoint_fits(wide, sampling, false));
  EXPECT_THROW(train::detail::expect_checkpoint_fits(wide, sampling, true), std::runtime_error);
}

TEST(TrainerCheckpoint, ResumeAndSamplingAcceptTheSameTensors) {
  saved_run run;
  const train::checkpoint good = train::read_checkpoint(run.ck);
  EXPECT_NO_THROW((void)train::load_model(good));
  // One tensor more, one model tensor less or renamed, one optimiser tensor less: refused by both.
  const std::string some_model = good.file.names().front(), some_optim = good.file.names().back();
  ASSERT_EQ(some_model.rfind("model.", 0), 0u);
  ASSERT_EQ(some_optim.rfind("optim.", 0), 0u);
  const std::pair<std::string, std::function<void(train::checkpoint&)>> edits[] = {
      {"unexpected tensor 'extra'", [](train::checkpoint& c) { const float x = 1; c.file.set("extra", vwn::safetensors::dtype::f32, {1}, &x); }},
      // Fewer model values than the settings describe: refused before the model is built.
      {"but the file holds", [&](train::checkpoint& c) { c.file = without(c.file, some_model); }},
      {"tensor '" + some_model + "' is missing", [&](train::checkpoint& c) {
         const vwn::safetensors::tensor t = c.file.at(some_model);
         c.file = without(c.file, some_model);
         c.file.set("model.renamed", t.type, t.shape, t.bytes.data());
       }},
      {"tensor '" + some_optim + "' is missing", [&](train::checkpoint& c) { c.file = without(c.file, some_optim); }},
  };
  for (const auto& [what, edit] : edits) {
    SCOPED_TRACE(what);
    dump(run.ck, run.bytes);
    rewrite_checkpoint(run, edit);
    const train::checkpoint c = train::read_checkpoint(run.ck);
    const std::string resumed = error_of<std::runtime_error>([&] { (void)train::trainer::resume(run.ck, run.s, run.corpus); });
    const std::string sampled = error_of<std::runtime_error>([&] { (void)train::load_model(c); });
    EXPECT_NE(resumed.find(what), std::string::npos) << resumed;
    EXPECT_NE(sampled.find(what), std::string::npos) << sampled;
  }
}

TEST(TrainerCheckpoint, OutputFolderHoldsOnlyTheRunItContinues) {
  saved_run a, b;  // two finished runs in two folders
  const fs::path A = a.dir.path, B = b.dir.path, empty = B / "empty", fresh = B / "not_yet";
  fs::create_directory(empty);
  const auto refused = [](const fs::path& out, const std::optional<fs::path>& resume) {
    return error_of<std::runtime_error>([&] { train::expect_output_folder(out, resume, false); });
  };
  // A fresh run: never over a checkpoint, unless --overwrite.
  EXPECT_NE(refused(A, std::nullopt).find("already exists"), std::string::npos);
  EXPECT_NO_THROW(train::expect_output_folder(A, std::nullopt, true));
  EXPECT_NO_THROW(train::expect_output_folder(empty, std::nullopt, false));
  // A resume: its own folder (however the path is spelled), an empty or new folder...
  EXPECT_NO_THROW(train::expect_output_folder(A, a.ck, false));
  EXPECT_NO_THROW(train::expect_output_folder(A / ".", A / "." / "checkpoint.safetensors", false));
  EXPECT_NO_THROW(train::expect_output_folder(empty, a.ck, false));
  EXPECT_NO_THROW(train::expect_output_folder(fresh, a.ck, false));
  // ...but not the folder of another run, which would lose B's checkpoint and mix A's rows into B's log.
  const std::string msg = refused(B, a.ck);
  EXPECT_NE(msg.find("--out " + B.string() + " holds another run"), std::string::npos) << msg;
  EXPECT_NE(msg.find("is not the checkpoint being resumed, " + a.ck.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("--overwrite"), std::string::npos) << msg;
  EXPECT_NO_THROW(train::expect_output_folder(B, a.ck, true));
  // A folder with another run's log and no checkpoint is another run too.
  fs::remove(b.ck);
  EXPECT_NE(refused(B, a.ck).find("log.csv without its checkpoint"), std::string::npos);
  EXPECT_EQ(slurp(B / "log.csv"), "step\n");
}

TEST(TrainerCheckpoint, CorruptedCheckpointIsRejectedAndLeftUntouched) {
  saved_run run;
  // A flipped bit in the data section still parses: the checksum catches it.
  std::string bad = run.bytes;
  bad[bad.size() - 3] = char(bad[bad.size() - 3] ^ 0x10);
  dump(run.ck, bad);
  std::string msg = error_of<std::runtime_error>([&] { (void)train::trainer::resume(run.ck, run.s, run.corpus); });
  EXPECT_NE(msg.find("checksum mismatch"), std::string::npos) << msg;
  EXPECT_NE(msg.find("corrupted"), std::string::npos) << msg;
  EXPECT_EQ(slurp(run.ck), bad);
  // So does a changed metadata value.
  bad = run.bytes;
  const auto pos = bad.find("\"step\":\"3\"");
  ASSERT_NE(pos, std::string::npos);
  bad[pos + 8] = '4';
  dump(run.ck, bad);
  msg = error_of<std::runtime_error>([&] { (void)train::read_checkpoint(run.ck); });
  EXPECT_NE(msg.find("checksum mismatch"), std::string::npos) << msg;
  // A broken header is reported by the reader.
  bad = run.bytes;
  bad[8] = '[';
  dump(run.ck, bad);
  msg = error_of<std::runtime_error>([&] { (void)train::trainer::resume(run.ck, run.s, run.corpus); });
  EXPECT_NE(msg.find("cannot use checkpoint"), std::string::npos) << msg;
  EXPECT_EQ(slurp(run.ck), bad);
  // Not a checkpoint at all.
  vwn::safetensors::file other;
  other.metadata["format"] = "something else";
  other.write(run.dir.path / "other.safetensors");
  msg = error_of<std::runtime_error>([&] { (void)train::read_checkpoint(run.dir.path / "other.safetensors"); });
  EXPECT_NE(msg.find("not a vwn-train checkpoint"), std::string::npos) << msg;
  msg = error_of<std::runtime_error>([&] { (void)train::read_checkpoint(run.dir.path / "missing.safetensors"); });
  EXPECT_NE(msg.find("no such file"), std::string::npos) << msg;
}

TEST(TrainerCheckpoint, MismatchedSettingsOrCorpusAreRejectedAndTheCheckpointLeftUntouched) {
  saved_run run;
  const auto before = listing(run.dir.path);
  train::settings other = run.s;
  other.model.width = 64;
  other.lr = 5e-3;
  std::string msg = error_of<std::invalid_argument>([&] { (void)train::trainer::resume(run.ck, other, run.corpus); });
  EXPECT_NE(msg.find("different settings"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--width: checkpoint 32, requested 64"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--lr: checkpoint 0.01, requested 0.005"), std::string::npos) << msg;
  other = run.s;
  other.dynamic = false;
  msg = error_of<std::invalid_argument>([&] { (void)train::trainer::resume(run.ck, other, run.corpus); });
  EXPECT_NE(msg.find("--dynamic: checkpoint true, requested false"), std::string::npos) << msg;
  other = run.s;
  other.connection = "mhc";
  msg = error_of<std::invalid_argument>([&] { (void)train::trainer::resume(run.ck, other, run.corpus); });
  EXPECT_NE(msg.find("--connection: checkpoint vwn, requested mhc"), std::string::npos) << msg;
  // Evaluation settings may change.
  other = run.s;
  other.eval_every = 1;
  other.eval_batches = 1;
  EXPECT_NO_THROW((void)train::trainer::resume(run.ck, other, run.corpus));
  // Another corpus.
  const data::text_corpus corpus2 = data::text_corpus::from_bytes(vwn_test::english_text(4000, 8), 16, 0.2);
  msg = error_of<std::invalid_argument>([&] { (void)train::trainer::resume(run.ck, run.s, corpus2); });
  EXPECT_NE(msg.find("another corpus"), std::string::npos) << msg;
  EXPECT_EQ(slurp(run.ck), run.bytes);
  EXPECT_EQ(listing(run.dir.path), before);
}

TEST(TrainerCheckpoint, SettingsGivenOnTheCommandLineApplyOnTopOfTheCheckpointsOnResume) {
  saved_run run;
  const std::string ck = run.ck.string();
  auto requested = [&](std::vector<std::string> args) {
    return train::requested_settings(train::parse_command_line(args));
  };
  // Without --resume: the defaults with the flags given.
  train::settings s = requested({"--eval-every", "1"});
  EXPECT_EQ(s.model.width, train::settings().model.width);
  EXPECT_EQ(s.eval_every, 1);
  // With --resume: the checkpoint's settings (not the defaults), with the flags given on top.
  s = requested({"--eval-every", "1", "--resume", ck, "--eval-batches=1"});
  EXPECT_TRUE(train::differences(s, run.s).empty());
  EXPECT_EQ(s.model.width, 32);
  EXPECT_EQ(s.eval_every, 1);
  EXPECT_EQ(s.eval_batches, 1);
  train::trainer t = train::trainer::resume(run.ck, s, run.corpus);
  EXPECT_EQ(t.steps_done(), 3);
  EXPECT_EQ(t.config().eval_every, 1);
  // A setting of the trajectory given on the command line must match the checkpoint's.
  s = requested({"--resume", ck, "--lr", "0.5", "--width=64"});
  EXPECT_EQ(s.model.layers, run.s.model.layers);
  const std::string msg = error_of<std::invalid_argument>([&] { (void)train::trainer::resume(run.ck, s, run.corpus); });
  EXPECT_NE(msg.find("--lr: checkpoint 0.01, requested 0.5"), std::string::npos) << msg;
  EXPECT_NE(msg.find("--width: checkpoint 32, requested 64"), std::string::npos) << msg;
  // The combination is validated.
  EXPECT_EQ(error_of<std::invalid_argument>([&] { (void)requested({"--resume", ck, "--warmup", "100"}); }),
            "--warmup: expected at most --steps = 12, got 100");
  EXPECT_EQ(slurp(run.ck), run.bytes);
}

// ---------------------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------------------

// The parameter count of the estimate comes from the primitives' tensor lists and the blocks' shapes; the model
// counts what it allocated. They must agree for every shape and option, or the estimate is off.
TEST(TrainerMemory, CountedParametersAreTheModelsOwn) {
  for (const auto& shape : vwn::model::available_shapes()) {
    for (const bool mtp : {false, true}) {
      for (const bool lowrank : {false, true}) {
        vwn::model::config c;
        c.shape = shape;
        c.width = 16, c.heads = 2, c.layers = 2, c.context = 8, c.mtp = mtp, c.lowrank_embedding = lowrank;
        c.ffn_width = mtp ? 24 : 0;
        SCOPED_TRACE(shape.label() + (mtp ? " MTP" : "") + (lowrank ? " low-rank" : ""));
        const auto model = vwn::model::make_transformer(shape, c);
        const vwn::model::value_count v = vwn::model::count_values(c, 3);
        EXPECT_EQ(v.parameters, double(model->parameter_count()));
        EXPECT_GT(v.activations, 3.0 * 8 * (10 * 16 + 16));  // at least the per-token block buffers
      }
    }
  }
}

// The corpus is part of the memory check, sized from the file system before it is read: an 8 GB sparse file is
// refused without a byte of it in memory.
TEST(TrainerMemory, TheCorpusIsSizedBeforeItIsReadAndCountedOnce) {
  temp_dir dir;
  fs::create_directories(dir.path / "corpus");
  dump(dir.path / "corpus" / "a.txt", vwn_test::english_text(3000));
  dump(dir.path / "corpus" / "b.txt", vwn_test::english_text(2000, 9));
  EXPECT_EQ(data::text_corpus::bytes_at(dir.path / "corpus"), 5001u);  // two files and the newline that joins them
  const data::text_corpus c = data::text_corpus::load(dir.path / "corpus", 16, 0.2);
  EXPECT_EQ(c.size(), 5001);
  const fs::path sparse = dir.path / "sparse.txt";
  { std::ofstream(sparse, std::ios::binary) << "x"; }
  fs::resize_file(sparse, std::uintmax_t(8) << 30);
  const double bytes = double(data::text_corpus::bytes_at(sparse));
  EXPECT_EQ(bytes, double(std::uintmax_t(8) << 30));
  const train::settings s;
  const train::memory_need with = train::estimate_memory(s, 1e6), without = train::estimate_memory(s);
  EXPECT_EQ(with.total(), without.total() + 1e6);  // once: the corpus is not copied
  EXPECT_EQ(error_of<std::invalid_argument>([&] { train::expect_memory_fits(s, 4e9, bytes); }).rfind(
                "--data: the corpus of 8.59 GB does not fit in the 4 GB of memory available", 0),
            0u);
  EXPECT_NO_THROW(train::expect_memory_fits(s, 4e9, 1e6));
}

TEST(TrainerMemory, SettingsThatCannotFitAreRefusedNamingTheFlagsAndTheBytes) {
  train::settings s = tiny(2, 3, true, true);
  const train::memory_need need = train::estimate_memory(s);
  EXPECT_GT(need.parameters, 0);
  EXPECT_GT(need.activations, 0);
  EXPECT_NO_THROW(train::expect_memory_fits(s, need.total()));
  EXPECT_NO_THROW(train::expect_memory_fits(s, std::nullopt));  // unknown: not refused
  std::string msg = error_of<std::invalid_argument>([&] { train::expect_memory_fits(s, need.total() - 1); });
  EXPECT_NE(msg.find("this run needs about " + train::byte_text(need.total()) + " of memory, more than the " +
                     train::byte_text(need.total() - 1) + " available"), std::string::npos) << msg;
  // The flag whose default would help most is named first, with the need at its default.
  s.batch = 100'000'000;
  msg = error_of<std::invalid_argument>([&] { train::expect_memory_fits(s, 8e9); });
  EXPECT_EQ(msg.rfind("--batch 100000000: this run needs about ", 0), 0u) << msg;
  EXPECT_NE(msg.find("8 GB available"), std::string::npos) << msg;
  EXPECT_NE(msg.find("the activations of a batch of --batch 100000000 x --context 16 tokens need "), std::string::npos) << msg;
  train::settings with_default = s;
  with_default.batch = train::settings().batch;
  EXPECT_NE(msg.find("; with the default --batch it would need " + train::byte_text(train::estimate_memory(with_default).total())),
            std::string::npos) << msg;
  s = tiny(2, 3, true, true);
  s.model.width = 1'000'000;
  s.model.heads = 1;
  msg = error_of<std::invalid_argument>([&] { train::expect_memory_fits(s, 8e9); });
  EXPECT_EQ(msg.rfind("--width 1000000: ", 0), 0u) << msg;
  EXPECT_NE(msg.find("need " + train::byte_text(train::estimate_memory(s).parameters) +
                     " at --width 1000000, --layers 1, --ffn 2666672, shape (2,3) dynamic;"), std::string::npos) << msg;
  s = tiny(2, 3, true, true);
  s.model.ffn_width = 100'000'000;  // mostly activations, but the FFN width is what to lower
  msg = error_of<std::invalid_argument>([&] { train::expect_memory_fits(s, 8e9); });
  EXPECT_EQ(msg.rfind("--ffn 100000000: ", 0), 0u) << msg;
  // A fresh trainer checks before it allocates (the machine's memory, whatever it is, is below an exabyte).
  s.model.width = 2'000'000'000, s.model.layers = 1'000'000;
  const auto corpus = data::text_corpus::from_bytes(vwn_test::english_text(4000), 16, 0.2);
  msg = error_of<std::invalid_argument>([&] { train::trainer t(s, corpus); });
  EXPECT_NE(msg.find("available"), std::string::npos) << msg;
  ASSERT_TRUE(train::available_memory().has_value());  // Linux: /proc/meminfo
  EXPECT_GT(*train::available_memory(), 0);
  EXPECT_EQ(train::byte_text(999), "999 bytes");
  EXPECT_EQ(train::byte_text(12'345'678), "12.3 MB");
  EXPECT_EQ(train::byte_text(4.56e12), "4.56 TB");
}

// ---------------------------------------------------------------------------------------------------------
// Log
// ---------------------------------------------------------------------------------------------------------

TEST(TrainerLog, AppendsOneRowPerStepAndDropsRowsPastTheResumedStep) {
  temp_dir dir;
  const fs::path p = dir.path / "log.csv";
  {
    train::csv_log log(p, std::nullopt);
    for (index_t i = 1; i <= 5; ++i) {
      train::log_row r;
      r.step = i, r.lr = 1e-3, r.loss = 3.0 - 0.1 * double(i), r.next = 2.5, r.next2 = 2.9, r.tokens_per_s = 1000;
      if (i % 2 == 0) r.val_next = 2.6, r.val_next2 = 3.1;
      r.elapsed_s = double(i);
      log.append(r);
      if (i == 2) log.commit();  // rows before and after the commit all land in the file
    }
  }
  std::string content = slurp(p);
  EXPECT_EQ(content.substr(0, content.find('\n')), train::csv_log::header);
  EXPECT_NE(content.find("\n2,0.001,2.800000,2.500000,2.900000,2.600000,3.100000,1000.0,2.000\n"), std::string::npos) << content;
  EXPECT_NE(content.find("\n3,0.001,2.700000,2.500000,2.900000,,,1000.0,3.000\n"), std::string::npos) << content;
  EXPECT_NE(content.find("\n5,"), std::string::npos) << content;
  dump(p, content + "6,0.001,2.4");  // a crash in the middle of a line
  {
    train::csv_log log(p, train::log_history{p, 3});
    train::log_row r;
    r.step = 4, r.lr = 1e-3, r.loss = 1, r.next = 1;
    log.append(r);
    log.commit();
  }
  const auto rows = train::csv_log::read(p);
  ASSERT_EQ(rows.size(), 4u);
  for (std::size_t i = 0; i < 4; ++i) EXPECT_EQ(rows[i].step, index_t(i + 1));
  EXPECT_TRUE(rows[1].val_next.has_value());
  EXPECT_FALSE(rows[2].val_next.has_value());
  EXPECT_FALSE(rows[3].next2.has_value());
  EXPECT_EQ(listing(dir.path), std::set<std::string>{"log.csv"});
  {
    train::csv_log fresh(p, std::nullopt);  // a fresh run starts a new log
    fresh.commit();
  }
  EXPECT_EQ(slurp(p), std::string(train::csv_log::header) + "\n");
}

// `--overwrite`, or a resume, followed by a failure before the first checkpoint: the folder keeps what it held.
TEST(TrainerLog, ReplacesTheOldLogOnlyOnCommit) {
  temp_dir dir;
  const fs::path p = dir.path / "log.csv";
  const std::string old = std::string(train::csv_log::header) + "\n1,0.001,3.0,3.0,,,,10.0,1.0\n2,0.001,2.9,2.9,,,,10.0,2.0\n";
  dump(p, old);
  train::log_row r;
  r.step = 1, r.lr = 1e-3, r.loss = 5, r.next = 5;
  for (const bool resumed : {false, true}) {
    {
      std::optional<train::log_history> history;
      if (resumed) history = train::log_history{p, 1};
      train::csv_log log(p, history);
      log.append(r);
      EXPECT_EQ(slurp(p), old);  // the new rows go to the partial file
      EXPECT_EQ(log.current_path(), fs::path(p.string() + ".partial"));
    }  // the run fails before its first checkpoint
    EXPECT_EQ(slurp(p), old) << "resumed " << resumed;
    EXPECT_EQ(listing(dir.path), std::set<std::string>{"log.csv"}) << "resumed " << resumed;
  }
  {
    train::csv_log log(p, std::nullopt);
    log.append(r);
    log.commit();
    EXPECT_EQ(listing(dir.path), std::set<std::string>{"log.csv"});
    r.step = 2;
    log.append(r);
  }
  const auto rows = train::csv_log::read(p);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].loss, 5.0);
  EXPECT_EQ(rows[1].step, 2);
  // A fresh folder is left empty by a run that fails before its first checkpoint.
  temp_dir fresh;
  { train::csv_log log(fresh.path / "log.csv", std::nullopt); }
  EXPECT_TRUE(listing(fresh.path).empty());
}

}  // namespace
