// vwn-sample: generates bytes from a vwn-train checkpoint (the model is rebuilt from the checkpoint's
// metadata) and prints the prompt and the generated text, non-printable bytes escaped. Run with --help for
// the options.
#include <transformer/blas.hpp>
#include <train/trainer.hpp>

#include <exception>
#include <iostream>
#include <string>
#include <vector>

namespace {

namespace train = vwn::train;

int run(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  const train::sample_command_line cl = train::parse_sample_command_line(args);
  if (cl.help) {
    std::cout << train::sample_help();
    return 0;
  }
  const train::checkpoint c = train::read_checkpoint(cl.checkpoint);
  auto model = train::load_model(c);
  std::cerr << "vwn-sample: " << model->name() << " from " << cl.checkpoint.string() << " (step " << c.step << ")\n";
  std::cout << train::printable(cl.prompt + train::generate(*model, cl.prompt, cl.sampling)) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    vwn::model::use_default_blas();
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "vwn-sample: error: " << e.what() << "\n";
    return 1;
  }
}
