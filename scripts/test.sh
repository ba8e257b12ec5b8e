#!/usr/bin/env bash
# Install dependencies, configure and build everything (warnings are errors), run the whole test suite; then
# build the host tests and the fuzz targets again with AddressSanitizer + UndefinedBehaviorSanitizer (clang,
# CMakePresets.json preset "sanitize", folder build-sanitize) and run them, each fuzz target for 30 seconds.
# Build folder of the first part: $VWN_BUILD_DIR (default: build). VWN_SANITIZE_SUITE=0 skips the second part.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

build_dir="${VWN_BUILD_DIR:-build}"
jobs="$(nproc)"

bash scripts/setup.sh
SECONDS=0
# Every part back on (a folder configured by scripts/main.sh has only the programs of one shape).
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DVWN_WERROR=ON -DVWN_NATIVE=OFF -DVWN_SHAPES= \
  -DVWN_BUILD_TESTS=ON -DVWN_BUILD_BENCHMARKS=ON -DVWN_BUILD_EXAMPLES=ON -DVWN_TORCH=ON -DVWN_CUDA=ON
cmake --build "$build_dir" -j "$jobs"
echo "test.sh: build took ${SECONDS} s"
SECONDS=0
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs"
echo "test.sh: tests took ${SECONDS} s"

if [ "${VWN_SANITIZE_SUITE:-1}" != 0 ]; then
  echo "test.sh: the host tests and the fuzz targets under AddressSanitizer + UndefinedBehaviorSanitizer"
  SECONDS=0
  cmake --preset sanitize
  cmake --build --preset sanitize -j "$jobs"
  echo "test.sh: sanitizer build took ${SECONDS} s"
  SECONDS=0
  ctest --preset sanitize -j "$jobs"
  # What each fuzz run did (executions, coverage, inputs kept); the whole output is in LastTest.log.
  grep -E "Testing: fuzz\.[a-z_]+$|DONE" build-sanitize/Testing/Temporary/LastTest.log || true
  echo "test.sh: sanitizer tests and fuzz runs took ${SECONDS} s"
fi
