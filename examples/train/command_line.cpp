#include <train/command_line.hpp>

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <stdexcept>

#include <CLI/CLI.hpp>

#include <train/checkpoint.hpp>
#include <train/output.hpp>
#include <train/values.hpp>

namespace vwn::train {

namespace {

// CLI11 finds the flags, splits `--flag=VALUE`, collects the values, runs each flag's handler, writes the
// help (in our layout, help_formatter) and collects unknown arguments. What stays ours, and why:
// - the values: every flag has a handler that receives its value as text and checks it with values.hpp
//   (through the settings table for the settings), because the messages must name the flag, what was
//   expected and what was given, and the same checks read the checkpoint metadata; CLI11's validators word
//   their errors differently. CLI11 runs a handler as soon as its flag is read (trigger_on_parse), so values
//   are checked in command-line order and a repeated flag simply wins; our std::invalid_argument passes
//   through CLI11 untouched;
// - the messages for an unknown argument and for a missing value at the end, which CLI11 words in its own
//   way ("The following arguments were not expected", "1 required N missing");
// - `--flag=` and a switch's `=VALUE`, which CLI11 reads differently (see `parse`);
// - vwn-sample's required --checkpoint, checked after parsing so that --help needs none and the message
//   says what was expected.

using handler = std::function<void(const std::string&)>;

/// How a switch takes `--flag=VALUE`.
enum class switch_value {
  none,     ///< refused: "--static: expected no value, got 'VALUE'"
  boolean,  ///< a bool (`--mtp=false`), checked by the handler
  ignored,  ///< ignored (`--help=x` is `--help`)
};

/// A CLI11 app, and what `parse` needs to know beyond it: how each switch takes `=VALUE`.
struct parser {
  CLI::App app;
  std::map<std::string, switch_value> switches;  ///< by long flag
};

/// A flag that takes a value: `--flag VALUE` (the next argument, whatever it looks like) or `--flag=VALUE`.
CLI::Option* add_value(parser& p, const std::string& flag, const std::string& value_name, const std::string& help,
                       handler handle) {
  return p.app
      .add_option(
          flag,
          [handle](const CLI::results_t& r) {
            handle(r.back());
            return true;
          },
          help)
      ->option_text(value_name)
      ->trigger_on_parse();
}

/// A switch `--flag` (`flag` may also list a short name: "-h,--help"). CLI11 hands the handler "true" for
/// `--flag` and VALUE for `--flag=VALUE`, which `parse` has checked as `kind` says.
CLI::Option* add_switch(parser& p, const std::string& flag, const std::string& help, switch_value kind,
                        handler handle) {
  CLI::Option* o = p.app
                       .add_option(
                           flag,
                           [handle](const CLI::results_t& r) {
                             handle(r.back());
                             return true;
                           },
                           help)
                       ->expected(0)
                       ->trigger_on_parse();
  for (const std::string& name : o->get_lnames()) p.switches["--" + name] = kind;
  return o;
}

/// The option of `p` named by `arg` up to any '=' (nullptr for none).
const CLI::Option* option_of(const parser& p, const std::string& arg) {
  if (arg.rfind("--", 0) != 0) return nullptr;
  return p.app.get_option_no_throw(arg.substr(0, arg.find('=')));
}

/// Whether `arg` (without any `=VALUE`) is a flag of `p` that takes a value.
bool takes_value(const parser& p, const std::string& arg) {
  const CLI::Option* o = option_of(p, arg);
  return o != nullptr && o->get_expected_min() > 0;
}

/// Our layout of CLI11's help: the usage line, the description, the flags by group, then the footer, with
/// one blank line between the parts (CLI11 puts two between groups), and "-h, --help" for "-h,--help".
class help_formatter : public CLI::Formatter {
 public:
  help_formatter() {
    column_width(28);
    label("Usage", "usage");
    label("OPTIONS", "options");
  }
  std::string make_group(std::string group, bool positional, std::vector<const CLI::Option*> opts) const override {
    std::string out = group + ":\n";
    for (const CLI::Option* o : opts) out += make_option(o, positional);
    return out;
  }
  std::string make_option_name(const CLI::Option* o, bool positional) const override {
    std::string names = CLI::Formatter::make_option_name(o, positional);  // "-h,--help"
    for (std::size_t i = names.find(','); i != std::string::npos; i = names.find(',', i + 2)) names.insert(i + 1, " ");
    return names;
  }
  std::string make_help(const CLI::App* app, std::string name, CLI::AppFormatMode mode) const override {
    const std::string footer = make_footer(app);
    return make_usage(app, std::move(name)) + make_description(app) + "\n" + make_groups(app, mode) +
           (footer.empty() ? "" : "\n" + footer);
  }
};

/// An app with our help layout, no built-in help flag (each program has its own, which sets a field) and
/// unknown arguments collected rather than thrown (they are reported by `parse` in our words).
void configure(CLI::App& app, const std::string& footer) {
  app.formatter(std::make_shared<help_formatter>());
  app.set_help_flag();
  app.allow_extras();
  app.footer(footer);
}

/// Parses `args` with `p`; every error is a std::invalid_argument in our words.
void parse(parser& p, std::span<const std::string> args) {
  // Two readings of CLI11's are not ours, so the arguments pass through this loop first:
  // - for `--flag=` (the empty inline value) CLI11 takes the next argument as the value; here it means the
  //   empty value, so it is handed to CLI11 as `--flag ""`;
  // - CLI11 hands a switch the value "true" for `--flag=`, `--flag={}` and `--flag=true` as for `--flag`, so
  //   a switch given with `=VALUE` is checked here: `--static=true` and `--mtp=` stay errors.
  // An argument read as the value of the flag before it passes as it is.
  std::vector<std::string> reversed;
  bool is_value = false;
  for (const std::string& a : args) {
    const CLI::Option* o = is_value ? nullptr : option_of(p, a);
    const std::size_t eq = a.find('=');
    is_value = false;
    if (o != nullptr && o->get_expected_min() > 0) {
      if (eq == a.size() - 1) {
        reversed.push_back(a.substr(0, eq));
        reversed.emplace_back();
        continue;
      }
      is_value = eq == std::string::npos;
    } else if (o != nullptr && eq != std::string::npos) {
      const std::string flag = a.substr(0, eq), value = a.substr(eq + 1);
      const auto kind = p.switches.find(flag);
      if (kind != p.switches.end() && kind->second == switch_value::none)
        throw std::invalid_argument(flag + ": expected no value, got '" + value + "'");
      if (kind != p.switches.end() && kind->second == switch_value::boolean) (void)detail::parse_bool(flag, value);
    }
    reversed.push_back(a);
  }
  std::reverse(reversed.begin(), reversed.end());  // CLI11 reads the vector from the back
  try {
    p.app.parse(reversed);
  } catch (const CLI::ArgumentMismatch& e) {
    // Thrown when a flag that needs a value ends the command line (CLI11: "--steps: 1 required N missing").
    if (!args.empty() && takes_value(p, args.back()) && args.back().find('=') == std::string::npos)
      throw std::invalid_argument(args.back() + ": expected a value, got the end of the command line");
    throw std::invalid_argument(e.what());
  } catch (const CLI::Error& e) {
    throw std::invalid_argument(e.what());
  }
  // Arguments CLI11 did not place, in order: unknown flags (with any `=VALUE`), stray values, "--".
  const std::vector<std::string> unknown = p.app.remaining();
  if (!unknown.empty()) throw std::invalid_argument("unknown option '" + unknown.front() + "' (try --help)");
}

/// Defines the `vwn-train` flags on `p`, writing into `out`.
void define_train(parser& p, command_line& out, const std::string& parallel_note = {}) {
  p.app.name("vwn-train");
  p.app.description(
      "Trains the reference transformer on bytes of a text corpus, writing OUT/log.csv,\n"
      "OUT/checkpoint.safetensors and OUT/loss.png, and prints a text sample at the end.");
  configure(p.app, "Compiled shapes (m, n): " + model::available_shapes_text() +
                       ".\nCtrl-C stops after the current step and saves a checkpoint." +
                       (parallel_note.empty() ? std::string() : "\n" + parallel_note));

  // The settings, from their table.
  const std::string settings_group = "model and training settings [default]";
  for (const setting_field& f : setting_fields()) {
    const std::string help = f.help + " [" + default_text(f) + "]";
    const handler assign = [&out, &f](const std::string& v) {
      settings probe;
      f.set(probe, v);  // checks the value now, whatever it is later applied to
      out.assignments.emplace_back(f.key, v);
    };
    if (f.value_name.empty()) {
      add_switch(p, f.flag, help, switch_value::boolean, assign)->option_text("| " + f.negation)->group(settings_group);
      add_switch(p, f.negation, "", switch_value::none, [&out, &f](const std::string&) {
        out.assignments.emplace_back(f.key, "false");
      })->group("");  // hidden: listed on the line of f.flag
    } else {
      add_value(p, f.flag, f.value_name, help, assign)->group(settings_group);
    }
  }

  // The run options.
  const run_options d;
  run_options& r = out.run;
  const std::string run_group = "run options";
  add_value(p, "--data", "PATH",
            "corpus file or folder (every file below it) [" + d.data.string() + ";\nfetch it with scripts/get-brown.sh]",
            [&r](const std::string& v) {
              r.data = v;
              r.data_given = true;
            })
      ->group(run_group);
  add_value(p, "--out", "DIR", "output folder [" + d.out.string() + "]",
            [&r](const std::string& v) {
              expect_output_name(v);
              r.out = v;
            })
      ->group(run_group);
  add_value(p, "--resume", "CHECKPOINT",
            "continue a run from its checkpoint; settings not given take the\ncheckpoint's values, given ones must "
            "match it (except --eval-every,\n--eval-batches)",
            [&r](const std::string& v) { r.resume = v; })
      ->group(run_group);
  add_value(p, "--save-every", "K",
            "checkpoint every K steps (0: at every evaluation) [" + std::to_string(d.save_every) + "]",
            [&r](const std::string& v) {
              r.save_every = detail::parse_int("--save-every", v, 0, detail::max_size, "an integer >= 0");
            })
      ->group(run_group);
  add_value(p, "--threads", "N", "OpenMP threads (0: the default) [" + std::to_string(d.threads) + "]",
            [&r](const std::string& v) {
              r.threads = int(detail::parse_int("--threads", v, 0, 4096, "an integer >= 0 (0: the default)"));
            })
      ->group(run_group);
  add_value(p, "--micro-batch", "N",
            "sequences per gradient part on each process: the batch's gradient is\nthe sum of its parts' (fixed "
            "order), for batches larger than memory\nallows (0: each process's share in one part) [" +
                std::to_string(d.micro_batch) + "]",
            [&r](const std::string& v) {
              r.micro_batch = detail::parse_int("--micro-batch", v, 0, detail::max_size, "an integer >= 0");
            })
      ->group(run_group);
  add_value(p, "--sample", "N", "bytes of text sampled at the end (0: none) [" + std::to_string(d.sample_bytes) + "]",
            [&r](const std::string& v) {
              r.sample_bytes = detail::parse_int("--sample", v, 0, 1 << 20, "an integer in [0, 1048576]");
            })
      ->group(run_group);
  add_switch(p, "--overwrite", "start afresh even if OUT already holds a checkpoint", switch_value::none,
             [&r](const std::string&) { r.overwrite = true; })
      ->group(run_group);
  add_switch(p, "-h,--help", "this help", switch_value::ignored, [&r](const std::string&) { r.help = true; })
      ->group(run_group);
}

/// Defines the `vwn-sample` flags on `p`, writing into `out` (and whether --checkpoint was given).
void define_sample(parser& p, sample_command_line& out, bool& checkpoint_given) {
  p.app.name("vwn-sample");
  p.app.description(
      "Generates bytes with the model of a vwn-train checkpoint and prints prompt + text; bytes other than\n"
      "printable ASCII and newlines are written as \\xNN (a backslash as \\\\, a tab as \\t).");
  configure(p.app, "");
  const sample_command_line d;
  sample_options& o = out.sampling;
  const std::string group = "options [default]";
  add_value(p, "--checkpoint", "PATH", "checkpoint written by vwn-train (required)",
            [&out, &checkpoint_given](const std::string& v) {
              out.checkpoint = v;
              checkpoint_given = true;
            })
      ->group(group);
  add_value(p, "--prompt", "TEXT", "text to continue [\"" + d.prompt + "\"]; an empty prompt starts after a newline",
            [&out](const std::string& v) { out.prompt = v; })
      ->group(group);
  add_value(p, "--tokens", "N", "bytes to generate [" + std::to_string(d.sampling.tokens) + "]",
            [&o](const std::string& v) {
              o.tokens = detail::parse_int("--tokens", v, 0, 1 << 24, "an integer in [0, 16777216]");
            })
      ->group(group);
  add_value(p, "--temperature", "T",
            "softmax temperature, 0 for the most likely byte [" + detail::format_double(d.sampling.temperature) + "]",
            [&o](const std::string& v) {
              o.temperature =
                  detail::parse_double("--temperature", v, [](double t) { return t >= 0 && t <= 100; }, "a number in [0, 100]");
            })
      ->group(group);
  add_value(p, "--top-k", "K", "sample among the K most likely bytes, 0 for all [" + std::to_string(d.sampling.top_k) + "]",
            [&o](const std::string& v) { o.top_k = detail::parse_int("--top-k", v, 0, 1 << 20, "an integer >= 0"); })
      ->group(group);
  add_value(p, "--seed", "S", "sampling seed [" + std::to_string(d.sampling.seed) + "]",
            [&o](const std::string& v) { o.seed = detail::parse_u64("--seed", v); })
      ->group(group);
  add_switch(p, "-h,--help", "this help", switch_value::ignored, [&out](const std::string&) { out.help = true; })
      ->group(group);
}

}  // namespace

command_line parse_command_line(std::span<const std::string> args) {
  command_line out;
  parser p;
  define_train(p, out);
  parse(p, args);
  return out;
}

void apply(settings& s, const setting_assignments& a) {
  for (const auto& [key, value] : a) find_field(key)->set(s, value);
}

settings requested_settings(const command_line& cl) {
  settings s = cl.run.resume ? read_checkpoint(*cl.run.resume).config : settings();
  apply(s, cl.assignments);
  validate(s);
  return s;
}

std::string train_help(const std::string& parallel_note) {
  command_line unused;
  parser p;
  define_train(p, unused, parallel_note);
  return p.app.help();
}

sample_command_line parse_sample_command_line(std::span<const std::string> args) {
  sample_command_line out;
  bool checkpoint_given = false;
  parser p;
  define_sample(p, out, checkpoint_given);
  parse(p, args);
  if (!out.help && !checkpoint_given)
    throw std::invalid_argument("--checkpoint: expected a checkpoint path, got none (try --help)");
  return out;
}

std::string sample_help() {
  sample_command_line unused;
  bool given = false;
  parser p;
  define_sample(p, unused, given);
  return p.app.help();
}

}  // namespace vwn::train
