#!/usr/bin/env python3
"""Independent PyTorch reference of the whole reference transformer (docs/model.md).

In the style of llm.c's test_gpt2: for a few tiny configurations the script draws random parameters and a
batch, runs the model in float64, and writes the parameters, the batch, the main-head logits, the losses,
every parameter gradient (torch.autograd) and the total loss along 10 AdamW steps to
tests/data/model_<name>.safetensors. tests/test_model_reference.cpp loads the parameters into the C++
`vwn::model::transformer` by name and compares.

Everything here is written from docs/model.md, docs/math.md and docs/choices.md; only the safetensors
writer/reader is shared with vwn_reference.py.

How to run (Debian's PyTorch, CPU only; not a virtualenv / pyenv interpreter):

    /usr/bin/python3 tests/reference/model_reference.py            # writes tests/data/model_*.safetensors
    /usr/bin/python3 tests/reference/model_reference.py --out DIR  # somewhere else

Configurations (vocabulary 11, D = 12, 2 heads, L = 2, F = 16, B = 2, T = 6):
    model_dghc_m2_n3_mtp     (2, 3) dynamic GHC, MTP (lambda 0.3), direct embedding, head W_reduce only
    model_ghc_m1_n4_mtp_lr   (1, 4) static GHC, MTP, low-rank embedding, head GroupNorm + W_reduce
    model_ghc_m1_n1          (1, 1) static GHC, no MTP: the plain pre-norm transformer

Tensor names follow `vwn::model::transformer::visit`: `param.<name>` and `grad.<name>` for every parameter,
with the C++ shapes (a vector as [k], a matrix as [rows, cols], row-major).
"""

import argparse
import math
import pathlib
import sys

import torch

sys.dont_write_bytecode = True
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from vwn_reference import read_safetensors, write_safetensors  # noqa: E402  (the shared file writer)

torch.set_default_dtype(torch.float64)

EPS = 1e-6            # every normalisation (RMSNorm, slot RMSNorm, GroupNorm)
ROPE_BASE = 10000.0
VOCAB, WIDTH, HEADS, LAYERS, FFN = 11, 12, 2, 2, 16
BATCH, TOKENS = 2, 6
MTP_LAMBDA = 0.3
ADAM = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1}
ADAM_STEPS = 10

# name, (m, n), dynamic, mtp, low-rank embedding, seed
CONFIGS = [
    ("dghc_m2_n3_mtp", (2, 3), True, True, False, 1001),
    ("ghc_m1_n4_mtp_lr", (1, 4), False, True, True, 1002),
    ("ghc_m1_n1", (1, 1), False, False, False, 1003),
]


class Shape:
    def __init__(self, m, n, dynamic, mtp, lowrank):
        assert WIDTH % m == 0 and WIDTH % (2 * HEADS) == 0 and n >= m >= 1
        self.m, self.n, self.dynamic, self.mtp, self.lowrank = m, n, dynamic, mtp, lowrank
        self.D, self.db = WIDTH, WIDTH // m
        self.Dw = n * self.db
        self.hd = WIDTH // HEADS
        self.has_reduce = n != m
        self.has_groupnorm = self.has_reduce and n % m == 0


# --------------------------------------------------------------------------------------------------
# Parameters: names, shapes and weight-decay flags in the order of transformer::visit.

