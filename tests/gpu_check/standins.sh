#!/usr/bin/env bash
# scripts/gpu-check.sh against stand-ins, on any machine (no GPU, no CUDA build): a fake nvidia-smi, fake device
# tests and benchmark, and a fake compute-sanitizer that prints each tool's real summary formats, finds errors,
# hangs, crashes, refuses the device or prints nothing, as each case asks. Checks the verdicts in summary.txt, that
# every step ran (its line, and the calls each stand-in logged), the exit status, and the files written to $OUT.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/vwn-gpu-check-test.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
bin="$tmp/bin"
mkdir -p "$bin" "$tmp/gpu"

cat > "$bin/nvidia-smi" <<'EOF'
#!/usr/bin/env bash
echo "NVIDIA H100 80GB HBM3, 9.0, 580.159.04, 81559 MiB"
EOF

# The device tests (gtest's --gtest_brief=1 output): STANDIN_TESTS = pass | fail | skip | hang | crash | none for the
# process whose filter contains
# STANDIN_TESTS_WHICH (default: every process), STANDIN_TESTS_OTHER (default pass) for the others.
cat > "$bin/vwn_cuda_tests" <<'EOF'
#!/usr/bin/env bash
filter=""
for a in "$@"; do case "$a" in --gtest_filter=*) filter="${a#--gtest_filter=}" ;; esac; done
echo "tests $filter" >> "$STANDIN_CALLS"
mode="${STANDIN_TESTS_OTHER:-pass}"
[[ "$filter" == *"${STANDIN_TESTS_WHICH:-}"* ]] && mode="${STANDIN_TESTS:-pass}"
echo "Running main() from gmock_main.cc"
case "$mode" in
  none)
    echo "[==========] 0 tests from 0 test suites ran. (0 ms total)"
    echo "[  PASSED  ] 0 tests." ;;
  pass)
    echo "[==========] 3 tests from 1 test suite ran. (12 ms total)"
    echo "[  PASSED  ] 3 tests." ;;
  fail)  # --gtest_brief=1 prints a failed test where it ends, and no count of failures
    echo "../tests/primitives/modules_body.hpp:120: Failure"
    echo "[  FAILED  ] CudaBf16Modules/ghc_m2_n3.ReduceHeadMatchesHost, where TypeParam = vwn_test::shape_case<2, 3> (5 ms)"
    echo "[==========] 3 tests from 1 test suite ran. (12 ms total)"
    echo "[  PASSED  ] 2 tests."
    exit 1 ;;
  skip)  # as vwn_cuda_tests prints it on a machine without a device
    for _ in 1 2 3; do
      echo "../tests/support/backend.hpp:66: Skipped"
      echo "no CUDA device (cudaGetDeviceCount: cudaErrorInsufficientDriver, CUDA driver version is insufficient for CUDA runtime version): device test skipped"
    done
    echo "[==========] 3 tests from 3 test suites ran. (0 ms total)"
    echo "[  PASSED  ] 0 tests."
    echo "[  SKIPPED ] 3 tests." ;;
  hang) exec sleep 100 ;;
  crash) echo "[ RUN      ] CudaFloatGhc/dghc_m2_n3.MatchesHostSmall"; kill -SEGV $$ ;;
esac
EOF

