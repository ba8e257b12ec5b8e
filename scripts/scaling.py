"""VWN's virtual-width scaling experiment (docs/scaling.md): the (1,1) baseline and VWN at m = 8 with r = n/m = 1, 2,
4, 8 on one backbone, one data order and one token budget for several seeds (MTP on), and beside it the runs a reviewer
asks for: the practical (2,3); MTP off; the baseline with its GHC scalars frozen (the plain pre-norm transformer); a
learning-rate sweep; and compute-matched frontiers (every point a complete run with its own schedule, the VWN shapes
at the step counts whose counted FLOPs, and separately whose measured time, equal the baseline's). Then: every
evaluation in runs.csv, every run's final evaluation on the whole validation split in finals.csv, the summary (gaps
with confidence intervals, Welch and pooled-variance tests, the slope per doubling of r with its standard error, the
seeds a given power needs), and the figures (gnuplot).

A half-finished experiment resumes: finished runs are kept, an interrupted run continues from its checkpoint.

    python3 scripts/scaling.py [--quick] [--out scaling] [--build build] [--data data/brown.txt] ...
(scripts/scaling.sh builds the programs first and passes its arguments here; --help lists them.)
"""

import argparse
import csv
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scaling_stats as st  # noqa: E402

# ----------------------------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------------------------

# The backbone and schedule of every run (the reference length `steps`; runs of other lengths scale the warm-up and
# the evaluation interval with their length).
BACKBONE = dict(width=128, layers=4, heads=4, context=128, batch=8, steps=1600, warmup=64, lr=3e-3, eval_every=160,
                eval_batches=16)
QUICK_BACKBONE = dict(width=16, layers=1, heads=2, context=16, batch=2, steps=30, warmup=2, lr=3e-3, eval_every=10,
                      eval_batches=2)
# Which runs (docs/scaling.md, "The experiment").
PLAN = dict(seeds="1,2,3,4,5,6", shapes="1,1 8,8 8,16 8,32 8,64", side_seeds="1,2", practical_shapes="2,3",
            no_mtp_shapes="1,1 8,32", frozen=1, lr_sweep="1.5e-3 6e-3", lr_shapes="1,1 8,32", lr_seed=1,
            frontier_steps="2400 3200 4800", frontier_shapes="8,16 8,32 8,64", timing_steps=200)
QUICK_PLAN = dict(seeds="1,2", shapes="1,1 8,8 8,16", side_seeds="1", practical_shapes="2,3", no_mtp_shapes="1,1",
                  frozen=1, lr_sweep="6e-3", lr_shapes="1,1", lr_seed=1, frontier_steps="45", frontier_shapes="8,16",
                  timing_steps=12)
PARTS = ("main", "side", "controls", "frontier")
PAPER = ("the paper (section 5.2.1, Table 1, Fig. 8; MoE-A0.8B, m = 8, after 500B tokens): next-token reductions "
         "0.020 / 0.028 / 0.035 and next-2-token 0.030 / 0.045 / 0.058 at r = 2 / 4 / 8; Fig. 8's fit "
         "y = -0.0069 log2(x) + 1.6212 (R^2 = 0.9986) of the next-token loss. Through Table 1's three reductions "
         "alone a line has slope 0.0075 per doubling (next-token) and 0.0140 (next-2-token)")
PAPER_SLOPE = dict(next=0.0075, next2=0.0140)


def shapes_of(text):
    return [tuple(int(v) for v in s.split(",")) for s in str(text).split()]


def numbers_of(text, kind=float):
    return [kind(v) for v in str(text).replace(",", " ").split()]


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="scaling.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a tiny experiment in under a minute: checks the pipeline, "
                                                         "not the science")
    ap.add_argument("--out", default="scaling", help="output folder [scaling]")
    ap.add_argument("--build", default=os.environ.get("VWN_BUILD_DIR", "build"), help="build folder with "
                    "examples/vwn-train and examples/vwn-eval [build]")
    ap.add_argument("--data", default="data/brown.txt", help="corpus [data/brown.txt]")
    ap.add_argument("--threads", type=int, default=0, help="OpenMP threads per run (0: all) [0]")
    ap.add_argument("--parts", default=",".join(PARTS), help="which runs to train, of " + ", ".join(PARTS) +
                    " [all]; the analysis uses every finished run in --out")
    ap.add_argument("--analyse-only", action="store_true", help="train nothing; analyse what --out holds")
    for table, quick in ((BACKBONE, QUICK_BACKBONE), (PLAN, QUICK_PLAN)):
        for k, v in table.items():
            ap.add_argument("--" + k.replace("_", "-"), default=None, type=type(v), help=f"[{v}; --quick: {quick[k]}]")
    args = ap.parse_args(argv)
    for table, quick in ((BACKBONE, QUICK_BACKBONE), (PLAN, QUICK_PLAN)):
        for k, v in (quick if args.quick else table).items():
            if getattr(args, k) is None:
                setattr(args, k, v)
    args.parts = [p for p in args.parts.replace(",", " ").split()]
    for p in args.parts:
        if p not in PARTS:
            ap.error(f"--parts: expected some of {', '.join(PARTS)}, got '{p}'")
    args.seeds = numbers_of(args.seeds, int)
    args.side_seeds = numbers_of(args.side_seeds, int)
    args.shapes = shapes_of(args.shapes)
    args.practical_shapes = shapes_of(args.practical_shapes)
    args.no_mtp_shapes = shapes_of(args.no_mtp_shapes)
    args.lr_shapes = shapes_of(args.lr_shapes)
    args.frontier_shapes = shapes_of(args.frontier_shapes)
    args.lr_sweep = numbers_of(args.lr_sweep)
    args.frontier_steps = numbers_of(args.frontier_steps, int)
    if (1, 1) not in args.shapes:
        ap.error("--shapes: expected the baseline 1,1 among the shapes, got " + " ".join(f"{m},{n}" for m, n in args.shapes))
    return args


