#!/usr/bin/env bash
# Install dependencies, configure and build, then run the main job.
# For now the main job prints the cost table of a custom (m, n) configuration
# (examples/vwn_costs.cpp). Extra arguments are passed to the program.
# Build folder: $VWN_BUILD_DIR (default: build).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

build_dir="${VWN_BUILD_DIR:-build}"
main_target=vwn_costs

bash scripts/setup.sh
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build_dir" -j "$(nproc)" --target "$main_target"
"$build_dir/examples/$main_target" "$@"
