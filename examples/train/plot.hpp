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

/// `s` in double quotes for a gnuplot script.
std::string gnuplot_quote(const std::string& s);

/// The line of a gnuplot script that selects a PNG terminal of `width` x `height` (pngcairo where gnuplot has it).
std::string gnuplot_png_terminal(int width, int height);

/// Runs gnuplot on `script`; returns an empty string on success, otherwise why not (gnuplot missing or failing).
std::string run_gnuplot(const std::filesystem::path& script);

/// Plots the training loss and the validation next / next-2-token losses of a log against the step into
/// `png`, through a gnuplot script written next to it (`png` with extension `.gp`, data inline). Returns
/// an empty string on success, otherwise why no plot was made (gnuplot missing or failing, no data).
std::string plot_losses(const std::vector<log_row>& rows, const std::filesystem::path& png, const std::string& title);

}  // namespace vwn::train
