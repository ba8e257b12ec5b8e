#!/usr/bin/env python3
"""The measurements of docs/mhc.md: what the manifold-constrained connection families buy.

  python3 scripts/mhc_experiments.py --build build --data data/brown.txt --out runs/mhc [--parts stability,tokens]

stability  bench's `mhc_stability`: dynamic GHC at (1,4) and (2,3), vwn / mhc / mhc-lite, a sweep of peak learning
           rates, 300 steps (vwn-train's defaults otherwise), seed 1: final loss, spikes, largest gradient norm.
tokens     vwn-train at the scaling experiment's setting (docs/scaling.md: D = 128, 4 layers, 1600 steps of 1024 bytes,
           warm-up 64, lr 3e-3), dynamic with MTP, (1,4) in vwn / mhc / mhc-lite and (8,32) in vwn / mhc, seeds 1-2;
           then vwn-eval on the whole validation split and vwn-connectivity (the Amax gains) on 2048 bytes of it.

Runs are resumable: a finished run (its final.json and gains.txt written) is not run again, so a killed script
continues where it stopped. Needs the build's vwn-train, vwn-eval, vwn-connectivity and mhc_stability, with (1,4),
(2,3) and (8,32) among its compiled shapes (e.g. -DVWN_SHAPES="1_1;1_4;2_3;8_32").
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

BACKBONE = ["--width", "128", "--layers", "4", "--heads", "4", "--context", "128", "--batch", "8", "--steps", "1600",
            "--warmup", "64", "--lr", "3e-3", "--eval-every", "160", "--eval-batches", "16", "--mtp", "--dynamic",
            "--sample", "0"]
TOKEN_RUNS = [((1, 4), c) for c in ("vwn", "mhc", "mhc-lite")] + [((8, 32), c) for c in ("vwn", "mhc")]


def program(build, name):
    for sub in ("examples", "bench", "."):
        p = os.path.join(build, sub, name)
        if os.path.exists(p):
            return p
    sys.exit(f"mhc_experiments: {name} not found under {build} (build it: cmake --build {build} --target {name})")


def stability(args):
    # The sweep with vwn-train's gradient clip (1), then without it at the larger rates, with DeepSeek-V4's variant.
    sweeps = [("stability.csv", ["--lrs", args.lrs, "--connections", "vwn,mhc,mhc-lite"]),
              ("stability-noclip.csv", ["--lrs", "0.01,0.03,0.1", "--clip", "0",
                                        "--connections", "vwn,mhc,mhc-lite,mhc-v4"])]
    for name, extra in sweeps:
        csv = os.path.join(args.out, name)
        if not os.path.exists(csv):
            subprocess.run([program(args.build, "mhc_stability"), "--data", args.data, "--csv", csv,
                            "--shapes", "1_4,2_3"] + extra, check=True)
        rows = [line.strip().split(",") for line in open(csv)][1:]
        print(f"\n## Stability ({name}: 300 steps, seed 1)\n")
        print("| shape | lr | connection | final train loss | val loss | spikes | max grad norm | diverged at |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            shape = "(" + r[0].replace("_", ",") + ")"
            print(f"| {shape} | {r[2]} | {r[1]} | {float(r[4]):.4f} | {float(r[5]):.4f} | {r[6]} | {float(r[7]):.3g} | {r[8]} |")


def tokens(args):
    results = []
    for seed in (1, 2):
        for (m, n), conn in TOKEN_RUNS:
            name = f"m{m}n{n}-{conn}-seed{seed}"
            out = os.path.join(args.out, name)
            final = os.path.join(out, "final.json")
            gains = os.path.join(out, "gains.txt")
            ck = os.path.join(out, "checkpoint.safetensors")
            if not os.path.exists(final):
                t0 = time.time()
                cmd = [program(args.build, "vwn-train"), "--data", args.data, "--out", out, "--m", str(m), "--n", str(n),
                       "--connection", conn, "--seed", str(seed), "--threads", str(args.threads)] + BACKBONE
                if os.path.exists(ck):
                    cmd += ["--resume", ck]
                print(f"mhc_experiments: {name}: {' '.join(cmd)}", flush=True)
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                r = subprocess.run([program(args.build, "vwn-eval"), "--checkpoint", ck, "--data", args.data,
                                    "--threads", str(args.threads)], check=True, capture_output=True, text=True)
                value = json.loads(r.stdout)
                value["train_seconds"] = time.time() - t0
                with open(final + ".partial", "w") as f:
                    json.dump(value, f)
                os.replace(final + ".partial", final)
            if not os.path.exists(gains):
                val = open(args.data, "rb").read()
                sample = os.path.join(args.out, "validation-sample.txt")
                if not os.path.exists(sample):
                    with open(sample + ".partial", "wb") as f:
                        f.write(val[int(len(val) * 0.9):][:2048])
                    os.replace(sample + ".partial", sample)
                r = subprocess.run([program(args.build, "vwn-connectivity"), "--checkpoint", ck, "--text", sample,
                                    "--tokens", "2048", "--out", os.path.join(out, "connectivity")],
                                   check=True, capture_output=True, text=True)
                with open(gains + ".partial", "w") as f:
                    f.write(r.stdout)
                os.replace(gains + ".partial", gains)
            value = json.load(open(final))
            g = {}
            for line in open(gains):
                mt = re.match(r"(composite )?Amax gain, (forward|backward).*max ([0-9.e+-]+|nan|inf):", line.strip())
                if mt:
                    g[("composite " if mt.group(1) else "") + mt.group(2)] = float(mt.group(3))
            results.append(dict(shape=f"({m},{n})", conn=conn, seed=seed, val=value.get("val_next"), gains=g,
                                seconds=value.get("train_seconds")))
    print("\n## Equal tokens (1600 steps x 1024 bytes), whole validation split\n")
    print("| shape | connection | seed | val loss (nats/byte) | composite Amax gain fwd / bwd (largest) | Amax gain fwd / bwd (largest sub-layer) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        g = r["gains"]
        print(f"| {r['shape']} | {r['conn']} | {r['seed']} | {r['val']:.4f} | {g.get('composite forward', float('nan')):.4g} / "
              f"{g.get('composite backward', float('nan')):.4g} | {g.get('forward', float('nan')):.4g} / "
              f"{g.get('backward', float('nan')):.4g} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--data", default="data/brown.txt")
    ap.add_argument("--out", default="runs/mhc")
    ap.add_argument("--parts", default="stability,tokens")
    ap.add_argument("--lrs", default="0.003,0.01,0.03,0.1")
    ap.add_argument("--threads", default="2")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for part in args.parts.split(","):
        {"stability": stability, "tokens": tokens}[part](args)


if __name__ == "__main__":
    main()
