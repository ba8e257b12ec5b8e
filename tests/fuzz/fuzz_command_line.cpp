// libFuzzer target: the command lines of vwn-train and vwn-sample. The input is split at newlines into
// arguments; each parse either succeeds or refuses with a message, and a vwn-train command line without
// --resume then goes through the settings checks (validate and the memory check) and the printed summary.
#include <fuzz/fuzz_input.hpp>
#include <train/command_line.hpp>

#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace train = vwn::train;
  std::vector<std::string> args(1);
  for (std::size_t i = 0; i < size; ++i) {
    if (data[i] == '\n')
      args.emplace_back();
    else
      args.back().push_back(char(data[i]));
  }
  vwn::fuzz::expecting_refusals([&] {
    const train::command_line cl = train::parse_command_line(args);
    if (cl.run.resume) return;  // would read a file named by the input
    train::settings s;
    train::apply(s, cl.assignments);
    train::validate(s);
    train::expect_memory_fits(s, 1e9);
    (void)train::describe(s);
  });
  vwn::fuzz::expecting_refusals([&] { (void)train::parse_sample_command_line(args); });
  return 0;
}