# compute-sanitizer: STANDIN_<TOOL> = clean | errors:N | hang (after one error record) | unavailable | crash | nothing.
cat > "$bin/compute-sanitizer" <<'EOF'
#!/usr/bin/env bash
tool=memcheck
args=("$@")
for i in "${!args[@]}"; do [ "${args[$i]}" = --tool ] && tool="${args[$((i + 1))]}"; done
echo "sanitizer $tool $*" >> "$STANDIN_CALLS"
var="STANDIN_${tool^^}"
mode="${!var:-clean}"
summary() {
  if [ "$tool" = racecheck ]; then
    echo "========= RACECHECK SUMMARY: $1 hazard$([ "$1" = 1 ] || echo s) displayed ($1 error$([ "$1" = 1 ] || echo s), 0 warnings)"
  else
    echo "========= ERROR SUMMARY: $1 error$([ "$1" = 1 ] || echo s)"
  fi
}
case "$mode" in
  clean) echo "========= COMPUTE-SANITIZER"; echo "[  PASSED  ] 3 tests."; summary 0 ;;
  errors:*)
    n="${mode#errors:}"
    echo "========= COMPUTE-SANITIZER"
    for ((e = 0; e < n; ++e)); do
      if [ "$tool" = racecheck ]; then
        echo "========= Error: Race reported between Write access at void staged_width_forward_kernel+0x1a0"
      else
        echo "========= Invalid __global__ write of size 4 bytes"
      fi
    done
    summary "$n"
    exit 3 ;;
  hang)
    echo "========= COMPUTE-SANITIZER"
    echo "========= Invalid __global__ read of size 2 bytes"
    exec sleep 100 ;;
  unavailable)
    echo "========= COMPUTE-SANITIZER"
    echo "========= Error: Device not supported. Please refer to the \"Supported Devices\" section of the sanitizer documentation"
    echo "unknown file: Failure: cudaMalloc: cudaErrorUnknown (unknown error)"
    summary 0
    exit 1 ;;
  crash) echo "========= COMPUTE-SANITIZER"; kill -SEGV $$ ;;
  nothing) exit 0 ;;
esac
EOF

# The benchmark: STANDIN_BENCH = ok | hang | fail for the group whose filter contains STANDIN_BENCH_WHICH.
cat > "$bin/bench_ghc_cuda" <<'EOF'
#!/usr/bin/env bash
filter="" json=""
for a in "$@"; do
  case "$a" in --benchmark_filter=*) filter="${a#*=}" ;; --benchmark_out=*) json="${a#*=}" ;; esac
done
echo "bench $filter" >> "$STANDIN_CALLS"
mode=ok
[[ "$filter" == *"${STANDIN_BENCH_WHICH:-}"* ]] && mode="${STANDIN_BENCH:-ok}"
case "$mode" in
  hang) exec sleep 100 ;;
  fail) echo "no CUDA device"; exit 1 ;;
