#!/usr/bin/env bash
# VWN's virtual-width scaling experiment with one command (docs/scaling.md): installs what is needed, fetches the
# Brown corpus, builds vwn-train, vwn-eval and vwn-connectivity, trains the experiment (the (1,1) baseline and VWN
# (8,8), (8,16), (8,32), (8,64) for six seeds with MTP; (2,3) and MTP off; the frozen-GHC baseline and a learning-rate
# sweep; the compute-matched frontier), evaluates every run on the whole validation split, writes the tables and the
# figures into the output folder, and draws the depth-connectivity maps. A half-finished experiment resumes where it
# stopped. Arguments go to scripts/scaling.py (--help lists them; --quick
# runs a tiny grid in about a minute to check the pipeline).
# Build folder: $VWN_BUILD_DIR (default: build).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build_dir="${VWN_BUILD_DIR:-build}"

for arg in "$@"; do
  case "$arg" in -h|--help) exec python3 scripts/scaling.py --help ;; esac
done

# --quick (the test suite's check) uses a small text of its own and the build as it is.
quick=0
out=scaling
args=("$@")
for ((i = 0; i < ${#args[@]}; ++i)); do
  case "${args[$i]}" in
    --quick) quick=1 ;;
    --out) out="${args[$((i + 1))]}" ;;
    --out=*) out="${args[$i]#--out=}" ;;
  esac
done

if [ "$quick" = 0 ]; then
  bash scripts/setup.sh --main
  bash scripts/get-brown.sh
  # -march=native, as scripts/main.sh: the runs train on the machine that builds them.
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DVWN_NATIVE=ON
  cmake --build "$build_dir" -j "$(nproc)" --target vwn-train vwn-eval vwn-connectivity
  python3 scripts/scaling.py --build "$build_dir" "$@"
else
  mkdir -p "$out"
  # A corpus of about 60 KB, the same bytes every time: scripts/scaling.py's text, repeated.
  if [ ! -f "$out/quick-corpus.txt" ]; then
    python3 -c 'import sys; t = open("scripts/scaling.py").read(); open(sys.argv[1], "w").write((t * 40)[:60000])' \
      "$out/quick-corpus.txt"
  fi
  python3 scripts/scaling.py --build "$build_dir" --data "$out/quick-corpus.txt" "$@"
fi
