// vwn-train: trains the reference transformer (docs/model.md) on a byte corpus, with a progress bar,
// periodic validation (next-token and next-2-token losses), a CSV log, resumable safetensors checkpoints
// (docs/checkpoint.md), a loss plot and a text sample at the end. Run with --help for the options.
#include <train/trainer.hpp>
#include <transformer/blas.hpp>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <iostream>
#include <memory>
#include <utility>
#include <optional>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

namespace fs = std::filesystem;
namespace train = vwn::train;
using vwn::index_t;

volatile std::sig_atomic_t stop_requested = 0;

// With several ranks a signal may find this rank waiting in a collective operation for a rank that died (mpirun then
// ends every rank, with SIGTERM and later SIGKILL): the handler says at once what is left on disk. The line is
// prepared outside the handler, in one of two buffers, and published with an atomic pointer.
char stop_lines[2][1024];
std::atomic<const char*> stop_line{nullptr};
static_assert(std::atomic<const char*>::is_always_lock_free);

void set_stop_line(const std::string& text) {
  static int next = 0;
  char* buf = stop_lines[next];
  next ^= 1;
  const std::size_t n = std::min(text.size(), sizeof stop_lines[0] - 1);
  std::copy_n(text.data(), n, buf);
  buf[n] = '\0';
  stop_line.store(buf);
}

void on_signal(int) {
  if (const char* line = stop_line.load(); line != nullptr && stop_requested == 0) {
    std::size_t n = 0;
    while (line[n] != '\0') ++n;
    (void)!write(STDERR_FILENO, line, n);
  }
  stop_requested = 1;
}

std::string duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const long t = std::lround(s);
  char buf[32];
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else if (t >= 60)
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  else
    std::snprintf(buf, sizeof buf, "%lds", t);
  return buf;
}

std::string fixed(double x, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, x);
  return buf;
}

std::string count(double x) {
  char buf[32];
  if (x >= 1e6)
    std::snprintf(buf, sizeof buf, "%.2fM", x / 1e6);
  else if (x >= 1e3)
    std::snprintf(buf, sizeof buf, "%.1fk", x / 1e3);
  else
    std::snprintf(buf, sizeof buf, "%.0f", x);
  return buf;
}

// Progress on stderr: one line rewritten with \r on a terminal, a plain line every `interval` steps
// otherwise.
class progress {
 public:
  progress(index_t total, index_t tokens_per_step)
      : tty_(isatty(fileno(stderr)) != 0), total_(total), tokens_(tokens_per_step),
        interval_(std::max<index_t>(1, total / 25)) {}

  void update(const train::step_result& r, bool mtp) {
    ema_ = ema_ < 0 ? r.seconds : 0.9 * ema_ + 0.1 * r.seconds;
    const double tps = double(tokens_) / ema_;
    const double eta = double(total_ - r.step) * ema_;
    std::string line = "step " + std::to_string(r.step) + "/" + std::to_string(total_);
    if (tty_) {
      const int width = 20, done = int(double(width) * double(r.step) / double(std::max<index_t>(1, total_)));
      line += " [" + std::string(std::size_t(std::min(done, width)), '#') + std::string(std::size_t(width - std::min(done, width)), '.') + "]";
    }
    line += " loss " + fixed(r.loss.total, 4);
    if (mtp) line += " (next " + fixed(r.loss.next, 3) + ", next2 " + fixed(r.loss.next2, 3) + ")";
    line += " | lr " + train::detail::format_double(std::round(r.lr * 1e7) / 1e7) + " | " + count(tps) + " tok/s | ETA " +
            duration(eta);
    if (tty_) {
      std::fprintf(stderr, "\r%s\x1b[K", line.c_str());
      std::fflush(stderr);
      open_ = true;
    } else if (r.step % interval_ == 0 || r.step == total_ || r.step == 1) {
      std::fprintf(stderr, "%s\n", line.c_str());
    }
  }

  // A line of its own (evaluation results, notices).
  void message(const std::string& text) {
    if (open_) std::fprintf(stderr, "\r\x1b[K");
    std::fprintf(stderr, "%s\n", text.c_str());
    open_ = false;
  }

