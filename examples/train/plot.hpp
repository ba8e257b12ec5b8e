#pragma once
/// \file plot.hpp
/// The loss plot `loss.png` of a training log, drawn by gnuplot when it is installed, and what other plots share.

#include <filesystem>
#include <string>
#include <vector>

#include <train/log.hpp>

namespace vwn::train {

/// Whether a `gnuplot` program is on the PATH.
bool have_gnuplot();

/// `s` as a gnuplot string that gnuplot reads as it is (single quotes, a quote inside doubled). Throws
/// std::invalid_argument when `s` holds a control character, which no gnuplot string can hold.
std::string gnuplot_quote(const std::string& s);

/// The line of a gnuplot script that selects a PNG terminal of `width` x `height` (pngcairo where gnuplot has it).
std::string gnuplot_png_terminal(int width, int height);

/// Runs gnuplot on `script`, without a shell, in the script's folder (so a script names its files without a
/// path); returns an empty string on success, otherwise why not (gnuplot missing or failing).
std::string run_gnuplot(const std::filesystem::path& script);

/// Plots the training loss and the validation next / next-2-token losses of a log against the step into
/// `png`, through a gnuplot script written next to it (`png` with extension `.gp`, data inline, the output by
/// its file name only: no path is ever part of the script). Returns an empty string when `png` was written,
/// otherwise why no plot was made (gnuplot missing or failing, no data, a file name with control characters).
std::string plot_losses(const std::vector<log_row>& rows, const std::filesystem::path& png, const std::string& title);

}  // namespace vwn::train
