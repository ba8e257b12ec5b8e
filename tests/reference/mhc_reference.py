#!/usr/bin/env python3
"""Independent PyTorch reference for the manifold-constrained width connections (mHC, mHC-lite, DeepSeek-V4).

Generates the golden files tests/data/mhc_{conn}_m{m}_n{n}.safetensors that tests/primitives/test_mhc_reference.cpp
compares the C++ `vwn::basic_ghc<M, N, double, Dynamic, vwn::mhc*_connection>` against. Everything is float64 on
the CPU and every gradient comes from torch.autograd, so the files check the hand-written C++ backward passes
(Sinkhorn's recomputing backward included) independently. Generation is seeded per file.

The math is written in the papers' notation, batched over tokens:
  x        the token's stream matrix, n x db (row j = slot j = H[t, j*db:(j+1)*db])
  H_pre    m x n, X = H_pre x            (H_pre = a_pre^T, a_pre(j, i) = sigmoid(z_pre(j, i)) + pre_eps)
  H_res    n x n, C = H_res x            (doubly stochastic, see `residual_matrix`)
  H_post   n x m, H_out = H_post Z + C   (H_post = 2 sigmoid(z_post), Z the token's m x db backbone output)
  logits   z = [z_pre (n x m) | z_post (n x m) | z_res (n x n row-major, or n! for mHC-lite)]
           static: z = bias; dynamic (mHC eqs. 14-16, the RMSNorm weight folded into phi):
           x' = flatten(x) / sqrt(mean(flatten(x)^2) + 1e-6), z = gate[group] * (x' phi) + bias
Carry projections:
  mhc       (arXiv 2512.24880 eq. 9) M(0) = exp(z_res), M(t) = T_r(T_c(M(t-1))) 20 times (T_c: columns to sum 1,
            T_r: rows to sum 1); H_res = M(20).
  mhc-lite  (arXiv 2601.05732) H_res = sum_p softmax(z_res)_p P_p over the n! permutation matrices in
            itertools.permutations(range(n)) order (p = 0 the identity), P_p[i, pi_p(i)] = 1.
  mhc-v4    (DeepSeek-V4's released hyper-connection) comb = softmax_rows(z_res) + 1e-6, columns / (sum + 1e-6),
            then 19 times rows / (sum + 1e-6) and columns / (sum + 1e-6); the model mixes the streams as
            comb^T x, so H_res = comb^T. pre_eps = 1e-6 (0 for the others).
In the C++ layout the carry block is A_c with C_i = sum_j A_c(j, i) H_j, i.e. A_c = H_res^T.

How to run (Debian's PyTorch, CPU only; not a virtualenv / pyenv interpreter):

    /usr/bin/python3 tests/reference/mhc_reference.py            # writes tests/data/mhc_*.safetensors
    /usr/bin/python3 tests/reference/mhc_reference.py --out DIR  # somewhere else

Before writing, the script checks the batched formulation against a plain per-token loop (written from the C++
layout's sums), that the carries are doubly stochastic, and the gradients with torch.autograd.gradcheck; after
writing it reads every file back.
"""

import argparse
import itertools
import json
import math
import pathlib
import struct
import sys

import torch

# The project's small safetensors writer and reader (F64/I64), shared with the other reference scripts.
from vwn_reference import read_safetensors, write_safetensors  # noqa: E402

torch.set_default_dtype(torch.float64)

T = 5                 # tokens per batch
DB = 6                # slot width
RMS_EPS = 1e-6        # the dynamic family's RMSNorm epsilon
ITERATIONS = 20       # Sinkhorn iterations (mhc, mhc-v4)
V4_EPS = 1e-6         # DeepSeek-V4: added after the softmax, to every line sum, and to the pre map
CARRY_SPREAD = 3.0    # standard deviation of the random carry logits (see random_params)

# file stem -> (C++ name, shapes)
CONNECTIONS = {
    "mhc": ("mhc", ((1, 4), (2, 3), (4, 8))),
    "mhc_lite": ("mhc-lite", ((1, 4), (2, 3))),
    "mhc_v4": ("mhc-v4", ((1, 4), (2, 3), (4, 8))),
}


def carry_logit_count(conn, n):
    return math.factorial(n) if conn == "mhc_lite" else n * n


def logit_count(conn, m, n):
    return 2 * n * m + carry_logit_count(conn, n)


def permutation_matrices(n):
    """[n!, n, n]: P_p[i, pi_p(i)] = 1, permutations in lexicographic order."""
    perms = list(itertools.permutations(range(n)))
    P = torch.zeros(len(perms), n, n)
    for p, pi in enumerate(perms):
        for i in range(n):
            P[p, i, pi[i]] = 1.0
    return P


