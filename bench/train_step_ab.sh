#!/usr/bin/env bash
# Compares two builds of bench_train_step (say, before and after a change) on a shared machine: in every round
# both programs run the same configuration at the same time, one thread each, each pinned to its own core (the
# cores swap every round), so that load from outside falls on both alike. Prints one line per round and
# configuration, then per configuration the median and minimum step time of each side and the median of the
# per-round ratios B / A.
#
#   bash bench/train_step_ab.sh A/bench_train_step B/bench_train_step [rounds=8] [steps=5] [filter...]
#
# Default configurations: (2,3) dynamic GHC, D = 256, without and with MTP. Needs two cores and taskset.
set -euo pipefail

if [ $# -lt 2 ]; then
  sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
fi
a="$1"; b="$2"; rounds="${3:-8}"; steps="${4:-5}"
shift $(( $# < 4 ? $# : 4 ))
filters=("$@")
[ ${#filters[@]} -gt 0 ] || filters=('BM_train_step<2, 3, true>/256/0/' 'BM_train_step<2, 3, true>/256/1/')
for prog in "$a" "$b"; do
  [ -x "$prog" ] || { echo "train_step_ab.sh: expected an executable bench_train_step, got '$prog'" >&2; exit 2; }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
parse='
import csv, sys
rows = [r for r in csv.DictReader(l for l in sys.stdin if not l.startswith("Run")) if r.get("name", "").startswith("BM_")]
if not rows:
    sys.exit("train_step_ab.sh: no benchmark result from side " + sys.argv[1])
for r in rows:
    print(sys.argv[1], sys.argv[2], r["name"].split("/iter")[0], r["median_ms"], sep="\t")
'
for r in $(seq 1 "$rounds"); do
  for filter in "${filters[@]}"; do
    ca=$(( r % 2 )); cb=$(( 1 - ca ))
    OMP_NUM_THREADS=1 taskset -c $ca "$a" --benchmark_filter="$filter" --steps="$steps" --benchmark_format=csv \
      2>/dev/null > "$tmp/a.csv" &
    pa=$!
    OMP_NUM_THREADS=1 taskset -c $cb "$b" --benchmark_filter="$filter" --steps="$steps" --benchmark_format=csv \
      2>/dev/null > "$tmp/b.csv" &
    pb=$!
    wait $pa; wait $pb
    python3 -c "$parse" A "$r" < "$tmp/a.csv" | tee -a "$tmp/all.tsv"
    python3 -c "$parse" B "$r" < "$tmp/b.csv" | tee -a "$tmp/all.tsv"
  done
done

python3 - "$tmp/all.tsv" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    side, rnd, name, ms = line.rstrip("\n").split("\t")
    runs[name, int(rnd)][side] = float(ms)
print(f"{'configuration':36} {'A median':>9} {'A min':>7} {'B median':>9} {'B min':>7} {'B/A median':>10}")
for name in sorted({k[0] for k in runs}):
    pairs = [v for k, v in sorted(runs.items()) if k[0] == name and len(v) == 2]
    a = [p["A"] for p in pairs]; b = [p["B"] for p in pairs]
    ratio = statistics.median(p["B"] / p["A"] for p in pairs)
    print(f"{name:36} {statistics.median(a):9.0f} {min(a):7.0f} {statistics.median(b):9.0f} {min(b):7.0f} {ratio:10.3f}")
PY
