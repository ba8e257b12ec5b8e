#!/usr/bin/env python3
"""One training step (forward, backward, AdamW update) of the reference transformer in PyTorch, float32,
for the same shapes as bench/bench_train_step.cpp: D = 256 and 512, 4 layers, heads of 64, context 256,
batch 4; (1,1) without MTP, (2,3) dynamic without and with MTP, (8,32) dynamic with MTP.

The model is tests/reference/model_reference.py (the independent implementation the C++ model is checked
against, written in batched PyTorch ops in the style of the paper's Algorithm 2), with its sizes set here and
F.cross_entropy for the loss. Run with Debian's PyTorch and OpenBLAS (libopenblas0-pthread):

    /usr/bin/python3 bench/train_step_torch.py --threads 2

Prints one JSON object per configuration: {"name", "ms_per_step", "steps_ms", "loss"} (the median of --repeat
steps after a warm-up step, and every step's time). --only 'NAME[;NAME...]' runs just those configurations (names
as printed, e.g. "BM_train_step<2, 3, true>/256/0"), so that a driver can alternate them with the C++ side.
"""
import argparse
import json
import pathlib
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "reference"))
import model_reference as mr  # noqa: E402

CONFIGS = [  # name as in bench_train_step, (m, n), dynamic, mtp
    ("BM_train_step<1, 1, false>/{D}/0", (1, 1), False, False),
    ("BM_train_step<2, 3, true>/{D}/0", (2, 3), True, False),
    ("BM_train_step<2, 3, true>/{D}/1", (2, 3), True, True),
    ("BM_train_step<8, 32, true>/{D}/1", (8, 32), True, True),
]


def rotary_float32(x, T, hd):
    """model_reference.rotary computes its angles in float64; here in the model's dtype."""
    half = hd // 2
    freq = mr.ROPE_BASE ** (-2.0 * torch.arange(half, dtype=x.dtype) / hd)
    angle = torch.arange(T, dtype=x.dtype)[:, None] * freq[None, :]
    cos, sin = torch.cos(angle)[None, :, None, :], torch.sin(angle)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--widths", default="256,512")
    ap.add_argument("--only", default="", help="names separated by ';' (they contain commas)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(";")))
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    mr.cross_entropy = lambda logits, targets: F.cross_entropy(logits, targets)
    mr.rotary = rotary_float32
    mr.LAYERS, mr.TOKENS, mr.BATCH, mr.VOCAB = 4, 256, 4, 256
    widths = {int(w) for w in args.widths.split(",")} | {int(n.split("/")[1]) for n in only}
    for D in sorted(widths):
        mr.WIDTH, mr.HEADS, mr.FFN = D, D // 64, ((8 * D // 3 + 7) // 8) * 8
        for name, (m, n), dynamic, mtp in CONFIGS:
            if only and name.format(D=D) not in only:
                continue
            s = mr.Shape(m, n, dynamic, mtp, False)
            torch.manual_seed(0)
            # As the C++ model starts: matrices ~ N(0, 0.02^2), norm weights 1, GHC at the paper's init.
            params = {}
            for k, v in mr.random_parameters(s).items():
                leaf = k.rsplit(".", 1)[1]
                params[k] = torch.ones_like(v) if leaf in ("w", "gn_weight") else \
                    torch.zeros_like(v) if leaf == "gn_bias" else v / 0.3 * 0.02
            params = {k: v.clone().requires_grad_(True) for k, v in mr.init_ghc_parameters(s, params).items()}
            decay = {k: d for k, _, d in mr.parameter_list(s)}
            opt = torch.optim.AdamW(
                [{"params": [v for k, v in params.items() if decay[k]], "weight_decay": 0.1},
                 {"params": [v for k, v in params.items() if not decay[k]], "weight_decay": 0.0}],
                lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
            batch = mr.make_batch()
            times = []
            for i in range(args.repeat + 1):
                t0 = time.perf_counter()
                opt.zero_grad()
                total = mr.forward(params, batch, s, mr.TOKENS)[0]
                total.backward()
                opt.step()
                if i > 0:  # the first step is the warm-up
                    times.append(time.perf_counter() - t0)
            print(json.dumps({"name": name.format(D=D), "ms_per_step": 1e3 * statistics.median(times),
                              "steps_ms": [1e3 * t for t in times], "loss": float(total)}), flush=True)


if __name__ == "__main__":
    main()