def parameter_list(s):
    """[(name, shape, decay)] in checkpoint order, with the shapes of the C++ tensors."""
    m, n, D, db, Dw = s.m, s.n, s.D, s.db, s.Dw
    out = []
    if s.lowrank:
        out += [("embed.E_base", (VOCAB, D), False), ("embed.W_expand", (Dw, D), True)]
    else:
        out += [("embed.E", (VOCAB, Dw), False)]

    def ghc(prefix):
        items = [(prefix + "alpha", (n, m + n), False), (prefix + "beta", (n, m), False)]
        if s.dynamic:
            items += [(prefix + "W_alpha", (db, m + n), True), (prefix + "W_beta", (db, m), True),
                      (prefix + "S_alpha", (n, m + n), True), (prefix + "S_beta", (n, m), True),
                      (prefix + "g", (db,), False)]
        return items

    def block(prefix):
        return (ghc(prefix + "ghc_attn.") + [(prefix + "attn_norm.w", (D,), False),
                                             (prefix + "qkv.W", (3 * D, D), True),
                                             (prefix + "proj.W", (D, D), True)]
                + ghc(prefix + "ghc_ffn.") + [(prefix + "ffn_norm.w", (D,), False),
                                              (prefix + "ffn.W1", (FFN, D), True),
                                              (prefix + "ffn.W2", (D, FFN), True),
                                              (prefix + "ffn.W3", (FFN, D), True)])

    for layer in range(LAYERS):
        out += block(f"blocks.{layer}.")
    if s.has_groupnorm:
        out += [("head.gn_weight", (Dw,), False), ("head.gn_bias", (Dw,), False)]
    if s.has_reduce:
        out += [("head.W_reduce", (D, Dw), True)]
    out += [("final_norm.w", (D,), False), ("unembed.W", (VOCAB, D), True)]
    if s.mtp:
        out += [("mtp.norm_h.w", (db,), False), ("mtp.norm_e.w", (db,), False),
                ("mtp.mixer.W_mix", (db, 2 * db), True)]
        out += block("mtp.block.")
    return out


def ghc_init(s):
    """alpha per eq. (16) (n x (m+n)), beta per eq. (15) stored as n x m."""
    m, n = s.m, s.n
    alpha = torch.zeros(n, m + n)
    for j in range(m):
        alpha[j, j] = 1.0
        alpha[j, m + j] = 1.0
    for j in range(m, n):
        alpha[j, m + j] = 1.0
    beta = torch.zeros(n, m)
    for j in range(n):
        beta[j, j % m] = 1.0
    return alpha, beta


def random_parameters(s):
    """Random values away from the initialisation, so that every path carries gradient."""
    alpha0, beta0 = ghc_init(s)
    params = {}
    for name, shape, _ in parameter_list(s):
        leaf = name.rsplit(".", 1)[1]
        if leaf == "alpha":
            v = alpha0 + 0.3 * torch.randn(shape)
        elif leaf == "beta":
            v = beta0 + 0.3 * torch.randn(shape)
        elif leaf in ("W_alpha", "W_beta"):
            v = 0.5 * torch.randn(shape)
        elif leaf in ("S_alpha", "S_beta", "g", "w", "gn_weight"):
            v = 1.0 + 0.3 * torch.randn(shape)
        elif leaf == "gn_bias":
            v = 0.3 * torch.randn(shape)
        else:  # every matrix and embedding table
            v = 0.3 * torch.randn(shape)
        params[name] = v
    return params


def init_ghc_parameters(s, params):
    """A copy of params with every GHC at its initialisation (W = 0, S = 1, g = 1)."""
    alpha0, beta0 = ghc_init(s)
    out = dict(params)
    for name, shape, _ in parameter_list(s):
        if ".ghc_" not in name:
            continue
        leaf = name.rsplit(".", 1)[1]
        out[name] = {"alpha": alpha0, "beta": beta0, "W_alpha": torch.zeros(shape), "W_beta": torch.zeros(shape),
                     "S_alpha": torch.ones(shape), "S_beta": torch.ones(shape), "g": torch.ones(shape)}[leaf].clone()
    return out


# --------------------------------------------------------------------------------------------------
# The model, float64, batch rows b*T .. b*T+T-1 (BT = B*T token rows).

def rms_norm(x, w):
    """Over the last axis: x / sqrt(mean(x^2) + eps) * w."""
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + EPS) * w


