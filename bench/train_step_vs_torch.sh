#!/usr/bin/env bash
# Times one training step of the reference transformer in vwn (bench_train_step) and in PyTorch
# (bench/train_step_torch.py, Debian's python3-torch on OpenBLAS) with the same thread count, and prints a
# Markdown table: ms per step, PyTorch / vwn, and the cost of VWN (2,3) over the (1,1) baseline.
#
# Built for a shared, noisy machine: for every round and every configuration it runs `steps` vwn steps and
# then `steps` PyTorch steps of that configuration (each after one warm-up step), so that drift in the load
# falls on both sides alike. A side's time in one round is the median of its steps; the table gives the
# median over the rounds, and "PyTorch / vwn" is the median of the per-round ratios. The (2,3) overhead comes
# from BM_overhead, which alternates steps of the two vwn models in one process.
# Needs: scripts/setup.sh --reference, and a Release build with benchmarks (VWN_NATIVE=ON for -march=native).
#
#   bash bench/train_step_vs_torch.sh [build-dir] [threads] [rounds] [steps]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
threads="${2:-2}"
rounds="${3:-3}"
steps="${4:-3}"
bin="$build/bench/bench_train_step"
[ -x "$bin" ] || { echo "train_step_vs_torch: $bin not found: build with benchmarks first" >&2; exit 2; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
export OMP_NUM_THREADS="$threads"

# OpenBLAS picks its kernels from the CPU model it recognises. On virtual machines that report a generic
# "Intel Xeon Processor" it falls back to its Prescott (SSE3) kernels, and PyTorch's products run 4-6x below
# what the CPU can do: a comparison against that would flatter vwn. Unless OPENBLAS_CORETYPE is already set,
# name the kernel set the CPU's flags allow (SkylakeX with AVX-512, Haswell with AVX2), and report the choice.
if [ -z "${OPENBLAS_CORETYPE:-}" ]; then
  flags="$(grep -m1 '^flags' /proc/cpuinfo || true)"
  if [[ " $flags " == *" avx512f "* && " $flags " == *" avx512bw "* && " $flags " == *" avx512vl "* ]]; then
    export OPENBLAS_CORETYPE=SkylakeX
  elif [[ " $flags " == *" avx2 "* && " $flags " == *" fma "* ]]; then
    export OPENBLAS_CORETYPE=Haswell
  fi
fi
blas_core="$(OPENBLAS_VERBOSE=2 /usr/bin/python3 -c 'import torch; torch.ones(2, 2) @ torch.ones(2, 2)' 2>&1 |
             sed -n 's/^Core: //p' | head -1)"
blas_gflops="$(/usr/bin/python3 - "$threads" <<'PY'
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
for _ in range(3): a @ b
t = time.perf_counter()
for _ in range(10): a @ b
print(f"{2 * 1024**3 * 10 / (time.perf_counter() - t) / 1e9:.0f}")
PY
)"

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
configs=()
for D in 256 512; do
  configs+=("BM_train_step<1, 1, false>/$D/0" "BM_train_step<2, 3, true>/$D/0" "BM_train_step<2, 3, true>/$D/1"
            "BM_train_step<8, 32, true>/$D/1")
done

for ((r = 1; r <= rounds; r++)); do
  for c in "${configs[@]}"; do
    "$bin" --benchmark_filter="^$c/" --steps="$steps" \
      --benchmark_out="$out/vwn.json" --benchmark_out_format=json > /dev/null 2>> "$out/vwn.log"
    python3 - "$out/vwn.json" "$r" >> "$out/vwn.jsonl" <<'PY'
import json, re, sys
b = json.load(open(sys.argv[1]))["benchmarks"][0]
print(json.dumps({"name": re.sub(r"/(iterations:\d+|real_time)", "", b["run_name"]), "round": int(sys.argv[2]),
                  "ms_per_step": b["median_ms"]}))
PY
    /usr/bin/python3 "$root/bench/train_step_torch.py" --threads "$threads" --repeat "$steps" --only "$c" |
      python3 -c 'import json, sys; [print(json.dumps(dict(json.loads(l), round=int(sys.argv[1])))) for l in sys.stdin]' "$r" \
      >> "$out/torch.jsonl"
  done
done
"$bin" --benchmark_filter='^BM_overhead' --steps="$((2 * rounds * steps))" \
  --benchmark_out="$out/overhead.json" --benchmark_out_format=json > /dev/null 2>> "$out/vwn.log"
load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

native="$(grep -s '^VWN_NATIVE:BOOL=' "$build/CMakeCache.txt" | cut -d= -f2)"
python3 - "$out" "$threads" "$rounds" "$steps" "${native:-unknown}" "$load_start" "$load_end" \
  "${blas_core:-unknown}" "${blas_gflops:-?}" <<'PY'
import json, statistics, sys
out, threads, rounds, steps, native, load_start, load_end, blas_core, blas_gflops = sys.argv[1:]
def load(path):
    return [json.loads(l) for l in open(path)]
vwn, torch = load(f"{out}/vwn.jsonl"), load(f"{out}/torch.jsonl")
over = {b["run_name"].split("/")[1]: b for b in json.load(open(f"{out}/overhead.json"))["benchmarks"]
        if b["run_name"].startswith("BM_overhead")}
names = list(dict.fromkeys(r["name"] for r in vwn))
print(f"threads: {threads}; -march=native: {native}; batch 4 x context 256, 4 layers, heads of 64; "
      f"{rounds} rounds x {steps} steps per side, vwn and PyTorch alternating per configuration; "
      "median ms per step")
print(f"PyTorch's OpenBLAS kernels: {blas_core}; a 1024^3 float product in PyTorch: {blas_gflops} GFLOP/s")
print(f"load average (1, 5, 15 min) at start: {load_start}; at end: {load_end}")
print()
print("| configuration | D | MTP | vwn ms | PyTorch ms | PyTorch / vwn |")
print("|---|---:|---|---:|---:|---:|")
for name in sorted(names, key=lambda n: (int(n.split("/")[1]), names.index(n))):
    cfg, D, mtp = name.split("/")
    tv = {r["round"]: r["ms_per_step"] for r in vwn if r["name"] == name}
    tt = {r["round"]: r["ms_per_step"] for r in torch if r["name"] == name}
    ratios = [tt[k] / tv[k] for k in tv if k in tt]
    shape = cfg[len("BM_train_step<"):-1].replace(", true", " DGHC").replace(", false", " GHC")
    print(f"| ({shape}) | {D} | {'yes' if mtp == '1' else 'no'} | {statistics.median(tv.values()):.0f} | "
          f"{statistics.median(tt.values()):.0f} | {statistics.median(ratios):.2f} |")
print()
print("VWN (2,3) dynamic over the (1,1) baseline, both without MTP (BM_overhead: alternating steps in one process):")
print()
print("| D | (1,1) ms | (2,3) ms | overhead (median of pair ratios) | pairs |")
print("|---:|---:|---:|---:|---:|")
for D in sorted(over, key=int):
    b = over[D]
    print(f"| {D} | {b['base_ms']:.0f} | {b['vwn_ms']:.0f} | {b['overhead_pct']:+.1f}% | {b['iterations']} |")
PY
