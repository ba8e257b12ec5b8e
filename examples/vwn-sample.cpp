// vwn-sample: generates bytes from a vwn-train checkpoint (the model is rebuilt from the checkpoint's
// metadata) and prints the prompt and the generated text, non-printable bytes escaped.
#include <vwn/trainer.hpp>

#include <exception>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

namespace {

namespace train = vwn::train;
using vwn::index_t;

const char* const usage =
    "usage: vwn-sample --checkpoint PATH [--prompt TEXT] [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
    "Generates bytes with the model of a vwn-train checkpoint and prints prompt + text; bytes other than\n"
    "printable ASCII and newlines are written as \\xNN (a backslash as \\\\, a tab as \\t).\n"
    "  --checkpoint PATH   checkpoint written by vwn-train (required)\n"
    "  --prompt TEXT       text to continue [\"The \"]; an empty prompt starts after a newline\n"
    "  --tokens N          bytes to generate [400]\n"
    "  --temperature T     softmax temperature, 0 for the most likely byte [0.8]\n"
    "  --top-k K           sample among the K most likely bytes, 0 for all [40]\n"
    "  --seed S            sampling seed [1]\n"
    "  -h, --help          this help\n";

int run(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  std::optional<std::string> checkpoint;
  std::string prompt = "The ";
  train::sample_options o;
  o.tokens = 400;
  for (train::argument_reader r(args); r.next();) {
    const std::string& arg = r.flag();
    auto value = [&] { return r.value(); };
    if (arg == "-h" || arg == "--help") {
      std::cout << usage;
      return 0;
    } else if (arg == "--checkpoint") {
      checkpoint = value();
    } else if (arg == "--prompt") {
      prompt = value();
    } else if (arg == "--tokens") {
      o.tokens = train::detail::parse_int("--tokens", value(), 0, 1 << 24, "an integer in [0, 16777216]");
    } else if (arg == "--temperature") {
      o.temperature = train::detail::parse_double("--temperature", value(), [](double t) { return t >= 0; }, "a number >= 0");
    } else if (arg == "--top-k") {
      o.top_k = train::detail::parse_int("--top-k", value(), 0, 1 << 20, "an integer >= 0");
    } else if (arg == "--seed") {
      o.seed = train::detail::parse_u64("--seed", value());
    } else {
      r.unknown();
    }
  }
  if (!checkpoint) throw std::invalid_argument("--checkpoint: expected a checkpoint path, got none (try --help)");

  const train::checkpoint c = train::read_checkpoint(*checkpoint);
  auto model = train::load_model(c);
  std::cerr << "vwn-sample: " << model->name() << " from " << *checkpoint << " (step " << c.step << ")\n";
  std::cout << train::printable(prompt + train::generate(*model, prompt, o)) << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "vwn-sample: error: " << e.what() << "\n";
    return 1;
  }
}
