"""vwn inside PyTorch in two minutes: a tiny over-width language model (embedding, two DGHC sub-layers around MLP
backbones, reduce head, unembedding) trained with torch.optim.AdamW on a repeating token pattern.

    PYTHONPATH=build/python python3 examples/pytorch/example.py [m n]      (default 2 3)
"""
import sys

import torch

import vwn_torch


class TinyModel(torch.nn.Module):
    def __init__(self, m, n, vocab, dim):
        super().__init__()
        self.embed = vwn_torch.OverWidthEmbedding(m, n, vocab, dim)    # tokens -> [B, T, D']
        self.ghc1 = vwn_torch.DGHC(m, n, dim)
        self.ghc2 = vwn_torch.DGHC(m, n, dim)
        self.mlp1 = torch.nn.Linear(dim, dim)
        self.mlp2 = torch.nn.Linear(dim, dim)
        self.head = vwn_torch.ReduceHead(m, n, dim)                    # [B, T, D'] -> [B, T, D]
        self.unembed = torch.nn.Linear(dim, vocab)

    def forward(self, tokens):
        H = self.embed(tokens)
        H = self.ghc1(H, lambda X: torch.nn.functional.gelu(self.mlp1(X)))   # the backbone sees [B, T, D]
        H = self.ghc2(H, lambda X: torch.nn.functional.gelu(self.mlp2(X)))
        return self.unembed(self.head(H))


def main():
    m, n = (int(sys.argv[1]), int(sys.argv[2])) if len(sys.argv) > 2 else (2, 3)
    torch.manual_seed(0)
    vocab, dim = 16, 32
    model = TinyModel(m, n, vocab, dim)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seq = (torch.arange(65) % vocab).repeat(4, 1)           # 0 1 2 ... 15 0 1 ...: learnable exactly
    inputs, targets = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    print(f"example.py: shape ({m},{n}), D = {dim}, D' = {n * dim // m}, compiled shapes {vwn_torch.compiled_shapes()}")
    for step in range(201):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs).reshape(-1, vocab), targets.reshape(-1))
        loss.backward()
        opt.step()
        if step % 50 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")


if __name__ == "__main__":
    main()
