#pragma once
/// \file plot.hpp
/// The loss plot `loss.png` of a training log, drawn by gnuplot when it is installed.

#include <filesystem>
#include <string>
#include <vector>

#include <train/log.hpp>

namespace vwn::train {

/// Whether a `gnuplot` program is on the PATH.
bool have_gnuplot();

/// Plots the training loss and the validation next / next-2-token losses of a log against the step into
/// `png`, through a gnuplot script written next to it (`png` with extension `.gp`, data inline). Returns
/// an empty string on success, otherwise why no plot was made (gnuplot missing or failing, no data).
std::string plot_losses(const std::vector<log_row>& rows, const std::filesystem::path& png, const std::string& title);

}  // namespace vwn::train
