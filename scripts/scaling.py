"""VWN's virtual-width scaling experiment (docs/scaling.md): trains the baseline (1,1) and VWN at fixed m with
r = n/m = 2, 4, 8, plus the practical (2,3), with one backbone, one data order and one token budget, for several
seeds, MTP on; and MTP off for the baseline and one VWN shape. Then: a CSV of every evaluation, a summary table
(mean and standard deviation over seeds, reduction against the baseline in units of its standard error with a
Welch t-test, tokens to reach the baseline's final loss, the comparison at equal wall-clock time and at equal
training FLOPs), the fit of the reduction against log2(r), and PNG figures (gnuplot).

A half-finished grid resumes: finished runs are kept, an interrupted run continues from its checkpoint.

    python3 scripts/scaling.py [--quick] [--out scaling] [--build build] [--data data/brown.txt] ...
(scripts/scaling.sh builds vwn-train first and passes its arguments here; --help lists them.)
"""

import argparse
import csv
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

# ----------------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------------

# The default grid: 14 runs in about 1 h 50 min on 2 cores (AMD EPYC, AVX2, -march=native; docs/scaling.md): the
# largest step count of this backbone that fits in 2 hours with a margin for a slower machine.
DEFAULTS = dict(width=128, layers=4, heads=4, context=128, batch=8, steps=1600, warmup=64, lr=3e-3, eval_every=160,
                eval_batches=16, seeds="1,2", shapes="1,1 2,3 8,16 8,32 8,64", no_mtp_shapes="1,1 8,32")
QUICK = dict(width=16, layers=1, heads=2, context=16, batch=2, steps=30, warmup=2, lr=3e-3, eval_every=10,
             eval_batches=2, seeds="1,2", shapes="1,1 2,3 8,16 8,32", no_mtp_shapes="1,1 8,16")


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="scaling.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny grid in about a minute: checks the pipeline, not "
                                                         "the science")
    ap.add_argument("--out", default="scaling", help="output folder [scaling]")
    ap.add_argument("--build", default=os.environ.get("VWN_BUILD_DIR", "build"), help="build folder with "
                    "examples/vwn-train [build]")
    ap.add_argument("--data", default="data/brown.txt", help="corpus [data/brown.txt]")
    ap.add_argument("--threads", type=int, default=0, help="OpenMP threads per run (0: all) [0]")
    for k, v in DEFAULTS.items():
        ap.add_argument("--" + k.replace("_", "-"), default=None, type=type(v),
                        help=f"[{v}; --quick: {QUICK[k]}]")
    args = ap.parse_args(argv)
    base = QUICK if args.quick else DEFAULTS
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.seeds = [int(s) for s in str(args.seeds).replace(",", " ").split()]
    args.shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split()]
    args.no_mtp_shapes = [tuple(int(v) for v in s.split(",")) for s in args.no_mtp_shapes.split()]
    if (1, 1) not in args.shapes:
        ap.error("--shapes: expected the baseline 1,1 among the shapes, got " + " ".join(f"{m},{n}" for m, n in args.shapes))
    return args


def label(m, n, mtp):
    return f"({m},{n})" + ("" if mtp else " no MTP")


def run_dir(out, m, n, seed, mtp):
    return os.path.join(out, "runs", f"m{m}n{n}-s{seed}" + ("" if mtp else "-nomtp"))


# ----------------------------------------------------------------------------------------------------------------
# Training the grid
# ----------------------------------------------------------------------------------------------------------------

def read_log(path):
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for r in csv.DictReader(f):
            rows.append(r)
    return rows


def finished(d, steps):
    rows = read_log(os.path.join(d, "log.csv"))
    return bool(rows) and int(rows[-1]["step"]) >= steps and rows[-1]["val_next"] != ""


