"""Forward + backward of one DGHC sub-layer on the CPU: vwn's operator (vwn_torch.DGHC) against the same math in
PyTorch operations (what a PyTorch user writes today: RMSNorm, projection, tanh, two batched products), float32,
same threads, in one process. Prints a Markdown table.

Built for a shared, noisy machine: each round times `repeat` calls of vwn, then `repeat` calls of PyTorch, for every
configuration; a side's time in a round is its median call, the table gives the median over rounds and the median
of the per-round ratios.

    PYTHONPATH=<build>/python python3 bench/torch_ghc_vs_torch.py [--threads 2] [--rounds 5] [--repeat 5]
        [--dim 1024] [--tokens 4096] [--shapes 2,3 4,8]

The backbone is the identity (Z = X): the table is the cost of the width connection alone.
"""

import argparse
import math
import os
import statistics
import time


def _blas_core():
    """OpenBLAS picks its kernels from the CPU model it recognises and falls back to SSE3 ones on virtual machines
    that report a generic model: name the kernel set the CPU's flags allow (as bench/train_step_vs_torch.sh does),
    unless OPENBLAS_CORETYPE is set already. Must run before torch is imported."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return os.environ["OPENBLAS_CORETYPE"] + " (given)"
    flags = set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    elif {"avx2", "fma"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"
    return os.environ.get("OPENBLAS_CORETYPE", "OpenBLAS's own choice")


BLAS_CORE = _blas_core()

import torch  # noqa: E402

import vwn_torch  # noqa: E402

EPS = 1e-6


def torch_dghc(H, p, m, n):
    """DGHC in PyTorch operations, autograd for the backward. H: [T, n db]."""
    T = H.shape[0]
    db = H.shape[1] // n
    Ht = H.view(T, n, db)
    u = Ht * torch.rsqrt(Ht.pow(2).mean(-1, keepdim=True) + EPS)
    P = torch.tanh((u * p["g"]) @ torch.cat([p["W_alpha"], p["W_beta"]], 1) * (1.0 / math.sqrt(db)))
    a = p["S_alpha"] * P[..., : m + n] + p["alpha"]
    b = p["S_beta"] * P[..., m + n:] + p["beta"]
    mix = torch.bmm(a.transpose(1, 2), Ht)             # [T, m+n, db]
    X = mix[:, :m].reshape(T, m * db)
    C = mix[:, m:]
    Z = X                                              # identity backbone
    return (torch.bmm(b, Z.view(T, m, db)) + C).reshape(T, n * db)


def _cpu_capability():
    for line in torch.__config__.show().splitlines():
        if "CPU capability usage" in line:
            return line.split(":", 1)[1].strip()
    return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--shapes", nargs="+", default=["2,3", "4,8"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    configs = []
    for s in args.shapes:
        m, n = (int(v) for v in s.split(","))
        ghc = vwn_torch.DGHC(m, n, args.dim)
        with torch.no_grad():
            for q in ghc.parameters():
                q.add_(0.1 * torch.randn_like(q))
        ref = {k: v.detach().clone().requires_grad_(True) for k, v in ghc.named_parameters()}
        Dw = n * args.dim // m
        H = torch.randn(args.tokens, Dw)
        G = torch.randn(args.tokens, Dw)
        Hv, Ht = H.clone().requires_grad_(True), H.clone().requires_grad_(True)

        def vwn_call(ghc=ghc, Hv=Hv, G=G):
            ghc.zero_grad(set_to_none=True)
            Hv.grad = None
            ghc(Hv, lambda X: X).backward(G)

        def torch_call(ref=ref, Ht=Ht, G=G, m=m, n=n):
            for v in ref.values():
                v.grad = None
            Ht.grad = None
            torch_dghc(Ht, ref, m, n).backward(G)

        # Same numbers first (a benchmark of a wrong operator means nothing).
        vwn_call()
        torch_call()
        err = (Hv.grad - Ht.grad).abs().max().item() / Ht.grad.abs().max().item()
        assert err < 1e-4, f"({m},{n}): dH differs from PyTorch's by {err:.2e} (relative)"
        configs.append((f"({m},{n})", vwn_call, torch_call))

    times = {name: {"vwn": [], "torch": []} for name, *_ in configs}
    ratios = {name: [] for name, *_ in configs}
    for r in range(args.rounds):
        for name, vwn_call, torch_call in configs:
            side = {}
            for label, fn in (("vwn", vwn_call), ("torch", torch_call)):
                fn()  # warm-up
                ts = []
                for _ in range(args.repeat):
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
                side[label] = statistics.median(ts)
                times[name][label].append(side[label])
            ratios[name].append(side["torch"] / side["vwn"])

    print(f"DGHC forward + backward, D = {args.dim}, {args.tokens} tokens, float32, {args.threads} thread(s), "
          f"torch {torch.__version__} (OpenBLAS kernels {BLAS_CORE}, ATen CPU capability "
          f"{_cpu_capability()}), median of {args.rounds} rounds x {args.repeat} calls")
    print()
    print("| shape | vwn_torch.DGHC (ms) | PyTorch ops (ms) | PyTorch / vwn |")
    print("|---|---|---|---|")
    for name, *_ in configs:
        v = statistics.median(times[name]["vwn"])
        t = statistics.median(times[name]["torch"])
        print(f"| {name} | {v * 1e3:.1f} | {t * 1e3:.1f} | {statistics.median(ratios[name]):.2f}x |")


if __name__ == "__main__":
    main()
