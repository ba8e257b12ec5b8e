#!/usr/bin/env bash
# Everything that needs a GPU, in one run of about six minutes on an H100, sized for a single call: the device
# tests, compute-sanitizer's four tools, the device benchmark, and the table for docs/benchmarks-gpu.md.
#
# It runs the programs that scripts/gpu-build.sh built beforehand on a CPU machine into .gpu/ (the folder travels
# with the working tree); without .gpu/ it builds them first, with a shape subset, and says so (that build is not
# part of the plan below and may not fit). Every step has its own time limit, written below; no step can stop the
# ones after it (no `set -e`): a step that fails, crashes or runs out of time is reported and the next one runs.
#
#   step        limit   what
#   device      15 s    nvidia-smi, the libraries the programs need
#   tests      120 s    the device tests in three processes side by side (a sticky CUDA error in one does not fail
#                       the others): the long sequences; the other float suites; the other bf16 suites and the
#                       runtime tests. The CPU-only emulated suites (EmulatedStaged*, StagedWidth) run in CI instead.
#   sanitizers 210 s    memcheck, initcheck (every device test but the long sequences), racecheck, synccheck (the
#                       staged GHC suites: every shape's tile plan, float and bf16, plus the long sequences of
#                       (1,1) and (2,3)), the four side by side, each limited to 210 s
#   bench       90 s    bench_ghc_cuda at a short min_time, one process per shape group, 30 s each
#   pack        15 s    the logs into one tarball
#   total      450 s    (under 480 s)
#
# Verdicts, one per step part, in summary.txt:
#   device tests:      passed (N) | failed (F of N) | skipped (N: no device visible) | timed out | crashed (no summary) |
#                      no tests (the filter matched none)
#   compute-sanitizer: clean | errors (N) | timed out (with the error reports so far) | unavailable (the tool
#                      refused the device) |
#                      failed (exit N, no summary: the tool or the program crashed, or printed nothing)
#   benchmark:         ok (N results) | timed out | failed (exit N) | no results
# Exits 1 when any verdict is not passed / clean / ok / unavailable, else 0.
#
# At most 6 files in $OUT (default gpu-results/): summary.txt (device, verdicts, failing tests, the table),
# tests.log (the failing tests' output of the three test processes), logs.tar.gz (every log, each cut at 8 MiB),
# bench.json. The raw logs are written to a temporary folder first.
#
# The programs can be replaced (the stand-in test tests/gpu_check/standins.sh does): VWN_GPU_DIR (default .gpu),
# VWN_GPU_TESTS, VWN_GPU_BENCH, VWN_GPU_SANITIZER (default compute-sanitizer), VWN_GPU_SMI (default nvidia-smi);
# and the limits: VWN_GPU_CAP_DEVICE, _TESTS, _SANITIZERS, _BENCH, _PACK, _BUILD (seconds). VWN_TEST_SEED (default
# 20261206) fixes the tests' random inputs under the sanitizers.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2
out="${OUT:-$root/gpu-results}"
mkdir -p "$out"
gpu="${VWN_GPU_DIR:-$root/.gpu}"

# The limits of the plan (seconds; the header above adds them up).
cap_device="${VWN_GPU_CAP_DEVICE:-15}"
cap_tests="${VWN_GPU_CAP_TESTS:-120}"
cap_sanitizers="${VWN_GPU_CAP_SANITIZERS:-210}"
cap_bench="${VWN_GPU_CAP_BENCH:-90}"
cap_pack="${VWN_GPU_CAP_PACK:-15}"
cap_build="${VWN_GPU_CAP_BUILD:-420}"  # only without .gpu/: outside the plan
seed="${VWN_TEST_SEED:-20261206}"
log_limit=$((8 * 1024 * 1024))          # bytes kept of each log in the tarball

smi="${VWN_GPU_SMI:-nvidia-smi}"
sanitizer="${VWN_GPU_SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}"
tests="${VWN_GPU_TESTS:-$gpu/bin/vwn_cuda_tests}"
bench="${VWN_GPU_BENCH:-$gpu/bin/bench_ghc_cuda}"

