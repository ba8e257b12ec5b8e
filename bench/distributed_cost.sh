#!/usr/bin/env bash
# What data parallelism costs on this machine (docs/distributed.md): the main job's model (scripts/main.sh: (2,3)
# dynamic, D = 128, 4 layers, context 128, batch 8) trained for a few steps as
#   1 process x 1 thread, 1 process x 2 threads, 2 MPI ranks x 1 thread (and 2 ranks x 1 thread of 2 micro-batches
#   each),
# in rounds (every configuration once per round, in turn, so that drift in the machine's load falls on all alike),
# and prints a Markdown table: training tokens per second (the median over rounds of each run's steady rate, the
# first fifth of its steps left out), and for the ranks the allreduce's share of a step, its bytes, and the wait for
# the slower rank. Run it on a quiet machine.
#
#   bash bench/distributed_cost.sh [build-dir] [corpus] [rounds] [steps]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
corpus="${2:-$root/data/brown.txt}"
rounds="${3:-3}"
steps="${4:-100}"
train="$build/examples/vwn-train"
[ -x "$train" ] || { echo "distributed_cost: $train not found: build vwn-train first" >&2; exit 2; }
[ -f "$corpus" ] || { echo "distributed_cost: corpus $corpus not found (scripts/get-brown.sh)" >&2; exit 2; }
mpirun=$(command -v mpirun || true)
[ -n "$mpirun" ] || { echo "distributed_cost: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
model=(--data "$corpus" --m 2 --n 3 --dynamic --mtp --width 128 --layers 4 --heads 4 --context 128 --batch 8
       --steps "$steps" --warmup 10 --eval-every 0 --eval-batches 1 --sample 0 --overwrite)

configs=("1x1" "1x2" "2x1" "2x1-micro")
run() {  # config round
  local c=$1 out="$work/$1-$2"
  case $c in
    1x1) "$train" "${model[@]}" --threads 1 --out "$out" ;;
    1x2) "$train" "${model[@]}" --threads 2 --out "$out" ;;
    2x1) "$mpirun" -np 2 "$train" "${model[@]}" --threads 1 --out "$out" ;;
    2x1-micro) "$mpirun" -np 2 "$train" "${model[@]}" --threads 1 --micro-batch 2 --out "$out" ;;
  esac > "$out.txt" 2>&1
}
for r in $(seq 1 "$rounds"); do
  for c in "${configs[@]}"; do run "$c" "$r"; done
  echo "distributed_cost: round $r of $rounds done" >&2
done

python3 - "$work" "$rounds" "$steps" "${configs[@]}" <<'PY'
import csv, re, statistics, sys
work, rounds, steps, configs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
names = {"1x1": "1 process x 1 thread", "1x2": "1 process x 2 threads", "2x1": "2 MPI ranks x 1 thread",
         "2x1-micro": "2 MPI ranks x 1 thread, 2 micro-batches each"}
rows = {}
params = None
for c in configs:
    rates, shares, waits, nbytes = [], [], [], None
    for r in range(1, rounds + 1):
        text = open(f"{work}/{c}-{r}.txt").read()
        m = re.search(r"MTP, ([\d.]+[kM]?) parameters", text)
        params = params or (m.group(1) if m else None)
        log = list(csv.DictReader(open(f"{work}/{c}-{r}/log.csv")))
        steady = [float(x["tokens_per_s"]) for x in log[len(log) // 5:]]
        # tokens per second over the steady steps: total tokens / total time
        rates.append(len(steady) / sum(1 / t for t in steady))
        m = re.search(r"per step on rank 0: ([\d.]+) ms; of it the sum over 2 ranks \(MPI_Allreduce of ([^)]+)\) "
                      r"([\d.]+) ms \(([\d.]+) %\) and the wait for the slowest rank before it ([\d.]+) ms", text)
        if m:
            nbytes = m.group(2)
            shares.append((float(m.group(3)), float(m.group(4)), float(m.group(1))))
            waits.append(float(m.group(5)))
    rows[c] = (statistics.median(rates), shares, waits, nbytes)
base = rows["1x1"][0]
print(f"Main job's model ({params} parameters), {steps} steps per run, {rounds} rounds; tokens/s: the median over the "
      "rounds of each run's rate over its last four fifths of steps (the harmonic mean of the per-step rates).\n")
print("| configuration | tokens/s | vs 1 x 1 | allreduce per step (bytes; ms, share of the step) | wait for the other rank |")
print("|---|---|---|---|---|")
for c in configs:
    rate, shares, waits, nbytes = rows[c]
    ar = "-"
    if shares:
        ms = statistics.median(s[0] for s in shares)
        share = statistics.median(s[1] for s in shares)
        step = statistics.median(s[2] for s in shares)
        ar = f"{nbytes}; {ms:.2f} ms of {step:.1f} ms ({share:.1f} %)"
    wait = f"{statistics.median(waits):.2f} ms" if waits else "-"
    print(f"| {names[c]} | {rate:,.0f} | {rate / base:.2f} | {ar} | {wait} |")
PY
