// The whole reference transformer against an independent PyTorch implementation of docs/model.md
// (tests/reference/model_reference.py, gradients from torch.autograd), in the style of llm.c's test_gpt2:
// the script dumps random parameters (named as transformer::visit names them), a batch, the losses, every
// parameter gradient at step 0 and the total loss along 10 AdamW steps to tests/data/model_*.safetensors.
// Here the C++ model is loaded by name, run forward and backward, and trained for the same 10 steps.
//
// Configurations: (2,3) dynamic GHC with MTP and the direct embedding; (1,4) static GHC with MTP, the
// low-rank embedding and the GroupNorm head; (1,1) static without MTP (the plain transformer).
//
// The main-head logits are compared too (same tolerance as the losses: each is a sum of <= 48 products).

#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include <transformer/model.hpp>
#include <transformer/optim.hpp>
#include <io/safetensors.hpp>

#include <support/common.hpp>

namespace {

using namespace vwn_test;
using vwn::index_t;

const std::filesystem::path data_dir = VWN_TEST_DATA_DIR;

// Tolerances, atol + rtol |ref|:
//  - step-0 losses, double: 1e-12 + 1e-11 |ref|. Both sides compute in float64 with different operation
//    orders; a loss is a mean of 12 log-sum-exps of O(1) logits, so the two agree to a few ulps (~1e-15).
constexpr double loss_atol = 1e-12, loss_rtol = 1e-11;
//  - gradients, double: 1e-10 + 1e-9 |ref|. Each gradient sums at most a few hundred O(1) products through
//    two to three blocks; round-off differences are ~1e-14. Any wrong term is O(1e-2) or larger.
constexpr double grad_atol = 1e-10, grad_rtol = 1e-9;
//  - 10-step AdamW trajectory, double: 1e-10 + 1e-10 |ref|. Adam divides by sqrt(v_hat) + 1e-8, so a
//    round-off difference in a small gradient can be amplified by up to lr / eps = 1e6 in one update; the
//    observed differences stay ~1e-15, and a wrong decay flag or update term moves the losses by >= 1e-6.
constexpr double traj_atol = 1e-10, traj_rtol = 1e-10;
//  - step-0 losses in float: 1e-5 + 1e-5 |ref|. Parameters are rounded to float (relative 6e-8) and every
//    op runs in float (relative 6e-8 per op, reductions of <= 48 terms, 2-3 blocks deep); the losses (~3-4)
//    agree to ~3e-7 absolute. 1e-5 leaves a margin of ~100x and still catches any wrong term.
constexpr double float_atol = 1e-5, float_rtol = 1e-5;

struct reference {
  vwn::safetensors::file f;
  vwn::model::config cfg;
  std::vector<std::int32_t> inputs, next, next2;
  index_t T = 0;
};

std::vector<std::int32_t> tokens(const vwn::safetensors::file& f, const std::string& name) {
  const auto v = f.values<std::int64_t>(name);
  return {v.begin(), v.end()};
}

double scalar(const vwn::safetensors::file& f, const std::string& name) {
  const auto v = f.values<double>(name);
  if (v.size() != 1) throw std::runtime_error(name + ": expected one value, got " + std::to_string(v.size()));
  return v[0];
}

reference load(const std::string& stem, int m, int n, bool dynamic) {
  reference r{vwn::safetensors::file::read(data_dir / ("model_" + stem + ".safetensors")), {}, {}, {}, {}, 0};
  const auto& meta = r.f.metadata;
  auto integer = [&](const std::string& key) { return index_t(std::stoll(meta.at(key))); };
  EXPECT_EQ(integer("m"), m) << stem;
  EXPECT_EQ(integer("n"), n) << stem;
  EXPECT_EQ(integer("dynamic"), dynamic ? 1 : 0) << stem;
  r.cfg.shape = {m, n, dynamic};
  r.cfg.vocab = integer("vocab");
  r.cfg.width = integer("width");
  r.cfg.layers = integer("layers");
  r.cfg.heads = integer("heads");
  r.cfg.ffn_width = integer("ffn_width");
  r.cfg.context = integer("T");
  r.cfg.mtp = integer("mtp") != 0;
  r.cfg.mtp_lambda = std::stod(meta.at("lambda"));
  r.cfg.lowrank_embedding = integer("lowrank") != 0;
  r.T = integer("T");
  r.inputs = tokens(r.f, "batch.inputs");
  r.next = tokens(r.f, "batch.next");
  r.next2 = tokens(r.f, "batch.next2");
  EXPECT_EQ(index_t(r.inputs.size()), integer("batch") * r.T);
  // The optimiser settings the trajectory was made with are those of adamw_config's defaults and lr 1e-2.
  const vwn::optim::adamw_config defaults;
  EXPECT_EQ(std::stod(meta.at("lr")), 1e-2);
  EXPECT_EQ(std::stod(meta.at("beta1")), defaults.beta1);
  EXPECT_EQ(std::stod(meta.at("beta2")), defaults.beta2);
  EXPECT_EQ(std::stod(meta.at("adam_eps")), defaults.eps);
  EXPECT_EQ(std::stod(meta.at("weight_decay")), defaults.weight_decay);
  EXPECT_EQ(std::stod(meta.at("eps")), vwn::norm_eps);
  return r;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// Copies every parameter from `param.<name>`; fails (fatally, via the returned count) on a missing tensor or
// a size mismatch, and reports any `param.*` tensor of the file the model does not have, and any difference
// in the weight-decay flags. Returns the number of problems.
template <class Model>
int load_parameters(Model& model, const reference& r) {
  using S = typename Model::scalar;
  int problems = 0;
  std::set<std::string> visited;
  std::vector<std::string> names, decayed;
  model.visit([&](const std::string& name, S* p, S*, index_t size, bool decay) {
    visited.insert(name);
    names.push_back(name);
    if (decay) decayed.push_back(name);
    const std::string key = "param." + name;
    if (!r.f.contains(key)) {
      ADD_FAILURE() << "the reference has no tensor \"" << key << "\" (naming drift between model.hpp and "
                    << "model_reference.py?)";
      ++problems;
      return;
    }
    const auto v = r.f.values<double>(key);
    if (index_t(v.size()) != size) {
      ADD_FAILURE() << "\"" << key << "\": the model has " << size << " values, the reference " << v.size();
      ++problems;
      return;
    }
    for (index_t i = 0; i < size; ++i) p[i] = S(v[std::size_t(i)]);
  });
  for (const std::string& key : r.f.names())
    if (key.starts_with("param.") && !visited.count(key.substr(6))) {
      ADD_FAILURE() << "the reference has \"" << key << "\", which the model does not visit";
      ++problems;
    }
  EXPECT_EQ(names, split(r.f.metadata.at("params"))) << "parameter order (transformer::visit)";
  EXPECT_EQ(decayed, split(r.f.metadata.at("decay"))) << "weight-decay flags";
  return problems;
}

template <int M, int N, bool Dynamic>
void check_against_reference(const std::string& stem) {
  SCOPED_TRACE(stem);
  if (!vwn::is_compiled_shape(M, N))
    GTEST_SKIP() << "shape (" << M << "," << N << ") is not compiled in this build (VWN_SHAPES)";
  const reference r = load(stem, M, N, Dynamic);
  using model_t = vwn::model::transformer<double>;

  // Step 0: losses and every gradient.
  model_t model(r.cfg);
  ASSERT_EQ(load_parameters(model, r), 0);
  model.zero_grad();
  const vwn::model::losses got = model.forward(vwn::host, r.inputs, r.next, r.next2, r.T);
  model.backward(vwn::host);
  auto one = [](double x) { return Eigen::Matrix<double, 1, 1>::Constant(x); };
  double worst_loss = 0;
  const std::vector<std::pair<std::string, double>> step0 = {
      {"loss", got.total}, {"loss_next", got.next}, {"loss_next2", got.next2}};
  for (const auto& [name, value] : step0) {
    const double ref = scalar(r.f, name);
    worst_loss = std::max(worst_loss, std::abs(value - ref));
    if (ref == 0) {
      EXPECT_EQ(value, 0.0) << name << " (no MTP head)";
    } else {
      EXPECT_TRUE(close(one(value), one(ref), loss_atol, loss_rtol)) << name;
    }
  }
  EXPECT_TRUE(close(model.logits(), r.f.matrix<double>("logits"), loss_atol, loss_rtol)) << "main-head logits";
  double worst_grad = 0, worst_grad_rel = 0;
  model.visit([&](const std::string& name, double*, double* g, index_t size, bool) {
    const auto ref = r.f.matrix<double>("grad." + name);
    ASSERT_EQ(ref.size(), size) << "grad." << name;
    const Eigen::Map<const Eigen::RowVectorXd> got_g(g, size), ref_g(ref.data(), size);
    EXPECT_TRUE(close(got_g, ref_g, grad_atol, grad_rtol)) << "gradient of " << name;
    const double d = (got_g - ref_g).cwiseAbs().maxCoeff();
    worst_grad = std::max(worst_grad, d);
    worst_grad_rel = std::max(worst_grad_rel, d / ref_g.cwiseAbs().maxCoeff());
  });

  // Ten AdamW steps (constant lr, no clipping) from the same parameters.
  model_t trained(r.cfg);
  ASSERT_EQ(load_parameters(trained, r), 0);
  vwn::optim::adamw<double> opt;
  trained.visit([&](const std::string& name, double* p, double* g, index_t size, bool decay) {
    opt.add(name, p, g, size, decay);
  });
  const auto ref_traj = r.f.matrix<double>("adamw.losses");
  Eigen::RowVectorXd traj(ref_traj.size());
  for (index_t k = 0; k < traj.size(); ++k) {
    trained.zero_grad();
    traj(k) = trained.forward(vwn::host, r.inputs, r.next, r.next2, r.T).total;
    trained.backward(vwn::host);
    opt.step(1e-2);
  }
  EXPECT_TRUE(close(traj, ref_traj, traj_atol, traj_rtol)) << "AdamW loss trajectory";
  EXPECT_LT(traj(traj.size() - 1), traj(0));
  const double worst_traj = (traj - ref_traj).cwiseAbs().maxCoeff();

  // Step-0 losses in float.
  vwn::model::transformer<float> fmodel(r.cfg);
  ASSERT_EQ(load_parameters(fmodel, r), 0);
  const vwn::model::losses fgot = fmodel.forward(vwn::host, r.inputs, r.next, r.next2, r.T);
  EXPECT_TRUE(close(one(fgot.total), one(scalar(r.f, "loss")), float_atol, float_rtol)) << "float loss";
  EXPECT_TRUE(close(one(fgot.next), one(scalar(r.f, "loss_next")), float_atol, float_rtol)) << "float loss_next";
  if (r.cfg.mtp) {
    EXPECT_TRUE(close(one(fgot.next2), one(scalar(r.f, "loss_next2")), float_atol, float_rtol))
        << "float loss_next2";
  }
  const double worst_float = std::abs(fgot.total - scalar(r.f, "loss"));

  std::printf("[ %s ] max |diff|: losses %.3g, gradients %.3g (%.3g of the tensor's max), AdamW trajectory %.3g, "
              "float loss %.3g\n",
              stem.c_str(), worst_loss, worst_grad, worst_grad_rel, worst_traj, worst_float);
}

TEST(ModelReference, DynamicM2N3MtpDirectEmbedding) { check_against_reference<2, 3, true>("dghc_m2_n3_mtp"); }

TEST(ModelReference, StaticM1N4MtpLowRankEmbedding) { check_against_reference<1, 4, false>("ghc_m1_n4_mtp_lr"); }

TEST(ModelReference, StaticM1N1PlainTransformer) { check_against_reference<1, 1, false>("ghc_m1_n1"); }

}  // namespace
