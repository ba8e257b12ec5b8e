#!/usr/bin/env python3
"""Turns bench_ghc_cuda's JSON output into the Markdown table of docs/benchmarks-gpu.md.

  build/bench/cuda/bench_ghc_cuda --benchmark_out=gpu.json --benchmark_out_format=json
  python3 bench/cuda/device_table.py gpu.json

One row per (m, n), D and token count: the device-to-device copy of the fused forward's bytes (same binary,
same run), the fused DGHC forward's time, GB/s and its ratio to the copy, the tiled forward kernel's time and the
fused (staged) kernel's speed-up over it, the unfused sequence's time and the fused path's speed-up over it, the
fused backward and the depth connection.
"""
import json
import re
import sys

NAME = re.compile(r"BM_(\w+)<(\d+), (\d+), \w+>/(\d+)/(\d+)")


def main(path):
    with open(path) as f:
        data = json.load(f)
    rows = {}
    for b in data["benchmarks"]:
        if b.get("aggregate_name", "median") != "median" or b.get("error_occurred"):
            continue
        m = NAME.match(b["run_name"])
        if m:
            kind, M, N, D, T = m.groups()
            rows.setdefault((int(M), int(N), int(D), int(T)), {})[kind] = b
    if not rows:
        sys.exit(f"device_table: no benchmark results in {path} (no device, or every benchmark failed)")
    ctx = data["context"]
    print(f"host: {ctx.get('host_name', '?')}, date {ctx.get('date', '?')}")
    print()
    print("| (m,n) | D | tokens | copy GB/s | fwd ms | fwd GB/s | fwd / copy | tiled ms | over tiled | unfused ms "
          "| fused speed-up | bwd ms | bwd GB/s | depth ms |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def ms(b):
        return b["real_time"] * {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[b["time_unit"]] if b else float("nan")

    def gbs(b):
        return b["bytes_per_second"] / 1e9 if b and "bytes_per_second" in b else float("nan")

    for key in sorted(rows):
        r = rows[key]
        copy, fwd, unf = r.get("copy_forward_bytes"), r.get("dghc_forward_fused"), r.get("dghc_forward_unfused")
        tiled = r.get("dghc_forward_tiled")
        bwd, depth = r.get("dghc_backward_fused"), r.get("dghc_depth")
        M, N, D, T = key
        print(f"| ({M},{N}) | {D} | {T} | {gbs(copy):.0f} | {ms(fwd):.3f} | {gbs(fwd):.0f} | "
              f"{gbs(fwd) / gbs(copy):.2f} | {ms(tiled):.3f} | {ms(tiled) / ms(fwd):.2f} | "
              f"{ms(unf):.3f} | {ms(unf) / ms(fwd):.2f} | {ms(bwd):.3f} | "
              f"{gbs(bwd):.0f} | {ms(depth):.3f} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: device_table.py BENCH_JSON")
    main(sys.argv[1])
