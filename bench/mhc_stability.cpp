// mhc_stability: the learning-rate sweep of docs/mhc.md. Trains the reference transformer (vwn-train's defaults:
// D = 128, 4 layers, 4 heads, context 128, batch 8, MTP, warm-up 30, cosine) with dynamic GHC for every shape,
// connection family and peak learning rate given, and prints one Markdown row per run: the final training loss (mean
// of the last 20 steps), the validation loss at the end, the loss spikes (steps whose next-token loss exceeds the
// lowest of the steps before it by more than 0.5 nats, after the warm-up), the largest gradient norm (before
// clipping) and, where the run went non-finite, the step. A plain program, run by hand, never by ctest.
//
//   mhc_stability --data brown.txt [--steps 300] [--lrs 0.003,0.01,0.03,0.1] [--shapes 1_4,2_3]
//                 [--connections vwn,mhc,mhc-lite] [--seeds 1] [--clip 1] [--csv out.csv]
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <transformer/blas.hpp>
#include <train/settings.hpp>
#include <train/trainer.hpp>

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string x; std::getline(in, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

struct outcome {
  double final_loss = NAN, val = NAN, max_grad = 0;
  int spikes = 0;
  long diverged_at = -1;
  double seconds = 0;
};

outcome run(const vwn::train::settings& s, const vwn::data::text_corpus& corpus) {
  outcome o;
  vwn::train::trainer t(s, corpus);
  std::vector<double> losses;
  double lowest = std::numeric_limits<double>::infinity();
  try {
    while (t.steps_done() < s.steps) {
      const vwn::train::step_result r = t.train_step();
      o.seconds += r.seconds;
      o.max_grad = std::max(o.max_grad, r.grad_norm);
      losses.push_back(r.loss.next);
      if (r.step > s.warmup && r.loss.next > lowest + 0.5) ++o.spikes;
      lowest = std::min(lowest, r.loss.next);
    }
    const std::size_t tail = std::min<std::size_t>(20, losses.size());
    double sum = 0;
    for (std::size_t i = losses.size() - tail; i < losses.size(); ++i) sum += losses[i];
    o.final_loss = sum / double(tail);
    o.val = t.evaluate().next;
  } catch (const vwn::train::non_finite_error&) {
    o.diverged_at = long(t.steps_done()) + 1;
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  std::string data, csv;
  std::vector<std::string> lrs{"0.003", "0.01", "0.03", "0.1"}, shapes{"1_4", "2_3"}, connections{"vwn", "mhc", "mhc-lite"},
      seeds{"1"};
  long steps = 300;
  double clip = 1.0;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "mhc_stability: %s: expected a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--data") data = value();
    else if (a == "--steps") steps = std::stol(value());
    else if (a == "--lrs") lrs = split(value());
    else if (a == "--shapes") shapes = split(value());
    else if (a == "--connections") connections = split(value());
    else if (a == "--seeds") seeds = split(value());
    else if (a == "--clip") clip = std::stod(value());
    else if (a == "--csv") csv = value();
    else {
      std::fprintf(stderr, "mhc_stability: unknown option '%s'\n", a.c_str());
      return 2;
    }
  }
  if (data.empty()) {
    std::fprintf(stderr, "mhc_stability: --data: expected a text file, got none\n");
    return 2;
  }
  try {
    const std::string products = vwn::model::use_default_blas().name;
    vwn::train::settings base;
    base.steps = steps;
    base.clip = clip;
    const vwn::data::text_corpus corpus =
        vwn::data::text_corpus::load(data, base.model.context, base.val_fraction);
    std::printf("mhc_stability: %s, %ld steps, clip %g, products %s\n\n", data.c_str(), steps, clip, products.c_str());
    std::printf("| shape | connection | lr | seed | final train loss | val loss | spikes | max grad norm | diverged at | s |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
    std::ofstream out;
    if (!csv.empty()) {
      out.open(csv + ".partial");
      out << "shape,connection,lr,seed,final_loss,val_loss,spikes,max_grad_norm,diverged_at,seconds\n";
    }
    for (const std::string& shape : shapes)
      for (const std::string& lr : lrs)
        for (const std::string& connection : connections)
          for (const std::string& seed : seeds) {
            vwn::train::settings s = base;
            s.m = std::stoi(shape.substr(0, shape.find('_')));
            s.n = std::stoi(shape.substr(shape.find('_') + 1));
            s.dynamic = true;
            s.connection = connection;
            s.lr = std::stod(lr);
            s.seed = std::stoull(seed);
            vwn::train::validate(s);
            const outcome o = run(s, corpus);
            const std::string div = o.diverged_at < 0 ? "-" : std::to_string(o.diverged_at);
            std::printf("| (%d,%d) | %s | %s | %s | %.4f | %.4f | %d | %.3g | %s | %.0f |\n", s.m, s.n, connection.c_str(),
                        lr.c_str(), seed.c_str(), o.final_loss, o.val, o.spikes, o.max_grad, div.c_str(), o.seconds);
            std::fflush(stdout);
            if (out)
              out << shape << "," << connection << "," << lr << "," << seed << "," << o.final_loss << "," << o.val
                  << "," << o.spikes << "," << o.max_grad << "," << div << "," << o.seconds << "\n";
          }
    if (out) {
      out.close();
      std::rename((csv + ".partial").c_str(), csv.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mhc_stability: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
