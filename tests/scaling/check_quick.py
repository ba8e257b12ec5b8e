"""Checks what `scripts/scaling.sh --quick --out DIR` wrote (ctest scaling.quick): the CSV of every evaluation, the
summary with the fit, well-formed PNG figures and the connectivity maps. The pipeline, not the science.

    python3 tests/scaling/check_quick.py DIR
"""
import csv
import json
import os
import sys

out = sys.argv[1]
errors = []


def check(cond, what):
    if not cond:
        errors.append(what)


def png(path):
    """A PNG file: the 8-byte signature, an IHDR chunk with a positive size, an IEND chunk at the end."""
    if not os.path.exists(path):
        return False
    data = open(path, "rb").read()
    ok = data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and data[-8:-4] == b"IEND"
    return ok and int.from_bytes(data[16:20], "big") > 0 and int.from_bytes(data[20:24], "big") > 0


rows = list(csv.DictReader(open(os.path.join(out, "runs.csv"))))
runs = {(r["m"], r["n"], r["mtp"], r["seed"]) for r in rows}
check(len(runs) == 12, f"runs.csv: expected 12 runs (4 shapes x 2 seeds with MTP, 2 x 2 without), got {len(runs)}")
per_run = {}
for r in rows:
    per_run.setdefault((r["m"], r["n"], r["mtp"], r["seed"]), []).append(int(r["step"]))
for k, steps in per_run.items():
    check(steps == [10, 20, 30], f"runs.csv: run {k}: expected evaluations at steps 10, 20, 30, got {steps}")
for r in rows:
    check(0 < float(r["val_next"]) < 10, f"runs.csv: val_next {r['val_next']} out of range")
    check((r["val_next2"] != "") == (r["mtp"] == "1"), f"runs.csv: val_next2 present exactly with MTP: {r}")
summary = json.load(open(os.path.join(out, "summary.json")))
check(set(summary["summary"]) == {"1,1,1", "2,3,1", "8,16,1", "8,32,1", "1,1,0", "8,16,0"},
      f"summary.json: configurations {sorted(summary['summary'])}")
text = open(os.path.join(out, "summary.md")).read()
check(set(summary["fits"]) == {"next", "next2"}, f"summary.json: fits {sorted(summary['fits'])}")
for needle in ("## MTP on", "## MTP off", "| (8,16) | 2 |", "Welch", "Fit (next-token, m = 8", "Fit (next-2-token"):
    check(needle in text, f"summary.md: expected '{needle}'")
for name in ("curves_next", "curves_next2", "scaling_next", "scaling_next2"):
    check(png(os.path.join(out, name + ".png")), f"{name}.png: not a well-formed PNG")
for run in ("m1n1-s1", "m8n16-s1"):
    path = os.path.join(out, f"connectivity-{run}.csv")
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    check(len(lines) == 1 + 2 * 3 // 2 + 2, f"{path}: expected a header, 3 paths and 2 shares for 1 layer, got {len(lines)} lines")
    check(png(os.path.join(out, f"connectivity-{run}.png")), f"connectivity-{run}.png: not a well-formed PNG")
if errors:
    print("check_quick: " + "\n check_quick: ".join(errors))
    sys.exit(1)
print(f"check_quick: {len(runs)} runs, {len(rows)} evaluations, summary, fit, 4 figures and 2 connectivity maps "
      "are well-formed")
