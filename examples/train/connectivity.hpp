#pragma once
/// \file connectivity.hpp
/// The depth-connectivity map of a trained model (paper, section 4, Eq. 17): GHC read as attention over depth.
///
/// Sub-layer `k` (`0 .. K-1`, `K = 2L`: attention and FFN of each block in order) has per-token coefficients
/// `a_k` (`n x (m+n)`) and `b_k` (`n x m`). With `A_k = a_k[:, :m]` (the backbone read-out) and
/// `Â_k = a_k[:, m:]` (the carry), one sub-layer maps `H_{k+1} = b_k Z_k + Â_k^T H_k` and reads `X_k = A_k^T H_k`.
/// Unrolled, the backbone input of sub-layer `l` is
///   `X_l = A_l^T Â_{l-1}^T ... Â_0^T H_0 + sum_{t<l} A_l^T Â_{l-1}^T ... Â_{t+1}^T b_t Z_t`,
/// so the output `Z_t` of sub-layer `t` reaches the input of sub-layer `l` through the `m x m` operator
/// `M_{l,t} = A_l^T Â_{l-1}^T ... Â_{t+1}^T b_t`, and the embedding through the `m x n` operator
/// `E_l = A_l^T Â_{l-1}^T ... Â_0^T`. Both act on whole blocks of `db` values (every value of a block alike).
///
/// The **strength** of a path is `||M||_F / sqrt(m)`: the root-mean-square singular value, 1 for the identity on
/// the `m` backbone blocks, so that a plain residual stream ((1,1), or any shape at the paper's initialisation) has
/// strength 1 from every earlier sub-layer and from the embedding. For dynamic GHC the coefficients differ per
/// token: the map is the mean over tokens of each token's strengths (each token's operators composed from its own
/// coefficients). The **embedding share** of sub-layer `l` is `strength(E_l) / (strength(E_l) + sum_t strength(M_{l,t}))`.
///
/// The **Amax gain magnitude** (mHC, section 3.1): with `H_res,l = Â_l^T` the residual mapping of sub-layer `l`
/// (`H_{l+1} = H_res,l H_l + ...`) and `P_l = H_res,l ... H_res,0` the composite mapping from the embedding, the forward
/// gain is the largest absolute row sum `max_i sum_j |P(i, j)|` and the backward gain the largest absolute column sum;
/// both for the single mapping `H_res,l` and for the composite `P_l`, each token's gains averaged over the tokens.

#include <filesystem>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include <transformer/model.hpp>

namespace vwn::train {

/// The map: `strength(l, 0)` from the embedding to sub-layer `l`, `strength(l, t + 1)` from sub-layer `t` (`t < l`;
/// NaN for `t >= l`: no path).
struct connectivity_map {
  int m = 1, n = 1;
  Eigen::MatrixXd strength;  ///< `K x (K+1)`
  /// `K x 4`: the Amax gains of sub-layer `l`: single forward, single backward, composite forward, composite backward.
  Eigen::MatrixXd gain;
  index_t tokens = 0;        ///< tokens averaged over
  /// Number of sub-layers `K`.
  index_t sublayers() const { return strength.rows(); }
  /// The embedding share of sub-layer `l`.
  double embedding_share(index_t l) const;
  /// "0.attn", "0.ffn", "1.attn", ...: sub-layer `k`'s name.
  static std::string sublayer_name(index_t k);
};

/// Strengths of one token: `coefficients[k]` is `[a_k | b_k]` (`n x (2m+n)`) of sub-layer `k`. Returns `K x (K+1)`.
Eigen::MatrixXd token_connectivity(int m, int n, const std::vector<Eigen::MatrixXd>& coefficients);

/// Amax gains of one token (the columns of `connectivity_map::gain`), from the same coefficients. Returns `K x 4`.
Eigen::MatrixXd token_gains(int m, int n, const std::vector<Eigen::MatrixXd>& coefficients);

/// The map of `model` averaged over up to `max_tokens` tokens of `text` (windows of the model's context, from the
/// start); a static model needs no text (its coefficients do not depend on the token) and gets one token's map.
/// Throws std::invalid_argument for a dynamic model with a text shorter than 3 bytes.
connectivity_map model_connectivity(model::transformer<float>& model, const std::string& text, index_t max_tokens);

/// Writes the map as CSV (`layer,layer_name,source,source_name,strength`, then one `embedding_share` row per layer),
/// to a temporary name first and then renamed over `path`.
void write_connectivity_csv(const std::filesystem::path& path, const connectivity_map& map);

/// Draws the map as a heatmap PNG with gnuplot (`title` on top). Returns false, writing nothing, where gnuplot is
/// missing or fails, or where the file name or the title holds a control character.
bool plot_connectivity(const std::filesystem::path& png, const connectivity_map& map, const std::string& title);

}  // namespace vwn::train