def rotary(x, T, hd):
    """x: (B, T, heads, hd); rotates the pairs (i, i + hd/2) at position p by p * base^(-2i/hd)."""
    half = hd // 2
    freq = ROPE_BASE ** (-2.0 * torch.arange(half, dtype=torch.float64) / hd)       # (hd/2)
    angle = torch.arange(T, dtype=torch.float64)[:, None] * freq[None, :]          # (T, hd/2)
    cos, sin = torch.cos(angle)[None, :, None, :], torch.sin(angle)[None, :, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attention_sublayer(x, p, prefix, s, T):
    """Pre-norm causal self-attention with RoPE: (BT, D) -> (BT, D)."""
    B, D, hd = x.shape[0] // T, s.D, s.hd
    a = rms_norm(x, p[prefix + "attn_norm.w"])
    qkv = a @ p[prefix + "qkv.W"].T                                                 # (BT, 3D) = [q | k | v]
    q, k, v = (qkv[:, i * D:(i + 1) * D].reshape(B, T, HEADS, hd) for i in range(3))
    q, k = rotary(q, T, hd), rotary(k, T, hd)
    q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))                            # (B, heads, T, hd)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    probs = torch.exp(scores - scores.max(dim=-1, keepdim=True).values)
    probs = probs / probs.sum(dim=-1, keepdim=True)
    o = (probs @ v).permute(0, 2, 1, 3).reshape(B * T, D)
    return o @ p[prefix + "proj.W"].T


def ffn_sublayer(x, p, prefix):
    """Pre-norm SwiGLU: (BT, D) -> (BT, D)."""
    a = rms_norm(x, p[prefix + "ffn_norm.w"])
    gate = a @ p[prefix + "ffn.W1"].T
    return (gate * torch.sigmoid(gate) * (a @ p[prefix + "ffn.W3"].T)) @ p[prefix + "ffn.W2"].T


def ghc_coefficients(h, p, prefix, s):
    """h: (BT, n, db) -> a (BT, n, m+n), b (BT, n, m)."""
    m, n = s.m, s.n
    alpha, beta = p[prefix + "alpha"], p[prefix + "beta"]
    if not s.dynamic:
        return alpha.expand(h.shape[0], n, m + n), beta.expand(h.shape[0], n, m)
    hn = rms_norm(h, p[prefix + "g"])                                               # per slot over db
    W = torch.cat([p[prefix + "W_alpha"], p[prefix + "W_beta"]], dim=1)             # (db, 2m+n)
    P = torch.tanh(hn @ W / math.sqrt(s.db))                                        # (BT, n, 2m+n)
    return p[prefix + "S_alpha"] * P[..., :m + n] + alpha, p[prefix + "S_beta"] * P[..., m + n:] + beta


def ghc_sublayer(H, p, prefix, s, backbone):
    """Width connection, backbone, depth connection: H (BT, D') -> (BT, D')."""
    BT, m, n, db = H.shape[0], s.m, s.n, s.db
    h = H.reshape(BT, n, db)
    a, b = ghc_coefficients(h, p, prefix, s)
    mix = a.transpose(1, 2) @ h                                                     # (BT, m+n, db) = a^T H
    X, C = mix[:, :m].reshape(BT, m * db), mix[:, m:]
    Z = backbone(X).reshape(BT, m, db)
    return (b @ Z + C).reshape(BT, n * db)                                          # b Z + C


def block(H, p, prefix, s, T):
    H = ghc_sublayer(H, p, prefix + "ghc_attn.", s, lambda x: attention_sublayer(x, p, prefix, s, T))
    return ghc_sublayer(H, p, prefix + "ghc_ffn.", s, lambda x: ffn_sublayer(x, p, prefix))


def embed(tokens, p, s):
    if s.lowrank:
        return p["embed.E_base"][tokens] @ p["embed.W_expand"].T
    return p["embed.E"][tokens]


