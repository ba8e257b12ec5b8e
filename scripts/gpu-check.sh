#!/usr/bin/env bash
# Everything that needs a GPU, in one run: builds the device tests and the device benchmark for this
# machine's GPU, runs the device tests, compute-sanitizer (memcheck, racecheck, initcheck, synccheck, the four at
# once) on every device test (every shape, (8,64) and the long sequences included), the benchmark, and prints the
# table for docs/benchmarks-gpu.md last. Files go to $OUT (default: gpu-results/): summary.txt (device, results,
# table), build.log, tests.log, sanitizer-{memcheck,racecheck,initcheck,synccheck}.log, bench.json and bench.log.
# Exits non-zero when a test fails or is skipped (no device visible), a sanitizer tool reports an error or does not
# finish within its time limit, or the benchmark fails.
#
# Needs nvcc, CMake and python3. Eigen, GoogleTest and Google Benchmark come from the system when CMake
# finds them there, otherwise from Debian packages in .deps/ (scripts/gpu-deps.sh downloads them on a
# machine with apt), unpacked into a private prefix: never into /.
#
#   bash scripts/gpu-check.sh [gtest filter for the sanitizer runs (default: every device test)]
#   VWN_SANITIZER_TIMEOUT=seconds (default 240): the limit of each sanitizer tool (they run side by side)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
out="${OUT:-$root/gpu-results}"
mkdir -p "$out"
build="${VWN_GPU_BUILD_DIR:-build-gpu}"
jobs="$(nproc)"
sanitize_filter="${1:-*}"
sanitize_timeout="${VWN_SANITIZER_TIMEOUT:-240}"
log() { echo "gpu-check: $*" | tee -a "$out/summary.txt"; }

command -v nvidia-smi > /dev/null || { echo "gpu-check: no nvidia-smi: not a GPU machine" >&2; exit 2; }
: > "$out/summary.txt"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv | tee -a "$out/summary.txt"
arch="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' .')"
log "date $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), sm_$arch"

cmake_args=()
if compgen -G ".deps/*.deb" > /dev/null; then
  prefix=/tmp/vwn-deps
  rm -rf "$prefix" && mkdir -p "$prefix"
  for f in .deps/*.deb; do dpkg -x "$f" "$prefix"; done
  # GoogleTest from its sources, with this machine's compiler and C library.
  cmake -S "$prefix/usr/src/googletest" -B /tmp/vwn-gtest -DCMAKE_BUILD_TYPE=Release -DBUILD_GMOCK=OFF \
    -DCMAKE_INSTALL_PREFIX="$prefix/gtest" > "$out/build.log" 2>&1
  cmake --build /tmp/vwn-gtest -j "$jobs" --target install >> "$out/build.log" 2>&1
  cmake_args+=("-DCMAKE_PREFIX_PATH=$prefix/gtest;$prefix/usr")
  export LD_LIBRARY_PATH="$prefix/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  log "dependencies from .deps/ (unpacked into $prefix)"
fi

# Host programs are not needed here: only the device targets are built.
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="$arch" -DVWN_BUILD_EXAMPLES=OFF \
  "${cmake_args[@]}" 2>&1 | tee -a "$out/build.log" | grep -E "vwn:|Error" || true
start=$(date +%s)
cmake --build "$build" -j "$jobs" --target vwn_cuda_tests bench_ghc_cuda >> "$out/build.log" 2>&1 ||
  { tail -40 "$out/build.log"; exit 1; }
log "built vwn_cuda_tests and bench_ghc_cuda in $(( $(date +%s) - start )) s"

tests="$build/tests/cuda/vwn_cuda_tests"
status=0
"$tests" --gtest_brief=1 > "$out/tests.log" 2>&1 || status=1
log "device tests: $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/tests.log" | tr '\n' ' ')"
if grep -q '^\[  SKIPPED ' "$out/tests.log"; then
  status=1
  log "device tests were skipped: $(grep -m1 -o 'no CUDA device[^"]*' "$out/tests.log" || echo 'see tests.log')"
fi
grep -E '^\[  FAILED  \]|Failure|error' "$out/tests.log" | head -40 || true

# The four tools side by side (each its own process on the one GPU), each within its time limit.
tools=(memcheck racecheck initcheck synccheck)
start=$(date +%s)
pids=()
for tool in "${tools[@]}"; do
  timeout "$sanitize_timeout" compute-sanitizer --tool "$tool" --error-exitcode 3 "$tests" --gtest_brief=1 \
    --gtest_filter="$sanitize_filter" > "$out/sanitizer-$tool.log" 2>&1 &
  pids+=($!)
done
for i in "${!tools[@]}"; do
  tool="${tools[$i]}"
  rc=0
  wait "${pids[$i]}" || rc=$?
  if [ "$rc" = 124 ]; then
    log "compute-sanitizer $tool: did not finish within ${sanitize_timeout} s (VWN_SANITIZER_TIMEOUT), not clean"
    status=1
    continue
  fi
  [ "$rc" = 0 ] || status=1
  summary="$(grep -E 'ERROR SUMMARY' "$out/sanitizer-$tool.log" | tail -1)"
  log "compute-sanitizer $tool ($sanitize_filter): rc $rc, $summary"
done
log "compute-sanitizer: the four tools took $(( $(date +%s) - start )) s"

"$build/bench/cuda/bench_ghc_cuda" --benchmark_out="$out/bench.json" --benchmark_out_format=json \
  > "$out/bench.log" 2>&1 || status=1
echo >> "$out/summary.txt"
python3 bench/cuda/device_table.py "$out/bench.json" >> "$out/summary.txt" || status=1
echo
cat "$out/summary.txt"
exit "$status"
