#!/usr/bin/env bash
# Downloads the Debian packages that scripts/gpu-check.sh needs on a GPU machine that has CUDA, CMake and
# Python but no Eigen, GoogleTest or Google Benchmark and cannot fetch them: Eigen's headers, GoogleTest's
# sources (built there, so no prebuilt library meets a different C library) and Google Benchmark.
# Run on a Debian machine with apt; the packages land in .deps/ (ignored by git), about 2 MB.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$root/.deps"
cd "$root/.deps"
apt-get download libeigen3-dev googletest libbenchmark-dev libbenchmark1debian
ls -l "$root/.deps"