def train_grid(args, runs, program):
    done_times = {}
    start = time.time()
    for i, (m, n, seed, mtp) in enumerate(runs):
        d = run_dir(args.out, m, n, seed, mtp)
        name = f"[{i + 1}/{len(runs)}] {label(m, n, mtp)} seed {seed}"
        if finished(d, args.steps):
            print(f"{name}: done before, kept", flush=True)
            continue
        os.makedirs(d, exist_ok=True)
        cmd = [program, "--data", args.data, "--out", d, "--m", str(m), "--n", str(n),
               "--static" if (m, n) == (1, 1) else "--dynamic", "--mtp" if mtp else "--no-mtp",
               "--width", str(args.width), "--layers", str(args.layers), "--heads", str(args.heads),
               "--context", str(args.context), "--batch", str(args.batch), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--lr", str(args.lr), "--eval-every", str(args.eval_every),
               "--eval-batches", str(args.eval_batches), "--seed", str(seed), "--sample", "0",
               "--threads", str(args.threads)]
        checkpoint = os.path.join(d, "checkpoint.safetensors")
        if os.path.exists(checkpoint):
            cmd += ["--resume", checkpoint]
            print(f"{name}: resuming from its checkpoint", flush=True)
        t0 = time.time()
        with open(os.path.join(d, "train.log"), "a") as logf:
            rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            sys.exit(f"scaling: {name} failed (exit {rc}); see {os.path.join(d, 'train.log')}")
        took = time.time() - t0
        done_times.setdefault((m, n, mtp), []).append(took)
        rows = read_log(os.path.join(d, "log.csv"))
        last = rows[-1]
        # ETA: each remaining run takes what its configuration took here, else the mean of all runs so far.
        mean_all = statistics.mean(t for ts in done_times.values() for t in ts)
        left = sum(statistics.mean(done_times.get((m2, n2, mtp2), [mean_all]))
                   for (m2, n2, _, mtp2) in runs[i + 1:] if not finished(run_dir(args.out, m2, n2, _, mtp2), args.steps))
        print(f"{name}: {took / 60:.1f} min, val next-token {float(last['val_next']):.4f}"
              + (f", next-2-token {float(last['val_next2']):.4f}" if last['val_next2'] else "")
              + f"; grid {(time.time() - start) / 60:.1f} min so far, about {left / 60:.0f} min left", flush=True)


# ----------------------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------------------

def betacf(a, b, x):
    """Continued fraction of the regularised incomplete beta function (Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for k in range(1, 300):
        m2 = 2 * k
        aa = k * (b - k) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + k) * (qab + k) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def betainc(a, b, x):
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1 - x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(lbeta) * betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * betacf(b, a, 1 - x) / b


def welch(xs, ys):
    """Welch's two-sided t-test of mean(xs) - mean(ys): (difference, standard error, t, df, p)."""
    mx, my = statistics.mean(xs), statistics.mean(ys)
    vx = statistics.variance(xs) if len(xs) > 1 else 0.0
    vy = statistics.variance(ys) if len(ys) > 1 else 0.0
    se2 = vx / len(xs) + vy / len(ys)
    diff = mx - my
    if se2 <= 0:
        return diff, 0.0, math.inf, 0.0, 0.0 if diff != 0 else 1.0
    se = math.sqrt(se2)
    t = diff / se
    den = (vx / len(xs)) ** 2 / max(len(xs) - 1, 1) + (vy / len(ys)) ** 2 / max(len(ys) - 1, 1)
    df = se2 ** 2 / den if den > 0 else 1.0
    p = betainc(df / 2, 0.5, df / (df + t * t))
    return diff, se, t, df, p


def fit_line(xs, ys):
    """Least squares y = slope x + intercept: (slope, intercept, R^2)."""
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    slope = sxy / sxx if sxx > 0 else 0.0
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - (slope * x + intercept)) ** 2 for x, y in zip(xs, ys))
    return slope, intercept, (1 - ss_res / ss_tot) if ss_tot > 0 else 1.0