  void finish() {
    if (open_) std::fprintf(stderr, "\n");
    open_ = false;
  }

 private:
  bool tty_;
  index_t total_, tokens_, interval_;
  double ema_ = -1;
  bool open_ = false;
};

std::string eval_text(const train::evaluation& e, bool mtp) {
  std::string s = "val next-token " + fixed(e.next, 4) + " nats (" + fixed(e.next / std::log(2.0), 3) + " bits/byte)";
  if (mtp) s += ", next-2-token " + fixed(e.next2, 4) + " nats";
  return s;
}

std::string parallel_note() {
  return train::mpi_available()
             ? "Data-parallel on several processes: mpirun -np R vwn-train ... (each rank a\nslice of every batch, "
               "gradients summed with MPI_Allreduce; docs/distributed.md)."
             : "This vwn-train was built without MPI: it runs as one process (install\nlibopenmpi-dev openmpi-bin and "
               "build again for mpirun -np R; docs/distributed.md).";
}

int run(int argc, char** argv, train::communicator& world) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  const train::command_line cl = train::parse_command_line(args);
  const bool lead = world.rank() == 0, ranks = world.size() > 1;
  if (cl.run.help) {
    if (lead) std::cout << train::train_help(parallel_note());
    return 0;
  }
  const train::run_options& opt = cl.run;

  // Settings: defaults, or the checkpoint's, then the flags given.
  const train::settings s = train::requested_settings(cl);

#ifdef _OPENMP
  if (opt.threads > 0) omp_set_num_threads(opt.threads);
  const int threads = omp_get_max_threads();
#else
  const int threads = 1;