def sinkhorn_mhc(z_res):
    """mHC eq. 9: M(0) = exp(z), then T_r(T_c(.)) ITERATIONS times. z_res: [T, n, n]."""
    M = torch.exp(z_res)
    for _ in range(ITERATIONS):
        M = M / M.sum(dim=-2, keepdim=True)   # T_c: every column sums to 1
        M = M / M.sum(dim=-1, keepdim=True)   # T_r: every row sums to 1
    return M


def sinkhorn_v4(z_res):
    """DeepSeek-V4: softmax over the last dim + eps, one column pass, then ITERATIONS - 1 (rows, columns) passes."""
    Y = torch.softmax(z_res, dim=-1) + V4_EPS
    Y = Y / (Y.sum(dim=-2, keepdim=True) + V4_EPS)
    for _ in range(ITERATIONS - 1):
        Y = Y / (Y.sum(dim=-1, keepdim=True) + V4_EPS)
        Y = Y / (Y.sum(dim=-2, keepdim=True) + V4_EPS)
    return Y


def residual_matrix(conn, z_res, n):
    """H_res [T, n, n] with C = H_res x, from the carry logits z_res [T, R]."""
    tokens = z_res.shape[0]
    if conn == "mhc":
        return sinkhorn_mhc(z_res.reshape(tokens, n, n))
    if conn == "mhc_v4":
        return sinkhorn_v4(z_res.reshape(tokens, n, n)).transpose(-1, -2)   # comb^T x
    w = torch.softmax(z_res, dim=-1)                                          # mHC-lite
    return torch.einsum("tp,pij->tij", w, permutation_matrices(n))


def logits(conn, H, p, m, n, dynamic):
    """z [T, K]: static z = bias; dynamic z = gate[group] (x' phi) + bias, x' the RMS-normalised flat token."""
    tokens = H.shape[0]
    K = logit_count(conn, m, n)
    if not dynamic:
        return p["bias"].expand(tokens, K)
    xn = H / torch.sqrt(H.pow(2).mean(dim=-1, keepdim=True) + RMS_EPS)
    group = torch.tensor([0] * (n * m) + [1] * (n * m) + [2] * carry_logit_count(conn, n))
    return p["gate"][group] * (xn @ p["phi"]) + p["bias"]


def maps(conn, z, m, n):
    """H_pre [T, m, n], H_post [T, n, m], H_res [T, n, n] from the logits z [T, K]."""
    tokens = z.shape[0]
    pre_eps = V4_EPS if conn == "mhc_v4" else 0.0
    z_pre = z[:, :n * m].reshape(tokens, n, m)          # entry (j, i): slot j into segment i
    z_post = z[:, n * m:2 * n * m].reshape(tokens, n, m)
    H_pre = (torch.sigmoid(z_pre) + pre_eps).transpose(-1, -2)
    H_post = 2.0 * torch.sigmoid(z_post)
    H_res = residual_matrix(conn, z[:, 2 * n * m:], n)
    return H_pre, H_post, H_res


def connection_forward(conn, H, Z, p, m, n, db, dynamic):
    """H [T, D'], Z [T, D] -> X [T, D], C [T, D'], Hout [T, D']."""
    tokens = H.shape[0]
    H_pre, H_post, H_res = maps(conn, logits(conn, H, p, m, n, dynamic), m, n)
    x = H.reshape(tokens, n, db)                          # stream matrix per token
    X = H_pre @ x                                         # width connection: m x db
    C = H_res @ x                                         # carry: n x db
    Hout = H_post @ Z.reshape(tokens, m, db) + C          # depth connection
    return X.reshape(tokens, m * db), C.reshape(tokens, n * db), Hout.reshape(tokens, n * db)


# --------------------------------------------------------------------------------------------
# A plain per-token loop over the C++ layout's sums, only to cross-check the batched formulation.

def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


