#!/usr/bin/env python3
"""Independent PyTorch reference for the VWN math contract (docs: /shared/spec/VWN-SPEC.md).

Generates the golden files under tests/data/ that the C++ tests compare against:
forward values of the (dynamic) generalized hyper-connection, the over-width embeddings, the
GroupNorm + reduce head and the MTP block-level mixer, and their gradients. Everything is float64,
and every gradient comes from torch.autograd, so the files are independent of the hand-written C++
backward passes. Generation is seeded: running the script again with the same PyTorch and BLAS rewrites
identical bytes (another BLAS changes the last bits, about 1e-14 relative). With --missing it writes only
the files of shapes added to vwn::compiled_shapes since, leaving the others as they are.

How to run (Debian's PyTorch, CPU only; not a virtualenv / pyenv interpreter):

    apt-get install python3-torch libopenblas0-pthread
    /usr/bin/python3 tests/reference/vwn_reference.py            # writes tests/data/*.safetensors
    /usr/bin/python3 tests/reference/vwn_reference.py --out DIR  # somewhere else

Files, for every shape (m, n) of vwn::compiled_shapes (read from include/vwn/core/shapes.hpp)
(T = 5 tokens, db = 6, except db = 4 for (m, n) = (8, 64); D = m db, D' = n db):
    ghc_m{m}_n{n}.safetensors        prefixes "static." and "dynamic."
    embedding_m{m}_n{n}.safetensors  prefixes "direct." and "lowrank.", plus "tokens" (I64)
    reduce_m{m}_n{n}.safetensors     only for n != m; GroupNorm only when n % m == 0
    mtp_m{m}_n{n}.safetensors        block-level mixer of the MTP head
Layout: per token the over-width state is n x db row-major (slot j = H[t, j*db:(j+1)*db]), a batch is
T x D'; the backbone vector of length D is the m x db matrix read row-major.

The safetensors files are written by the small writer below (json + struct), not by the
`safetensors` package; the script reads every file back and compares before it finishes.
"""

import argparse
import json
import math
import pathlib
import struct
import sys

import torch
import torch.nn.functional as F

def compiled_shapes():
    """The shapes (m, n) of VWN_ALL_SHAPES, read from their one definition in include/vwn/core/shapes.hpp."""
    import re
    header = pathlib.Path(__file__).resolve().parents[2] / "include" / "vwn" / "core" / "shapes.hpp"
    line = re.search(r"^#define VWN_ALL_SHAPES\(X\)(.*)$", header.read_text(), re.MULTILINE)
    if not line:
        raise SystemExit(f"{header}: no VWN_ALL_SHAPES line found")
    return [(int(m), int(n)) for m, n in re.findall(r"X\((\d+),\s*(\d+)\)", line.group(1))]


CONFIGS = compiled_shapes()
T = 5              # tokens per batch (odd on purpose)
T_EMBED = 7        # tokens for the embedding files
VOCAB = 11         # vocabulary size for the embedding files
EPS = 1e-6         # RMSNorm and GroupNorm epsilon

torch.set_default_dtype(torch.float64)


def block_width(m, n):
    return 4 if (m, n) == (8, 64) else 6


# --------------------------------------------------------------------------------------------
# safetensors writer / reader (only what these files need: F64 and I64, string metadata)

_DTYPES = {torch.float64: ("F64", "<f8"), torch.int64: ("I64", "<i8")}


def write_safetensors(path, tensors, metadata):
    """Header: __metadata__ first, then tensors in name order; data packed in the same order;
    the JSON header is padded with spaces to a multiple of 8 bytes."""
    header = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        code, np_dtype = _DTYPES[t.dtype]
        data = t.numpy().astype(np_dtype, copy=False).tobytes()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    blob = struct.pack("<Q", len(text)) + text + b"".join(chunks)
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)
    return len(blob)


