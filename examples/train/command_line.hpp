#pragma once
/// \file command_line.hpp
/// The command lines of `vwn-train` and `vwn-sample` (parsed with CLI11): `--flag VALUE` or `--flag=VALUE`,
/// switches, `-h`/`--help`. The vwn-train flags of the settings come from the settings table; values are
/// checked while parsing, and every error is a std::invalid_argument naming the flag, what was expected and
/// what was given ("--width: expected a positive integer, got 'abc'", "unknown option '--x' (try --help)").

#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <train/generate.hpp>
#include <train/settings.hpp>

namespace vwn::train {

/// Options of a `vwn-train` invocation that are not settings of the run itself.
struct run_options {
  std::filesystem::path data = "data/brown.txt";  ///< corpus file or folder
  bool data_given = false;                        ///< whether --data was given
  std::filesystem::path out = "out";              ///< output folder
  std::optional<std::filesystem::path> resume;    ///< checkpoint to continue from
  int threads = 0;                                ///< OpenMP threads (0: the default)
  index_t micro_batch = 0;                        ///< sequences per gradient part on each process (0: its whole share)
  index_t save_every = 0;                         ///< checkpoint every K steps (0: at every evaluation)
  index_t sample_bytes = 320;                     ///< bytes sampled at the end (0: none)
  bool overwrite = false;                         ///< start afresh even if `out` holds a checkpoint
  bool help = false;                              ///< --help
};

/// Settings given on a command line, in order: (checkpoint key, value) pairs, applied with `apply` onto the
/// defaults or onto a checkpoint's settings.
using setting_assignments = std::vector<std::pair<std::string, std::string>>;

/// A parsed `vwn-train` command line: the settings assignments and the run options.
struct command_line {
  setting_assignments assignments;  ///< settings given, in command-line order (a later one wins)
  run_options run;                 ///< everything else
};

/// Parses `vwn-train` arguments (without the program name): every setting of `setting_fields()` as
/// `--key VALUE` or `--key=VALUE` (the switches as `--key`, `--key=BOOL` and their negations `--static`,
/// `--no-mtp`, `--no-lowrank`), and the run options. Each value is checked here, whatever it is later
/// applied to; throws std::invalid_argument naming the flag, what was expected and what was given.
command_line parse_command_line(std::span<const std::string> args);

/// Applies parsed assignments to `s`, in order.
void apply(settings& s, const setting_assignments& a);

/// The settings a `vwn-train` command line asks for: the defaults, or with --resume the checkpoint's settings
/// (read and verified), with the settings given applied on top; validated. Reads only.
settings requested_settings(const command_line& cl);

/// The `vwn-train --help` text: every setting with its default, the run options, the compiled shapes and
/// `parallel_note` (how this build runs on several processes) at the end.
std::string train_help(const std::string& parallel_note = {});

/// A parsed `vwn-sample` command line.
struct sample_command_line {
  std::filesystem::path checkpoint;  ///< --checkpoint (required unless `help`)
  std::string prompt = "The ";       ///< --prompt
  sample_options sampling;           ///< --tokens, --temperature, --top-k, --seed (400 tokens by default)
  bool help = false;                 ///< --help

  /// The defaults of `vwn-sample`.
  sample_command_line() { sampling.tokens = 400; }
};

/// Parses `vwn-sample` arguments (without the program name); errors as for `parse_command_line`.
sample_command_line parse_sample_command_line(std::span<const std::string> args);

/// The `vwn-sample --help` text.
std::string sample_help();

}  // namespace vwn::train