def per_token_carry(conn, zr, n):
    """A_c as nested lists, C_i = sum_j A_c[j][i] H_j, from the carry logits zr (list)."""
    if conn == "mhc_lite":
        e = [math.exp(v) for v in zr]
        s = sum(e)
        P = [[0.0] * n for _ in range(n)]
        for p, pi in enumerate(itertools.permutations(range(n))):
            for i in range(n):
                P[i][pi[i]] += e[p] / s
        return [[P[i][j] for i in range(n)] for j in range(n)]   # A_c = P^T
    Y = [[zr[i * n + j] for j in range(n)] for i in range(n)]
    if conn == "mhc":
        Y = [[math.exp(v) for v in row] for row in Y]
        eps = 0.0
    else:
        Y = [[math.exp(v) / sum(math.exp(u) for u in row) + V4_EPS for v in row] for row in Y]
        eps = V4_EPS

    def cols(Y):
        s = [sum(Y[i][j] for i in range(n)) + eps for j in range(n)]
        return [[Y[i][j] / s[j] for j in range(n)] for i in range(n)]

    def rows(Y):
        s = [sum(row) + eps for row in Y]
        return [[Y[i][j] / s[i] for j in range(n)] for i in range(n)]

    if conn == "mhc":
        for _ in range(ITERATIONS):
            Y = rows(cols(Y))
        return [[Y[i][j] for i in range(n)] for j in range(n)]   # A_c = P^T
    Y = cols(Y)
    for _ in range(ITERATIONS - 1):
        Y = cols(rows(Y))
    return Y                                                      # A_c = comb


def per_token_forward(conn, H, Z, p, m, n, db, dynamic):
    K = logit_count(conn, m, n)
    Dw = n * db
    pre_eps = V4_EPS if conn == "mhc_v4" else 0.0
    Xs, Cs, Hs = [], [], []
    for t in range(H.shape[0]):
        u = H[t].tolist()
        bias = p["bias"].tolist()
        if dynamic:
            r = 1.0 / math.sqrt(sum(v * v for v in u) / Dw + RMS_EPS)
            phi = p["phi"].tolist()
            gate = p["gate"].tolist()
            z = []
            for k in range(K):
                q = r * sum(u[d] * phi[d][k] for d in range(Dw))
                g = 0 if k < n * m else (1 if k < 2 * n * m else 2)
                z.append(gate[g] * q + bias[k])
        else:
            z = bias
        a = [[sigmoid(z[j * m + i]) + pre_eps for i in range(m)] for j in range(n)]
        b = [[2.0 * sigmoid(z[n * m + j * m + k]) for k in range(m)] for j in range(n)]
        Ac = per_token_carry(conn, z[2 * n * m:], n)
        slot = [u[j * db:(j + 1) * db] for j in range(n)]
        seg = [Z[t].tolist()[k * db:(k + 1) * db] for k in range(m)]
        X = [sum(a[j][i] * slot[j][d] for j in range(n)) for i in range(m) for d in range(db)]
        C = [[sum(Ac[j][i] * slot[j][d] for j in range(n)) for d in range(db)] for i in range(n)]
        Ho = [sum(b[j][k] * seg[k][d] for k in range(m)) + C[j][d] for j in range(n) for d in range(db)]
        Xs.append(X)
        Cs.append([v for row in C for v in row])
        Hs.append(Ho)
    return torch.tensor(Xs), torch.tensor(Cs), torch.tensor(Hs)


# --------------------------------------------------------------------------------------------

def param_names(dynamic):
    return ["bias", "phi", "gate"] if dynamic else ["bias"]


def random_params(conn, m, n, db, dynamic):
    K = logit_count(conn, m, n)
    # Pre and post logits N(0, 1): the sigmoids mostly in (0.15, 0.85), never saturated. Carry logits N(0, 3^2):
    # spread enough that 20 Sinkhorn iterations have not converged to double precision (iterate 19 and 20 differ by
    # ~1e-5 typically), so the files pin the iteration count and every iteration's backward.
    p = {"bias": torch.cat([torch.randn(2 * n * m), CARRY_SPREAD * torch.randn(K - 2 * n * m)])}
    if dynamic:
        p["phi"] = 0.3 * torch.randn(n * db, K)
        p["gate"] = 0.7 * torch.randn(3)
    return p


def make_case(conn, m, n, db, dynamic):
    D, Dw = m * db, n * db
    inputs = {
        "H": torch.randn(T, Dw),
        "Z": torch.randn(T, D),
        "gX": torch.randn(T, D),
        "gC": torch.randn(T, Dw),
        "gHout": torch.randn(T, Dw),
    }
    params = random_params(conn, m, n, db, dynamic)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    H = inputs["H"].clone().requires_grad_(True)
    Z = inputs["Z"].clone().requires_grad_(True)
    X, C, Hout = connection_forward(conn, H, Z, leaves, m, n, db, dynamic)
    loss = (X * inputs["gX"]).sum() + (C * inputs["gC"]).sum() + (Hout * inputs["gHout"]).sum()
    loss.backward()

    Xl, Cl, Hl = per_token_forward(conn, inputs["H"], inputs["Z"], params, m, n, db, dynamic)
    for name, got, want in (("X", X, Xl), ("C", C, Cl), ("Hout", Hout, Hl)):
        assert torch.allclose(got.detach(), want, rtol=1e-12, atol=1e-12), f"{conn} {name}: batched != per-token"
    check_doubly_stochastic(conn, logits(conn, inputs["H"], params, m, n, dynamic), m, n)

    out = dict(inputs)
    out.update(params)
    out.update({"X": X, "C": C, "Hout": Hout, "dH": H.grad, "dZ": Z.grad})
    for k, v in leaves.items():
        out["d" + k] = v.grad
    for k, v in out.items():
        assert torch.isfinite(v).all(), f"{conn} {k} not finite"
        assert v.abs().max() > 0, f"{conn} {k} is all zeros"
    return out