def reduce_head(H, p, s):
    """GroupNorm (D'/D groups of D contiguous values, biased variance) + W_reduce; identity for n == m."""
    if not s.has_reduce:
        return H
    if s.has_groupnorm:
        x = H.reshape(H.shape[0], s.Dw // s.D, s.D)
        mean = x.mean(dim=-1, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
        H = ((x - mean) / torch.sqrt(var + EPS)).reshape(H.shape[0], s.Dw) * p["head.gn_weight"] + p["head.gn_bias"]
    return H @ p["head.W_reduce"].T


def output_head(H, p, s):
    """Shared by the main and MTP passes: reduce, final RMSNorm, untied unembedding -> logits (BT, V)."""
    return rms_norm(reduce_head(H, p, s), p["final_norm.w"]) @ p["unembed.W"].T


def cross_entropy(logits, targets):
    """Mean over rows of logsumexp(z) - z[target]."""
    mx = logits.max(dim=-1, keepdim=True).values
    lse = torch.log(torch.exp(logits - mx).sum(dim=-1)) + mx[:, 0]
    return (lse - logits.gather(1, targets[:, None])[:, 0]).mean()


def forward(p, batch, s, T=TOKENS):
    """Returns (total, next-token loss, next-2-token loss, main logits)."""
    inputs, nxt, nxt2 = batch
    BT = inputs.shape[0]
    H = embed(inputs, p, s)
    for layer in range(LAYERS):
        H = block(H, p, f"blocks.{layer}.", s, T)
    logits = output_head(H, p, s)
    loss1 = cross_entropy(logits, nxt)
    if not s.mtp:
        return loss1, loss1, torch.zeros(()), logits
    A = rms_norm(H.reshape(BT, s.n, s.db), p["mtp.norm_h.w"])                       # per slot, weight (db)
    E1 = rms_norm(embed(nxt, p, s).reshape(BT, s.n, s.db), p["mtp.norm_e.w"])
    U = torch.cat([A, E1], dim=-1) @ p["mtp.mixer.W_mix"].T                         # (BT, n, db) slot by slot
    U = block(U.reshape(BT, s.Dw), p, "mtp.block.", s, T)
    loss2 = cross_entropy(output_head(U, p, s), nxt2)
    return loss1 + MTP_LAMBDA * loss2, loss1, loss2, logits


def plain_transformer(p, batch, T=TOKENS):
    """The (1,1) model without MTP written as an ordinary pre-norm transformer: x + f(x) residuals."""
    s = Shape(1, 1, False, False, False)
    x = p["embed.E"][batch[0]]
    for layer in range(LAYERS):
        prefix = f"blocks.{layer}."
        x = x + attention_sublayer(x, p, prefix, s, T)
        x = x + ffn_sublayer(x, p, prefix)
    logits = rms_norm(x, p["final_norm.w"]) @ p["unembed.W"].T
    return cross_entropy(logits, batch[1]), logits


def gradients(params, batch, s):
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    total, loss1, loss2, logits = forward(leaves, batch, s)
    total.backward()
    return (total.detach(), loss1.detach(), loss2.detach(), logits.detach(),
            {k: v.grad.detach().clone() for k, v in leaves.items()})


# --------------------------------------------------------------------------------------------------
# AdamW as include/vwn/optim.hpp: decoupled decay inside the same update, bias-corrected moments.

def adamw_trajectory(params, batch, s, steps=ADAM_STEPS):
    """Total loss before each of `steps` updates with constant lr and no clipping."""
    b1, b2, eps, wd_all, lr = ADAM["beta1"], ADAM["beta2"], ADAM["eps"], ADAM["weight_decay"], ADAM["lr"]
    decay = {name: d for name, _, d in parameter_list(s)}
    p = {k: v.clone() for k, v in params.items()}
    m1 = {k: torch.zeros_like(v) for k, v in p.items()}
    m2 = {k: torch.zeros_like(v) for k, v in p.items()}
    losses = []
    for t in range(1, steps + 1):
        total, _, _, _, grads = gradients(p, batch, s)
        losses.append(float(total))
        bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
        for k in p:
            g = grads[k]
            m1[k] = b1 * m1[k] + (1.0 - b1) * g
            m2[k] = b2 * m2[k] + (1.0 - b2) * g * g
            wd = wd_all if decay[k] else 0.0
            p[k] = p[k] - lr * ((m1[k] / bc1) / (torch.sqrt(m2[k] / bc2) + eps) + wd * p[k])
    return torch.tensor(losses), p


def torch_adamw_trajectory(params, batch, s, steps=ADAM_STEPS):
    """The same with torch.optim.AdamW (two parameter groups), to check the update above."""
    decay = {name: d for name, _, d in parameter_list(s)}
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    groups = [{"params": [v for k, v in leaves.items() if decay[k]], "weight_decay": ADAM["weight_decay"]},
              {"params": [v for k, v in leaves.items() if not decay[k]], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=ADAM["lr"], betas=(ADAM["beta1"], ADAM["beta2"]), eps=ADAM["eps"])
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        total = forward(leaves, batch, s)[0]
        losses.append(float(total))
        total.backward()
        opt.step()
    return torch.tensor(losses), {k: v.detach() for k, v in leaves.items()}


# --------------------------------------------------------------------------------------------------

def make_batch():
    """Per row one random sequence of T + 2 tokens: inputs, next and next-2 targets are its windows."""
    seq = torch.randint(0, VOCAB, (BATCH, TOKENS + 2))
    return tuple(seq[:, k:k + TOKENS].reshape(-1).clone() for k in range(3))


def check_plain_equivalence():
    """(1,1) static without MTP, GHC at its initialisation, equals the plain transformer."""
    s = Shape(1, 1, False, False, False)
    params = init_ghc_parameters(s, random_parameters(s))
    batch = make_batch()
    ours, _, _, logits = forward(params, batch, s)
    plain, plain_logits = plain_transformer(params, batch)
    assert torch.equal(logits, plain_logits) and torch.equal(ours, plain), "(1,1) at GHC init is not the plain model"


def check_pieces():
    """Small independent checks of the building blocks."""
    s = Shape(1, 4, False, False, False)
    H = torch.randn(5, s.Dw)
    p = {"head.gn_weight": 1 + 0.3 * torch.randn(s.Dw), "head.gn_bias": 0.3 * torch.randn(s.Dw),
         "head.W_reduce": torch.eye(s.D, s.Dw)}
    want = torch.nn.functional.group_norm(H[:, :, None], s.Dw // s.D, p["head.gn_weight"], p["head.gn_bias"], EPS)
    assert torch.allclose(reduce_head(H, p, s), want[:, :s.D, 0], rtol=1e-12, atol=1e-12), "GroupNorm"
    # Attention against a per-position loop (causal: position t sees keys 0..t).
    s = Shape(1, 1, False, False, False)
    T = 4
    x = torch.randn(2 * T, s.D)
    p = {"b.attn_norm.w": torch.ones(s.D), "b.qkv.W": torch.randn(3 * s.D, s.D), "b.proj.W": torch.eye(s.D)}
    got = attention_sublayer(x, p, "b.", s, T)
    qkv = rms_norm(x, 1.0) @ p["b.qkv.W"].T
    for b in range(2):
        for h in range(HEADS):
            cols = slice(h * s.hd, (h + 1) * s.hd)
            q, k, v = (qkv[b * T:(b + 1) * T, i * s.D:(i + 1) * s.D][:, cols] for i in range(3))
            for t in range(T):
                def rot(vec, pos):
                    half = s.hd // 2
                    out = vec.clone()
                    for i in range(half):
                        ang = pos * ROPE_BASE ** (-2.0 * i / s.hd)
                        out[i] = vec[i] * math.cos(ang) - vec[i + half] * math.sin(ang)
                        out[i + half] = vec[i] * math.sin(ang) + vec[i + half] * math.cos(ang)
                    return out
                qt = rot(q[t], t)
                sc = torch.stack([qt @ rot(k[u], u) for u in range(t + 1)]) / math.sqrt(s.hd)
                w = torch.softmax(sc, dim=0)
                want = (w[:, None] * v[:t + 1]).sum(dim=0)
                assert torch.allclose(got[b * T + t, cols], want, rtol=1e-12, atol=1e-12), "attention"


def model_file(name, mn, dynamic, mtp, lowrank, seed):
    s = Shape(*mn, dynamic, mtp, lowrank)
    torch.manual_seed(seed)
    params = random_parameters(s)
    batch = make_batch()
    total, loss1, loss2, logits, grads = gradients(params, batch, s)
    for k, g in grads.items():
        assert torch.count_nonzero(g) > 0, f"{name}: gradient of {k} is all zeros"
    if not mtp:
        assert float(loss2) == 0.0 and torch.equal(total, loss1)
    losses, final = adamw_trajectory(params, batch, s)
    assert float(losses[0]) == float(total)
    torch_losses, torch_final = torch_adamw_trajectory(params, batch, s)
    assert torch.allclose(losses, torch_losses, rtol=1e-10, atol=0), f"{name}: AdamW differs from torch.optim.AdamW"
    for k in final:
        assert torch.allclose(final[k], torch_final[k], rtol=1e-9, atol=1e-12), f"{name}: AdamW {k}"
    assert float(losses[-1]) < float(losses[0]), f"{name}: 10 AdamW steps did not reduce the loss"

    plist = parameter_list(s)
    assert [k for k, _, _ in plist] == list(params)
    tensors = {}
    for k, shape, _ in plist:
        assert tuple(params[k].shape) == shape and tuple(grads[k].shape) == shape
        tensors["param." + k] = params[k]
        tensors["grad." + k] = grads[k]
    tensors.update({"batch.inputs": batch[0], "batch.next": batch[1], "batch.next2": batch[2],
                    "logits": logits, "loss": total.reshape(1), "loss_next": loss1.reshape(1),
                    "loss_next2": loss2.reshape(1), "adamw.losses": losses})
    meta = {"m": s.m, "n": s.n, "dynamic": int(dynamic), "mtp": int(mtp), "lowrank": int(lowrank),
            "lambda": repr(MTP_LAMBDA), "vocab": VOCAB, "width": WIDTH, "layers": LAYERS, "heads": HEADS,
            "ffn_width": FFN, "batch": BATCH, "T": TOKENS, "eps": repr(EPS), "rope_base": repr(ROPE_BASE),
            "adamw_steps": ADAM_STEPS, "lr": repr(ADAM["lr"]), "beta1": repr(ADAM["beta1"]),
            "beta2": repr(ADAM["beta2"]), "adam_eps": repr(ADAM["eps"]),
            "weight_decay": repr(ADAM["weight_decay"]),
            "params": ",".join(k for k, _, _ in plist),
            "decay": ",".join(k for k, _, d in plist if d)}
    return tensors, meta, losses


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = pathlib.Path(__file__).resolve().parent.parent / "data"
    parser.add_argument("--out", type=pathlib.Path, default=default_out, help=f"output directory (default {default_out})")
    args = parser.parse_args()
    assert sys.byteorder == "little"

    torch.manual_seed(777)
    check_pieces()
    check_plain_equivalence()
    print("checks passed: GroupNorm, attention + RoPE per position, (1,1) at GHC init == plain transformer")

    args.out.mkdir(parents=True, exist_ok=True)
    for name, mn, dynamic, mtp, lowrank, seed in CONFIGS:
        tensors, meta, losses = model_file(name, mn, dynamic, mtp, lowrank, seed)
        path = args.out / f"model_{name}.safetensors"
        size = write_safetensors(path, tensors, meta)
        back, back_meta = read_safetensors(path)
        assert back_meta == {k: str(v) for k, v in meta.items()} and sorted(back) == sorted(tensors)
        for k, t in tensors.items():
            assert torch.equal(back[k], t.detach()), f"{path}: {k} did not read back"
        print(f"wrote {path} ({size} bytes, {len(tensors)} tensors); "
              f"loss {float(losses[0]):.6f} -> {float(losses[-1]):.6f} after {ADAM_STEPS} AdamW steps")


if __name__ == "__main__":
    main()
