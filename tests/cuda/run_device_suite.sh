#!/usr/bin/env bash
# One device test suite as one ctest entry (device_suites.cmake): runs vwn_cuda_tests with the suite's filter and
# exits 77 (ctest's SKIP_RETURN_CODE: reported skipped) only when the run succeeded and every test of it skipped,
# as every device test does without a GPU. Any failure keeps its exit status: a skip never hides it.
#
#   run_device_suite.sh <vwn_cuda_tests> <gtest filter>
set -uo pipefail
log="$(mktemp "${TMPDIR:-/tmp}/vwn-device-suite.XXXXXX")"
trap 'rm -f "$log"' EXIT
"$1" "--gtest_filter=$2" > "$log" 2>&1
rc=$?
cat "$log"
if [ "$rc" = 0 ]; then
  ran="$(grep -oE '^\[==========\] [0-9]+ tests? from' "$log" | tail -1 | awk '{print $2}')"
  skipped="$(grep -oE '^\[  SKIPPED \] [0-9]+ tests?' "$log" | tail -1 | awk '{print $4}')"
  [ -n "$ran" ] && [ "$ran" != 0 ] && [ "${skipped:-0}" = "$ran" ] && exit 77
fi
exit "$rc"
