#!/usr/bin/env bash
# Times one training step of the reference transformer in vwn (bench_train_step) and in PyTorch
# (bench/train_step_torch.py, Debian's python3-torch on OpenBLAS) with the same thread count, one after the
# other in one run, and prints a Markdown table: ms per step, PyTorch / vwn, and each VWN configuration's
# cost over the (1,1) baseline. Needs: scripts/setup.sh --reference, and a Release build with benchmarks.
#
#   bash bench/train_step_vs_torch.sh [build-dir] [threads]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
threads="${2:-2}"
bin="$build/bench/bench_train_step"
[ -x "$bin" ] || { echo "train_step_vs_torch: $bin not found: build with benchmarks first" >&2; exit 2; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
OMP_NUM_THREADS="$threads" "$bin" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/vwn.json" --benchmark_out_format=json > /dev/null
OMP_NUM_THREADS="$threads" /usr/bin/python3 "$root/bench/train_step_torch.py" --threads "$threads" --repeat 3 \
  > "$out/torch.jsonl"
python3 - "$out/vwn.json" "$out/torch.jsonl" "$threads" <<'PY'
import json, sys
vwn = {b["run_name"].replace("/real_time", ""): b["real_time"] for b in json.load(open(sys.argv[1]))["benchmarks"]
       if b.get("aggregate_name") == "median"}
torch = {r["name"]: r["ms_per_step"] for r in map(json.loads, open(sys.argv[2]))}
print(f"threads: {sys.argv[3]}; batch 4 x context 256, 4 layers, heads of 64; median ms per step")
print()
print("| configuration | D | MTP | vwn ms | PyTorch ms | PyTorch / vwn | vwn over (1,1) |")
print("|---|---:|---|---:|---:|---:|---:|")
for name in sorted(vwn, key=lambda n: (int(n.split("/")[1]), n)):
    cfg, D, mtp = name.split("/")
    base = vwn.get(f"BM_train_step<1, 1, false>/{D}/0")
    t = torch.get(name, float("nan"))
    shape = cfg[len("BM_train_step<"):-1].replace(", true", " DGHC").replace(", false", " GHC")
    print(f"| ({shape}) | {D} | {'yes' if mtp == '1' else 'no'} | {vwn[name]:.0f} | {t:.0f} | {t / vwn[name]:.2f} "
          f"| {100 * (vwn[name] / base - 1):+.0f}% |")
PY