def read_safetensors(path):
    raw = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = {"F64": torch.float64, "I64": torch.int64}[info["dtype"]]
        t = torch.frombuffer(bytearray(data[begin:end]), dtype=dtype) if end > begin else torch.zeros(0, dtype=dtype)
        out[name] = t.reshape(info["shape"]).clone()
    return out, metadata


# --------------------------------------------------------------------------------------------
# Generalized hyper-connection (spec "Forward of one GHC sub-layer"), batched as in Algorithm 2.

def init_alpha(m, n):
    """Eq. (16): rows 0..m-1 = [I_m, I_m, 0], rows m..n-1 = [0, 0, I_{n-m}]; shape n x (m+n)."""
    a = torch.zeros(n, m + n)
    a[:m, :m] = torch.eye(m)
    a[:m, m:2 * m] = torch.eye(m)
    a[m:, 2 * m:] = torch.eye(n - m)
    return a


def init_beta(m, n):
    """Eq. (15), stored as B^T: beta[j, j mod m] = 1; shape n x m."""
    b = torch.zeros(n, m)
    for j in range(n):
        b[j, j % m] = 1.0
    return b


def rmsnorm_slots(h, g):
    """h: [T, n, db]; each slot normalised over its db values, then scaled by g."""
    return h / torch.sqrt(h.pow(2).mean(dim=-1, keepdim=True) + EPS) * g


def ghc_coefficients(h, p, m, n, db, dynamic):
    """Per-token coefficients a [T, n, m+n] and b [T, n, m]."""
    tokens = h.shape[0]
    if not dynamic:
        return p["alpha"].expand(tokens, n, m + n), p["beta"].expand(tokens, n, m)
    hn = rmsnorm_slots(h, p["g"])
    fn = torch.cat([p["W_alpha"], p["W_beta"]], dim=1)                 # db x (2m+n)
    proj = torch.tanh(torch.einsum("tjd,dk->tjk", hn, fn) / math.sqrt(db))  # T x n x (2m+n)
    a = p["S_alpha"] * proj[..., :m + n] + p["alpha"]
    b = p["S_beta"] * proj[..., m + n:] + p["beta"]
    return a, b


def ghc_forward(H, Z, p, m, n, db, dynamic):
    """H: [T, D'], Z: [T, D] -> X [T, D], C [T, D'], Hout [T, D']."""
    tokens = H.shape[0]
    h = H.reshape(tokens, n, db)
    a, b = ghc_coefficients(h, p, m, n, db, dynamic)
    mix = torch.einsum("tjk,tjd->tkd", a, h)                          # a^T @ H: T x (m+n) x db
    X = mix[:, :m].reshape(tokens, m * db)
    C = mix[:, m:].reshape(tokens, n * db)
    Hout = torch.einsum("tjk,tkd->tjd", b, Z.reshape(tokens, m, db)) + mix[:, m:]
    return X, C, Hout.reshape(tokens, n * db)


def ghc_forward_per_token(H, Z, p, m, n, db, dynamic):
    """Plain per-token version of the same math, used only to cross-check the batched one."""
    xs, cs, hs = [], [], []
    for t in range(H.shape[0]):
        h = H[t].reshape(n, db)
        if dynamic:
            hn = torch.stack([h[j] / math.sqrt(float((h[j] ** 2).mean()) + EPS) for j in range(n)]) * p["g"]
            proj = torch.tanh(hn @ torch.cat([p["W_alpha"], p["W_beta"]], dim=1) / math.sqrt(db))
            a = p["S_alpha"] * proj[:, :m + n] + p["alpha"]
            b = p["S_beta"] * proj[:, m + n:] + p["beta"]
        else:
            a, b = p["alpha"], p["beta"]
        mix = a.T @ h
        xs.append(mix[:m].reshape(-1))
        cs.append(mix[m:].reshape(-1))
        hs.append((b @ Z[t].reshape(m, db) + mix[m:]).reshape(-1))
    return torch.stack(xs), torch.stack(cs), torch.stack(hs)


