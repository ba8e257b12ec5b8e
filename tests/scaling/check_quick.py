"""Checks what `scripts/scaling.sh --quick --out DIR` wrote (ctest scaling.quick): every periodic evaluation in
runs.csv, every run's whole-split final evaluation in finals.csv, the summary with its sections and the fit, the
frontier, well-formed PNG figures and the connectivity maps with their shares. The pipeline, not the science.

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


# The quick plan (scripts/scaling.py QUICK_PLAN): main (1,1), (8,8), (8,16) x seeds 1, 2; side (2,3) and (1,1) without
# MTP; controls: the frozen baseline and lr 6e-3; frontier: the baseline at 45 steps, (8,16) FLOP- and time-matched
# (one run if both match the same step count).
finals = list(csv.DictReader(open(os.path.join(out, "finals.csv"))))
names = {(r["m"], r["n"], r["mtp"], r["frozen"], r["steps"], r["lr"], r["seed"]) for r in finals}
check(len(finals) == len(names), f"finals.csv: a run twice ({len(finals)} rows, {len(names)} runs)")
check(12 <= len(finals) <= 13, f"finals.csv: expected 12 or 13 runs, got {len(finals)}")
expected = [("1", "1", "1", "0", "30", "0.003", "1"), ("8", "8", "1", "0", "30", "0.003", "2"),
            ("8", "16", "1", "0", "30", "0.003", "2"), ("2", "3", "1", "0", "30", "0.003", "1"),
            ("1", "1", "0", "0", "30", "0.003", "1"), ("1", "1", "1", "1", "30", "0.003", "1"),
            ("1", "1", "1", "0", "30", "0.006", "1"), ("1", "1", "1", "0", "45", "0.003", "1")]
for e in expected:
    check(e in names, f"finals.csv: expected the run (m, n, mtp, frozen, steps, lr, seed) = {e}")
matches = {r["match"] for r in finals if r["part"] == "frontier"}
check(matches >= {"flops", "longer"}, f"finals.csv: frontier runs matched by {sorted(matches)}")
for r in finals:
    check(0 < float(r["final_next"]) < 10, f"finals.csv: final_next {r['final_next']} out of range")
    check((r["final_next2"] != "") == (r["mtp"] == "1"), f"finals.csv: final_next2 present exactly with MTP: {r}")
    check(int(r["scored_tokens"]) > 16 * 2 * 2, f"finals.csv: the final evaluation scored {r['scored_tokens']} tokens, "
          "not more than the periodic one")
    check(r["final_next"] != r["periodic_next"], f"finals.csv: the final evaluation equals the periodic one: {r}")
rows = list(csv.DictReader(open(os.path.join(out, "runs.csv"))))
per_run = {}
for r in rows:
    per_run.setdefault((r["m"], r["n"], r["mtp"], r["frozen"], r["steps"], r["lr"], r["seed"]), []).append(int(r["step"]))
check(set(per_run) == names, "runs.csv and finals.csv: different runs")
for k, steps in per_run.items():
    n = int(k[4])
    # An evaluation every tenth of the reference run's steps, scaled to the run's length, and one at its last step.
    check(len(steps) >= 3 and steps[-1] == n, f"runs.csv: run {k}: expected 3 or more evaluations ending at step {n}, "
          f"got {steps}")
timing = json.load(open(os.path.join(out, "timing.json")))
check(timing.get("1,1", 0) > 0 and timing.get("8,16", 0) > 0, f"timing.json: {timing}")
summary = json.load(open(os.path.join(out, "summary.json")))
check(set(summary["fits"]) == {"next", "next2"}, f"summary.json: fits {sorted(summary['fits'])}")
for key in ("next", "next2"):
    f = summary["fits"].get(key, {})
    check(f.get("se_seeds", 0) > 0 and len(f.get("points", [])) == 2, f"summary.json: fit {key}: {f}")
check(summary["pooled_sd"]["next"]["df"] == 3, f"summary.json: pooled df {summary['pooled_sd']} (3 shapes x 1)")
check(any(p["steps"] == 45 for p in summary["frontier"]), "summary.json: no baseline frontier point at 45 steps")
text = open(os.path.join(out, "summary.md")).read()
for needle in ("## The main grid (MTP on)", "| (8,16) | 2 | 2 |", "Pooled seed standard deviation",
               "## Virtual width at m = 8", "Fit (next-token, m = 8", "Fit (next-2-token", "for 80 % power",
               "## Side runs", "## Controls", "frozen at the residual values", "Learning-rate sweep",
               "## Compute-matched frontier", "Table 1's reductions imply 0.0075"):
    check(needle in text, f"summary.md: expected '{needle}'")
for name in ("curves_next", "curves_next2", "scaling_next", "scaling_next2", "frontier_flops", "frontier_time"):
    check(png(os.path.join(out, name + ".png")), f"{name}.png: not a well-formed PNG")
for run in ("m1n1-s1", "m8n8-s1", "m8n16-s1"):
    path = os.path.join(out, f"connectivity-{run}.csv")
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    check(len(lines) == 1 + 2 * 3 // 2 + 2 + 4 * 2,
          f"{path}: expected a header, 3 paths, 2 shares and 8 Amax gains for 1 layer, got {len(lines)} lines")
    check(png(os.path.join(out, f"connectivity-{run}.png")), f"connectivity-{run}.png: not a well-formed PNG")
    shares = list(csv.DictReader(open(os.path.join(out, f"connectivity-{run}-shares.csv"))))
    for layer in {r["layer"] for r in shares}:
        total = sum(float(r["share"]) for r in shares if r["layer"] == layer)
        check(abs(total - 1) < 1e-5, f"connectivity-{run}-shares.csv: layer {layer}'s shares sum to {total}, not 1")
    check(png(os.path.join(out, f"connectivity-{run}-shares.png")), f"connectivity-{run}-shares.png: not a PNG")
if errors:
    print("check_quick: " + "\n check_quick: ".join(errors))
    sys.exit(1)
print(f"check_quick: {len(finals)} runs, {len(rows)} periodic evaluations, the final evaluations, summary, fit, "
      "frontier, 6 figures and 3 connectivity maps with their shares are well-formed")