class Run:
    """One training run: a shape and the settings that differ between runs of the experiment."""

    def __init__(self, args, m, n, seed, mtp=True, steps=None, lr=None, frozen=False, part="main", match=""):
        self.m, self.n, self.seed, self.mtp, self.frozen, self.part, self.match = m, n, seed, mtp, frozen, part, match
        self.steps = steps or args.steps
        self.lr = lr if lr is not None else args.lr
        suffix = ("" if mtp else "-nomtp") + ("" if self.steps == args.steps else f"-steps{self.steps}") + \
                 ("" if self.lr == args.lr else f"-lr{self.lr:g}") + ("-frozen" if frozen else "")
        self.name = f"m{m}n{n}-s{seed}{suffix}"
        self.dir = os.path.join(args.out, "runs", self.name)
        # The schedule scales with the run's length: warm-up and evaluation interval in proportion (the reference
        # run: 64 warm-up steps and an evaluation every 160 of 1600).
        self.warmup = max(1, round(args.warmup * self.steps / args.steps)) if args.warmup else 0
        self.eval_every = max(1, round(args.eval_every * self.steps / args.steps))

    @property
    def config(self):
        """What the summary groups seeds by."""
        return (self.m, self.n, self.mtp, self.steps, self.lr, self.frozen)

    def label(self):
        return f"({self.m},{self.n})" + ("" if self.mtp else " no MTP") + (" frozen GHC" if self.frozen else "")


def label_of(config, args):
    m, n, mtp, steps, lr, frozen = config
    return f"({m},{n})" + ("" if mtp else " no MTP") + (" frozen GHC" if frozen else "") + \
        ("" if steps == args.steps else f" {steps} steps") + ("" if lr == args.lr else f" lr {lr:g}")


def train_flops_per_token(args, m, n, mtp):
    """Training FLOPs per token (3 x forward) of the reference transformer (docs/model.md): the dense products
    (2 FLOPs per weight), causal attention (2 x 2 x T/2 x D per layer), and the GHC sub-layers by the paper's
    section 3.5 counts (vwn::cost), with the reduce head and, with MTP, the mixer and the MTP block and head."""
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
# The runs
# ----------------------------------------------------------------------------------------------------------------

