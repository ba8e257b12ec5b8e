// vwn-eval: the validation losses of a vwn-train checkpoint over its whole validation split, as one JSON object on
// standard output. vwn-train's periodic evaluation scores `--eval-batches` fixed batches (16 KB by default) to follow
// a run; this scores every window of the split that fits without overlap (docs/scaling.md, "final evaluation").
//
//   vwn-eval --checkpoint out/checkpoint.safetensors --data data/brown.txt [--batch B] [--threads N]
//
// The corpus must be the one the run trained on (its size and fingerprint are checked): the validation split is its
// last `val-fraction` bytes, as in training.
#include <transformer/blas.hpp>
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <train/trainer.hpp>

int main(int argc, char** argv) {
  CLI::App app{"Evaluates a vwn-train checkpoint on the whole validation split of its corpus (windows of the run's "
               "context that do not overlap) and prints the mean next-token and next-2-token losses as JSON.",
               "vwn-eval"};
  std::string checkpoint_path, data_path;
  long long batch = 0;
  int threads = 0;
  app.add_option("--checkpoint", checkpoint_path, "the checkpoint")->required();
  app.add_option("--data", data_path, "the corpus the run trained on (file or folder)")->required();
  app.add_option("--batch", batch, "windows per forward pass (0: the run's batch) [0]")->check(CLI::NonNegativeNumber);
  app.add_option("--threads", threads, "OpenMP threads (0: the default) [0]")->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);
  try {
#ifdef _OPENMP
    if (threads > 0) omp_set_num_threads(threads);
#endif
    vwn::model::use_default_blas();
    const vwn::train::checkpoint c = vwn::train::read_checkpoint(checkpoint_path);
    const vwn::train::settings& s = c.config;
    const vwn::index_t T = s.model.context;
    const vwn::index_t B = batch > 0 ? vwn::index_t(batch) : s.batch;
    const auto corpus = vwn::data::text_corpus::load(data_path, T, s.val_fraction);
    const std::string fingerprint = vwn::train::corpus_fingerprint(corpus);
    if (std::uint64_t(corpus.size()) != c.data_bytes || fingerprint != c.data_fingerprint)
      throw std::invalid_argument("--data " + data_path + ": expected the corpus the run trained on (" +
                                  std::to_string(c.data_bytes) + " bytes, fingerprint " + c.data_fingerprint + ", '" +
                                  c.data_source + "'), got " + std::to_string(corpus.size()) + " bytes, fingerprint " +
                                  fingerprint);
    auto model = vwn::train::load_model(c);
    const auto batches = vwn::train::whole_split_batches(corpus.validation(), B, T);
    const auto t0 = std::chrono::steady_clock::now();
    const vwn::train::evaluation e =
        vwn::train::mean_losses(*model, batches, T, "checkpoint " + checkpoint_path + " (step " + std::to_string(c.step) + ")");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    nlohmann::ordered_json j;
    j["checkpoint"] = checkpoint_path;
    j["model"] = c.model_name;
    j["step"] = c.step;
    j["split"] = "validation";
    j["split_bytes"] = corpus.validation().size();
    j["windows"] = batches.size() * std::size_t(B);
    j["scored_tokens"] = batches.size() * std::size_t(B) * std::size_t(T);
    j["val_next"] = e.next;
    j["val_next2"] = s.model.mtp ? nlohmann::ordered_json(e.next2) : nlohmann::ordered_json(nullptr);
    j["seconds"] = seconds;
    std::printf("%s\n", j.dump().c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vwn-eval: error: %s\n", e.what());
    return 1;
  }
}