esac
mn="$(echo "$filter" | tr -dc '0-9,' | cut -d, -f1,2 | tr ',' ' ')"
set -- $mn
row() {  # kind, milliseconds, bytes/s
  echo "{\"name\": \"BM_$1<$M, $N, bf16>/1024/16384/manual_time\", \"run_name\": \"BM_$1<$M, $N, bf16>/1024/16384/manual_time\","
  echo " \"real_time\": $2, \"time_unit\": \"ms\", \"bytes_per_second\": $3}"
}
M="$1" N="$2"
{
  echo "{\"context\": {\"host_name\": \"standin\", \"date\": \"today\"}, \"benchmarks\": ["
  row copy_forward_bytes 0.1 2.0e12; echo ","
  row dghc_forward_fused 0.2 1.0e12; echo ","
  row dghc_forward_tiled 0.3 0.7e12; echo ","
  row dghc_forward_unfused 0.5 0.4e12; echo ","
  row dghc_backward_fused 0.6 0.9e12; echo ","
  row dghc_depth 0.1 1.5e12
  echo "]}"
} > "$json"
echo "BM_dghc_forward_fused<$M, $N, bf16>/1024/16384/manual_time 0.2 ms"
EOF
chmod +x "$bin"/*

failures=0
check() {  # check CASE DESCRIPTION COMMAND...: one expectation
  local name="$1" what="$2"
  shift 2
  if "$@"; then echo "  ok: $what"; else echo "  FAILED: $what"; failures=$((failures + 1)); fi
}
has() { grep -qF -- "$2" "$1"; }

# launch CASE [VAR=value...]: gpu-check.sh against the stand-ins, in the background (the cases run side by side);
# its exit status goes to $tmp/rc-CASE.
launch() {
  local name="$1"
  shift
  : > "$tmp/calls-$name"
  (
    rc=0
    env -i PATH="$PATH" HOME="${HOME:-/tmp}" TMPDIR="$tmp" OUT="$tmp/out-$name" STANDIN_CALLS="$tmp/calls-$name" \
      VWN_GPU_DIR="$tmp/gpu" VWN_GPU_SMI="$bin/nvidia-smi" VWN_GPU_SANITIZER="$bin/compute-sanitizer" \
      VWN_GPU_TESTS="$bin/vwn_cuda_tests" VWN_GPU_BENCH="$bin/bench_ghc_cuda" "$@" bash "$root/scripts/gpu-check.sh" \
      > "$tmp/stdout-$name" 2>&1 || rc=$?
    echo "$rc" > "$tmp/rc-$name"
  ) &
}

# verify CASE EXPECTED_STATUS: the checks every case shares; sets $summary for the case's own checks.
verify() {
  local name="$1" expected="$2"
  local out="$tmp/out-$name" calls="$tmp/calls-$name" rc
  rc="$(cat "$tmp/rc-$name")"
  summary="$out/summary.txt"
  echo "case $name: exit $rc; summary:"
  sed 's/^/  | /' "$summary"
  check "$name" "exit status $expected" [ "$rc" = "$expected" ]
  for step in device tests sanitizers bench pack; do
    check "$name" "step $step reported" has "$summary" "gpu-check: step $step: "
  done
  check "$name" "three test processes ran" [ "$(grep -c '^tests ' "$calls")" = 3 ]
  for tool in memcheck initcheck racecheck synccheck; do
    check "$name" "$tool ran" has "$calls" "sanitizer $tool "
  done
  check "$name" "racecheck's workers bounded" has "$calls" "--racecheck-num-workers 2"
  check "$name" "three benchmark groups ran" [ "$(grep -c '^bench ' "$calls")" = 3 ]
  local files
  files="$(find "$out" -type f | wc -l)"
  check "$name" "at most 6 files in \$OUT (got $files)" [ "$files" -le 6 ]
  check "$name" "nothing but the four result files" \
    [ "$(cd "$out" && ls | tr '\n' ' ')" = "$(echo bench.json logs.tar.gz summary.txt tests.log | tr ' ' '\n' |
       while read -r f; do [ -e "$out/$f" ] && echo "$f"; done | tr '\n' ' ')" ]
  check "$name" "the logs are in the tarball" has <(tar -tzf "$out/logs.tar.gz") logs/sanitizer-memcheck.log
}

# The five cases, side by side; then the checks of each.
launch clean
launch errors STANDIN_MEMCHECK=errors:3 STANDIN_RACECHECK=errors:2 STANDIN_INITCHECK=crash STANDIN_SYNCCHECK=nothing \
  STANDIN_TESTS=fail STANDIN_TESTS_WHICH=CudaBf16 STANDIN_TESTS_OTHER=skip
launch timeout VWN_GPU_CAP_SANITIZERS=2 VWN_GPU_CAP_TESTS=2 VWN_GPU_CAP_BENCH=3 STANDIN_MEMCHECK=hang \
  STANDIN_RACECHECK=unavailable STANDIN_INITCHECK=unavailable STANDIN_TESTS=hang STANDIN_TESTS_WHICH=CudaFloat \
  STANDIN_BENCH=hang STANDIN_BENCH_WHICH="4, 8"
launch unavailable STANDIN_MEMCHECK=unavailable STANDIN_RACECHECK=unavailable STANDIN_INITCHECK=unavailable \
  STANDIN_SYNCCHECK=unavailable
launch crash STANDIN_TESTS=crash STANDIN_TESTS_WHICH="Cuda*Long*" STANDIN_TESTS_OTHER=none STANDIN_BENCH=fail \
  STANDIN_BENCH_WHICH="8, 64"
wait

echo "== clean: every test passes, every tool clean, every benchmark runs"
verify clean 0
check clean "tests passed" has "$summary" "device tests float (CudaFloat*-*Long*): passed (3)"
for tool in memcheck initcheck synccheck; do
  check clean "$tool clean" has "$summary" "compute-sanitizer $tool (Cuda"
  check clean "$tool verdict" grep -qE "compute-sanitizer $tool .*: clean \(0 errors\)$" "$summary"
done
check clean "racecheck clean" grep -qE "compute-sanitizer racecheck .*: clean \(0 hazards displayed" "$summary"
check clean "benchmark ok" has "$summary" "benchmark 8x64: ok (6 results)"
check clean "the table" has "$summary" "| (8,64) | 1024 | 16384 | 2000 | 0.200 | 1000 | 0.50 |"
check clean "four files" [ "$(ls "$tmp/out-clean" | wc -l)" = 4 ]
check clean "one result" has "$summary" "result: every step passed"

echo "== errors: tool errors (memcheck 3, racecheck 2), a crashed tool, a silent tool, a failing test, skipped tests"
verify errors 1
check errors "memcheck errors (3)" grep -qE "compute-sanitizer memcheck .*: errors \(3\)$" "$summary"
check errors "racecheck errors (2)" grep -qE "compute-sanitizer racecheck .*: errors \(2\)$" "$summary"
check errors "initcheck crashed" grep -qE "compute-sanitizer initcheck .*: failed \(exit 139, no summary\)$" "$summary"
check errors "synccheck printed nothing" grep -qE "compute-sanitizer synccheck .*: failed \(exit 0, no summary\)$" \
  "$summary"
check errors "the failing test's group" has "$summary" "device tests bf16-runtime (CudaBf16*:CudaRuntime*-*Long*): failed (1 of 3)"
check errors "the failing test named" has "$summary" "    CudaBf16Modules/ghc_m2_n3.ReduceHeadMatchesHost"
check errors "skipped tests are no pass" has "$summary" "device tests long (Cuda*Long*): skipped (3 of 3: no device visible?)"
check errors "its output in tests.log" has "$tmp/out-errors/tests.log" "modules_body.hpp:120: Failure"

echo "== timed out and unavailable: a hanging tool, test process and benchmark under tiny limits; a refused device"
verify timeout 1
check timeout "memcheck timed out" grep -qE "compute-sanitizer memcheck .*: timed out \(limit 2 s; 1 error reports before\)$" \
  "$summary"
check timeout "racecheck unavailable" grep -qE "compute-sanitizer racecheck .*: unavailable" "$summary"
check timeout "initcheck unavailable" grep -qE "compute-sanitizer initcheck .*: unavailable" "$summary"
check timeout "synccheck still clean" grep -qE "compute-sanitizer synccheck .*: clean" "$summary"
check timeout "the hanging test process" has "$summary" "device tests float (CudaFloat*-*Long*): timed out (limit 2 s)"
check timeout "the others passed" has "$summary" "device tests long (Cuda*Long*): passed (3)"
check timeout "the hanging benchmark group" has "$summary" "benchmark 4x8: timed out (limit 1 s)"
check timeout "the other groups' results" has "$summary" "benchmark 2x3: ok (6 results)"
check timeout "their table" has "$summary" "| (2,3) | 1024 | 16384 |"

echo "== unavailable only: the H200 case (the tool refuses the device), everything else clean: not a failure"
verify unavailable 0
check unavailable "four unavailable" [ "$(grep -c ': unavailable (the tool refused the device)$' "$summary")" = 4 ]

echo "== crash: a test process that dies, filters that match no test, a benchmark group that fails"
verify crash 1
check crash "the crashed test process" has "$summary" "device tests long (Cuda*Long*): crashed (exit 139, no summary)"
check crash "no test is no pass" has "$summary" "device tests float (CudaFloat*-*Long*): no tests (the filter matched none)"
check crash "the failed benchmark group" has "$summary" "benchmark 8x64: failed (exit 1)"

echo "gpu-check stand-ins: $failures failed"
[ "$failures" = 0 ]
