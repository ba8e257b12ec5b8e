"""vwn_torch under torch.distributed: a small over-width byte language model trained with DistributedDataParallel on the
gloo back end, 2 processes on this machine, against the same model trained in one process with the global batch in 2
micro-batches (gradient accumulation). DDP divides each rank's gradient by the number of ranks and sums them, g0/2 +
g1/2; one process accumulates g0 + g1 in .grad and divides by 2: the same floats (halving is exact), so the
parameters agree bit for bit after every step. (FSDP is not offered: see docs/distributed.md.)

    PYTHONPATH=build/python python3 examples/pytorch/ddp.py [TEXT_FILE] [--steps N]   (default: README.md, 30 steps)

Exit status 1 when the two runs differ.
"""
import argparse
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import vwn_torch

M, N, DIM, VOCAB, CONTEXT, BATCH = 2, 3, 32, 256, 32, 8


class ByteModel(torch.nn.Module):
    """Bytes -> over-width embedding -> two DGHC sub-layers around MLPs -> reduce head -> logits."""

    def __init__(self):
        super().__init__()
        self.embed = vwn_torch.OverWidthEmbedding(M, N, VOCAB, DIM, seed=1)
        self.ghc1, self.ghc2 = vwn_torch.DGHC(M, N, DIM), vwn_torch.DGHC(M, N, DIM)
        self.mlp1, self.mlp2 = torch.nn.Linear(DIM, DIM), torch.nn.Linear(DIM, DIM)
        self.head = vwn_torch.ReduceHead(M, N, DIM, seed=2)
        self.out = torch.nn.Linear(DIM, VOCAB)

    def forward(self, tokens):
        H = self.embed(tokens)
        H = self.ghc1(H, lambda X: torch.nn.functional.gelu(self.mlp1(X)))
        H = self.ghc2(H, lambda X: torch.nn.functional.gelu(self.mlp2(X)))
        return self.out(self.head(H))


def make_model():
    torch.manual_seed(0)
    return ByteModel()


def batches(path, steps):
    """`steps` global batches of BATCH windows of CONTEXT + 1 bytes of the file, the same in every process."""
    data = torch.tensor(list(open(path, "rb").read()), dtype=torch.long)
    if len(data) < CONTEXT + 2:
        sys.exit(f"ddp.py: {path}: expected at least {CONTEXT + 2} bytes, got {len(data)}")
    g = torch.Generator().manual_seed(1)
    starts = torch.randint(0, len(data) - CONTEXT - 1, (steps, BATCH), generator=g)
    return [torch.stack([data[s:s + CONTEXT + 1] for s in row.tolist()]) for row in starts]


def loss_of(model, part):
    logits = model(part[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), part[:, 1:].reshape(-1))


def train(model, data, rank=0, ranks=1, micro_batches=1):
    """AdamW on `data`: this rank's share of each batch, in `micro_batches` parts whose gradients are summed in .grad
    and divided by their count. Returns the parameters and the mean loss of each step's share."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    share = BATCH // ranks
    losses = []
    for batch in data:
        mine = batch[rank * share:(rank + 1) * share]
        opt.zero_grad(set_to_none=True)
        per = share // micro_batches
        total = 0.0
        for k in range(micro_batches):
            loss = loss_of(model, mine[k * per:(k + 1) * per])
            loss.backward()
            total += loss.item()
        if micro_batches > 1:
            for p in model.parameters():
                p.grad.div_(micro_batches)
        opt.step()
        losses.append(total / micro_batches)
    return {k.removeprefix("module."): v.detach().clone() for k, v in model.state_dict().items()}, losses


def worker(rank, ranks, store, path, steps, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=ranks)
    model = torch.nn.parallel.DistributedDataParallel(make_model())
    params, losses = train(model, batches(path, steps), rank, ranks)
    if rank == 0:
        torch.save({"params": params, "losses": losses}, out)
    dist.destroy_process_group()


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("text", nargs="?", default=os.path.join(here, "..", "..", "README.md"))
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args(argv)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    data = batches(args.text, args.steps)
    want, want_losses = train(make_model(), data, micro_batches=2)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "rank0.pt")
        mp.spawn(worker, args=(2, os.path.join(d, "store"), args.text, args.steps, out), nprocs=2, join=True)
        got = torch.load(out)
    differ = [k for k, w in want.items() if not torch.equal(got["params"][k], w)]
    worst = max(((got["params"][k] - want[k]).abs().max().item() for k in differ), default=0.0)
    print(f"ddp.py: ({M},{N}) DGHC byte model, {sum(v.numel() for v in want.values())} parameters, {args.steps} AdamW "
          f"steps on {os.path.basename(args.text)}; loss {want_losses[0]:.4f} -> {want_losses[-1]:.4f} "
          f"(one process, mean of its 2 micro-batches)")
    print(f"ddp.py: DDP on gloo, 2 processes, against 1 process with 2 micro-batches: {len(differ)} of {len(want)} "
          f"tensors differ" + (f" (largest difference {worst:.3g})" if differ else ", identical bit for bit"))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
