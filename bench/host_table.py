#!/usr/bin/env python3
"""Turns bench_ghc's JSON output into the Markdown table of docs/benchmarks.md.

  build/bench/bench_ghc --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
      --benchmark_out=ghc.json --benchmark_out_format=json
  python3 bench/host_table.py ghc.json

Each row: median time per call, bytes/s and FLOP/s from the spec's counts, and the ratio of bytes/s to the
copy benchmark of the same shape (same bytes, same binary, same run).
"""
import json
import re
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    rows = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name", "median") != "median":
            continue
        m = re.match(r"(\w+)/\((\d+,\d+)\)", b["run_name"])
        if m:
            rows[(m.group(1), m.group(2))] = b
    ctx = data["context"]
    print(f"host: {ctx.get('host_name', '?')}, {ctx.get('num_cpus', '?')} CPUs at {ctx.get('mhz_per_cpu', '?')} MHz, "
          f"date {ctx.get('date', '?')}")
    print()
    print("| (m,n) | pass | time/call (ms) | GB/s (1e9 B) | GFLOP/s | GB/s ÷ copy GB/s |")
    print("|---|---|---:|---:|---:|---:|")
    shapes = sorted({s for (_, s) in rows}, key=lambda s: tuple(map(int, s.split(","))))
    for s in shapes:
        copy = rows.get(("copy", s))
        copy_bw = copy["bytes_per_second"] if copy else float("nan")
        for kind in ("ghc_forward", "ghc_backward", "dghc_forward", "dghc_backward", "copy"):
            b = rows.get((kind, s))
            if not b:
                continue
            t_ms = b["real_time"] / 1e6 if b["time_unit"] == "ns" else b["real_time"]
            flops = f'{b["FLOP/s"] / 1e9:.1f}' if "FLOP/s" in b else "-"
            bw = b["bytes_per_second"] / 1e9
            print(f"| ({s}) | {kind} | {t_ms:.2f} | {bw:.1f} | {flops} | {b['bytes_per_second'] / copy_bw:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ghc.json")