def read_log(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def finished(run):
    rows = read_log(os.path.join(run.dir, "log.csv"))
    return bool(rows) and int(rows[-1]["step"]) >= run.steps and rows[-1]["val_next"] != ""


def write_json(path, value):
    """Atomically: a temporary file, then a rename."""
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def plan_runs(args, timing):
    """Every run of the experiment in training order: the main grid seed by seed (so that a stopped experiment has
    whole seeds), the side runs, the controls, then the frontier (its time-matched runs need `timing`)."""
    runs = []
    if "main" in args.parts:
        runs += [Run(args, m, n, s) for s in args.seeds for (m, n) in args.shapes]
    if "side" in args.parts:
        runs += [Run(args, m, n, s, part="side") for s in args.side_seeds for (m, n) in args.practical_shapes]
        runs += [Run(args, m, n, s, mtp=False, part="side") for s in args.side_seeds for (m, n) in args.no_mtp_shapes]
    if "controls" in args.parts:
        if args.frozen:
            runs += [Run(args, 1, 1, s, frozen=True, part="controls") for s in args.side_seeds]
        runs += [Run(args, m, n, args.lr_seed, lr=lr, part="controls") for lr in args.lr_sweep for (m, n) in args.lr_shapes]
    if "frontier" in args.parts:
        base = train_flops_per_token(args, 1, 1, True)
        for s in args.side_seeds:
            for (m, n) in args.frontier_shapes:
                steps = max(1, round(args.steps * base / train_flops_per_token(args, m, n, True)))
                runs.append(Run(args, m, n, s, steps=steps, part="frontier", match="flops"))
            runs += [Run(args, 1, 1, s, steps=k, part="frontier", match="longer") for k in args.frontier_steps]
        if timing:
            for s in args.side_seeds:
                for (m, n) in args.frontier_shapes:
                    steps = max(1, round(args.steps * timing["1,1"] / timing[f"{m},{n}"]))
                    runs.append(Run(args, m, n, s, steps=steps, part="frontier", match="time"))
    # A run planned twice (a matched step count equal to another run's) is trained once.
    seen, out = set(), []
    for r in runs:
        if r.name not in seen:
            seen.add(r.name)
            out.append(r)
    return out


def train_cmd(args, program, run, out_dir, steps=None, eval_every=None):
    return [program, "--data", args.data, "--out", out_dir, "--m", str(run.m), "--n", str(run.n),
            "--static" if (run.m, run.n) == (1, 1) else "--dynamic", "--mtp" if run.mtp else "--no-mtp",
            "--freeze-ghc" if run.frozen else "--train-ghc",
            "--width", str(args.width), "--layers", str(args.layers), "--heads", str(args.heads),
            "--context", str(args.context), "--batch", str(args.batch), "--steps", str(steps or run.steps),
            "--warmup", str(min(run.warmup, steps or run.steps)), "--lr", str(run.lr),
            "--eval-every", str(run.eval_every if eval_every is None else eval_every),
            "--eval-batches", str(args.eval_batches), "--seed", str(run.seed), "--sample", "0",
            "--threads", str(args.threads)]


def final_eval(args, run, program):
    """The run's final evaluation on the whole validation split (vwn-eval), kept in final.json."""
    path = os.path.join(run.dir, "final.json")
    if os.path.exists(path):
        return read_json(path)
    r = subprocess.run([program, "--checkpoint", os.path.join(run.dir, "checkpoint.safetensors"), "--data", args.data,
                        "--threads", str(args.threads)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"scaling: the final evaluation of {run.name} failed (exit {r.returncode}): {r.stderr.strip()}")
    value = json.loads(r.stdout)
    value["load_before"] = os.getloadavg()[0]
    write_json(path, value)
    return value


def train(args, runs, programs):
    done_times = {}
    start = time.time()
    todo = [r for r in runs if not (finished(r) and os.path.exists(os.path.join(r.dir, "final.json")))]
    print(f"scaling: {len(runs)} runs planned, {len(runs) - len(todo)} done before, {len(todo)} to train", flush=True)
    for i, run in enumerate(todo):
        name = f"[{i + 1}/{len(todo)}] {run.label()} seed {run.seed}, {run.steps} steps, lr {run.lr:g}"
        os.makedirs(run.dir, exist_ok=True)
        if not finished(run):
            cmd = train_cmd(args, programs["train"], run, run.dir)
            checkpoint = os.path.join(run.dir, "checkpoint.safetensors")
            if os.path.exists(checkpoint):
                cmd += ["--resume", checkpoint]
                print(f"{name}: resuming from its checkpoint", flush=True)
            load = os.getloadavg()[0]
            t0 = time.time()
            with open(os.path.join(run.dir, "train.log"), "a") as logf:
                logf.write(f"# {datetime.datetime.now().isoformat(timespec='seconds')} load {load:.2f}: "
                           + " ".join(cmd) + "\n")
                logf.flush()
                rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT).returncode
            if rc == 130:  # vwn-train saved its checkpoint on SIGINT or SIGTERM and stopped
                sys.exit(f"scaling: {name} was stopped by a signal after saving its checkpoint; run the same command "
                         "again to continue")
            if rc != 0:
                sys.exit(f"scaling: {name} failed (exit {rc}); see {os.path.join(run.dir, 'train.log')}")
            done_times.setdefault(run.config, []).append((time.time() - t0) / run.steps)
        f = final_eval(args, run, programs["eval"])
        # Time left: each remaining run at the seconds per step its configuration took here, else the mean.
        per_step = {(c[0], c[1], c[2]): statistics.mean(v) for c, v in done_times.items()}
        mean_all = statistics.mean(per_step.values()) if per_step else 0.0
        left = sum(per_step.get((r.m, r.n, r.mtp), mean_all) * r.steps for r in todo[i + 1:])
        print(f"{name}: whole-split next-token {f['val_next']:.4f}"
              + (f", next-2-token {f['val_next2']:.4f}" if f.get("val_next2") is not None else "")
              + f"; {(time.time() - start) / 60:.1f} min so far, about {left / 60:.0f} min left", flush=True)


def measure_timing(args, programs):
    """Seconds per training step of the baseline and each frontier shape, measured one after the other on this
    machine (timing.json, kept): what the time-matched frontier runs are sized by. Run it while nothing else runs;
    the load average before each measurement is recorded beside it."""
    path = os.path.join(args.out, "timing.json")
    timing = read_json(path)
    if timing:
        return timing
    timing = {"date": datetime.date.today().isoformat(), "steps": args.timing_steps, "threads": args.threads,
              "load": {}}
    for (m, n) in [(1, 1)] + [s for s in args.frontier_shapes if s != (1, 1)]:
        run = Run(args, m, n, 1, steps=args.timing_steps)
        d = os.path.join(args.out, "timing", f"m{m}n{n}")
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        timing["load"][f"{m},{n}"] = os.getloadavg()[0]
        cmd = train_cmd(args, programs["train"], run, d, steps=args.timing_steps, eval_every=0)
        with open(os.path.join(d, "train.log"), "w") as logf:
            rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            sys.exit(f"scaling: the timing run of ({m},{n}) failed (exit {rc}); see {d}/train.log")
        rows = read_log(os.path.join(d, "log.csv"))
        # The first fifth of the steps (caches, page faults, the allocator warming up) is left out.
        k0 = len(rows) // 5
        t = (float(rows[-1]["elapsed_s"]) - float(rows[k0 - 1]["elapsed_s"])) / (len(rows) - k0) if k0 > 0 else \
            float(rows[-1]["elapsed_s"]) / len(rows)
        timing[f"{m},{n}"] = t
        print(f"scaling: timing ({m},{n}): {t * 1000:.1f} ms per step (load before {timing['load'][f'{m},{n}']:.2f})",
              flush=True)
    write_json(path, timing)
    return timing


# ----------------------------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------------------------

def collect(args, runs):
    """runs.csv (every periodic evaluation) and finals.csv (every run's final evaluation) from the run folders; returns
    {config: {seed: record}} with the curve and the final numbers of each finished run."""
    tokens_per_step = args.batch * args.context
    data = {}
    with open(os.path.join(args.out, "runs.csv.partial"), "w", newline="") as f, \
            open(os.path.join(args.out, "finals.csv.partial"), "w", newline="") as g:
        w, wf = csv.writer(f), csv.writer(g)
        head = ["m", "n", "r", "ghc", "mtp", "frozen", "steps", "lr", "seed"]
        w.writerow(head + ["step", "tokens", "elapsed_s", "val_next", "val_next2"])
        wf.writerow(head + ["part", "match", "tokens", "train_flops", "elapsed_s", "load_before", "final_next",
                            "final_next2", "scored_tokens", "periodic_next", "periodic_next2"])
        for run in runs:
            if not finished(run):
                continue
            fin = read_json(os.path.join(run.dir, "final.json"))
            if fin is None:
                continue
            ident = [run.m, run.n, f"{run.n / run.m:g}", "static" if (run.m, run.n) == (1, 1) else "dynamic",
                     int(run.mtp), int(run.frozen), run.steps, f"{run.lr:g}", run.seed]
            curve = []
            for r in read_log(os.path.join(run.dir, "log.csv")):
                if r["val_next"] == "":
                    continue
                step = int(r["step"])
                row = (step * tokens_per_step, float(r["elapsed_s"]), float(r["val_next"]),
                       float(r["val_next2"]) if r["val_next2"] else None)
                curve.append(row)
                w.writerow(ident + [step, row[0], f"{row[1]:.3f}", row[2], "" if row[3] is None else row[3]])
            tokens = run.steps * tokens_per_step
            rec = dict(run=run, curve=curve, tokens=tokens, elapsed=curve[-1][1],
                       flops=train_flops_per_token(args, run.m, run.n, run.mtp) * tokens,
                       next=fin["val_next"], next2=fin.get("val_next2"), load=fin.get("load_before"))
            wf.writerow(ident + [run.part, run.match, tokens, f"{rec['flops']:.4e}", f"{rec['elapsed']:.3f}",
                                 "" if rec["load"] is None else f"{rec['load']:.2f}", f"{rec['next']:.6f}",
                                 "" if rec["next2"] is None else f"{rec['next2']:.6f}", fin["scored_tokens"],
                                 curve[-1][2], "" if curve[-1][3] is None else curve[-1][3]])
            data.setdefault(run.config, {})[run.seed] = rec
    os.replace(os.path.join(args.out, "runs.csv.partial"), os.path.join(args.out, "runs.csv"))
    os.replace(os.path.join(args.out, "finals.csv.partial"), os.path.join(args.out, "finals.csv"))
    return data


def fmt_gap(c):
    return f"{c['diff']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}]"


def analyse(args, runs, timing):
    data = collect(args, runs)
    lines = []
    out = lambda s="": lines.append(s)
    summary = {"configs": {}, "comparisons": {}, "fits": {}, "power": {}, "frontier": {}, "timing": timing}
    tps = args.batch * args.context

    def cfg(m, n, mtp=True, steps=None, lr=None, frozen=False):
        return (m, n, mtp, steps or args.steps, args.lr if lr is None else lr, frozen)

    def finals(c, key="next"):
        return [rec[key] for _, rec in sorted(data.get(c, {}).items()) if rec[key] is not None]

    for c, seeds in data.items():
        for key in ("next", "next2"):
            xs = finals(c, key)
            if xs:
                mu, sd = st.mean_sd(xs)
                summary["configs"].setdefault(label_of(c, args), {})[key] = dict(mean=mu, sd=sd, seeds=len(xs),
                                                                                  values=xs)

    out(f"# VWN scaling experiment: D = {args.width}, {args.layers} layers, {args.heads} heads, context {args.context}, "
        f"batch {args.batch}, reference run {args.steps} steps = {args.steps * tps} tokens")
    out()
    out("Losses are each run's **final evaluation on the whole validation split** (vwn-eval: every window of the "
        "split that fits without overlap, nats per byte), not the periodic 16-batch evaluation of the curves. "
        "Intervals are 95 %. Gap: the baseline's mean minus the shape's (positive: the shape is better).")
    out()

    # --- the main grid: seeds, gaps with intervals, pooled variance -------------------------------------------
    main = [cfg(m, n) for (m, n) in args.shapes if cfg(m, n) in data]
    base = cfg(1, 1)
    pooled = {}
    for key in ("next", "next2"):
        groups = [finals(c, key) for c in main if len(finals(c, key)) > 1]
        pooled[key] = st.pooled_sd(groups) if groups else (0.0, 0)
    summary["pooled_sd"] = {k: dict(sd=v[0], df=v[1]) for k, v in pooled.items()}
    if base in data:
        out("## The main grid (MTP on)")
        out()
        out("| shape | r | seeds | next-token (mean ± sd) | gap, pooled-variance CI | p | gap, Welch CI | p | "
            "next-2-token (mean ± sd) | gap, pooled-variance CI | p | gap, Welch CI | p |")
        out("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for c in main:
            m, n = c[0], c[1]
            cells = [f"({m},{n})", f"{n / m:g}", str(len(finals(c)))]
            for key in ("next", "next2"):
                xs, bs = finals(c, key), finals(base, key)
                mu, sd = st.mean_sd(xs)
                cells.append(f"{mu:.4f} ± {sd:.4f}")
                if c == base or len(xs) < 2 or len(bs) < 2:
                    cells += ["-", "-", "-", "-"]
                    continue
                p_ = st.pooled(bs, xs, *pooled[key])
                w_ = st.welch(bs, xs)
                summary["comparisons"][f"{label_of(c, args)} vs (1,1) {key}"] = dict(pooled=p_, welch=w_)
                cells += [fmt_gap(p_), f"{p_['p']:.2g}", fmt_gap(w_), f"{w_['p']:.2g}"]
            out("| " + " | ".join(cells) + " |")
        out()
        for key in ("next", "next2"):
            sd, df = pooled[key]
            out(f"Pooled seed standard deviation ({'next' if key == 'next' else 'next-2'}-token, the {len(main)} "
                f"configurations of this table): " + (f"{sd:.4f} on {df} degrees of freedom." if df > 0 else
                                                      "none yet (it needs two seeds of a configuration)."))
        out()
        most = max(len(finals(c)) for c in main)
        if most > 1:
            out("The pooled interval assumes one seed variance for every shape (a shape's seed spread comes from the "
                f"batch order and the initialisation, the same sources for every shape); with {most} seeds a shape's "
                f"own standard deviation is uncertain by about ±{100 / math.sqrt(2 * (most - 1)):.0f} %, so the "
                "pooled one, on more degrees of freedom, is the better estimate. Welch's interval, which does not "
                "assume it, is beside it.")
            out()

    # --- neighbouring r, the slope per doubling, power -----------------------------------------------------------
    series = [c for c in main if c[0] == 8]
    series.sort(key=lambda c: c[1])
    if len(series) >= 2:
        out("## Virtual width at m = 8: neighbours, slope per doubling of r")
        out()
        out("| comparison | next-token gap, pooled CI | p | seeds for 80 % power at this gap | next-2-token gap, pooled CI "
            "| p | seeds for 80 % power |")
        out("|---|---|---|---|---|---|---|")
        for a, b in zip(series, series[1:]):
            cells = [f"({a[0]},{a[1]}) - ({b[0]},{b[1]})"]
            for key in ("next", "next2"):
                xa, xb = finals(a, key), finals(b, key)
                if len(xa) < 2 or len(xb) < 2:
                    cells += ["-", "-", "-"]
                    continue
                p_ = st.pooled(xa, xb, *pooled[key])
                need = st.seeds_for_power(p_["diff"], pooled[key][0])
                summary["comparisons"][f"{label_of(a, args)} vs {label_of(b, args)} {key}"] = dict(pooled=p_)
                summary["power"][f"{label_of(a, args)} vs {label_of(b, args)} {key}"] = need
                cells += [fmt_gap(p_), f"{p_['p']:.2g}", str(need) if need else "> 100000"]
            out("| " + " | ".join(cells) + " |")
        out()
        for key in ("next", "next2"):
            pts = [(math.log2(c[1] / c[0]), finals(c, key)) for c in series if finals(c, key)]
            if len(pts) < 2:
                continue
            xs = [x for x, _ in pts]
            ys = [statistics.mean(v) for _, v in pts]
            f = st.fit_line(xs, ys)
            have_sd = pooled[key][1] > 0
            se_seeds = st.slope_se_from_seeds(xs, [len(v) for _, v in pts], pooled[key][0]) if have_sd else None
            tq = st.t_ppf(0.975, pooled[key][1]) if have_sd else None
            slope = -f["slope"]  # loss reduction per doubling
            summary["fits"][key] = dict(reduction_per_doubling=slope, intercept=f["intercept"], r2=f["r2"],
                                        se_seeds=se_seeds, df_seeds=pooled[key][1], se_residual=f["se"],
                                        df_residual=f["df"], points=[dict(log2r=x, mean=y) for x, y in zip(xs, ys)])
            name = "next-token" if key == "next" else "next-2-token"
            resid = (f"; from the residuals of the {len(xs)} means (seed noise and departures from a line): "
                     f"{f['se']:.4f} on {f['df']} df" if f["se"] is not None else "")
            noise = (f"standard error {se_seeds:.4f} from the seed noise ({pooled[key][1]} df; 95 % interval "
                     f"[{slope - tq * se_seeds:+.4f}, {slope + tq * se_seeds:+.4f}])" if have_sd else
                     "no standard error from the seed noise yet (one seed per shape)")
            out(f"Fit ({name}, m = 8, r = {', '.join(f'{2 ** x:g}' for x in xs)}, MTP on): final loss = "
                f"{f['intercept']:.4f} {f['slope']:+.4f} log2(r), R^2 = {f['r2']:.3f}: a reduction of {slope:+.4f} per "
                f"doubling of r, {noise}{resid}. Table 1's reductions imply {PAPER_SLOPE[key]:.4f} per doubling.")
            # Seeds per shape for the slope's interval to exclude zero (80 % power) if the true slope were the paper's.
            sxx = sum((x - statistics.mean(xs)) ** 2 for x in xs)
            k = len(xs)
            sd_p = pooled[key][0]

            def enough(s, k=k, sxx=sxx, sd_p=sd_p, key=key):
                df = k * (s - 1)
                se = sd_p / math.sqrt(s * sxx)
                return 1 - st.t_cdf(st.t_ppf(0.975, df) - PAPER_SLOPE[key] / se, df) >= 0.8

            need = st.smallest(enough, 100000) if sd_p > 0 else None
            summary["power"][f"slope {key} at the paper's value"] = need
            if have_sd:
                out(f"  Seeds per shape for 80 % power to tell the paper's {PAPER_SLOPE[key]:.4f} per doubling from zero "
                    f"with these {k} shapes at the pooled sd: {need if need else 'more than 100000'}.")
        out()
        out(PAPER + ".")
        out()

    # --- side runs: (2,3), MTP off -----------------------------------------------------------------------------
    side = [cfg(m, n) for (m, n) in args.practical_shapes] + [cfg(m, n, mtp=False) for (m, n) in args.no_mtp_shapes]
    side = [c for c in side if c in data]
    if side:
        out("## Side runs")
        out()
        out("| configuration | seeds | next-token (mean ± sd) | against | gap, Welch CI | p |")
        out("|---|---|---|---|---|---|")
        for c in side:
            ref = cfg(1, 1, mtp=c[2])
            xs, bs = finals(c), finals(ref)
            mu, sd = st.mean_sd(xs)
            cells = [label_of(c, args), str(len(xs)), f"{mu:.4f} ± {sd:.4f}"]
            if c != ref and len(xs) > 1 and len(bs) > 1:
                w_ = st.welch(bs, xs)
                summary["comparisons"][f"{label_of(c, args)} vs {label_of(ref, args)} next"] = dict(welch=w_)
                cells += [label_of(ref, args), fmt_gap(w_), f"{w_['p']:.2g}"]
            else:
                cells += ["-", "-", "-"]
            out("| " + " | ".join(cells) + " |")
        # MTP's interaction with VWN: (gap with MTP) - (gap without), the shapes of the no-MTP list.
        for (m, n) in args.no_mtp_shapes:
            if (m, n) == (1, 1):
                continue
            on, off, b_on, b_off = cfg(m, n), cfg(m, n, mtp=False), cfg(1, 1), cfg(1, 1, mtp=False)
            groups = [finals(c) for c in (on, off, b_on, b_off)]
            if all(len(g) > 1 for g in groups):
                inter = (statistics.mean(groups[2]) - statistics.mean(groups[0])) - \
                        (statistics.mean(groups[3]) - statistics.mean(groups[1]))
                se = math.sqrt(sum(statistics.variance(g) / len(g) for g in groups))
                df = sum(len(g) - 1 for g in groups)
                p = st.t_sf2(inter / se, df) if se > 0 else 0.0
                summary["comparisons"][f"MTP interaction ({m},{n}) next"] = dict(diff=inter, se=se, df=df, p=p)
                out()
                out(f"MTP and VWN ({m},{n}), next-token: (gap with MTP) - (gap without) = {inter:+.4f} ± {se:.4f} "
                    f"(standard error, {df} df), p = {p:.2g}" + (": not distinguishable from no interaction at "
                                                                 "these seeds" if p > 0.05 else ""))
        out()

    # --- controls ---------------------------------------------------------------------------------------------
    frozen, trained = cfg(1, 1, frozen=True), cfg(1, 1)
    if frozen in data or any(cfg(m, n, lr=lr) in data for lr in args.lr_sweep for (m, n) in args.lr_shapes):
        out("## Controls")
        out()
    if frozen in data:
        xs, bs = finals(frozen), finals(trained)
        mu, sd = st.mean_sd(xs)
        out(f"Baseline with its GHC scalars frozen at the residual values (`--freeze-ghc`: the plain pre-norm "
            f"transformer), {len(xs)} seed{'s' if len(xs) > 1 else ''}: next-token {mu:.4f} ± {sd:.4f}.")
        if len(xs) > 1 and len(bs) > 1:
            w_ = st.welch(xs, bs)
            summary["comparisons"]["(1,1) frozen GHC vs (1,1) next"] = dict(welch=w_)
            out(f"  Trained scalars minus frozen (frozen mean minus trained mean): {fmt_gap(w_)}, p = {w_['p']:.2g}.")
            for c in main:
                if c[0] == 8 and len(finals(c)) > 1:
                    w2 = st.welch(xs, finals(c))
                    summary["comparisons"][f"{label_of(c, args)} vs (1,1) frozen GHC next"] = dict(welch=w2)
                    out(f"  {label_of(c, args)} against the frozen baseline: gap {fmt_gap(w2)}, p = {w2['p']:.2g}.")
        out()
    lr_rows = []
    for (m, n) in args.lr_shapes:
        for lr in sorted(set(args.lr_sweep + [args.lr])):
            c = cfg(m, n, lr=lr)
            recs = data.get(c, {})
            if args.lr_seed in recs:
                lr_rows.append(((m, n), lr, recs[args.lr_seed]["next"], recs[args.lr_seed]["next2"]))
    if any(lr != args.lr for _, lr, _, _ in lr_rows):
        out(f"Learning-rate sweep, seed {args.lr_seed} (the grid uses lr {args.lr:g}):")
        out()
        out("| shape | lr | next-token | next-2-token |")
        out("|---|---|---|---|")
        for (m, n), lr, a, b in lr_rows:
            out(f"| ({m},{n}) | {lr:g} | {a:.4f} | {'-' if b is None else f'{b:.4f}'} |")
        summary["lr_sweep"] = [dict(m=s[0], n=s[1], lr=lr, next=a, next2=b) for s, lr, a, b in lr_rows]
        out()

    # --- frontier ---------------------------------------------------------------------------------------------
    front = []
    for c, seeds in data.items():
        m, n, mtp, steps, lr, fz = c
        if not mtp or lr != args.lr or fz:
            continue
        if (m, n) == (1, 1) or (m, n) in args.frontier_shapes:
            xs = finals(c)
            recs = list(seeds.values())
            sec = timing.get(f"{m},{n}") if timing else None
            front.append(dict(m=m, n=n, steps=steps, seeds=len(xs), next=statistics.mean(xs),
                              sd=st.mean_sd(xs)[1], flops=recs[0]["flops"], tokens=recs[0]["tokens"],
                              seconds=steps * sec if sec else None,
                              measured=statistics.mean(r["elapsed"] for r in recs)))
    front.sort(key=lambda p: (p["n"] / p["m"], p["m"], p["steps"]))
    summary["frontier"] = front
    if front and any(p["steps"] != args.steps for p in front):
        out("## Compute-matched frontier (MTP on, every point a complete run with its own warm-up and cosine schedule)")
        out()
        out("| shape | steps | seeds | tokens | counted training FLOPs | time at the quiet seconds per step | "
            "measured training time (mean) | next-token (mean ± sd) |")
        out("|---|---|---|---|---|---|---|---|")
        for p in front:
            out(f"| ({p['m']},{p['n']}) | {p['steps']} | {p['seeds']} | {p['tokens']} | {p['flops']:.3e} | "
                + (f"{p['seconds']:.3g} s" if p["seconds"] else "-") + f" | {p['measured']:.3g} s | "
                f"{p['next']:.4f} ± {p['sd']:.4f} |")
        out()
        if timing:
            out(f"Quiet seconds per step (timing.json, {timing['date']}, {timing['steps']} steps each, the first fifth "
                "left out, one after the other with nothing else running): " +
                ", ".join(f"({k}) {v * 1000:.1f} ms" for k, v in timing.items() if "," in k and isinstance(v, float)) +
                ". The measured times of the table include whatever shared the machine during each run (finals.csv "
                "records the load average before each).")
            out()
        # At the baseline's reference budget: each VWN shape's FLOP- and time-matched runs against the baseline.
        base_pts = [p for p in front if (p["m"], p["n"]) == (1, 1)]
        ref = next((p for p in base_pts if p["steps"] == args.steps), None)
        if ref:
            for p in front:
                if (p["m"], p["n"]) == (1, 1) or p["steps"] == args.steps:
                    continue
                c = cfg(p["m"], p["n"], steps=p["steps"])
                w_ = st.welch(finals(base), finals(c)) if len(finals(c)) > 1 and len(finals(base)) > 1 else None
                kind = [r.match for r in runs if r.config == c]
                summary["comparisons"][f"{label_of(c, args)} vs (1,1) next"] = dict(welch=w_, match=kind)
                if w_:
                    out(f"- ({p['m']},{p['n']}) at {p['steps']} steps ({'/'.join(kind) or '?'}-matched to the baseline's "
                        f"{args.steps}): gap {fmt_gap(w_)}, p = {w_['p']:.2g}.")
            out()

    text = "\n".join(lines) + "\n"
    for name, content in (("summary.md", text), ("summary.json", None)):
        path = os.path.join(args.out, name)
        if content is None:
            write_json(path, summary)
        else:
            with open(path + ".partial", "w") as f:
                f.write(content)
            os.replace(path + ".partial", path)
    print(text)
    plot(args, data, summary, cfg, finals)


# ----------------------------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------------------------

def _terminal(w, h):
    r = subprocess.run(["gnuplot", "-e", "set terminal"], capture_output=True, text=True)
    return f"set terminal pngcairo size {w},{h}" if "pngcairo" in (r.stdout + r.stderr) else f"set terminal png size {w},{h}"


def _gnuplot(out, name, lines):
    script = os.path.join(out, name + ".gp")
    with open(script, "w") as f:
        f.write("\n".join(lines) + "\n")
    r = subprocess.run(["gnuplot", script], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"scaling: gnuplot failed on {script}: {r.stderr.strip()}")


def plot(args, data, summary, cfg, finals):
    if shutil.which("gnuplot") is None:
        print("scaling: gnuplot not found: no figures (install gnuplot-nox)")
        return
    main = [cfg(m, n) for (m, n) in args.shapes if cfg(m, n) in data]
    # Curves: the mean over seeds of the periodic evaluation, with a band of one seed standard deviation.
    for which, key, title in ((2, "next", "next-token"), (3, "next2", "next-2-token")):
        gp = [_terminal(1000, 650), f'set output "{os.path.join(args.out, "curves_" + key + ".png")}"',
              f'set title "validation {title} loss (periodic evaluation), mean over seeds, band: ± 1 seed sd" noenhanced',
              'set xlabel "training tokens"', 'set ylabel "loss (nats per byte)"', 'set grid', 'set key top right',
              'set style fill transparent solid 0.15 noborder']
        series = []
        for i, c in enumerate(main):
            curves = [rec["curve"] for rec in data[c].values()]
            k = min(len(cv) for cv in curves)
            pts = []
            for j in range(k):
                vals = [cv[j][which] for cv in curves]
                mu, sd = st.mean_sd(vals)
                pts.append((curves[0][j][0], mu, sd))
            gp.append(f"$c{i} << EOD\n" + "\n".join(f"{x} {y} {s}" for x, y, s in pts) + "\nEOD")
            series.append(f'$c{i} using 1:($2-$3):($2+$3) with filledcurves lc {i + 1} notitle')
            series.append(f'$c{i} using 1:2 with linespoints lc {i + 1} pt 7 ps 0.6 title "({c[0]},{c[1]}) r={c[1] / c[0]:g}, '
                          f'{len(curves)} seeds"')
        gp.append("plot " + ", ".join(series))
        _gnuplot(args.out, "curves_" + key, gp)
        # Final loss against log2(r) at m = 8 with 95 % intervals of the mean, the baseline apart, and the fit.
        pts, base = [], None
        for c in main:
            xs = finals(c, key)
            if len(xs) < 1:
                continue
            mu, sd = st.mean_sd(xs)
            ci = st.t_ppf(0.975, len(xs) - 1) * sd / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
            if (c[0], c[1]) == (1, 1):
                base = (mu, ci)
            elif c[0] == 8:
                pts.append((math.log2(c[1] / c[0]), mu, ci))
        gp = [_terminal(900, 600), f'set output "{os.path.join(args.out, "scaling_" + key + ".png")}"',
              f'set title "final {title} loss (whole validation split) against log2(r), m = 8; 95 % intervals of the mean" noenhanced',
              'set xlabel "log2(r)"', 'set ylabel "loss (nats per byte)"', 'set grid', 'set key top right',
              'set offsets 0.3, 0.3, graph 0.05, graph 0.05',
              "$p << EOD\n" + "\n".join(f"{x} {y} {e}" for x, y, e in pts) + "\nEOD"]
        cmd = 'plot $p using 1:2:3 with yerrorbars pt 7 title "(8, 8r), mean over seeds"'
        if base:
            gp.append(f"$b << EOD\n-0.15 {base[0]} {base[1]}\nEOD")
            cmd += ', $b using 1:2:3 with yerrorbars pt 5 title "(1,1) baseline"'
        fit = summary["fits"].get(key)
        if fit and pts:
            gp.append(f"f(x) = {fit['intercept']} - {fit['reduction_per_doubling']} * x")
            cmd += (f', [{min(x for x, _, _ in pts)}:{max(x for x, _, _ in pts)}] f(x) title "fit: '
                    f'{fit["reduction_per_doubling"]:+.4f} ± {fit["se_seeds"]:.4f} per doubling"')
        gp.append(cmd)
        _gnuplot(args.out, "scaling_" + key, gp)
    # Frontier: final loss against counted FLOPs and against time, one curve per shape.
    front = summary["frontier"]
    if front and any(p["steps"] != args.steps for p in front):
        for fname, field, xlabel in (("frontier_flops", "flops", "counted training FLOPs"),
                                     ("frontier_time", "seconds", "training time at the quiet seconds per step (s)")):
            gp = [_terminal(1000, 650), f'set output "{os.path.join(args.out, fname + ".png")}"',
                  f'set title "final next-token loss (whole validation split) against {xlabel}; bars: seed sd" noenhanced',
                  f'set xlabel "{xlabel}"', 'set ylabel "loss (nats per byte)"', 'set grid', 'set logscale x',
                  'set key top right']
            series = []
            shapes = sorted({(p["m"], p["n"]) for p in front}, key=lambda s: (s[1] / s[0], s[0]))
            for i, s in enumerate(shapes):
                pts = sorted((p[field], p["next"], p["sd"]) for p in front if (p["m"], p["n"]) == s and p[field])
                if not pts:
                    continue
                gp.append(f"$f{i} << EOD\n" + "\n".join(f"{x} {y} {e}" for x, y, e in pts) + "\nEOD")
                series.append(f'$f{i} using 1:2:3 with yerrorlines lc {i + 1} pt 7 title "({s[0]},{s[1]})"')
            if series:
                gp.append("plot " + ", ".join(series))
                _gnuplot(args.out, fname, gp)


def connectivity_maps(args, program):
    """The depth-connectivity maps (vwn-connectivity) of the first seed of the baseline and of each m = 8 shape, and
    each drawn again on one colour scale as each sub-layer input's shares (PREFIX-shares.csv, .png): every input
    passes an RMSNorm, so only the ratio of its paths matters, not their common scale."""
    if not os.access(program, os.X_OK):
        print(f"scaling: {program} not built: no connectivity maps")
        return
    prefixes = []
    for (m, n) in args.shapes:
        if (m, n) != (1, 1) and m != 8:
            continue
        run = Run(args, m, n, args.seeds[0])
        checkpoint = os.path.join(run.dir, "checkpoint.safetensors")
        if not finished(run) or not os.path.exists(checkpoint):
            continue
        prefix = os.path.join(args.out, f"connectivity-{run.name}")
        if not os.path.exists(prefix + ".csv"):
            r = subprocess.run([program, "--checkpoint", checkpoint, "--text", args.data, "--tokens", "4096",
                                "--out", prefix], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"scaling: vwn-connectivity failed on {checkpoint}: {r.stderr.strip()}")
        prefixes.append(prefix)
    if shutil.which("gnuplot") is None:
        return
    for prefix in prefixes:
        path = prefix + ".csv"
        if not os.path.exists(path):
            continue
        rows = list(csv.DictReader(open(path)))
        # Paths only: the per-layer rows (embedding_share, the Amax gains) name no source sub-layer.
        rows = [r for r in rows if r["source"] == "embedding" or r["source"].isdigit()]
        totals = {}
        for r in rows:
            totals[r["layer"]] = totals.get(r["layer"], 0.0) + float(r["strength"])
        names = {}
        cells = []
        for r in rows:
            src = -1 if r["source"] == "embedding" else int(r["source"])
            names[int(r["layer"])] = r["layer_name"]
            cells.append((src, int(r["layer"]), float(r["strength"]) / totals[r["layer"]]))
        with open(prefix + "-shares.csv.partial", "w") as f:
            f.write("layer,source,share\n" + "".join(f"{l},{'embedding' if s < 0 else s},{v:.6f}\n" for s, l, v in cells))
        os.replace(prefix + "-shares.csv.partial", prefix + "-shares.csv")
        k = max(names) + 1
        gp = [_terminal(800, 650), f'set output "{prefix}-shares.png"',
              f'set title "{os.path.basename(prefix)}: share of each path in sub-layer l\'s input (rows sum to 1)" noenhanced',
              'set xlabel "source (-1: embedding)"', 'set ylabel "sub-layer l (input)"', 'set cbrange [0:1]',
              'set palette defined (0 "white", 0.25 "#9ecae1", 0.5 "#3182bd", 1 "#08306b")',
              f'set xrange [-1.5:{k - 0.5}]', f'set yrange [-0.5:{k - 0.5}]', 'set xtics 1', 'set ytics 1',
              "$m << EOD\n" + "\n".join(f"{s} {l} {v}" for s, l, v in cells) + "\nEOD",
              'plot $m using 1:2:(0.5):(0.5):3 with boxxyerror fs solid lc palette notitle, '
              '$m using 1:2:(sprintf("%.2f", $3)) with labels font ",8" notitle']
        _gnuplot(os.path.dirname(prefix) or ".", os.path.basename(prefix) + "-shares", gp)


# ----------------------------------------------------------------------------------------------------------------

def main(argv):
    args = parse_args(argv)
    programs = {k: os.path.join(args.build, "examples", f"vwn-{k}") for k in ("train", "eval", "connectivity")}
    for k, p in programs.items():
        if k == "connectivity":
            continue
        if not args.analyse_only and not os.access(p, os.X_OK):
            sys.exit(f"scaling: {p} not found: build it first (scripts/scaling.sh does)")
    if not os.path.exists(args.data):
        sys.exit(f"scaling: --data {args.data} does not exist (scripts/get-brown.sh fetches the default corpus)")
    os.makedirs(args.out, exist_ok=True)
    grid = {k: getattr(args, k) for k in BACKBONE}
    grid["data"] = os.path.abspath(args.data)
    settings = os.path.join(args.out, "grid.json")
    before = read_json(settings)
    if before is not None and before != grid:
        sys.exit(f"scaling: {args.out} holds an experiment with another backbone or data ({settings}: {before}); use "
                 "another --out or remove it")
    if before is None:
        write_json(settings, grid)
    timing = read_json(os.path.join(args.out, "timing.json"))
    t0 = time.time()
    if not args.analyse_only:
        runs = plan_runs(args, timing)
        train(args, runs, programs)
        if "frontier" in args.parts and not timing:
            timing = measure_timing(args, programs)
            runs = plan_runs(args, timing)
            train(args, runs, programs)
        print(f"scaling: trained; wall time of this invocation {(time.time() - t0) / 60:.1f} min", flush=True)
    # The analysis reads every run of the whole plan that is finished, whichever parts this invocation trained.
    full = argparse.Namespace(**vars(args))
    full.parts = list(PARTS)
    analyse(args, plan_runs(full, timing), timing)
    connectivity_maps(args, programs["connectivity"])


if __name__ == "__main__":
    main(sys.argv[1:])
