// vwn-connectivity: the depth-connectivity map of a vwn-train checkpoint (train/connectivity.hpp, docs/scaling.md):
// how strongly each sub-layer's output reaches each later sub-layer's input through the GHC coefficients (Eq. 17),
// and how much of the embedding still does. Writes PREFIX.csv and, where gnuplot is installed, PREFIX.png.
//
//   vwn-connectivity --checkpoint out/checkpoint.safetensors [--text data/brown.txt] [--tokens 4096] [--out map]
#include <cstdio>
#include <exception>
#include <fstream>
#include <iterator>
#include <string>

#include <CLI/CLI.hpp>

#include <train/checkpoint.hpp>
#include <train/connectivity.hpp>

int main(int argc, char** argv) {
  CLI::App app{"Draws the depth-connectivity map of a vwn-train checkpoint: the strength (||M||_F / sqrt(m)) with "
               "which each sub-layer's output reaches each later sub-layer's input through the GHC coefficients, and "
               "the embedding's share. Writes OUT.csv and OUT.png.",
               "vwn-connectivity"};
  std::string checkpoint_path, text_path, out = "connectivity";
  long long tokens = 4096;
  app.add_option("--checkpoint", checkpoint_path, "the checkpoint")->required();
  app.add_option("--text", text_path, "text to average a dynamic model's coefficients over (its first bytes)");
  app.add_option("--tokens", tokens, "tokens of the text to average over [4096]")->check(CLI::PositiveNumber);
  app.add_option("--out", out, "output prefix: OUT.csv, OUT.png [connectivity]");
  CLI11_PARSE(app, argc, argv);
  try {
    const vwn::train::checkpoint c = vwn::train::read_checkpoint(checkpoint_path);
    auto model = vwn::train::load_model(c);
    std::string text;
    if (c.config.dynamic) {
      if (text_path.empty())
        throw std::invalid_argument("--text: expected a text file to average the dynamic coefficients over (the "
                                    "model is dynamic), got none");
      std::ifstream in(text_path, std::ios::binary);
      if (!in) throw std::runtime_error("--text: cannot read '" + text_path + "'");
      text.assign(std::istreambuf_iterator<char>(in), {});
    }
    const vwn::train::connectivity_map map = vwn::train::model_connectivity(*model, text, vwn::index_t(tokens));
    vwn::train::write_connectivity_csv(out + ".csv", map);
    const std::string title = model->name() + ", step " + std::to_string(c.step) +
                              (c.config.dynamic ? ", mean over " + std::to_string(map.tokens) + " tokens" : "");
    const bool plotted = vwn::train::plot_connectivity(out + ".png", map, title);
    std::printf("vwn-connectivity: %s: %lld sub-layers, %lld token(s); wrote %s.csv%s\n", model->name().c_str(),
                (long long)map.sublayers(), (long long)map.tokens, out.c_str(),
                plotted ? (" and " + out + ".png").c_str() : " (no PNG: gnuplot missing or failing)");
    std::printf("embedding share per sub-layer:");
    for (vwn::index_t l = 0; l < map.sublayers(); ++l) std::printf(" %.3f", map.embedding_share(l));
    std::printf("\n");
    // mHC's Amax gain magnitude (train/connectivity.hpp): the carries alone, per sub-layer and composed.
    const char* names[4] = {"Amax gain, forward (max row sum)    ", "Amax gain, backward (max column sum)",
                            "composite Amax gain, forward        ", "composite Amax gain, backward       "};
    for (int g = 0; g < 4; ++g) {
      std::printf("%s max %.4g:", names[g], map.gain.col(g).maxCoeff());
      for (vwn::index_t l = 0; l < map.sublayers(); ++l) std::printf(" %.4g", map.gain(l, g));
      std::printf("\n");
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vwn-connectivity: error: %s\n", e.what());
    return 1;
  }
}
