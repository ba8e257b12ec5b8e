#!/usr/bin/env bash
# scripts/gpu-check.sh's test step on the real device tests (vwn_cuda_tests, the path is the argument): its verdict of
# each of the three processes must come from gtest's own closing lines, `passed (N)` on a machine with a GPU and
# `skipped (N of N ...)` without one, N > 0. The other programs are stand-ins that fail at once (their verdicts are
# tests/gpu_check/standins.sh's business).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tests="$1"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/vwn-gpu-check-real.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
rc=0
OUT="$tmp/out" VWN_GPU_DIR="$tmp/gpu" VWN_GPU_TESTS="$tests" VWN_GPU_BENCH=false VWN_GPU_SANITIZER=false \
  VWN_GPU_SMI=false bash "$root/scripts/gpu-check.sh" > "$tmp/stdout" 2>&1 || rc=$?
grep 'device tests' "$tmp/out/summary.txt"
[ "$rc" != 0 ] || { echo "expected a non-zero exit (no sanitizer, no benchmark)"; exit 1; }
for group in 'long (Cuda*Long*)' 'float (CudaFloat*-*Long*)' 'bf16-runtime (CudaBf16*:CudaRuntime*-*Long*)'; do
  verdict="$(grep -F "device tests $group: " "$tmp/out/summary.txt" | sed 's/.*): //')"
  [[ "$verdict" =~ ^(passed\ \([1-9][0-9]*\)|skipped\ \([1-9][0-9]*\ of\ [0-9]+:\ no\ device\ visible\?\))$ ]] ||
    { echo "no passed or skipped verdict for $group: '$verdict'"; exit 1; }
done
echo "gpu-check on the real device tests: verdicts read"
