#!/usr/bin/env bash
# Builds, on a machine without a GPU, the programs scripts/gpu-check.sh runs on a GPU machine: the device tests
# (vwn_cuda_tests) and the device benchmark (bench_ghc_cuda), for sm_90 (H100, H200), into .gpu/ (ignored by git),
# with the shared libraries they need that a GPU machine may lack. The folder travels with the working tree (carry
# `.gpu`), so the run there only runs. Prints the folder's size (it must stay under 60 MiB), `ldd` of each program
# with .gpu/lib first, and the wall time.
#
# .gpu/bin/     vwn_cuda_tests, bench_ghc_cuda (stripped)
# .gpu/lib/     every library they link except the C library, the driver (libcuda), the C++ run-time and cuBLAS
#               (libcublas, libcublasLt: about 600 MB; the CUDA toolkit of the GPU machine provides them, and
#               gpu-check.sh finds them): libcudart, libgomp, Google Benchmark
# .gpu/lib/fallback/  libstdc++ and libgcc_s of this machine, which gpu-check.sh adds only where the GPU machine's
#               own are missing or older (a newer one serves these programs, and the GPU machine's other libraries)
# .gpu/BUILD.txt  commit, date, architecture, shapes, nvcc
#
# Needs nvcc (/usr/local/cuda), CMake, Ninja and the packages of scripts/setup.sh. Without Eigen, GoogleTest and
# Google Benchmark on the system (a GPU machine), the Debian packages in .deps/ (scripts/gpu-deps.sh) are unpacked
# into a private prefix and used.
#
#   VWN_GPU_ARCH (default 90), VWN_SHAPES (default: every shape), VWN_GPU_BUILD_DIR (default build-gpu),
#   VWN_GPU_DIR (default .gpu), VWN_GPU_JOBS (default: every core)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
SECONDS=0
arch="${VWN_GPU_ARCH:-90}"
build="${VWN_GPU_BUILD_DIR:-build-gpu}"
gpu="${VWN_GPU_DIR:-$root/.gpu}"
jobs="${VWN_GPU_JOBS:-$(nproc)}"
limit_mib=60

args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch" -DVWN_TORCH=OFF -DVWN_CUDA=ON
      -DVWN_NATIVE=OFF -DVWN_BUILD_EXAMPLES=OFF "-DVWN_SHAPES=${VWN_SHAPES:-}")  # empty: every shape
if command -v ccache > /dev/null; then
  args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$root}"
fi
if compgen -G ".deps/*.deb" > /dev/null && ! [ -f /usr/include/eigen3/Eigen/Core ]; then
  prefix=/tmp/vwn-deps
  rm -rf "$prefix" && mkdir -p "$prefix"
  for f in .deps/*.deb; do dpkg -x "$f" "$prefix"; done
  # GoogleTest from its sources, with this machine's compiler and C library.
  cmake -S "$prefix/usr/src/googletest" -B /tmp/vwn-gtest -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF \
    -DCMAKE_INSTALL_PREFIX="$prefix/gtest" > /dev/null
  cmake --build /tmp/vwn-gtest -j "$jobs" --target install > /dev/null
  args+=("-DCMAKE_PREFIX_PATH=$prefix/gtest;$prefix/usr")
  export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "gpu-build: dependencies from .deps/ (unpacked into $prefix)"
fi

cmake -S . -B "$build" "${args[@]}" | grep -E "^-- vwn:" || true
cmake --build "$build" -j "$jobs" --target vwn_cuda_tests bench_ghc_cuda
echo "gpu-build: built in ${SECONDS} s"

# Into a new folder first; the old one is replaced only once the new one is complete.
next="$gpu.next"
rm -rf "$next"
mkdir -p "$next/bin" "$next/lib/fallback"
programs=("$build/tests/cuda/vwn_cuda_tests" "$build/bench/cuda/bench_ghc_cuda")
for p in "${programs[@]}"; do
  cp "$p" "$next/bin/"
  strip --strip-unneeded "$next/bin/$(basename "$p")"
done
# The libraries to carry: everything ldd resolves but the C library, the loader, the driver and cuBLAS; the C++
# run-time into fallback/.
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|libpthread\.|librt\.|libcuda\.|libcublas|libcublasLt)'
for p in "${programs[@]}"; do
  ldd "$p" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | while read -r name path; do
    if [[ "$name" =~ ^(libstdc\+\+|libgcc_s)\. ]]; then
      cp -L "$path" "$next/lib/fallback/$name"
    elif ! [[ "$name" =~ $skip ]] && ! [ -e "$next/lib/$name" ]; then
      cp -L "$path" "$next/lib/$name"
    fi
  done
done
{
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
  echo "built $(date -u +%Y-%m-%dT%H:%MZ) for sm_$arch"
  echo "shapes ${VWN_SHAPES:-all}"
  echo "$(/usr/local/cuda/bin/nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'nvcc ?')"
} > "$next/BUILD.txt"
rm -rf "$gpu"
mv "$next" "$gpu"

for p in "$gpu"/bin/*; do
  echo "gpu-build: ldd $(basename "$p") (with .gpu/lib first):"
  LD_LIBRARY_PATH="$gpu/lib" ldd "$p" | sed 's/ (0x[0-9a-f]*)//; s/^/  /'
done
size_kib="$(du -sk "$gpu" | cut -f1)"
files=("$gpu"/bin/* "$gpu"/lib/*.so* "$gpu"/lib/fallback/*)
echo "gpu-build: $(du -sh "$gpu" | cut -f1) in $gpu (${#files[@]} files):"
ls -l "$gpu"/bin "$gpu"/lib "$gpu"/lib/fallback | sed 's/^/  /'
echo "gpu-build: wall time ${SECONDS} s on $jobs jobs"
if [ "$size_kib" -gt $((limit_mib * 1024)) ]; then
  echo "gpu-build: $gpu is over $limit_mib MiB: too large to travel with the working tree" >&2
  exit 1
fi