work="$(mktemp -d "${TMPDIR:-/tmp}/vwn-gpu-check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
summary="$out/summary.txt"
: > "$summary"
status=0
say() { echo "gpu-check: $*" | tee -a "$summary"; }
fail() { status=1; }
# `bounded CAP cmd...`: runs cmd with a time limit (TERM at CAP seconds, KILL 5 s later); its exit code, 124 or
# 137 when the limit stopped it.
bounded() {
  local cap="$1"
  shift
  timeout -k 5 "$cap" "$@"
}
timed_out() { [ "$1" = 124 ] || [ "$1" = 137 ]; }
since() { echo "$(( $(date +%s) - $1 )) s"; }

say "date $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

# ---- device: the GPU, the programs' libraries ----
start=$(date +%s)
gpu_info="$(bounded "$cap_device" "$smi" --query-gpu=name,compute_cap,driver_version,memory.total \
  --format=csv,noheader 2>&1)"
rc=$?
if [ "$rc" = 0 ]; then
  say "device: $gpu_info"
else
  say "device: nvidia-smi did not answer (exit $rc): ${gpu_info:0:200}"
fi
arch="$(echo "$gpu_info" | head -1 | awk -F', ' '{print $2}' | tr -d ' .')"
export LD_LIBRARY_PATH="$gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$d"
done
# cuBLAS is not in .gpu/ (it is far larger than what travels): the CUDA toolkit's, or a Python package's. Then
# the libraries still missing, if any.
check_libraries() {
  local p found missing
  if [ -x "$tests" ] && ldd "$tests" 2>/dev/null | grep -q 'libcublas.*not found'; then
    found="$(bounded 10 find /usr /opt -name 'libcublas.so.*' -path '*nvidia*' 2>/dev/null | head -1)"
    [ -n "$found" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$(dirname "$found")"
  fi
  # The C++ run-time of the build machine, where this machine's is missing or older than the programs need.
  if [ -x "$tests" ] && ldd "$tests" 2>&1 | grep -qE 'libstdc\+\+.*not found|GLIBCXX.*not found|libgcc_s.*not found'
  then
    LD_LIBRARY_PATH="$gpu/lib/fallback:$LD_LIBRARY_PATH"
    say "device: the C++ run-time from $gpu/lib/fallback"
  fi
  for p in "$tests" "$bench"; do
    missing="$(ldd "$p" 2>&1 | grep 'not found' | sed -E 's/^[[:space:]]*//; s/ =>.*//' | sort -u | tr '\n' ' ')"
    [ -n "$missing" ] && say "device: $(basename "$p") lacks libraries: $missing"
  done
}
check_libraries
say "step device: $(since "$start") (limit $cap_device s)"

# ---- build, only without .gpu/ ----
if [ ! -x "$tests" ] && [ -z "${VWN_GPU_TESTS:-}" ]; then
  start=$(date +%s)
  shapes="${VWN_SHAPES:-1_1;2_3;4_8;8_64}"
  say "build: no $gpu: building the programs here for sm_${arch:-90}, shapes $shapes only (not the plan: run" \
      "scripts/gpu-build.sh beforehand on a CPU machine)"
  VWN_GPU_ARCH="${arch:-90}" VWN_SHAPES="$shapes" VWN_GPU_DIR="$gpu" bounded "$cap_build" bash scripts/gpu-build.sh \
    > "$work/build.log" 2>&1
  rc=$?
  if timed_out "$rc"; then say "build: timed out (limit $cap_build s)"; fail
  elif [ "$rc" != 0 ]; then say "build: failed (exit $rc), see build.log in logs.tar.gz"; fail
  else say "build: done"; fi
  check_libraries
  say "step build: $(since "$start") (limit $cap_build s)"
fi
[ -f "$gpu/BUILD.txt" ] && say "programs: $(tr '\n' ' ' < "$gpu/BUILD.txt")"

# ---- verdicts ----
# gtest_verdict LOG RC: passed (N) | failed (F of N) | skipped (N) | timed out | crashed | no tests. Read from the
# closing lines of --gtest_brief=1 ("[==========] N tests from M test suites ran.", "[  PASSED  ] N tests.",
# "[  SKIPPED ] N tests."; a failed test has its "[  FAILED  ] name" line where it ended, and no count).
gtest_verdict() {
  local log="$1" rc="$2" ran passed skipped failed
  if timed_out "$rc"; then echo "timed out (limit $cap_tests s)"; return 1; fi
  ran="$(grep -oE '^\[==========\] [0-9]+ tests? from [0-9]+ test suites? ran' "$log" | tail -1 | awk '{print $2}')"
  if [ -z "$ran" ]; then echo "crashed (exit $rc, no summary)"; return 1; fi
  if [ "$ran" = 0 ]; then echo "no tests (the filter matched none)"; return 1; fi
  passed="$(grep -oE '^\[  PASSED  \] [0-9]+ tests?' "$log" | tail -1 | awk '{print $4}')"
  skipped="$(grep -oE '^\[  SKIPPED \] [0-9]+ tests?' "$log" | tail -1 | awk '{print $4}')"
  failed=$((ran - ${passed:-0} - ${skipped:-0}))
  if [ "$failed" != 0 ]; then echo "failed ($failed of $ran)"; return 1; fi
  if [ "${skipped:-0}" != 0 ]; then echo "skipped ($skipped of $ran: no device visible?)"; return 1; fi
  if [ "$rc" != 0 ]; then echo "failed (exit $rc after $passed of $ran passed)"; return 1; fi
  echo "passed ($passed)"
}

# sanitizer_verdict TOOL LOG RC: clean | errors (N) | timed out | unavailable | failed (no summary).
sanitizer_verdict() {
  local tool="$1" log="$2" rc="$3" n line
  if timed_out "$rc"; then
    # What the tool had reported when it was stopped: its error records so far.
    n="$(grep -cE '^========= (Invalid |Uninitialized |Barrier error|Error: Race|Program hit|Out-of-range)' "$log")"
    echo "timed out (limit $cap_sanitizers s; $n error reports before)"
    return 1
  fi
  if grep -q 'Device not supported' "$log"; then echo "unavailable (the tool refused the device)"; return 0; fi
  if [ "$tool" = racecheck ]; then
    line="$(grep -E 'RACECHECK SUMMARY: [0-9]+ hazards? displayed' "$log" | tail -1)"
    n="$(echo "$line" | sed -nE 's/.*\(([0-9]+) errors?, ([0-9]+) warnings?\).*/\1/p')"
  else
    line="$(grep -E 'ERROR SUMMARY: [0-9]+ errors?' "$log" | tail -1)"
    n="$(echo "$line" | sed -nE 's/.*ERROR SUMMARY: ([0-9]+) errors?.*/\1/p')"
  fi
  if [ -z "$n" ]; then echo "failed (exit $rc, no summary)"; return 1; fi
  if [ "$n" != 0 ]; then echo "errors ($n)"; return 1; fi
  if [ "$rc" != 0 ]; then echo "clean (but the tests under it exited $rc)"; return 1; fi
  echo "clean${line:+ (${line##*SUMMARY: })}"
}

# ---- tests: three processes side by side ----
start=$(date +%s)
filters=("Cuda*Long*" "CudaFloat*-*Long*" "CudaBf16*:CudaRuntime*-*Long*")
names=(long float bf16-runtime)
pids=()
for i in "${!filters[@]}"; do
  OMP_NUM_THREADS=4 bounded "$cap_tests" "$tests" --gtest_brief=1 --gtest_filter="${filters[$i]}" \
    > "$work/tests-${names[$i]}.log" 2>&1 &
  pids+=($!)
done
: > "$out/tests.log"
for i in "${!filters[@]}"; do
  rc=0
  wait "${pids[$i]}" || rc=$?
  log="$work/tests-${names[$i]}.log"
  verdict="$(gtest_verdict "$log" "$rc")" || fail
  say "device tests ${names[$i]} (${filters[$i]}): $verdict"
  grep -E '^\[  FAILED  \] [A-Za-z]' "$log" | sed -E 's/^\[  FAILED  \] ([^ ,]+).*/    \1/' | sort -u | head -20 |
    tee -a "$summary"
  { echo "==== ${names[$i]} (${filters[$i]}): $verdict"; grep -vE '^\[ +(OK|RUN) +\]' "$log" | head -c 2000000; } \
    >> "$out/tests.log"
done
say "step tests: $(since "$start") (limit $cap_tests s)"

# ---- compute-sanitizer: the four tools side by side ----
start=$(date +%s)
short="Cuda*-*Long*"
staged="CudaFloatGhc/*:CudaBf16Ghc/*:CudaFloatGhcLong/*_m1_n1.*:CudaFloatGhcLong/*_m2_n3.*"
staged="$staged:CudaBf16GhcLong/*_m1_n1.*:CudaBf16GhcLong/*_m2_n3.*"
tools=(memcheck initcheck racecheck synccheck)
tool_filters=("$short" "$short" "$staged" "$staged")
pids=()
for i in "${!tools[@]}"; do
  tool="${tools[$i]}"
  extra=()
  [ "$tool" = racecheck ] && extra=(--racecheck-num-workers 2)
  VWN_TEST_SEED="$seed" OMP_NUM_THREADS=4 bounded "$cap_sanitizers" "$sanitizer" --tool "$tool" --error-exitcode 3 \
    --print-limit 20 "${extra[@]}" "$tests" --gtest_brief=1 --gtest_filter="${tool_filters[$i]}" \
    > "$work/sanitizer-$tool.log" 2>&1 &
  pids+=($!)
done
for i in "${!tools[@]}"; do
  tool="${tools[$i]}"
  rc=0
  wait "${pids[$i]}" || rc=$?
  verdict="$(sanitizer_verdict "$tool" "$work/sanitizer-$tool.log" "$rc")" || fail
  say "compute-sanitizer $tool (${tool_filters[$i]}): $verdict"
done
say "step sanitizers: $(since "$start") (limit $cap_sanitizers s; VWN_TEST_SEED=$seed)"

# ---- benchmark: one process per shape group ----
start=$(date +%s)
groups=("<2, 3," "<4, 8," "<8, 64,")
group_names=(2x3 4x8 8x64)
per_group=$((cap_bench / ${#groups[@]}))
jsons=()
for i in "${!groups[@]}"; do
  json="$work/bench-${group_names[$i]}.json"
  rc=0
  bounded "$per_group" "$bench" --benchmark_min_time=0.05 --benchmark_filter="${groups[$i]}" \
    --benchmark_out="$json" --benchmark_out_format=json > "$work/bench-${group_names[$i]}.log" 2>&1 || rc=$?
  if timed_out "$rc"; then verdict="timed out (limit $per_group s)"; fail
  elif [ "$rc" != 0 ]; then verdict="failed (exit $rc)"; fail
  elif ! [ -s "$json" ]; then verdict="no results"; fail
  else
    # Results: the runs (a "run_name" each) less those that failed ("error_occurred": true).
    n=$(( $(grep -c '"run_name"' "$json") - $(grep -c '"error_occurred": *true' "$json") ))
    if [ "$n" -le 0 ]; then verdict="no results"; fail; else verdict="ok ($n results)"; jsons+=("$json"); fi
  fi
  say "benchmark ${group_names[$i]}: $verdict"
done
# The groups' results merged into bench.json (written to a temporary name, then renamed), and the table, in one
# Python process (bench/cuda/device_table.py).
table="$work/table.md"
if [ "${#jsons[@]}" -gt 0 ]; then
  PYTHONDONTWRITEBYTECODE=1 python3 - "$root/bench/cuda" "$out/bench.json" "$table" "${jsons[@]}" <<'EOF' || fail
import contextlib, json, os, sys
sys.path.insert(0, sys.argv[1])
import device_table
merged = None
for path in sys.argv[4:]:
    with open(path) as f:
        d = json.load(f)
    if merged is None:
        merged = d
    else:
        merged["benchmarks"] += d["benchmarks"]
with open(sys.argv[2] + ".tmp", "w") as f:
    json.dump(merged, f, indent=1)
os.replace(sys.argv[2] + ".tmp", sys.argv[2])
with open(sys.argv[3], "w") as f, contextlib.redirect_stdout(f):
    device_table.main(sys.argv[2])
EOF
fi
say "step bench: $(since "$start") (limit $cap_bench s, $per_group s a group)"

# ---- pack: every log in one tarball ----
start=$(date +%s)
mkdir -p "$work/logs"
for f in "$work"/*.log "$work"/*.json; do
  [ -e "$f" ] && head -c "$log_limit" "$f" > "$work/logs/$(basename "$f")"
done
if bounded "$cap_pack" tar -czf "$out/logs.tar.gz.tmp" -C "$work" logs; then
  mv "$out/logs.tar.gz.tmp" "$out/logs.tar.gz"
else
  rm -f "$out/logs.tar.gz.tmp"
  say "pack: the tarball failed"
  fail
fi
say "step pack: $(since "$start") (limit $cap_pack s)"

if [ -s "$table" ]; then
  echo >> "$summary"
  cat "$table" >> "$summary"
fi
say "files in $out: $(cd "$out" && ls | tr '\n' ' ')"
say "result: $([ "$status" = 0 ] && echo 'every step passed' || echo 'NOT every step passed (see above)')"
exit "$status"
