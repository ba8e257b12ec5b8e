// Tests of the trainer's output folder (examples/train/output.hpp) through the vwn-train program itself: the save
// sequence under a stop at each of its points (fault injection), the lock, hostile --out values and links to
// checkpoints. The programs are found next to this test program's build folder (build/examples/), or through
// VWN_TRAIN_PROGRAM; where they are not built the tests are skipped.
#include <train/trainer.hpp>

#include <gtest/gtest.h>

#include <support/common.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace train = vwn::train;
using vwn::index_t;
using vwn_test::error_of;

// A fresh, empty folder under the system temp folder, removed at the end of the test.
struct scratch {
  fs::path path;
  scratch() {
    std::random_device rd;
    path = fs::temp_directory_path() / ("vwn_output_test_" + std::to_string(rd()) + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~scratch() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::set<std::string> listing(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

// vwn-train of this build: $VWN_TRAIN_PROGRAM, or ../examples/vwn-train from this program's folder.
fs::path train_program() {
  if (const char* p = std::getenv("VWN_TRAIN_PROGRAM")) return p;
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  const fs::path p = self.parent_path().parent_path() / "examples" / "vwn-train";
  return fs::exists(p, ec) ? p : fs::path();
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Runs vwn-train with `args` in the folder `cwd` (environment assignments `env` in front), its output (both
// streams) into `*output`; returns the exit status.
int run(const fs::path& cwd, const std::vector<std::string>& args, const std::string& env = "",
        std::string* output = nullptr) {
  const fs::path out_file = cwd / "output.txt";
  std::string cmd = "cd " + shell_quote(cwd.string()) + " && " + env + " " + shell_quote(train_program().string());
  for (const auto& a : args) cmd += " " + shell_quote(a);
  cmd += " > " + shell_quote(out_file.string()) + " 2>&1";
  const int status = std::system(cmd.c_str());
  if (output) *output = slurp(out_file);
  std::error_code ec;
  fs::remove(out_file, ec);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// A corpus of about 4 kB of English-like text in `dir`.
fs::path write_corpus(const fs::path& dir) {
  static const char* const words[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to",
                                      "house", "of", "light", "is", "in", "blue", "river", "went", "home", "it"};
  std::mt19937_64 g(7);
  std::string s;
  while (s.size() < 4000) s += std::string(words[g() % 20]) + ((g() % 9 == 0) ? ".\n" : " ");
  const fs::path p = dir / "corpus.txt";
  std::ofstream(p, std::ios::binary) << s;
  return p;
}

// The settings of every run here: a tiny model, 6 steps, a checkpoint every 2. The settings given on a resume
// too (the run options --eval-every and --save-every are not taken from the checkpoint).
std::vector<std::string> tiny(const fs::path& corpus, const std::string& seed = "1") {
  return {"--data", corpus.string(), "--width", "16", "--layers", "1", "--heads", "2", "--context", "8",
          "--batch", "2", "--steps", "6", "--warmup", "1", "--eval-every", "2", "--eval-batches", "1",
          "--save-every", "2", "--threads", "1", "--sample", "0", "--seed", seed};
}

std::vector<std::string> operator+(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The cells of a log's data lines that training determines (all but tokens_per_s and elapsed_s, which are
// timings), one string per row.
std::vector<std::string> deterministic_rows(const fs::path& log) {
  std::vector<std::string> rows;
  std::ifstream in(log);
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line, train::csv_log::header);
  while (std::getline(in, line)) {
    std::size_t cut = 0;
    for (int commas = 0; commas < 7 && cut != std::string::npos; ++commas) cut = line.find(',', cut + 1);
    rows.push_back(line.substr(0, cut));
  }
  return rows;
}

// Checks that the run in `dir` ended as the uninterrupted run in `ref` did: the checkpoint's tensors and metadata
// bit for bit (the informative timing and the log's hash aside, which timings change), a log with the same rows,
// one per step, whose rows the checkpoint records, and no temporary file left.
void expect_same_run(const fs::path& dir, const fs::path& ref) {
  const train::checkpoint got = train::read_checkpoint(dir / "checkpoint.safetensors");
  const train::checkpoint want = train::read_checkpoint(ref / "checkpoint.safetensors");
  ASSERT_EQ(got.file.names(), want.file.names());
  for (const auto& name : want.file.names()) EXPECT_TRUE(got.file.at(name).bytes == want.file.at(name).bytes) << name;
  auto informative = [](std::map<std::string, std::string> md) {
    for (const char* key : {"elapsed_seconds", "checksum", "log_fnv1a64"}) md.erase(key);
    return md;
  };
  EXPECT_EQ(informative(got.file.metadata), informative(want.file.metadata));
  const std::vector<std::string> rows = deterministic_rows(dir / "log.csv");
  EXPECT_EQ(rows, deterministic_rows(ref / "log.csv"));
  for (std::size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(rows[i].substr(0, rows[i].find(',')), std::to_string(i + 1));
  ASSERT_TRUE(got.log.has_value());
  EXPECT_EQ(train::csv_log::digest_of(train::csv_log::history_lines(dir / "log.csv", got.step)), *got.log);
  for (const auto& name : listing(dir))
    EXPECT_TRUE(name == "checkpoint.safetensors" || name == "log.csv" || name == "vwn-train.lock" || name == "loss.png" ||
                name == "loss.gp")
        << "left behind: " << name;
}

// ---------------------------------------------------------------------------------------------------------
// The save sequence, stopped at each of its points in turn
// ---------------------------------------------------------------------------------------------------------

// A run is stopped (VWN_FAULT_AT=N: _exit at the Nth point of its save sequences, as kill -9 there) for every N
// until the run passes all its points; then it is continued as a user would: --resume when the folder holds this
// run's checkpoint, the same command again otherwise. Every continuation must end as the uninterrupted run, bit for
// bit. Four starts: a fresh folder, --overwrite of another run (with its plot), a resumed run in its own folder, and
// a resumed run in a new folder.
TEST(TrainerOutputFolder, EveryStopInTheSaveSequenceResumesToTheUninterruptedRun) {
  if (train_program().empty()) GTEST_SKIP() << "vwn-train is not built";
  scratch s;
  const fs::path corpus = write_corpus(s.path);
  const std::string no_plot = "PATH=/nonexistent";  // gnuplot out of reach: the plot is not what is tested here
  const fs::path ref = s.path / "ref";
  ASSERT_EQ(run(s.path, tiny(corpus) + std::vector<std::string>{"--out", ref.string()}, no_plot), 0);

  // A run stopped at the start of its second save: checkpoint of step 2, log rows 1 to 4.
  const fs::path half = s.path / "half";
  ASSERT_EQ(run(s.path, tiny(corpus) + std::vector<std::string>{"--out", half.string()}, no_plot + " VWN_FAULT_AT=7"),
            train::fault_exit_status);
  ASSERT_EQ(train::read_checkpoint(half / "checkpoint.safetensors").step, 2);
  // Another run (another seed) with a plot, to be replaced by --overwrite.
  const fs::path other = s.path / "other";
  ASSERT_EQ(run(s.path, tiny(corpus, "5") + std::vector<std::string>{"--out", other.string()}, no_plot), 0);
  std::ofstream(other / "loss.png") << "old plot";
  std::ofstream(other / "loss.gp") << "old script";

  struct start {
    const char* name;
    fs::path setup;                 // copied into the run's folder first (empty: a fresh folder)
    std::vector<std::string> args;  // after the settings; OUT stands for the run's folder
    int points;                     // expected stop points: 6 at a first save that replaces or starts a folder, 4 else
  };
  const start starts[] = {
      {"fresh folder", {}, {}, 6 + 4 + 4},
      {"--overwrite of another run", other, {"--overwrite"}, 6 + 4 + 4},
      {"resumed in its own folder", half, {"--resume", "OUT/checkpoint.safetensors"}, 4 + 4},  // no plot to remove
      {"resumed into a new folder", {}, {"--resume", (half / "checkpoint.safetensors").string()}, 6 + 4},
  };
  int total = 0;
  for (const start& st : starts) {
    SCOPED_TRACE(st.name);
    int n = 1;
    for (;; ++n) {
      SCOPED_TRACE("stopped at point " + std::to_string(n));
      const fs::path dir = s.path / ("run" + std::to_string(total + n));
      if (!st.setup.empty()) fs::copy(st.setup, dir, fs::copy_options::recursive);
      std::vector<std::string> args = tiny(corpus) + std::vector<std::string>{"--out", dir.string()};
      for (std::string a : st.args) args.push_back(a.rfind("OUT", 0) == 0 ? dir.string() + a.substr(3) : a);
      std::string output;
      const int rc = run(s.path, args, no_plot + " VWN_FAULT_AT=" + std::to_string(n), &output);
      if (rc == 0) {  // past the last point
        fs::remove_all(dir);
        break;
      }
      ASSERT_EQ(rc, train::fault_exit_status) << output;
      // Continue: this run's checkpoint (seed 1) is resumed; before it exists, the command is run again.
      std::string seed;
      try {
        seed = train::read_checkpoint(dir / "checkpoint.safetensors").file.metadata.at("config.seed");
      } catch (const std::runtime_error&) {
      }
      std::vector<std::string> again = args;
      if (seed == "1")
        again = tiny(corpus) + std::vector<std::string>{"--out", dir.string(), "--resume",
                                                        (dir / "checkpoint.safetensors").string()};
      ASSERT_EQ(run(s.path, again, no_plot, &output), 0) << output;
      expect_same_run(dir, ref);
      if (st.setup == other) {  // the replaced run's plot does not outlive the first save of the new run
        EXPECT_FALSE(fs::exists(dir / "loss.png"));
        EXPECT_FALSE(fs::exists(dir / "loss.gp"));
      }
      fs::remove_all(dir);
    }
    EXPECT_EQ(n - 1, st.points);
    total += n - 1;
  }
  EXPECT_EQ(total, 46);
}

// ---------------------------------------------------------------------------------------------------------
// The lock, hostile paths, links
// ---------------------------------------------------------------------------------------------------------

TEST(TrainerOutputFolder, ASecondTrainerOnTheFolderRefusesAtOnceNamingTheHolder) {
  if (train_program().empty()) GTEST_SKIP() << "vwn-train is not built";
  scratch s;
  const fs::path corpus = write_corpus(s.path);
  const fs::path out = s.path / "out";
  fs::create_directories(out);
  // This process holds the lock as a running vwn-train does.
  const int fd = ::open((out / "vwn-train.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  const std::string pid = std::to_string(::getpid());
  ASSERT_EQ(::write(fd, pid.data(), pid.size()), ssize_t(pid.size()));
  std::string output;
  EXPECT_EQ(run(s.path, tiny(corpus) + std::vector<std::string>{"--out", out.string()}, "PATH=/nonexistent", &output), 1);
  EXPECT_NE(output.find("another vwn-train (pid " + pid + ") is running in this folder"), std::string::npos) << output;
  EXPECT_EQ(listing(out), std::set<std::string>{"vwn-train.lock"});
  ::close(fd);  // released: the next run goes ahead
  EXPECT_EQ(run(s.path, tiny(corpus) + std::vector<std::string>{"--out", out.string()}, "PATH=/nonexistent", &output), 0)
      << output;
}

TEST(TrainerOutputFolder, OutNamesThatAreNotFoldersAreRefusedInOurWords) {
  if (train_program().empty()) GTEST_SKIP() << "vwn-train is not built";
  scratch s;
  const fs::path corpus = write_corpus(s.path);
  fs::create_symlink("loop", s.path / "loop");
  const std::pair<std::string, std::string> cases[] = {
      {corpus.string(), "expected a folder, got a regular file"},
      {"/dev/null", "expected a folder, got a character device"},
      {(s.path / "loop").string(), "cannot use it as a folder: Too many levels of symbolic links"},
      {"a\nb", "expected a folder name without control characters, got 'a\\x0ab' (\\x0a at byte 2)"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.first);
    std::string output;
    EXPECT_EQ(run(s.path, tiny(corpus) + std::vector<std::string>{"--out", c.first}, "", &output), 1);
    EXPECT_NE(output.find(c.second), std::string::npos) << output;
    EXPECT_EQ(output.find("filesystem error"), std::string::npos) << output;
  }
  EXPECT_EQ(listing(s.path), (std::set<std::string>{"corpus.txt", "loop"}));
}

// An --out full of what shells and gnuplot read as code: gnuplot runs in the folder on fixed names, so the folder's
// name is never part of a script or a command line, and the plot is there when the program says so.
TEST(TrainerOutputFolder, OutIsNeverCodeAndThePlotIsWhereItIsAnnounced) {
  if (train_program().empty()) GTEST_SKIP() << "vwn-train is not built";
  if (!train::have_gnuplot()) GTEST_SKIP() << "gnuplot is not installed";
  scratch s;
  const fs::path corpus = write_corpus(s.path);
  for (const std::string name : {"-y", "q'`touch X`\"$(touch Y)\\ !touch Z;#"}) {
    SCOPED_TRACE(name);
    std::string output;
    ASSERT_EQ(run(s.path, tiny(corpus) + std::vector<std::string>{"--out=" + name}, "", &output), 0) << output;
    EXPECT_NE(output.find("loss plot: " + name + "/loss.png"), std::string::npos) << output;
    EXPECT_TRUE(fs::is_regular_file(s.path / name / "loss.png"));
    EXPECT_EQ(slurp(s.path / name / "loss.gp").find(name), std::string::npos);
    fs::remove_all(s.path / name);
  }
  EXPECT_EQ(listing(s.path), std::set<std::string>{"corpus.txt"});  // nothing ran: no X, Y or Z
}

// --resume through a symbolic link takes the log of the linked checkpoint's own folder; a checkpoint whose
// folder holds another run's log is refused; a hard link in a folder without a log continues with a notice.
TEST(TrainerOutputFolder, ALinkToACheckpointFindsItsOwnLogOrSaysWhy) {
  if (train_program().empty()) GTEST_SKIP() << "vwn-train is not built";
  scratch s;
  const fs::path corpus = write_corpus(s.path);
  const fs::path a = s.path / "a", ref = s.path / "ref", links = s.path / "links";
  const std::string no_plot = "PATH=/nonexistent";
  ASSERT_EQ(run(s.path, tiny(corpus) + std::vector<std::string>{"--out", ref.string()}, no_plot), 0);
  ASSERT_EQ(run(s.path, tiny(corpus) + std::vector<std::string>{"--out", a.string()}, no_plot + " VWN_FAULT_AT=7"),
            train::fault_exit_status);  // step 2 saved, rows up to step 4 in its log
  fs::create_directories(links);
  fs::create_symlink(a / "checkpoint.safetensors", links / "sym.safetensors");
  std::string output;
  const fs::path b = s.path / "b";
  ASSERT_EQ(run(s.path, tiny(corpus) + std::vector<std::string>{"--out", b.string(), "--resume",
                                                                (links / "sym.safetensors").string()},
                no_plot, &output),
            0)
      << output;
  expect_same_run(b, ref);

  // A hard link beside another run's log: those rows are not this checkpoint's.
  fs::create_hard_link(a / "checkpoint.safetensors", links / "hard.safetensors");
  fs::copy_file(ref / "log.csv", links / "log.csv");
  const fs::path c = s.path / "c";
  EXPECT_EQ(run(s.path, tiny(corpus) + std::vector<std::string>{"--out", c.string(), "--resume",
                                                                (links / "hard.safetensors").string()},
                no_plot, &output),
            1);
  EXPECT_NE(output.find("does not hold the rows of this checkpoint: expected 2 rows up to step 2"), std::string::npos)
      << output;
  EXPECT_FALSE(fs::exists(c / "log.csv"));
  EXPECT_FALSE(fs::exists(c / "checkpoint.safetensors"));
  // Without a log there, the run goes on and says what its log lacks.
  fs::remove(links / "log.csv");
  EXPECT_EQ(run(s.path, tiny(corpus) + std::vector<std::string>{"--out", c.string(), "--resume",
                                                                (links / "hard.safetensors").string()},
                no_plot, &output),
            0);
  EXPECT_NE(output.find("the new log starts after step 2 (its 2 earlier rows are not in it)"), std::string::npos)
      << output;
  EXPECT_EQ(deterministic_rows(c / "log.csv").size(), 4u);
}

// A log that is a FIFO or a link to a device is never opened: the resume is refused at once, naming it.
TEST(TrainerOutputFolder, OnlyRegularFilesAreOpenedAsLogs) {
  if (train_program().empty()) GTEST_SKIP() << "vwn-train is not built";
  scratch s;
  const fs::path corpus = write_corpus(s.path);
  const fs::path a = s.path / "a";
  ASSERT_EQ(run(s.path, tiny(corpus) + std::vector<std::string>{"--out", a.string()}, "PATH=/nonexistent VWN_FAULT_AT=7"),
            train::fault_exit_status);
  const std::string good_log = slurp(a / "log.csv");
  for (const char* kind : {"FIFO", "/dev/zero", "/dev/urandom"}) {
    SCOPED_TRACE(kind);
    fs::remove(a / "log.csv");
    if (std::string(kind) == "FIFO")
      ASSERT_EQ(::mkfifo((a / "log.csv").c_str(), 0600), 0);
    else
      fs::create_symlink(kind, a / "log.csv");
    std::string output;
    EXPECT_EQ(run(s.path, tiny(corpus) + std::vector<std::string>{"--out", a.string(), "--resume",
                                                                  (a / "checkpoint.safetensors").string()},
                  "PATH=/nonexistent", &output),
              1);
    EXPECT_NE(output.find(std::string("is ") + (kind[0] == 'F' ? "a FIFO" : "a character device") +
                          ", expected a regular file"),
              std::string::npos)
        << output;
  }
  // csv_log::read (the plot's reader) skips them the same way.
  EXPECT_TRUE(train::csv_log::read(a / "log.csv").empty());
  fs::remove(a / "log.csv");
  std::ofstream(a / "log.csv", std::ios::binary) << good_log;
  EXPECT_EQ(train::csv_log::history_lines(a / "log.csv", 2).size(), 2u);
}

// A full disk while the log's first lines are written: the partial file is removed, not left behind empty.
TEST(TrainerOutputFolder, ALogThatCannotBeWrittenLeavesNoPartialFile) {
  scratch s;
  const std::vector<std::string> history(100, "1,0.001,3.000000,3.000000,,,,10.0,1.000");
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  const auto previous = std::signal(SIGXFSZ, SIG_IGN);  // a write past the limit fails (EFBIG) instead
  struct rlimit small = old;
  small.rlim_cur = 1000;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  const std::string msg = error_of<std::runtime_error>([&] { train::csv_log log(s.path / "log.csv", history); });
  ::setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, previous);
  EXPECT_NE(msg.find("cannot write the log"), std::string::npos) << msg;
  EXPECT_TRUE(listing(s.path).empty());
}

// After the training loop (the final evaluation, the plot, the sample) a signal still ends the run, with the
// status of an interrupted run: the sample of a million bytes is cut short by SIGINT, and by SIGTERM.
TEST(TrainerOutputFolder, SignalsEndTheSamplingWithTheInterruptedStatus) {
  if (train_program().empty()) GTEST_SKIP() << "vwn-train is not built";
  scratch s;
  const fs::path corpus = write_corpus(s.path);
  for (const int sig : {SIGINT, SIGTERM}) {
    SCOPED_TRACE(sig == SIGINT ? "SIGINT" : "SIGTERM");
    const fs::path out = s.path / ("out" + std::to_string(sig)), text = s.path / "output.txt";
    std::vector<std::string> args = std::vector<std::string>{"vwn-train"} + tiny(corpus) +
                                    std::vector<std::string>{"--out", out.string(), "--sample", "1048576"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::string path_var = "PATH=/nonexistent";  // no gnuplot: the sampling comes at once
    char* envp[] = {path_var.data(), nullptr};
    posix_spawn_file_actions_t files;
    posix_spawn_file_actions_init(&files);
    posix_spawn_file_actions_addopen(&files, STDOUT_FILENO, text.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&files, STDOUT_FILENO, STDERR_FILENO);
    pid_t pid = 0;
    const std::string program = train_program().string();
    ASSERT_EQ(::posix_spawn(&pid, program.c_str(), &files, nullptr, argv.data(), envp), 0);
    posix_spawn_file_actions_destroy(&files);
    // The plot line is printed just before the sampling starts.
    const auto start = std::chrono::steady_clock::now();
    while (slurp(text).find("loss plot") == std::string::npos &&
           std::chrono::steady_clock::now() - start < std::chrono::seconds(60))
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    ::kill(pid, sig);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    const std::string output = slurp(text);
    ASSERT_TRUE(WIFEXITED(status)) << output;
    EXPECT_EQ(WEXITSTATUS(status), 130) << output;
    EXPECT_NE(output.find("interrupted after step 6: saved " + (out / "checkpoint.safetensors").string()),
              std::string::npos)
        << output;
    EXPECT_EQ(output.find("sample ("), std::string::npos) << output;
  }
}

}  // namespace