def interp(xs, ys, x):
    """y at x on the polyline (xs ascending); None outside."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    for i in range(1, len(xs)):
        if x <= xs[i]:
            f = (x - xs[i - 1]) / (xs[i] - xs[i - 1]) if xs[i] > xs[i - 1] else 1.0
            return ys[i - 1] + f * (ys[i] - ys[i - 1])
    return ys[-1]


def crossing(xs, ys, level):
    """First x where the polyline (xs, ys) reaches ys <= level; None if never."""
    for i, y in enumerate(ys):
        if y <= level:
            if i == 0:
                return xs[0]
            f = (ys[i - 1] - level) / (ys[i - 1] - y)
            return xs[i - 1] + f * (xs[i] - xs[i - 1])
    return None


def train_flops_per_token(args, m, n, mtp):
    """Training FLOPs per token (3 x forward) of the reference transformer (docs/model.md): the dense products
    (2 FLOPs per weight), causal attention (2 x 2 x T/2 x D per layer), and the GHC sub-layers by the paper's
    section 3.5 counts (vwn::cost), with the reduce head, the over-width embedding and, with MTP, the mixer and
    the MTP block and head."""
    D, L, T, V = args.width, args.layers, args.context, 256
    F = ((8 * D // 3) + 7) // 8 * 8
    db = D // m
    Dw = n * db
    dynamic = (m, n) != (1, 1)
    ghc = (4 * (n / m) * D + 2 * (2 * m + n) * n / m * D if dynamic else 0) + 2 * (m + n) * n / m * D + 2 * n * D
    block = 2 * (4 * D * D + 3 * D * F) + 2 * T * D + 2 * ghc
    head = (2 * D * Dw if n != m else 0) + 2 * D * V
    fwd = L * block + head
    if mtp:
        fwd += 2 * db * 2 * db * n + block + head
    return 3 * fwd


# ----------------------------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------------------------

def analyse(args, runs):
    tokens_per_step = args.batch * args.context
    curves = {}  # (m, n, mtp) -> seed -> list of (tokens, elapsed, val_next, val_next2)
    with open(os.path.join(args.out, "runs.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["m", "n", "r", "ghc", "mtp", "seed", "step", "tokens", "elapsed_s", "val_next", "val_next2"])
        for (m, n, seed, mtp) in runs:
            for r in read_log(os.path.join(run_dir(args.out, m, n, seed, mtp), "log.csv")):
                if r["val_next"] == "":
                    continue
                step = int(r["step"])
                row = (step * tokens_per_step, float(r["elapsed_s"]), float(r["val_next"]),
                       float(r["val_next2"]) if r["val_next2"] else None)
                curves.setdefault((m, n, mtp), {}).setdefault(seed, []).append(row)
                w.writerow([m, n, n / m, "static" if (m, n) == (1, 1) else "dynamic", int(mtp), seed, step, row[0],
                            f"{row[1]:.3f}", row[2], "" if row[3] is None else row[3]])

    def final(cfg, which):
        return [c[-1][which] for c in curves[cfg].values()]

    def mean_curve(cfg, which, x=0):
        per_seed = list(curves[cfg].values())
        n_points = min(len(c) for c in per_seed)
        return ([statistics.mean(c[i][x] for c in per_seed) for i in range(n_points)],
                [statistics.mean(c[i][which] for c in per_seed) for i in range(n_points)])

    lines = []
    out = lambda s="": lines.append(s)
    out(f"# VWN scaling grid: D = {args.width}, {args.layers} layers, {args.heads} heads, context {args.context}, "
        f"batch {args.batch}, {args.steps} steps = {args.steps * tokens_per_step} tokens per run, seeds "
        f"{', '.join(map(str, args.seeds))}")
    out()
    summary = {}
    for mtp in (True, False):
        base = (1, 1, mtp)
        if base not in curves:
            continue
        out(f"## MTP {'on' if mtp else 'off'}" + ("" if mtp else " (next-token only)"))
        out()
        out("| shape | r | val next-token (mean ± sd) | reduction | in SE | Welch p | val next-2-token (mean ± sd) | "
            "reduction | in SE | Welch p | tokens to baseline's final next-token | at equal wall-clock | at equal FLOPs |")
        out("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        b_next = final(base, 2)
        b_next2 = final(base, 3) if mtp else None
        b_tokens = statistics.mean(c[-1][0] for c in curves[base].values())
        b_time = statistics.mean(c[-1][1] for c in curves[base].values())
        b_flops = train_flops_per_token(args, 1, 1, mtp) * b_tokens
        for (m, n, mtp2) in sorted(curves, key=lambda k: (k[1] / k[0], k[0])):
            if mtp2 != mtp:
                continue
            cfg = (m, n, mtp)
            nx = final(cfg, 2)
            cells = [f"({m},{n})", f"{n / m:g}", f"{statistics.mean(nx):.4f} ± {statistics.stdev(nx) if len(nx) > 1 else 0:.4f}"]
            stats = {"next": statistics.mean(nx), "next_sd": statistics.stdev(nx) if len(nx) > 1 else 0.0}
            for key, b_vals, vals in (("next", b_next, nx), ("next2", b_next2, final(cfg, 3) if mtp else None)):
                if key == "next2":
                    if vals is None:
                        cells += ["-", "-", "-", "-"]
                        continue
                    cells.append(f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.4f}")
                    stats["next2"], stats["next2_sd"] = statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
                if (m, n) == (1, 1):
                    cells += ["-", "-", "-"]
                    continue
                diff, se, t, df, p = welch(b_vals, vals)
                stats[key + "_reduction"] = diff
                cells += [f"{diff:+.4f}", f"{t:.1f}" if math.isfinite(t) else "inf", f"{p:.3f}"]
            if (m, n) == (1, 1):
                cells += [f"{b_tokens:.0f} (itself)", "-", "-"]
            else:
                xs, ys = mean_curve(cfg, 2, 0)
                reach = crossing(xs, ys, statistics.mean(b_next))
                cells.append(f"{reach:.0f} ({b_tokens / reach:.2f}x fewer)" if reach else "not reached")
                ts, ys_t = mean_curve(cfg, 2, 1)
                at_time = interp(ts, ys_t, b_time)
                cells.append(f"{statistics.mean(b_next) - at_time:+.4f}" if at_time is not None else
                             f"n/a (the run took {ts[-1]:.1f} s, less than the baseline's {b_time:.1f} s)")
                tok_equal = b_flops / train_flops_per_token(args, m, n, mtp)
                at_flops = interp(xs, ys, tok_equal)
                cells.append(f"{statistics.mean(b_next) - at_flops:+.4f} (at {tok_equal:.0f} tokens)"
                             if at_flops is not None else f"n/a ({tok_equal:.0f} tokens < first evaluation)")
            out("| " + " | ".join(cells) + " |")
            summary[f"{m},{n},{int(mtp)}"] = stats
        out()
    out("Reduction: baseline mean minus this shape's mean (positive: lower loss than the baseline); in SE: that gap "
        "in units of its standard error (Welch); p: two-sided Welch t-test. At equal wall-clock / FLOPs: the "
        "baseline's final mean next-token loss minus this shape's mean next-token loss at the baseline's training "
        "time / training FLOPs (interpolated between evaluations).")
    out()
    # Fit of the reduction against log2(r), m = 8 shapes, MTP on.
    fits = {}
    pts = [(math.log2(n / m), summary[f"{m},{n},1"]) for (m, n) in args.shapes
           if m == 8 and f"{m},{n},1" in summary and "next_reduction" in summary[f"{m},{n},1"]]
    for key in ("next", "next2"):
        xs = [x for x, s in pts if key + "_reduction" in s]
        ys = [s[key + "_reduction"] for x, s in pts if key + "_reduction" in s]
        if len(xs) >= 2:
            slope, intercept, r2 = fit_line(xs, ys)
            fits[key] = (slope, intercept, r2)
            out(f"Fit ({'next-token' if key == 'next' else 'next-2-token'}, m = 8, MTP on): reduction = {slope:+.4f} "
                f"log2(r) {intercept:+.4f}, R^2 = {r2:.3f} ({len(xs)} points; the paper: 0.0069 per doubling "
                "after 500B tokens)")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"summary": summary, "fits": {k: dict(zip(("slope", "intercept", "r2"), v)) for k, v in fits.items()}},
                  f, indent=1)
    print("\n".join(lines))
    plot(args, curves, summary, fits, mean_curve)


def plot(args, curves, summary, fits, mean_curve):
    if shutil.which("gnuplot") is None:
        print("scaling: gnuplot not found: no figures (install gnuplot-nox)")
        return
    for which, key, title in ((2, "next", "next-token"), (3, "next2", "next-2-token")):
        gp = [f'set terminal pngcairo size 1000,650' if _has_pngcairo() else 'set terminal png size 1000,650',
              f'set output "{os.path.join(args.out, "curves_" + key + ".png")}"',
              f'set title "validation {title} loss, mean over seeds (MTP on)" noenhanced',
              'set xlabel "training tokens"', 'set ylabel "loss (nats)"', 'set grid', 'set key top right']
        series = []
        for (m, n, mtp) in sorted(curves, key=lambda k: (k[1] / k[0], k[0])):
            if not mtp:
                continue
            xs, ys = mean_curve((m, n, mtp), which, 0)
            gp.append(f"$c{m}_{n} << EOD\n" + "\n".join(f"{x} {y}" for x, y in zip(xs, ys)) + "\nEOD")
            series.append(f'$c{m}_{n} using 1:2 with linespoints title "({m},{n}) r={n / m:g}"')
        gp.append("plot " + ", ".join(series))
        _gnuplot(args.out, "curves_" + key, gp)
        # final loss against log2(r), m = 8 and the baseline at r = 1, with seed error bars and the fit
        pts = []
        for (m, n) in args.shapes:
            s = summary.get(f"{m},{n},1")
            if s and key in s and (m == 8 or (m, n) == (1, 1)):
                pts.append((math.log2(n / m), s[key], s[key + "_sd"]))
        gp = [f'set terminal pngcairo size 900,600' if _has_pngcairo() else 'set terminal png size 900,600',
              f'set output "{os.path.join(args.out, "scaling_" + key + ".png")}"',
              f'set title "final validation {title} loss against log2(r), m = 8 (r = 1: the (1,1) baseline)" noenhanced',
              'set xlabel "log2(r)"', 'set ylabel "loss (nats)"', 'set grid', 'set key top right',
              'set offsets 0.3, 0.3, graph 0.05, graph 0.05',
              "$p << EOD\n" + "\n".join(f"{x} {y} {sd}" for x, y, sd in pts) + "\nEOD"]
        plot_cmd = 'plot $p using 1:2:3 with yerrorbars pt 7 title "mean ± sd over seeds"'
        if key in fits and pts:
            base = [y for x, y, _ in pts if x == 0]
            if base:
                slope, intercept, r2 = fits[key]
                gp.append(f"f(x) = {base[0]} - ({slope} * x + {intercept})")
                plot_cmd += f', [1:{max(x for x, _, _ in pts)}] f(x) title "fit: reduction = {slope:.4f} log2(r) + {intercept:.4f}, R^2 = {r2:.2f}"'
        gp.append(plot_cmd)
        _gnuplot(args.out, "scaling_" + key, gp)


def _has_pngcairo():
    r = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True)
    return "pngcairo" in (r.stdout + r.stderr)


def _gnuplot(out, name, lines):
    script = os.path.join(out, name + ".gp")
    with open(script, "w") as f:
        f.write("\n".join(lines) + "\n")
    r = subprocess.run(["gnuplot", script], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"scaling: gnuplot failed on {script}: {r.stderr.strip()}")


# ----------------------------------------------------------------------------------------------------------------

def main(argv):
    args = parse_args(argv)
    program = os.path.join(args.build, "examples", "vwn-train")
    if not os.access(program, os.X_OK):
        sys.exit(f"scaling: {program} not found: build it first (scripts/scaling.sh does)")
    if not os.path.exists(args.data):
        sys.exit(f"scaling: --data {args.data} does not exist (scripts/get-brown.sh fetches the default corpus)")
    os.makedirs(args.out, exist_ok=True)
    runs = [(m, n, seed, True) for (m, n) in args.shapes for seed in args.seeds]
    runs += [(m, n, seed, False) for (m, n) in args.no_mtp_shapes for seed in args.seeds]
    grid = {k: getattr(args, k) for k in DEFAULTS if k not in ("seeds", "shapes", "no_mtp_shapes")}
    grid["data"] = os.path.abspath(args.data)
    settings = os.path.join(args.out, "grid.json")
    if os.path.exists(settings):
        with open(settings) as f:
            before = json.load(f)
        if before != grid:
            sys.exit(f"scaling: {args.out} holds a grid with other settings ({settings}: {before}); use another --out "
                     "or remove it")
    else:
        with open(settings, "w") as f:
            json.dump(grid, f, indent=1)
    print(f"scaling: {len(runs)} runs into {args.out}: shapes {' '.join(f'({m},{n})' for m, n in args.shapes)} with "
          f"MTP, {' '.join(f'({m},{n})' for m, n in args.no_mtp_shapes)} without, seeds {args.seeds}; "
          f"{args.steps} steps x {args.batch * args.context} tokens each", flush=True)
    t0 = time.time()
    train_grid(args, runs, program)
    print(f"scaling: grid trained; wall time of this invocation {(time.time() - t0) / 60:.1f} min", flush=True)
    analyse(args, runs)


if __name__ == "__main__":
    main(sys.argv[1:])
