// The gradient sum over MPI ranks against the sum over micro-batches in one process (docs/distributed.md), run as
//   mpirun -np R vwn_mpi_sum CORPUS
// Every rank computes, from the same seed and batch, (a) the trainer's gradient over R ranks (one part each, summed by
// MPI_Allreduce), (b) the trainer's gradient on this process alone in R micro-batches (summed in part order), and (c)
// each part's gradient on its own, to bound the rounding. Checks:
// - R = 2: (a) equals (b) bit for bit (one addition per element, and a + b = b + a in IEEE arithmetic);
// - any R: |(a) - (b)| <= 2 gamma(R - 1) sum_i |g_i| / R + u (|a| + |b|) / 2 per element, the bound of two orders of
//   summation of the same R floats (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 4.4:
//   |fl(sum) - sum| <= gamma(R - 1) sum |g_i|, gamma(k) = k u / (1 - k u), u = 2^-24), then one rounding each of the
//   division by R;
// - a second run over R ranks is bit-identical to the first after 3 steps (the reduction's order is fixed for a given
//   R and message size);
// - the replica check before a save: with one parameter of the last rank changed by one ulp, every rank refuses,
//   naming that rank.
// Prints the largest ratio of a difference to its bound; exit status 1 on a failed check.
#include <train/trainer.hpp>

#include <support/training.hpp>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace train = vwn::train;
using vwn::index_t;
using vwn_test::gradients;

namespace {

train::settings small() {
  train::settings s;
  s.m = 2, s.n = 3, s.dynamic = true;
  s.model.width = 32, s.model.layers = 1, s.model.heads = 2, s.model.ffn_width = 64, s.model.context = 32;
  s.batch = 8, s.steps = 10, s.warmup = 1, s.clip = 0;  // no clipping: the optimiser sees the sum itself
  s.eval_every = 0, s.eval_batches = 1;
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::unique_ptr<train::communicator> world;
  try {
    world = train::open_world(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vwn_mpi_sum: %s\n", e.what());
    return 1;
  }
  const int R = world->size(), rank = world->rank();
  bool ok = true;
  try {
    if (argc != 2) throw std::invalid_argument("usage: mpirun -np R vwn_mpi_sum CORPUS");
    train::settings s = small();
    const auto corpus = vwn::data::text_corpus::load(argv[1], s.model.context, s.val_fraction);
    if (s.batch % R != 0) throw std::invalid_argument("expected a rank count that divides 8, got " + std::to_string(R));

    train::parallelism over_ranks;
    over_ranks.world = world.get();
    train::trainer a(s, corpus, over_ranks);
    a.train_step();
    const std::vector<float> ga = gradients(a);

    train::single_process alone;
    train::parallelism in_parts;
    in_parts.world = &alone;
    in_parts.micro_batch = s.batch / R;
    train::trainer b(s, corpus, in_parts);
    b.train_step();
    const std::vector<float> gb = gradients(b);

    // Each part's gradient alone: sum_i |g_i| per element (in double), of the gradients of the parts' mean losses.
    auto model = vwn::model::make_transformer(s.shape(), s.model_config());
    vwn::data::batch_sampler sampler(corpus.train(), s.batch, s.model.context, s.seed);
    vwn::data::batch batch;
    sampler.next(batch);
    std::vector<double> abs_sum(ga.size(), 0.0);
    const index_t T = s.model.context, mu = s.batch / R;
    for (index_t part = 0; part < R; ++part) {
      const std::size_t begin = std::size_t(part * mu * T), count = std::size_t(mu * T);
      const auto slice = [&](const std::vector<vwn::data::token>& v) {
        return std::span<const vwn::data::token>(v).subspan(begin, count);
      };
      model->zero_grad();
      model->forward(vwn::host, slice(batch.inputs), slice(batch.targets1), slice(batch.targets2), T);
      model->backward(vwn::host);
      std::size_t k = 0;
      model->visit([&](const std::string&, float*, float* g, index_t size, bool) {
        for (index_t i = 0; i < size; ++i) abs_sum[k++] += std::fabs(double(g[i]));
      });
    }
    if (ga.size() != gb.size() || ga.size() != abs_sum.size())
      throw std::logic_error("the three gradients differ in size");

    const double u = std::ldexp(1.0, -24), gamma = (R - 1) * u / (1 - (R - 1) * u);
    std::size_t differ = 0;
    double worst = 0;
    for (std::size_t i = 0; i < ga.size(); ++i) {
      const double d = std::fabs(double(ga[i]) - double(gb[i]));
      if (d != 0) ++differ;
      const double bound = 2 * gamma * abs_sum[i] / R + u * (std::fabs(double(ga[i])) + std::fabs(double(gb[i]))) / 2;
      if (d > 0) worst = std::max(worst, bound > 0 ? d / bound : std::numeric_limits<double>::infinity());
    }
    if (R == 2 && differ != 0) ok = false;
    if (worst > 1) ok = false;

    // Run to run: a second job on the same ranks, 3 steps each.
    train::trainer c(s, corpus, over_ranks);
    for (int k = 0; k < 2; ++k) a.train_step();
    for (int k = 0; k < 3; ++k) c.train_step();
    const bool same_run = a.state_hash() == c.state_hash();
    if (!same_run) ok = false;
    a.expect_replicas_agree();  // every rank holds the same state

    // One ulp of one parameter on the last rank: every rank must refuse, naming it.
    if (rank == R - 1) {
      bool done = false;
      a.model().visit([&](const std::string&, float* p, float*, index_t size, bool) {
        if (!done && size > 0) p[0] = std::nextafter(p[0], std::numeric_limits<float>::infinity()), done = true;
      });
    }
    std::string refusal;
    try {
      a.expect_replicas_agree();
    } catch (const std::runtime_error& e) {
      refusal = e.what();
    }
    const std::string named = "rank " + std::to_string(R - 1) + " holds another state than rank 0";
    const bool refused = refusal.find(named) != std::string::npos;
    if (!refused) {
      ok = false;
      std::fprintf(stderr, "vwn_mpi_sum: rank %d: expected a refusal naming rank %d, got '%s'\n", rank, R - 1,
                   refusal.c_str());
    }

    if (rank == 0)
      std::printf(
          "vwn_mpi_sum: %d ranks (%s) against 1 process with %d micro-batches: %zu of %zu gradient elements differ; "
          "largest difference / bound = %.3g (bound: 2 gamma(%d) sum|g_i| / %d + rounding of the division)%s; a second "
          "%d-rank run after 3 steps: %s; one ulp changed on rank %d: %s\n",
          R, world->name().c_str(), R, differ, ga.size(), worst, R - 1, R,
          R == 2 ? (differ == 0 ? ", bit for bit as required for 2 ranks" : ", but 2 ranks must agree bit for bit") : "",
          R, same_run ? "bit-identical" : "DIFFERENT", R - 1, refused ? ("refused: " + refusal).c_str() : "NOT REFUSED");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vwn_mpi_sum: rank %d: %s\n", rank, e.what());
    world->abort(1);
  }
  if (!ok && rank == 0) std::fprintf(stderr, "vwn_mpi_sum: FAILED\n");
  return ok ? 0 : 1;
}