def ghc_param_names(dynamic):
    names = ["alpha", "beta"]
    if dynamic:
        names += ["W_alpha", "W_beta", "S_alpha", "S_beta", "g"]
    return names


def make_ghc_case(m, n, db, dynamic):
    D, Dw = m * db, n * db
    inputs = {
        "H": torch.randn(T, Dw),
        "Z": torch.randn(T, D),
        "gX": torch.randn(T, D),
        "gC": torch.randn(T, Dw),
        "gHout": torch.randn(T, Dw),
    }
    params = {
        "alpha": init_alpha(m, n) + 0.3 * torch.randn(n, m + n),
        "beta": init_beta(m, n) + 0.3 * torch.randn(n, m),
    }
    if dynamic:
        params["W_alpha"] = 0.5 * torch.randn(db, m + n)
        params["W_beta"] = 0.5 * torch.randn(db, m)
        params["S_alpha"] = 1.0 + 0.3 * torch.randn(n, m + n)
        params["S_beta"] = 1.0 + 0.3 * torch.randn(n, m)
        params["g"] = 1.0 + 0.3 * torch.randn(db)

    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    H = inputs["H"].clone().requires_grad_(True)
    Z = inputs["Z"].clone().requires_grad_(True)
    X, C, Hout = ghc_forward(H, Z, leaves, m, n, db, dynamic)
    loss = (X * inputs["gX"]).sum() + (C * inputs["gC"]).sum() + (Hout * inputs["gHout"]).sum()
    loss.backward()

    # Cross-check the batched forward against the per-token loop.
    Xl, Cl, Hl = ghc_forward_per_token(inputs["H"], inputs["Z"], params, m, n, db, dynamic)
    for got, want in ((X, Xl), (C, Cl), (Hout, Hl)):
        assert torch.allclose(got.detach(), want, rtol=1e-12, atol=1e-12), "batched and per-token GHC differ"

    out = dict(inputs)
    out.update(params)
    out.update({"X": X, "C": C, "Hout": Hout, "dH": H.grad, "dZ": Z.grad})
    for k, v in leaves.items():
        out["d" + k] = v.grad
    return out


def check_ghc_identity_at_init(m, n, db):
    """At init (dynamic weights 0): x = H[0:m], C = H, Hout[j] = H[j] + Z[j mod m], exactly."""
    D, Dw = m * db, n * db
    H = torch.randn(T, Dw)
    Z = torch.randn(T, D)
    p = {"alpha": init_alpha(m, n), "beta": init_beta(m, n),
         "W_alpha": torch.zeros(db, m + n), "W_beta": torch.zeros(db, m),
         "S_alpha": torch.ones(n, m + n), "S_beta": torch.ones(n, m), "g": torch.ones(db)}
    expected = H.reshape(T, n, db) + Z.reshape(T, m, db)[:, [j % m for j in range(n)]]
    for dynamic in (False, True):
        X, C, Hout = ghc_forward(H, Z, p, m, n, db, dynamic)
        assert torch.equal(X, H[:, :D]), f"init identity x = H[0:m] fails for ({m},{n})"
        assert torch.equal(C, H), f"init identity C = H fails for ({m},{n})"
        assert torch.equal(Hout, expected.reshape(T, Dw)), f"init identity Hout fails for ({m},{n})"
    if m == n == 1:
        assert torch.equal(Hout, H + Z), "(1, 1) must be a plain residual x + T(x)"


def check_ghc_gradients_numerically():
    """torch.autograd.gradcheck (central differences) on small dynamic cases."""
    for m, n in ((1, 1), (2, 3), (1, 4)):
        db = 3
        tokens = 2
        names = ghc_param_names(True)
        base = {
            "alpha": init_alpha(m, n) + 0.3 * torch.randn(n, m + n),
            "beta": init_beta(m, n) + 0.3 * torch.randn(n, m),
            "W_alpha": 0.5 * torch.randn(db, m + n), "W_beta": 0.5 * torch.randn(db, m),
            "S_alpha": 1 + 0.3 * torch.randn(n, m + n), "S_beta": 1 + 0.3 * torch.randn(n, m),
            "g": 1 + 0.3 * torch.randn(db),
        }
        args = [torch.randn(tokens, n * db), torch.randn(tokens, m * db)] + [base[k] for k in names]
        args = [a.clone().requires_grad_(True) for a in args]

        def fn(H, Z, *ps):
            return ghc_forward(H, Z, dict(zip(names, ps)), m, n, db, True)

        assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-6), f"gradcheck ({m},{n})"


