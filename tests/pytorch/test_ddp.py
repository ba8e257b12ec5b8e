"""vwn_torch under torch.distributed: a small over-width language model trained with DistributedDataParallel on the
gloo back end, 2 processes on this machine (loopback), against the same model trained in one process on the whole
global batch. DDP averages the ranks' gradients, so with the loss a mean over each rank's half of the batch the
averaged gradient is the one-process gradient of the mean loss: the parameters must agree after every step (to
float64 round-off: the two halves are summed in another order than the whole batch).

Run by ctest with PYTHONPATH=<build>/python; prints the largest difference.
"""

import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vwn_torch

STEPS, BATCH, CONTEXT, VOCAB, M, N, DIM = 4, 4, 6, 23, 2, 3, 8


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = vwn_torch.OverWidthEmbedding(M, N, VOCAB, DIM, seed=1, dtype=torch.float64)
        self.ghc = vwn_torch.DGHC(M, N, DIM, dtype=torch.float64)
        self.mlp = torch.nn.Linear(DIM, DIM).double()
        self.head = vwn_torch.ReduceHead(M, N, DIM, seed=2, dtype=torch.float64)
        self.out = torch.nn.Linear(DIM, VOCAB).double()

    def forward(self, tokens):
        H = self.embed(tokens)
        H = self.ghc(H, lambda X: torch.tanh(self.mlp(X)))
        return self.out(self.head(H))


def make_model():
    torch.manual_seed(0)
    model = Model()
    with torch.no_grad():  # away from the initial values, where the dynamic path is dead
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, dtype=p.dtype))
    return model


def batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (BATCH, CONTEXT + 1), generator=g) for _ in range(STEPS)]


def train(model, data, rank=0, ranks=1):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    per = BATCH // ranks
    for batch in data:
        part = batch[rank * per:(rank + 1) * per]
        logits = model(part[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), part[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def worker(rank, ranks, store, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=ranks)
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    params = train(model, batches(), rank, ranks)
    if rank == 0:
        torch.save({k.removeprefix("module."): v for k, v in params.items()}, out)
    dist.destroy_process_group()


def main():
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    torch.set_num_threads(1)
    want = train(make_model(), batches())
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "params.pt")
        mp.spawn(worker, args=(2, os.path.join(d, "store"), out), nprocs=2, join=True)
        got = torch.load(out)
    worst = 0.0
    for k, w in want.items():
        rel = ((got[k] - w).abs().max() / max(1.0, w.abs().max().item())).item()
        worst = max(worst, rel)
    # float64: the gradient of the mean over 4 sequences is summed as (a + b) / 2 of two means instead of one mean;
    # the difference is round-off, ~1e-16 relative per step, amplified a little by AdamW's division by sqrt(v).
    tolerance = 1e-10
    print(f"DDP (gloo, 2 processes) vs one process, {STEPS} AdamW steps: largest relative parameter difference "
          f"{worst:.3e} (tolerance {tolerance:g})")
    if not worst <= tolerance:
        print("FAILED: the DDP run and the one-process run disagree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
