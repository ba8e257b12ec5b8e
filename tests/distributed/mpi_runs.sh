#!/usr/bin/env bash
# Data-parallel vwn-train over MPI (docs/distributed.md), end to end on a small model:
#   mpi_runs.sh VWN_TRAIN MPIRUN CASE
# CASE is one of
#   two_ranks      2 ranks equal 1 process with 2 micro-batches of the same size, bit for bit (parameters, optimiser
#                  moments, every logged loss); a 2-rank run given the stop signal stops both ranks after one step.
#   four_ranks     4 ranks twice: bit-identical from run to run; the batch must split over the ranks (clear error).
#   killed_rank    rank 1 of 2 killed with SIGKILL mid-run: the job ends in bounded time with a message from rank 0,
#                  the last checkpoint is intact, and the run resumed from it (on 1 process with 2 micro-batches, a
#                  different rank count) ends bit-identical to the uninterrupted 2-rank run.
set -euo pipefail
train=$1 mpirun=$2 case=$3
here=$(cd "$(dirname "$0")" && pwd)
compare="python3 $here/compare_checkpoints.py"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Root in a container needs Open MPI's consent; 4 ranks on 2 cores need --oversubscribe.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mpi() { "$mpirun" --oversubscribe "$@"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# The corpus: the project's documentation (about 180 KB), the same for every run of a case.
cat "$here"/../../docs/*.md > "$work/corpus.txt"
common=(--data "$work/corpus.txt" --width 32 --layers 1 --heads 2 --ffn 64 --warmup 4 --batch 8 --context 32
        --eval-batches 2 --threads 1 --sample 0 --m 2 --n 3)
losses() { cut -d, -f1-5 "$1/log.csv"; }  # step, lr, loss, next, next2 (not the timings)

case $case in
two_ranks)
  "$train" "${common[@]}" --steps 40 --eval-every 20 --micro-batch 4 --out "$work/one" > "$work/one.txt"
  mpi -np 2 "$train" "${common[@]}" --steps 40 --eval-every 20 --out "$work/two" > "$work/two.txt"
  grep -q "on each of 2 ranks" "$work/two.txt" || fail "the 2-rank run does not say it ran on 2 ranks: $(head -3 "$work/two.txt")"
  $compare "$work/one/checkpoint.safetensors" "$work/two/checkpoint.safetensors" ||
    fail "2 ranks differ from 1 process with 2 micro-batches"
  diff <(losses "$work/one") <(losses "$work/two") > /dev/null || fail "the logged losses differ"
  # And unlike 1 part: the comparison can fail.
  "$train" "${common[@]}" --steps 40 --eval-every 20 --out "$work/whole" > /dev/null
  if $compare "$work/one/checkpoint.safetensors" "$work/whole/checkpoint.safetensors" > /dev/null; then
    fail "2 micro-batches equal 1 part bit for bit: the comparison cannot tell orders of summation apart"
  fi
  echo "two_ranks: 2 ranks = 1 process x 2 micro-batches bit for bit; 1 part differs in the last bits, as it should"
  ;;
four_ranks)
  mpi -np 4 "$train" "${common[@]}" --steps 30 --eval-every 15 --out "$work/a" > /dev/null
  mpi -np 4 "$train" "${common[@]}" --steps 30 --eval-every 15 --out "$work/b" > /dev/null
  $compare "$work/a/checkpoint.safetensors" "$work/b/checkpoint.safetensors" || fail "4 ranks differ from run to run"
  diff <(losses "$work/a") <(losses "$work/b") > /dev/null || fail "the logged losses of two 4-rank runs differ"
  # A batch that does not split over the ranks is refused by every rank, before anything is written.
  if mpi -np 3 "$train" "${common[@]}" --steps 10 --out "$work/c" > "$work/c.txt" 2>&1; then
    fail "--batch 8 on 3 ranks was accepted"
  fi
  grep -q "expected a batch that the number of ranks divides, got 8" "$work/c.txt" || fail "unclear message: $(cat "$work/c.txt")"
  [ ! -e "$work/c/checkpoint.safetensors" ] || fail "the refused run wrote a checkpoint"
  echo "four_ranks: two 4-rank runs identical bit for bit; --batch 8 on 3 ranks refused"
  ;;
killed_rank)
  steps=600
  mpi -np 2 "$train" "${common[@]}" --steps $steps --eval-every 100 --save-every 10 --out "$work/full" > /dev/null
  mpi -np 2 "$train" "${common[@]}" --steps $steps --eval-every 100 --save-every 10 --out "$work/cut" \
    > "$work/cut.txt" 2>&1 &
  job=$!
  # Once the run has saved at step 30 or later, kill rank 1 (found by the rank Open MPI gives it in its environment).
  victim=
  for _ in $(seq 1 600); do
    rows=0
    [ -f "$work/cut/log.csv" ] && rows=$(wc -l < "$work/cut/log.csv")
    if [ "$rows" -gt 40 ]; then
      # (/proc rather than pgrep: procps is not on every minimal system)
      for dir in /proc/[0-9]*; do
        tr '\0' ' ' < "$dir/cmdline" 2>/dev/null | grep -qF -- "--out $work/cut" || continue
        if tr '\0' '\n' < "$dir/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1"; then victim=${dir#/proc/}; fi
      done
      [ -n "$victim" ] && break
    fi
    kill -0 $job 2>/dev/null || break
    sleep 0.05
  done
  [ -n "$victim" ] || fail "the run ended (or never started) before rank 1 could be killed: $(tail -5 "$work/cut.txt")"
  kill -9 "$victim"
  start=$(date +%s)
  status=0
  wait $job || status=$?
  took=$(($(date +%s) - start))
  [ $status -ne 0 ] || fail "the job exited with status 0 after rank 1 was killed"
  [ $took -le 30 ] || fail "the job took ${took}s to end after rank 1 was killed"
  grep -q "vwn-train: rank 0: stopping on a signal" "$work/cut.txt" || fail "no message from rank 0: $(tail -20 "$work/cut.txt")"
  echo "--- the killed job's output (last lines), status $status after ${took}s:"
  grep -v '^step [0-9]*/' "$work/cut.txt" | tail -12
  # The last checkpoint is complete and continues the run: on 1 process with 2 micro-batches of 4 (the same parts).
  step=$(python3 -c "import json,struct,sys; f=open(sys.argv[1],'rb'); n=struct.unpack('<Q',f.read(8))[0]; print(json.loads(f.read(n))['__metadata__']['step'])" "$work/cut/checkpoint.safetensors")
  [ "$step" -ge 30 ] && [ "$step" -lt $steps ] || fail "the checkpoint is at step $step"
  echo "--- resumed from step $step on 1 process with --micro-batch 4:"
  "$train" --resume "$work/cut/checkpoint.safetensors" "${common[@]}" --steps $steps --eval-every 100 --save-every 10 \
    --micro-batch 4 --out "$work/cut" | grep -E '^(resume|trained|validation)'
  $compare "$work/full/checkpoint.safetensors" "$work/cut/checkpoint.safetensors" ||
    fail "the resumed run differs from the uninterrupted one"
  diff <(losses "$work/full") <(losses "$work/cut") > /dev/null || fail "the resumed log differs from the uninterrupted one"
  echo "killed_rank: ended after ${took}s with status $status; resumed from step $step to the uninterrupted run's bits"
  ;;
*)
  fail "unknown case '$case'"
  ;;
esac