#endif
  // The host products on the configured BLAS (or VWN_BLAS from the environment): reported, since a resumed run
  // continues bit for bit only on the same product.
  const vwn::model::blas_info blas = vwn::model::use_default_blas();

  std::error_code ec;
  if (!fs::exists(opt.data, ec)) {
    if (!opt.data_given)
      throw std::runtime_error("the default corpus " + opt.data.string() +
                               " is missing: run scripts/get-brown.sh to fetch the Brown corpus, or pass --data PATH");
    throw std::runtime_error("--data: expected an existing file or folder, got '" + opt.data.string() + "'");
  }
  // The corpus is sized from the file system and checked against the memory with the run before it is read.
  train::expect_memory_fits(s, train::available_memory(), double(vwn::data::text_corpus::bytes_at(opt.data)),
                            opt.micro_batch);
  const vwn::data::text_corpus corpus = vwn::data::text_corpus::load(opt.data, s.model.context, s.val_fraction);

  // The folder is locked, checked and cleared of what a killed run left before anything else looks at it. Rank 0
  // alone owns it: writes the log, the checkpoints, the plot and the sample, and prints.
  std::optional<train::output_folder> folder;
  if (lead) folder.emplace(opt.out, opt.resume, opt.overwrite);
  const fs::path checkpoint_path = opt.out / "checkpoint.safetensors";

  // Everything is checked before anything of the run is written.
  train::parallelism par;
  par.micro_batch = opt.micro_batch;
  par.world = &world;
  par.stop = &stop_requested;
  train::trainer t = opt.resume ? train::trainer::resume(*opt.resume, s, corpus, par) : train::trainer(s, corpus, par);
  const bool mtp = s.model.mtp;
  std::ostream& out = std::cout;

  if (lead) {
    out << "vwn-train: " << t.model().title() << ", " << count(double(t.model().parameter_count())) << " parameters, "
        << threads << " thread" << (threads == 1 ? "" : "s");
    if (ranks) out << " on each of " << world.size() << " ranks (" << world.name() << ")";
    out << "\n";
    out << "products " << blas.name << "\n";
    if (t.parts() > 1)
      out << "parts    each batch of " << s.batch << " in " << t.parts() << " parts of " << t.part_size()
          << " sequences, " << t.parts() / world.size() << " on each rank; gradients summed in a fixed order\n";
    out << train::describe(s) << "data     " << corpus.source() << ": " << corpus.size() << " bytes (train "
        << corpus.train().size() << ", validation " << corpus.validation().size() << ")\n"
        << "output   " << opt.out.string() << "/ (log.csv, checkpoint.safetensors, loss.png)\n";
    const train::memory_need need = train::estimate_memory(s, double(corpus.size()), opt.micro_batch);
    const std::optional<double> available = train::available_memory();
    out << "memory   about " << train::byte_text(need.total()) << (ranks ? " per rank" : "")
        << " (parameters and optimiser state " << train::byte_text(need.parameters) << ", activations "
        << train::byte_text(need.activations) << ", corpus " << train::byte_text(need.corpus) << ")"
        << (available ? ", " + train::byte_text(*available) + " available" : std::string()) << "\n";
    if (opt.resume) out << "resume   " << opt.resume->string() << " at step " << t.steps_done() << " of " << s.steps << "\n";
    out << std::flush;
  }

  // The new log starts from the resumed run's own rows; it and the first checkpoint replace what the folder held
  // only once that checkpoint is written (csv_log::commit), so a run that fails before leaves the folder as it was.
  std::optional<train::csv_log> log;
  if (lead) {
    const std::vector<std::string> history = opt.resume ? folder->history(t, *opt.resume) : std::vector<std::string>{};
    for (const std::string& notice : folder->notices()) out << "notice   " << notice << "\n";
    out << std::flush;
    log.emplace(folder->log_path(), history);
  }
  const fs::path png = opt.out / "loss.png";

  // The last checkpoint this run can continue from, for the messages when a step goes non-finite or a signal comes.
  std::optional<std::pair<fs::path, index_t>> last_good;
  if (opt.resume) last_good.emplace(*opt.resume, t.steps_done());
  auto last_good_text = [&] {
    return last_good ? "the last checkpoint is " + last_good->first.string() + " (step " +
                           std::to_string(last_good->second) + ")"
                     : std::string("no checkpoint was written");
  };
  auto update_stop_line = [&] {
    if (ranks)
      set_stop_line("vwn-train: rank " + std::to_string(world.rank()) + ": stopping on a signal (mpirun sends one "
                    "when another rank has failed, and passes on Ctrl-C) after step " + std::to_string(t.steps_done()) +
                    "; " + last_good_text() + "\n");
  };
  update_stop_line();
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);

  progress bar(s.steps, t.tokens_per_step());
  std::optional<train::evaluation> last_eval;
  index_t last_eval_step = -1;
  // A step or an evaluation that went non-finite ends the run, naming the checkpoint to go back to.
  auto or_stop = [&](auto&& work) -> decltype(work()) {
    try {
      return work();
    } catch (const train::non_finite_error& e) {
      bar.finish();
      throw std::runtime_error(std::string(e.what()) + "; " + last_good_text() +
                               ". Try a lower --lr, a longer --warmup or --clip");
    }
  };
  // The save sequence (train::output_folder::save) by rank 0, once every rank is known to hold the same state; a
  // diverged state is not written.
  auto save = [&] {
    t.expect_replicas_agree();
    if (lead) or_stop([&] { folder->save(t, *log); });
  };
  // Whether to stop: one process stops at once; ranks stop together, after the step in which one was asked to.
  bool stop_agreed = false;
  double step_seconds = 0, wait_seconds = 0, sum_seconds = 0, sum_bytes = 0;
  index_t steps_here = 0;
  auto stopping = [&] { return ranks ? stop_agreed : stop_requested != 0; };
  while (t.steps_done() < s.steps && !stopping()) {
    const train::step_result r = or_stop([&] { return t.train_step(); });
    stop_agreed = r.stop;
    step_seconds += r.seconds, wait_seconds += r.wait_seconds, sum_seconds += r.sum_seconds, ++steps_here;
    sum_bytes = r.sum_bytes;
    train::log_row row;
    row.step = r.step, row.lr = r.lr, row.loss = r.loss.total, row.next = r.loss.next;
    if (mtp) row.next2 = r.loss.next2;
    row.tokens_per_s = double(t.tokens_per_step()) / r.seconds;
    const bool eval_due = (s.eval_every > 0 && r.step % s.eval_every == 0) || r.step == s.steps;
    if (eval_due) {
      last_eval = or_stop([&] { return t.evaluate(); });
      last_eval_step = r.step;
      row.val_next = last_eval->next;
      if (mtp) row.val_next2 = last_eval->next2;
    }
    row.elapsed_s = t.elapsed_seconds();
    if (lead) {
      log->append(row);
      bar.update(r, mtp);
      if (eval_due) bar.message("step " + std::to_string(r.step) + ": " + eval_text(*last_eval, mtp));
    }
    const bool save_due = (opt.save_every > 0 ? r.step % opt.save_every == 0 : eval_due) || r.step == s.steps;
    if (save_due) {
      save();
      last_good.emplace(checkpoint_path, r.step);
    }
    update_stop_line();
  }
  bar.finish();
  // After the loop the checkpoint holds every step: a signal in a later phase ends the run with the same status.
  auto interrupted = [&] {
    if (lead)
      out << "interrupted after step " << t.steps_done() << ": saved " << checkpoint_path.string()
          << "; continue with --resume " << checkpoint_path.string() << "\n";
    return 130;
  };
  if (stopping()) {
    save();
    return interrupted();
  }
  // A finished run resumed into a new folder: the folder gets the whole run.
  t.expect_replicas_agree();
  if (lead && !log->committed()) or_stop([&] { folder->save(t, *log); });
  if (last_eval_step != t.steps_done()) last_eval = or_stop([&] { return t.evaluate(); });  // e.g. resumed from a finished run
  // Every collective operation is behind: what follows is rank 0's alone.
  if (!lead) return 0;
  if (stop_requested) return interrupted();

  out << "\ntrained " << t.steps_done() << " steps in " << duration(t.elapsed_seconds()) << "\n";
  if (ranks && steps_here > 0) {
    const auto ms = [&](double s) { return fixed(1e3 * s / double(steps_here), 2) + " ms"; };
    const auto share = [&](double s) { return fixed(100 * s / std::max(step_seconds, 1e-30), 1) + " %"; };
    out << "ranks    per step on rank 0: " << ms(step_seconds) << "; of it the sum over " << world.size()
        << " ranks (MPI_Allreduce of " << train::byte_text(sum_bytes) << ") " << ms(sum_seconds) << " ("
        << share(sum_seconds) << ") and the wait for the slowest rank before it " << ms(wait_seconds) << " ("
        << share(wait_seconds) << ")\n";
  }
  out
      << "validation after step " << t.steps_done() << ": " << eval_text(*last_eval, mtp) << "\n"
      << "checkpoint: " << checkpoint_path.string() << "\n";

  const std::string plot_problem = train::plot_losses(train::csv_log::read(folder->log_path()), png, t.model().title());
  if (plot_problem.empty())
    out << "loss plot: " << png.string() << "\n";
  else
    out << "loss plot skipped: " << plot_problem << "\n";
  out << std::flush;  // before the sampling, which may take a while
  if (stop_requested) return interrupted();

  if (opt.sample_bytes > 0) {
    train::sample_options so;
    so.tokens = opt.sample_bytes;
    so.seed = s.seed;
    so.stop = &stop_requested;
    const std::string prompt = "The ";
    const std::string text = prompt + train::generate(t.model(), prompt, so);
    if (stop_requested) return interrupted();
    out << "sample (temperature " << train::detail::format_double(so.temperature) << ", top-k " << so.top_k
        << ", prompt \"" << prompt << "\"):\n"
        << train::printable(text) << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<train::communicator> world;
  try {
    world = train::open_world(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "vwn-train: error: " << e.what() << "\n";
    return 1;
  }
  try {
    return run(argc, argv, *world);
  } catch (const std::exception& e) {
    std::cout << std::flush;
    if (world->size() == 1) {
      std::cerr << "vwn-train: error: " << e.what() << "\n";
      return 1;
    }
    // The other ranks may wait for this one in a collective operation: the job ends here, every rank of it.
    std::cerr << "vwn-train: rank " << world->rank() << ": error: " << e.what() << "\n" << std::flush;
    world->abort(1);
  }
}