def ghc_file(m, n, db):
    tensors = {}
    for prefix, dynamic in (("static.", False), ("dynamic.", True)):
        for k, v in make_ghc_case(m, n, db, dynamic).items():
            tensors[prefix + k] = v
    meta = {"m": m, "n": n, "db": db, "D": m * db, "T": T, "eps": repr(EPS)}
    return tensors, meta


# --------------------------------------------------------------------------------------------
# Over-width embedding (section 3.2)

def embedding_file(m, n, db):
    D, Dw = m * db, n * db
    tokens = torch.randint(0, VOCAB, (T_EMBED,))
    if len(set(tokens.tolist())) == T_EMBED:
        tokens[5] = tokens[2]  # make sure one token repeats (gradient accumulation)
    assert len(set(tokens.tolist())) < T_EMBED and len(set(tokens.tolist())) < VOCAB

    E = (0.5 * torch.randn(VOCAB, Dw)).requires_grad_(True)
    gH = torch.randn(T_EMBED, Dw)
    H = E[tokens]
    (H * gH).sum().backward()
    unused = [v for v in range(VOCAB) if v not in set(tokens.tolist())]
    assert torch.all(E.grad[unused] == 0)

    E_base = (0.5 * torch.randn(VOCAB, D)).requires_grad_(True)
    W_expand = (torch.randn(Dw, D) / math.sqrt(D)).requires_grad_(True)
    gH_low = torch.randn(T_EMBED, Dw)
    H_low = E_base[tokens] @ W_expand.T
    (H_low * gH_low).sum().backward()

    tensors = {
        "tokens": tokens,
        "direct.E": E, "direct.H": H, "direct.gH": gH, "direct.dE": E.grad,
        "lowrank.E_base": E_base, "lowrank.W_expand": W_expand, "lowrank.H": H_low,
        "lowrank.gH": gH_low, "lowrank.dE_base": E_base.grad, "lowrank.dW_expand": W_expand.grad,
    }
    meta = {"m": m, "n": n, "db": db, "D": D, "T": T_EMBED, "V": VOCAB, "eps": repr(EPS)}
    return tensors, meta


# --------------------------------------------------------------------------------------------
# GroupNorm + reduce before the unembedding (eq. 4)