def check_doubly_stochastic(conn, z, m, n):
    H_res = maps(conn, z, m, n)[2].detach()
    rows, cols = H_res.sum(dim=-1), H_res.sum(dim=-2)
    one = torch.ones_like(rows)
    assert (H_res >= 0).all()
    if conn == "mhc_lite":   # exactly doubly stochastic
        assert torch.allclose(rows, one, rtol=0, atol=1e-12) and torch.allclose(cols, one, rtol=0, atol=1e-12)
    elif conn == "mhc":      # rows normalised last: exact; columns only converge (slowly for sharp logits)
        assert torch.allclose(rows, one, rtol=0, atol=1e-12), f"mhc rows {rows}"
        assert torch.allclose(cols, one, rtol=0, atol=1e-1), f"mhc columns {cols}"
    else:                    # comb's columns (H_res's rows) normalised last, to within the 1e-6 epsilons
        assert torch.allclose(rows, one, rtol=0, atol=2e-6), f"mhc-v4 rows {rows}"
        assert torch.allclose(cols, one, rtol=0, atol=1e-1), f"mhc-v4 columns {cols}"


def check_gradients_numerically():
    """torch.autograd.gradcheck (central differences) on small cases of every connection, static and dynamic."""
    for conn in CONNECTIONS:
        for dynamic in (False, True):
            m, n, db, tokens = 2, 3, 2, 2
            names = param_names(dynamic)
            p = random_params(conn, m, n, db, dynamic)
            args = [torch.randn(tokens, n * db), torch.randn(tokens, m * db)] + [p[k] for k in names]
            args = [a.clone().requires_grad_(True) for a in args]

            def fn(H, Z, *ps):
                return connection_forward(conn, H, Z, dict(zip(names, ps)), m, n, db, dynamic)

            assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-6), f"gradcheck {conn}"


def check_identity_logits():
    """Sanity of the formulation: with logits that pick the identity carry, C = H (all three connections)."""
    n, m, db = 3, 1, 2
    H = torch.randn(T, n * db)
    for conn in CONNECTIONS:
        R = carry_logit_count(conn, n)
        z = torch.zeros(T, 2 * n * m + R)
        if conn == "mhc_lite":
            z[:, 2 * n * m + 1:] = -60.0
        else:
            z[:, 2 * n * m:] = -60.0 * (1 - torch.eye(n)).reshape(-1)
        H_res = maps(conn, z, m, n)[2]
        assert torch.allclose(H_res @ H.reshape(T, n, db), H.reshape(T, n, db), atol=1e-5), conn


def seed_for(conn, m, n):
    return (10 + list(CONNECTIONS).index(conn)) * 100000 + m * 1000 + n


def connection_file(conn, m, n, db):
    tensors = {}
    for prefix, dynamic in (("static.", False), ("dynamic.", True)):
        for k, v in make_case(conn, m, n, db, dynamic).items():
            tensors[prefix + k] = v
    meta = {"m": m, "n": n, "db": db, "T": T, "connection": CONNECTIONS[conn][0],
            "iterations": 0 if conn == "mhc_lite" else ITERATIONS}
    return tensors, meta


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = pathlib.Path(__file__).resolve().parent.parent / "data"
    parser.add_argument("--out", type=pathlib.Path, default=default_out, help=f"output directory (default {default_out})")
    args = parser.parse_args()
    assert sys.byteorder == "little"

    torch.manual_seed(54321)
    check_gradients_numerically()
    check_identity_logits()
    print("checks passed: gradcheck, identity carry (batched == per-token and doubly stochastic run per file)")

    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for conn, (_, shapes) in CONNECTIONS.items():
        for m, n in shapes:
            path = args.out / f"mhc_{conn}_m{m}_n{n}.safetensors"
            torch.manual_seed(seed_for(conn, m, n))
            tensors, meta = connection_file(conn, m, n, DB)
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
