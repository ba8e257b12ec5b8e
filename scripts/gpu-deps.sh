#!/usr/bin/env bash
# Downloads the Debian packages that scripts/gpu-check.sh needs on a GPU machine that has CUDA, CMake and
# Python but no Eigen, GoogleTest, Google Benchmark, nlohmann-json or CLI11 and cannot fetch them: Eigen's headers,
# GoogleTest's sources (built there, so no prebuilt library meets a different C library), Google Benchmark, and the
# header-only nlohmann-json and CLI11 that the project's configure step looks for (the example's I/O and command
# lines). Run on a Debian machine with apt; the packages land in .deps/ (ignored by git), about 3 MB.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$root/.deps"
cd "$root/.deps"
apt-get download libeigen3-dev googletest libbenchmark-dev libbenchmark1debian nlohmann-json3-dev libcli11-dev
ls -l "$root/.deps"
