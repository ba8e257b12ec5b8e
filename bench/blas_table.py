#!/usr/bin/env python3
"""Markdown table of bench_blas's JSON output (docs/benchmarks.md): GFLOP/s per product of the step, per library and
thread count (the median of the repetitions where there are several), and OpenBLAS / Eigen.

    bench_blas --benchmark_repetitions=3 --benchmark_out=blas.json --benchmark_out_format=json
    python3 bench/blas_table.py blas.json
"""
import json
import statistics
import sys
from collections import defaultdict


def main(path):
    with open(path) as f:
        data = json.load(f)
    rates = defaultdict(list)  # (shape, library, threads) -> GFLOP/s of each repetition
    order = []
    for b in data["benchmarks"]:
        if "GFLOPs" not in b or b.get("error_occurred"):
            continue
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        shape, library, threads = b["run_name"].split("/")[:3]
        rates[(shape, library, int(threads))].append(b["GFLOPs"])
        if shape not in order:
            order.append(shape)
    libraries = [l for l in ("Eigen", "OpenBLAS", "BLIS") if any(k[1] == l for k in rates)]
    threads = sorted({k[2] for k in rates})
    head = ["product (m x n x k)"]
    for t in threads:
        head += [f"{l}, {t} thr" for l in libraries] + [f"OpenBLAS / Eigen, {t} thr"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for shape in order:
        row = [shape]
        for t in threads:
            med = {l: statistics.median(rates[(shape, l, t)]) if rates.get((shape, l, t)) else None for l in libraries}
            row += [f"{med[l]:.0f}" if med[l] else "-" for l in libraries]
            e, o = med.get("Eigen"), med.get("OpenBLAS")
            row.append(f"{o / e:.2f}" if e and o else "-")
        print("| " + " | ".join(row) + " |")
    ctx = data.get("context", {})
    print(f"\nGFLOP/s, median of the repetitions; {ctx.get('num_cpus')} CPUs at {ctx.get('mhz_per_cpu')} MHz; "
          f"OpenBLAS: {ctx.get('openblas', '?')}; BLIS: {ctx.get('blis', '?')}.")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
