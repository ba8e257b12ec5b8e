#!/usr/bin/env bash
# Install dependencies, configure and build everything (warnings are errors),
# then run the whole test suite. Build folder: $VWN_BUILD_DIR (default: build).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

build_dir="${VWN_BUILD_DIR:-build}"
jobs="$(nproc)"

bash scripts/setup.sh
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DVWN_WERROR=ON -DVWN_NATIVE=OFF
cmake --build "$build_dir" -j "$jobs"
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs"