def group_norm(H, groups, weight, bias):
    """r groups of D contiguous values per token, biased variance, per-channel affine."""
    tokens, width = H.shape
    x = H.reshape(tokens, groups, width // groups)
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    y = ((x - mean) / torch.sqrt(var + EPS)).reshape(tokens, width)
    return y * weight + bias


def reduce_file(m, n, db):
    D, Dw = m * db, n * db
    use_gn = n % m == 0
    H = torch.randn(T, Dw).requires_grad_(True)
    W_reduce = (torch.randn(D, Dw) / math.sqrt(Dw)).requires_grad_(True)
    tensors = {}
    if use_gn:
        r = Dw // D
        gn_weight = (1.0 + 0.3 * torch.randn(Dw)).requires_grad_(True)
        gn_bias = (0.3 * torch.randn(Dw)).requires_grad_(True)
        normed = group_norm(H, r, gn_weight, gn_bias)
        torch_gn = F.group_norm(H.detach().reshape(T, Dw, 1), r, gn_weight.detach(), gn_bias.detach(), EPS)
        assert torch.allclose(normed.detach(), torch_gn.reshape(T, Dw), rtol=1e-12, atol=1e-12)
    else:
        normed = H
    h = normed @ W_reduce.T
    gh = torch.randn(T, D)
    (h * gh).sum().backward()
    tensors.update({"H": H, "W_reduce": W_reduce, "h": h, "gh": gh, "dH": H.grad, "dW_reduce": W_reduce.grad})
    if use_gn:
        tensors.update({"gn_weight": gn_weight, "gn_bias": gn_bias,
                        "dgn_weight": gn_weight.grad, "dgn_bias": gn_bias.grad})
    meta = {"m": m, "n": n, "db": db, "D": D, "T": T, "eps": repr(EPS), "groupnorm": "1" if use_gn else "0"}
    return tensors, meta


# --------------------------------------------------------------------------------------------
# MTP block-level mixer (section 3.4): U[j] = W_mix @ concat(A[j], B[j]) for every slot j

def mtp_file(m, n, db):
    Dw = n * db
    A = torch.randn(T, Dw).requires_grad_(True)
    B = torch.randn(T, Dw).requires_grad_(True)
    W_mix = (torch.randn(db, 2 * db) / math.sqrt(2 * db)).requires_grad_(True)
    both = torch.cat([A.reshape(T, n, db), B.reshape(T, n, db)], dim=-1)   # T x n x 2db
    U = torch.einsum("tjc,dc->tjd", both, W_mix).reshape(T, Dw)
    # Same thing one slot at a time.
    for t in range(T):
        for j in range(n):
            s = slice(j * db, (j + 1) * db)
            want = W_mix.detach() @ torch.cat([A.detach()[t, s], B.detach()[t, s]])
            assert torch.allclose(U.detach()[t, s], want, rtol=1e-12, atol=1e-12)
    gU = torch.randn(T, Dw)
    (U * gU).sum().backward()
    tensors = {"A": A, "B": B, "W_mix": W_mix, "U": U, "gU": gU, "dA": A.grad, "dB": B.grad, "dW_mix": W_mix.grad}
    meta = {"m": m, "n": n, "db": db, "D": m * db, "T": T, "eps": repr(EPS)}
    return tensors, meta


# --------------------------------------------------------------------------------------------

def seed_for(kind, m, n):
    return {"ghc": 1, "embedding": 2, "reduce": 3, "mtp": 4}[kind] * 100000 + m * 1000 + n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = pathlib.Path(__file__).resolve().parent.parent / "data"
    parser.add_argument("--out", type=pathlib.Path, default=default_out, help=f"output directory (default {default_out})")
    parser.add_argument("--missing", action="store_true",
                        help="write only the files that do not exist yet (e.g. for a shape added to compiled_shapes)")
    args = parser.parse_args()
    assert sys.byteorder == "little"

    torch.manual_seed(12345)
    check_ghc_gradients_numerically()
    for m, n in CONFIGS:
        check_ghc_identity_at_init(m, n, block_width(m, n))
    print("checks passed: init identity (static and dynamic), batched == per-token, gradcheck, group_norm")

    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for m, n in CONFIGS:
        db = block_width(m, n)
        jobs = [("ghc", ghc_file), ("embedding", embedding_file), ("mtp", mtp_file)]
        if n != m:
            jobs.insert(2, ("reduce", reduce_file))
        for kind, make in jobs:
            path = args.out / f"{kind}_m{m}_n{n}.safetensors"
            if args.missing and path.exists():
                continue
            torch.manual_seed(seed_for(kind, m, n))
            tensors, meta = make(m, n, db)
            size = write_safetensors(path, tensors, meta)
            total += size
            back, back_meta = read_safetensors(path)
            assert back_meta == {k: str(v) for k, v in meta.items()}
            assert sorted(back) == sorted(tensors)
            for name, t in tensors.items():
                assert torch.equal(back[name], t.detach()), f"{path}: {name} did not read back"
            print(f"wrote {path} ({size} bytes, {len(tensors)} tensors)")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
