#!/usr/bin/env bash
# Install the main job's dependencies (scripts/setup.sh --main), fetch the Brown corpus while building vwn-train and
# vwn-sample for the trained shape only, then train a small Virtual Width Network on Brown: (m, n) = (2,3) dynamic
# GHC with multi-token prediction, D = 128, 4 layers, 4 heads, context 128, batch 8 (a few minutes on 2 cores).
# Ends with the validation losses, the loss plot and a text sample (see docs/checkpoint.md for the output files).
# Extra arguments go to vwn-train and override the defaults below (e.g. --steps 100, or --m 1 --n 1
# --static --no-mtp for the plain transformer); run build/examples/vwn-train --help for all of them.
# Build folder: $VWN_BUILD_DIR (default: build; scripts/test.sh configures the same folder with every part and shape,
# so alternating the two rebuilds: give one of them its own folder); output folder: $VWN_OUT_DIR (default: out).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

build_dir="${VWN_BUILD_DIR:-build}"
out_dir="${VWN_OUT_DIR:-out}"

SECONDS=0
bash scripts/setup.sh --main
echo "main.sh: dependencies took ${SECONDS} s"

# The trained shape (m, n) from the arguments (default (2,3)): the build compiles the width parts of that shape only,
# the part of the model that is compiled once per shape (scripts/test.sh builds every shape; a run resumed from a
# checkpoint of another shape names that shape's --m and --n too).
m=2 n=3
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --m) m="${args[$((i + 1))]:-}" ;;
    --m=*) m="${args[$i]#--m=}" ;;
    --n) n="${args[$((i + 1))]:-}" ;;
    --n=*) n="${args[$i]#--n=}" ;;
  esac
done

# The corpus is fetched while the trainer builds.
SECONDS=0
bash scripts/get-brown.sh &
corpus=$!
# -march=native: the trainer runs on the machine that builds it, and Eigen's products are several times
# faster with the machine's vector instructions (docs/benchmarks.md). Only the programs: no tests, benchmarks,
# PyTorch integration or CUDA back end (scripts/test.sh configures them all back on).
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DVWN_NATIVE=ON -DVWN_SHAPES="${m}_${n}" \
  -DVWN_BUILD_TESTS=OFF -DVWN_BUILD_BENCHMARKS=OFF -DVWN_BUILD_EXAMPLES=ON -DVWN_TORCH=OFF -DVWN_CUDA=OFF
cmake --build "$build_dir" -j "$(nproc)" --target vwn-train vwn-sample
wait "$corpus"
echo "main.sh: corpus and build took ${SECONDS} s"

# All cores (OpenMP's default): two threads train this model 1.8x faster than one on a 2-core machine, with
# the same numbers (the work split does not depend on the thread count).
start=$(date +%s)
"$build_dir/examples/vwn-train" \
  --data data/brown.txt --out "$out_dir" --overwrite \
  --m 2 --n 3 --dynamic --mtp --width 128 --layers 4 --heads 4 --context 128 --batch 8 \
  --steps 2000 --warmup 100 --lr 3e-3 --eval-every 250 --eval-batches 8 \
  "$@"
echo "main.sh: training, evaluation, plot and sample took $(( $(date +%s) - start )) s"
echo "main.sh: for more text: $build_dir/examples/vwn-sample --checkpoint $out_dir/checkpoint.safetensors"
