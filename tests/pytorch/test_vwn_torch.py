"""Tests of vwn_torch (examples/pytorch): vwn's primitives as PyTorch autograd operators.

Run by ctest (tests/CMakeLists.txt) as `python3 -m unittest` with PYTHONPATH=<build>/python and VWN_TRAIN set to
the vwn-train program (for the checkpoint test). Every check compares with an independent pure-PyTorch
implementation of the math of docs/math.md written below (autograd differentiates it), or with finite differences
(torch.autograd.gradcheck, double). Inputs and parameters are fresh random draws each run; the seed is printed and
VWN_TEST_SEED replays it. Outputs are poisoned (VWN_TORCH_POISON=1: they start as NaN).
"""

import math
import os
import random
import subprocess
import sys
import tempfile
import unittest

import torch

# Every output of vwn_torch's operators starts as NaN: an entry an operator fails to write shows as NaN.
os.environ.setdefault("VWN_TORCH_POISON", "1")

import vwn_torch  # noqa: E402
from vwn_torch import _C

# The independent reference of the manifold-constrained families (mHC, mHC-lite, DeepSeek-V4), written from the
# papers: tests/reference/mhc_reference.py. Importing it sets PyTorch's default dtype to float64; it is put back.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
_default_dtype = torch.get_default_dtype()
import mhc_reference  # noqa: E402
torch.set_default_dtype(_default_dtype)

SEED = int(os.environ.get("VWN_TEST_SEED", random.SystemRandom().randrange(2**31)))
print(f"test_vwn_torch: seed {SEED} (VWN_TEST_SEED={SEED} replays it)", flush=True)

# Shapes the tests cover: (1,1) is a plain residual, (2,3) fractional r (no GroupNorm), (4,8) r = 2 with GroupNorm.
SHAPES = [(1, 1), (2, 3), (4, 8)]
EPS = 1e-6  # the epsilon of every normalisation (docs/math.md)


# ----------------------------------------------------------------------------------------------------------------
# The math, written independently in plain PyTorch (docs/math.md); autograd gives its gradients.
# ----------------------------------------------------------------------------------------------------------------

def ref_coefficients(H, m, n, p, dynamic):
    """[a | b] per token: a [T, n, m+n], b [T, n, m]. H: [T, n, db]."""
    T, _, db = H.shape
    if not dynamic:
        return p["alpha"].expand(T, n, m + n), p["beta"].expand(T, n, m)
    u = H / torch.sqrt((H * H).mean(dim=-1, keepdim=True) + EPS)
    Hn = u * p["g"]
    W = torch.cat([p["W_alpha"], p["W_beta"]], dim=1)          # [db, 2m+n]
    P = torch.tanh(Hn @ W / math.sqrt(db))                      # [T, n, 2m+n]
    a = p["S_alpha"] * P[..., : m + n] + p["alpha"]
    b = p["S_beta"] * P[..., m + n:] + p["beta"]
    return a, b


def ref_ghc(H, backbone, m, n, p, dynamic):
    """H_out = b backbone(X) + C for H [..., D']."""
    lead = H.shape[:-1]
    Dw = H.shape[-1]
    db = Dw // n
    Ht = H.reshape(-1, n, db)
    a, b = ref_coefficients(Ht, m, n, p, dynamic)
    mix = torch.einsum("tjk,tjd->tkd", a, Ht)                   # a^T H: [T, m+n, db]
    X = mix[:, :m].reshape(*lead, m * db)
    C = mix[:, m:].reshape(-1, n, db)
    Z = backbone(X).reshape(-1, m, db)
    return (torch.einsum("tjk,tkd->tjd", b, Z) + C).reshape(*lead, Dw)


def ref_embedding(tokens, p, lowrank):
    if lowrank:
        return p["E_base"][tokens] @ p["W_expand"].T
    return p["E"][tokens]


def ref_reduce_head(H, m, n, dim, p):
    if n == m:
        return H
    x = H
    if n % m == 0:
        r = n // m
        g = H.reshape(*H.shape[:-1], r, dim)
        mean = g.mean(dim=-1, keepdim=True)
        var = ((g - mean) ** 2).mean(dim=-1, keepdim=True)      # biased
        x = ((g - mean) / torch.sqrt(var + EPS)).reshape(H.shape) * p["gn_weight"] + p["gn_bias"]
    return x @ p["W_reduce"].T


def ref_mixer(A, B, n, p):
    db = A.shape[-1] // n
    cat = torch.cat([A.reshape(*A.shape[:-1], n, db), B.reshape(*B.shape[:-1], n, db)], dim=-1)
    return (cat @ p["W_mix"].T).reshape(A.shape)


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------

def randomise(module, gen, scale=0.3):
    """Moves every parameter away from its initial value (the dynamic path is dead at initialisation: W = 0)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def params_dict(module, detach_clone=True):
    out = {}
    for name, p in module.named_parameters():
        out[name] = p.detach().clone().requires_grad_(True) if detach_clone else p
    return out


def tol(dtype):
    """(rtol, atol) for comparing two orders of summation of the same values: float64 round-off of sums of at most
    a few hundred products of O(1) values is ~1e-14 relative; float32 is ~1e-6, with a margin for cancellation."""
    return (1e-9, 1e-10) if dtype == torch.float64 else (2e-4, 2e-5)


class Base(unittest.TestCase):
    def setUp(self):
        self.gen = torch.Generator().manual_seed(SEED + hash(self.id()) % 1000)

    def rand(self, *shape, dtype=torch.float64):
        return torch.randn(*shape, generator=self.gen, dtype=dtype)

    def assertClose(self, got, want, dtype, what):
        rtol, atol = tol(dtype)
        scale = max(1.0, want.abs().max().item())
        err = (got - want).abs().max().item()
        self.assertTrue(torch.allclose(got, want, rtol=rtol, atol=atol * scale),
                        f"{what}: max |got - want| = {err:.3e} (scale {scale:.3e}, rtol {rtol}, atol {atol})")

    def trained_checkpoint(self, settings):
        """(tensors, metadata) of a 3-step vwn-train run (width 16, 2 heads, context 16) with `settings` on a small
        corpus; skips where VWN_TRAIN (the program) is not set."""
        program = os.environ.get("VWN_TRAIN")
        if not program:
            self.skipTest("VWN_TRAIN (the vwn-train program) not set")
        with tempfile.TemporaryDirectory() as d:
            corpus = os.path.join(d, "corpus.txt")
            with open(corpus, "w") as f:
                f.write("the quick brown fox jumps over the lazy dog. " * 200)
            out = os.path.join(d, "run")
            subprocess.run([program, "--data", corpus, "--out", out, "--width", "16", "--heads", "2", "--context", "16",
                            "--batch", "2", "--steps", "3", "--warmup", "1", "--eval-every", "3", "--eval-batches",
                            "1", "--sample", "0", "--threads", "1"] + settings, check=True, capture_output=True)
            return vwn_torch.read_checkpoint(os.path.join(out, "checkpoint.safetensors"))

    def compare_grads(self, module, ref_params, inputs, ref_inputs, dtype, what):
        for name, p in module.named_parameters():
            want = ref_params[name].grad
            if want is None:  # the reference did not use it: its gradient is zero
                want = torch.zeros_like(p)
            self.assertClose(p.grad, want, dtype, f"{what}: d{name}")
        for i, (x, r) in enumerate(zip(inputs, ref_inputs)):
            self.assertClose(x.grad, r.grad, dtype, f"{what}: input {i} gradient")



def backbone_of(dim, gen, dtype):
    """A fixed nonlinear backbone Z = tanh(X W) (its weight does not train)."""
    W = torch.randn(dim, dim, generator=gen, dtype=dtype) / math.sqrt(dim)
    return lambda X: torch.tanh(X @ W)


# ----------------------------------------------------------------------------------------------------------------
# gradcheck (finite differences in double) on every module
# ----------------------------------------------------------------------------------------------------------------

class GradCheck(Base):
    def test_ghc(self):
        for (m, n) in SHAPES:
            for dynamic in (False, True):
                with self.subTest(m=m, n=n, dynamic=dynamic):
                    dim = 4 * m
                    ghc = vwn_torch.GHC(m, n, dim, dynamic=dynamic, dtype=torch.float64)
                    randomise(ghc, self.gen)
                    params = [p.detach().clone().requires_grad_(True) for p in ghc.parameters()]
                    H = self.rand(2, 3, n * dim // m).requires_grad_(True)
                    backbone = backbone_of(dim, self.gen, torch.float64)

                    def f(H, *ps):
                        X, C, b = torch.ops.vwn.ghc_width(H, list(ps), m, n, dynamic)
                        return torch.ops.vwn.ghc_depth(backbone(X), C, b, list(ps), m, n, dynamic)

                    self.assertTrue(torch.autograd.gradcheck(f, (H, *params), eps=1e-6, atol=1e-7, rtol=1e-5))

    def test_embedding(self):
        for (m, n) in SHAPES:
            for lowrank in (False, True):
                with self.subTest(m=m, n=n, lowrank=lowrank):
                    dim, vocab = 2 * m, 7
                    emb = vwn_torch.OverWidthEmbedding(m, n, vocab, dim, lowrank=lowrank, dtype=torch.float64)
                    params = [p.detach().clone().requires_grad_(True) for p in emb.parameters()]
                    tokens = torch.randint(0, vocab, (2, 5), generator=self.gen)
                    f = lambda *ps: torch.ops.vwn.overwidth_embedding(tokens, list(ps), m, n, lowrank)
                    self.assertTrue(torch.autograd.gradcheck(f, tuple(params), eps=1e-6, atol=1e-7, rtol=1e-5))

    def test_reduce_head(self):
        for (m, n) in SHAPES + [(1, 2), (2, 4)]:
            with self.subTest(m=m, n=n):
                dim = 4 * m
                head = vwn_torch.ReduceHead(m, n, dim, dtype=torch.float64)
                randomise(head, self.gen)
                params = [p.detach().clone().requires_grad_(True) for p in head.parameters()]
                H = self.rand(3, 2, n * dim // m).requires_grad_(True)
                f = lambda H, *ps: torch.ops.vwn.reduce_head(H, list(ps), m, n)
                self.assertTrue(torch.autograd.gradcheck(f, (H, *params), eps=1e-6, atol=1e-7, rtol=1e-5))

    def test_mtp_mixer(self):
        for (m, n) in SHAPES:
            with self.subTest(m=m, n=n):
                dim = 2 * m
                mix = vwn_torch.MTPMixer(m, n, dim, dtype=torch.float64)
                params = [p.detach().clone().requires_grad_(True) for p in mix.parameters()]
                A = self.rand(2, 3, n * dim // m).requires_grad_(True)
                B = self.rand(2, 3, n * dim // m).requires_grad_(True)
                f = lambda A, B, *ps: torch.ops.vwn.mtp_mixer(A, B, list(ps), m, n)
                self.assertTrue(torch.autograd.gradcheck(f, (A, B, *params), eps=1e-6, atol=1e-7, rtol=1e-5))


# ----------------------------------------------------------------------------------------------------------------
# Agreement with the pure-PyTorch math, float32 and float64, outputs and every gradient
# ----------------------------------------------------------------------------------------------------------------

class Reference(Base):
    def test_ghc(self):
        for dtype in (torch.float32, torch.float64):
            for (m, n) in SHAPES + [(8, 32)]:
                for dynamic in (False, True):
                    with self.subTest(dtype=dtype, m=m, n=n, dynamic=dynamic):
                        dim = 8 * m
                        ghc = vwn_torch.GHC(m, n, dim, dynamic=dynamic, dtype=dtype)
                        randomise(ghc, self.gen)
                        ref_p = params_dict(ghc)
                        backbone = backbone_of(dim, self.gen, dtype)
                        H = self.rand(3, 5, n * dim // m, dtype=dtype)
                        H1, H2 = H.clone().requires_grad_(True), H.clone().requires_grad_(True)
                        out = ghc(H1, backbone)
                        want = ref_ghc(H2, backbone, m, n, ref_p, dynamic)
                        self.assertClose(out, want, dtype, f"{ghc}: H_out")
                        g = self.rand(*H.shape, dtype=dtype)
                        (out * g).sum().backward()
                        (want * g).sum().backward()
                        self.compare_grads(ghc, ref_p, [H1], [H2], dtype, str(ghc))

    def test_ghc_used_twice_in_one_graph(self):
        # Two uses of one sub-layer before one backward: each keeps its own saved coefficients.
        m, n, dim, dtype = 2, 3, 8, torch.float64
        ghc = vwn_torch.DGHC(m, n, dim, dtype=dtype)
        randomise(ghc, self.gen)
        ref_p = params_dict(ghc)
        backbone = backbone_of(dim, self.gen, dtype)
        H = self.rand(4, n * dim // m, dtype=dtype)
        H1, H2 = H.clone().requires_grad_(True), H.clone().requires_grad_(True)
        out = ghc(ghc(H1, backbone), backbone)
        want = ref_ghc(ref_ghc(H2, backbone, m, n, ref_p, True), backbone, m, n, ref_p, True)
        self.assertClose(out, want, dtype, "twice: H_out")
        out.sum().backward()
        want.sum().backward()
        self.compare_grads(ghc, ref_p, [H1], [H2], dtype, "twice")

    def test_width_and_depth_separately(self):
        # X and C both feed the loss directly, and the depth output too: every path's gradient adds up.
        m, n, dim, dtype = 4, 8, 16, torch.float64
        ghc = vwn_torch.DGHC(m, n, dim, dtype=dtype)
        randomise(ghc, self.gen)
        ref_p = params_dict(ghc)
        H = self.rand(6, n * dim // m, dtype=dtype)
        H1, H2 = H.clone().requires_grad_(True), H.clone().requires_grad_(True)
        X, carry = ghc.width(H1)
        out = ghc.depth(torch.sin(X), carry)
        loss = out.square().sum() + X.sum() + 0.5 * carry.C.square().sum()
        # reference: the same quantities
        db = dim // m
        Ht = H2.reshape(-1, n, db)
        a, b = ref_coefficients(Ht, m, n, ref_p, True)
        mix = torch.einsum("tjk,tjd->tkd", a, Ht)
        Xr, Cr = mix[:, :m].reshape(-1, dim), mix[:, m:]
        outr = (torch.einsum("tjk,tkd->tjd", b, torch.sin(Xr).reshape(-1, m, db)) + Cr).reshape(H.shape)
        lossr = outr.square().sum() + Xr.sum() + 0.5 * Cr.square().sum()
        self.assertClose(X, Xr, dtype, "X")
        self.assertClose(carry.C, Cr.reshape(H.shape), dtype, "C")
        loss.backward()
        lossr.backward()
        self.compare_grads(ghc, ref_p, [H1], [H2], dtype, "width+depth")

    def test_depth_output_unused(self):
        # Only X reaches the loss: the depth node never runs backward, its coefficient gradients count as zero.
        m, n, dim, dtype = 2, 3, 8, torch.float64
        ghc = vwn_torch.DGHC(m, n, dim, dtype=dtype)
        randomise(ghc, self.gen)
        ref_p = params_dict(ghc)
        H = self.rand(5, n * dim // m, dtype=dtype)
        H1, H2 = H.clone().requires_grad_(True), H.clone().requires_grad_(True)
        X, carry = ghc.width(H1)
        ghc.depth(X * 2, carry)  # built, not used
        X.square().sum().backward()
        Ht = H2.reshape(-1, n, dim // m)
        a, _ = ref_coefficients(Ht, m, n, ref_p, True)
        torch.einsum("tjk,tjd->tkd", a, Ht)[:, :m].square().sum().backward()
        self.compare_grads(ghc, ref_p, [H1], [H2], dtype, "depth unused")

    def test_embedding(self):
        for dtype in (torch.float32, torch.float64):
            for (m, n) in SHAPES:
                for lowrank in (False, True):
                    with self.subTest(dtype=dtype, m=m, n=n, lowrank=lowrank):
                        dim, vocab = 4 * m, 11
                        emb = vwn_torch.OverWidthEmbedding(m, n, vocab, dim, lowrank=lowrank, dtype=dtype)
                        ref_p = params_dict(emb)
                        tokens = torch.randint(0, vocab, (3, 7), generator=self.gen)  # repeats: summed rows
                        out = emb(tokens)
                        want = ref_embedding(tokens, ref_p, lowrank)
                        self.assertEqual(tuple(out.shape), (3, 7, n * dim // m))
                        self.assertClose(out, want, dtype, "H0")
                        self.assertTrue(torch.equal(emb(tokens.to(torch.int32)), out), "int32 tokens")
                        g = self.rand(*out.shape, dtype=dtype)
                        (out * g).sum().backward()
                        (want * g).sum().backward()
                        self.compare_grads(emb, ref_p, [], [], dtype, "embedding")

    def test_reduce_head(self):
        for dtype in (torch.float32, torch.float64):
            for (m, n) in SHAPES + [(1, 2), (2, 4), (8, 64)]:
                with self.subTest(dtype=dtype, m=m, n=n):
                    dim = 8 * m
                    head = vwn_torch.ReduceHead(m, n, dim, dtype=dtype)
                    randomise(head, self.gen)
                    ref_p = params_dict(head)
                    H = self.rand(2, 5, n * dim // m, dtype=dtype)
                    H1, H2 = H.clone().requires_grad_(True), H.clone().requires_grad_(True)
                    out = head(H1)
                    want = ref_reduce_head(H2, m, n, dim, ref_p)
                    self.assertClose(out, want, dtype, "h")
                    g = self.rand(*out.shape, dtype=dtype)
                    (out * g).sum().backward()
                    (want * g).sum().backward()
                    self.compare_grads(head, ref_p, [H1], [H2], dtype, "reduce head")

    def test_mtp_mixer(self):
        for dtype in (torch.float32, torch.float64):
            for (m, n) in SHAPES:
                with self.subTest(dtype=dtype, m=m, n=n):
                    dim = 8 * m
                    mix = vwn_torch.MTPMixer(m, n, dim, dtype=dtype)
                    ref_p = params_dict(mix)
                    A, B = self.rand(4, n * dim // m, dtype=dtype), self.rand(4, n * dim // m, dtype=dtype)
                    ins = [A.clone().requires_grad_(True), B.clone().requires_grad_(True)]
                    refs = [A.clone().requires_grad_(True), B.clone().requires_grad_(True)]
                    out = mix(*ins)
                    want = ref_mixer(*refs, n, ref_p)
                    self.assertClose(out, want, dtype, "U")
                    g = self.rand(*out.shape, dtype=dtype)
                    (out * g).sum().backward()
                    (want * g).sum().backward()
                    self.compare_grads(mix, ref_p, ins, refs, dtype, "mixer")


# ----------------------------------------------------------------------------------------------------------------
# Modules, parameters and optimisers
# ----------------------------------------------------------------------------------------------------------------

class Modules(Base):
    def test_parameter_names_and_shapes(self):
        ghc = vwn_torch.DGHC(2, 3, 16)
        self.assertEqual([(k, tuple(v.shape)) for k, v in ghc.named_parameters()],
                         [("alpha", (3, 5)), ("beta", (3, 2)), ("W_alpha", (8, 5)), ("W_beta", (8, 2)),
                          ("S_alpha", (3, 5)), ("S_beta", (3, 2)), ("g", (8,))])
        self.assertEqual(ghc.weight_decay_names(), ["W_alpha", "W_beta", "S_alpha", "S_beta"])
        self.assertEqual([k for k, _ in vwn_torch.GHC(2, 3, 16).named_parameters()], ["alpha", "beta"])
        self.assertEqual([(k, tuple(v.shape)) for k, v in vwn_torch.ReduceHead(4, 8, 16).named_parameters()],
                         [("gn_weight", (32,)), ("gn_bias", (32,)), ("W_reduce", (16, 32))])
        self.assertEqual(list(vwn_torch.ReduceHead(2, 2, 16).parameters()), [])
        self.assertEqual([(k, tuple(v.shape)) for k, v in vwn_torch.OverWidthEmbedding(2, 3, 10, 16, lowrank=True).named_parameters()],
                         [("E_base", (10, 16)), ("W_expand", (24, 16))])
        self.assertEqual([(k, tuple(v.shape)) for k, v in vwn_torch.MTPMixer(2, 3, 16).named_parameters()],
                         [("W_mix", (8, 16))])

    def test_initialisation_is_the_papers(self):
        # (1,1) at initialisation is exactly x + T(x); (2,3) carries H and adds Z[j mod m] to slot j.
        ghc = vwn_torch.DGHC(1, 1, 8, dtype=torch.float64)
        H = self.rand(5, 8)
        self.assertTrue(torch.equal(ghc(H, torch.sin), H + torch.sin(H)))
        ghc = vwn_torch.GHC(2, 3, 8, dtype=torch.float64)
        H = self.rand(5, 12)
        Z = torch.cos(H[:, :8])
        want = H.clone()
        for j in range(3):
            want[:, 4 * j:4 * j + 4] += Z[:, 4 * (j % 2):4 * (j % 2) + 4]
        self.assertTrue(torch.equal(ghc(H, torch.cos), want))

    def test_optimiser_updates_reach_the_primitive(self):
        # AdamW updates the parameters in place (shared memory); the next forward must use the new values, and
        # load_state_dict (copy_) too.
        m, n, dim, dtype = 2, 3, 8, torch.float64
        ghc = vwn_torch.DGHC(m, n, dim, dtype=dtype)
        backbone = backbone_of(dim, self.gen, dtype)
        opt = torch.optim.AdamW(ghc.parameters(), lr=0.05)
        H = self.rand(6, n * dim // m, dtype=dtype)
        for _ in range(3):
            opt.zero_grad()
            ghc(H, backbone).square().sum().backward()
            opt.step()
        self.assertClose(ghc(H, backbone), ref_ghc(H, backbone, m, n, params_dict(ghc), True), dtype, "after AdamW")
        other = vwn_torch.DGHC(m, n, dim, dtype=dtype)
        other.load_state_dict(ghc.state_dict())
        self.assertTrue(torch.equal(other(H, backbone), ghc(H, backbone)), "after load_state_dict")

    def test_replaced_parameter_is_used(self):
        ghc = vwn_torch.GHC(2, 3, 8, dtype=torch.float64)
        ghc.alpha = torch.nn.Parameter(self.rand(3, 5))  # new memory: copied in at the next forward
        H = self.rand(4, 12)
        self.assertClose(ghc(H, torch.tanh), ref_ghc(H, torch.tanh, 2, 3, params_dict(ghc), False), torch.float64,
                         "replaced alpha")

    def test_errors_name_expected_and_got(self):
        ghc = vwn_torch.DGHC(2, 3, 16)
        cases = [
            (lambda: vwn_torch.DGHC(3, 5, 15), ValueError, "expected one of the shapes this build compiled, " + _C.compiled_shapes()),
            (lambda: vwn_torch.DGHC(2, 3, 15), ValueError, "dim: expected a positive multiple of m = 2, got 15"),
            (lambda: ghc(torch.zeros(4, 25), torch.tanh), ValueError, "H: expected a last dimension D' that is a positive multiple of n = 3, got shape [4, 25]"),
            (lambda: ghc(torch.zeros(4, 27), torch.tanh), ValueError, "parameter W_alpha: expected shape [9, 5], got [8, 5]"),
            (lambda: ghc(torch.zeros(4, 24, dtype=torch.float64), torch.tanh), TypeError, "H: expected dtype float32 (the parameters'), got float64"),
            (lambda: ghc(torch.zeros(0, 24), torch.tanh), ValueError, "H: expected at least one token"),
            (lambda: ghc(torch.zeros(4, 24), lambda X: X[:2]), ValueError, "Z: expected the leading dimensions of its partner, [4], got [2]"),
            (lambda: vwn_torch.OverWidthEmbedding(2, 3, 10, 16)(torch.tensor([1, 10])), IndexError,
             "tokens: expected 0 <= token < vocabulary size 10, got 10 at flat position 1"),
            (lambda: vwn_torch.OverWidthEmbedding(2, 3, 10, 16)(torch.tensor([2**32 + 1])), IndexError, "got 4294967297"),
            (lambda: vwn_torch.OverWidthEmbedding(2, 3, 10, 16)(torch.tensor([1.0])), TypeError, "tokens: expected dtype int64 or int32"),
            (lambda: vwn_torch.MTPMixer(2, 3, 16)(torch.zeros(4, 24), torch.zeros(5, 24)), ValueError, "B: expected the leading dimensions"),
            (lambda: vwn_torch.DGHC(2, 3, 16, dtype=torch.float16), TypeError, "expected torch.float32 or torch.float64"),
        ]
        for fn, kind, text in cases:
            with self.subTest(text=text):
                with self.assertRaises(kind) as e:
                    fn()
                self.assertIn(text, str(e.exception))

    def test_converted_module_computes_in_its_new_dtype(self):
        # module.double() converts the parameters; the operators compute in the parameters' dtype.
        m, n, dim = 2, 3, 8
        ghc = vwn_torch.DGHC(m, n, dim)
        randomise(ghc, self.gen)
        ghc = ghc.double()
        H = self.rand(4, 12)
        self.assertClose(ghc(H, torch.tanh), ref_ghc(H, torch.tanh, m, n, params_dict(ghc), True), torch.float64,
                         "after .double()")
        with self.assertRaises(TypeError) as e:
            ghc(H.float(), torch.tanh)
        self.assertIn("H: expected dtype float64 (the parameters'), got float32", str(e.exception))

    def test_carry_feeds_several_depths(self):
        # One width connection, two depth connections: the gradients of b from both add up in the width backward.
        m, n, dim, dtype = 2, 3, 8, torch.float64
        ghc = vwn_torch.DGHC(m, n, dim, dtype=dtype)
        randomise(ghc, self.gen)
        ref_p = params_dict(ghc)
        H = self.rand(5, n * dim // m, dtype=dtype)
        H1, H2 = H.clone().requires_grad_(True), H.clone().requires_grad_(True)
        X, carry = ghc.width(H1)
        loss = ghc.depth(torch.sin(X), carry).square().sum() + ghc.depth(torch.cos(X), carry).sum()
        loss.backward()
        lossr = ref_ghc(H2, torch.sin, m, n, ref_p, True).square().sum() + ref_ghc(H2, torch.cos, m, n, ref_p, True).sum()
        lossr.backward()
        self.compare_grads(ghc, ref_p, [H1], [H2], dtype, "two depths")


# ----------------------------------------------------------------------------------------------------------------
# What ordinary PyTorch code does with a module: substituted and parametrised parameters, several backward passes
# over one graph, double backward, tracing and scripting, copies, autocast, strided inputs
# ----------------------------------------------------------------------------------------------------------------

class Double(torch.nn.Module):
    """A parametrisation: the parameter used is twice the stored one."""

    def forward(self, x):
        return 2 * x


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class SmallModel(torch.nn.Module):
    """Every module in one small model (picklable: defined at module level)."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.embed = vwn_torch.OverWidthEmbedding(2, 3, 17, 8, dtype=dtype)
        self.ghc = vwn_torch.DGHC(2, 3, 8, dtype=dtype)
        self.mhc = vwn_torch.DGHC(2, 3, 8, dtype=dtype, connection="mhc")
        self.mlp = torch.nn.Linear(8, 8).to(dtype)
        self.head = vwn_torch.ReduceHead(2, 3, 8, dtype=dtype)
        self.mix = vwn_torch.MTPMixer(2, 3, 8, dtype=dtype)

    def forward(self, tokens):
        H = self.embed(tokens)
        X, carry = self.ghc.width(H)
        H = self.ghc.depth(torch.tanh(self.mlp(X)), carry)
        X, carry = self.mhc.width(H)
        H = self.mhc.depth(torch.sin(X), carry)
        return self.head(self.mix(H, H))


class PyTorchUse(Base):
    def assertUnchanged(self, module, before, what):
        for k, v in module.state_dict().items():
            self.assertTrue(torch.equal(v, before[k]), f"{what}: parameter {k} changed")

    def test_functional_call_leaves_the_module_unchanged(self):
        from torch.nn.utils import stateless
        m, n, dim, dtype = 2, 3, 8, torch.float64
        ghc = vwn_torch.DGHC(m, n, dim, dtype=dtype)
        randomise(ghc, self.gen)
        before = snapshot(ghc)
        other = {k: v.detach() + 0.25 * self.rand(*v.shape) for k, v in ghc.named_parameters()}
        H = self.rand(4, n * dim // m)
        out = stateless.functional_call(ghc, other, (H, torch.tanh))
        self.assertClose(out, ref_ghc(H, torch.tanh, m, n, other, True), dtype, "functional_call output")
        self.assertUnchanged(ghc, before, "functional_call")
        self.assertClose(ghc(H, torch.tanh), ref_ghc(H, torch.tanh, m, n, before, True), dtype, "own parameters")
        # The operators themselves only read what they are handed.
        ps = [p.detach().clone() for p in ghc.parameters()]
        copies = [p.clone() for p in ps]
        X, C, b = torch.ops.vwn.ghc_width(H, ps, m, n, True)
        torch.ops.vwn.ghc_depth(X, C, b, ps, m, n, True).sum()
        for p, c in zip(ps, copies):
            self.assertTrue(torch.equal(p, c), "operator wrote a parameter it was handed")

    def test_parametrization_computes_with_the_parametrised_value(self):
        from torch.nn.utils import parametrize
        m, n, dim, dtype = 2, 3, 8, torch.float64
        for make in (lambda: vwn_torch.GHC(m, n, dim, dtype=dtype), lambda: vwn_torch.DGHC(m, n, dim, dtype=dtype)):
            ghc = make()
            randomise(ghc, self.gen)
            stored = ghc.alpha.detach().clone()
            parametrize.register_parametrization(ghc, "alpha", Double())
            H = self.rand(4, n * dim // m).requires_grad_(True)
            for _ in range(3):
                used = {name: getattr(ghc, name) for name in ghc._vwn_names}  # alpha is 2 * the stored value
                want = ref_ghc(H, torch.tanh, m, n, used, ghc.dynamic)
                self.assertClose(ghc(H, torch.tanh), want, dtype, "parametrised alpha")
            self.assertTrue(torch.equal(ghc.parametrizations.alpha.original.detach(), stored),
                            "the stored alpha changed")
            # Training through the parametrisation: the gradient reaches the stored value (times 2).
            ghc(H, torch.tanh).sum().backward()
            self.assertIsNotNone(ghc.parametrizations.alpha.original.grad)

    def test_carry_of_another_module_is_refused(self):
        a, b = vwn_torch.DGHC(2, 3, 8), vwn_torch.DGHC(2, 3, 8)
        before_a, before_b = snapshot(a), snapshot(b)
        X, carry = a.width(torch.randn(4, 12))
        with self.assertRaises(ValueError) as e:
            b.depth(X, carry)
        self.assertIn(f"expected the carry of this module's width connection (module #{b._owner}), got the carry "
                      f"of module #{a._owner}", str(e.exception))
        self.assertUnchanged(a, before_a, "module a")
        self.assertUnchanged(b, before_b, "module b")
        c = vwn_torch.GHC(2, 3, 8)
        with self.assertRaises(ValueError) as e:
            c.depth(X, carry)
        self.assertIn("expected the carry of a width connection of vwn::ghc<2,3>", str(e.exception))
        with self.assertRaises(ValueError) as e:
            a.depth(X, vwn_torch.GHCCarry(carry.C, carry.b.clone()))
        self.assertIn("b: expected the very tensor b returned by a width connection", str(e.exception))

    def grads(self, ghc, H, loss_of):
        """The gradients of loss_of(...) with respect to H and every parameter, on a fresh graph."""
        H = H.clone().requires_grad_(True)
        ghc.zero_grad()
        loss_of(H).backward()
        return [H.grad.clone()] + [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                                  for p in ghc.parameters()]

    def test_several_backward_passes_over_one_graph(self):
        m, n, dim, dtype = 2, 3, 8, torch.float64
        for dynamic in (False, True):
            with self.subTest(dynamic=dynamic):
                ghc = vwn_torch.GHC(m, n, dim, dynamic=dynamic, dtype=dtype)
                randomise(ghc, self.gen)
                H0 = self.rand(5, n * dim // m)
                params = list(ghc.parameters())

                def two_losses(H):
                    X, carry = ghc.width(H)
                    out = ghc.depth(torch.sin(X), carry)
                    return X.square().sum(), out.square().sum()

                want_x = self.grads(ghc, H0, lambda H: two_losses(H)[0])  # X alone: the depth never reached
                want_out = self.grads(ghc, H0, lambda H: two_losses(H)[1])
                # One graph, the depth loss first, then the loss through X alone: the second must not see the
                # first's depth state.
                H = H0.clone().requires_grad_(True)
                loss_x, loss_out = two_losses(H)
                got_out = torch.autograd.grad(loss_out, [H] + params, retain_graph=True, allow_unused=True)
                got_x = torch.autograd.grad(loss_x, [H] + params, retain_graph=True, allow_unused=True)
                got_out2 = torch.autograd.grad(loss_out, [H] + params, allow_unused=True)
                for what, got, want in (("depth loss", got_out, want_out), ("X loss after", got_x, want_x),
                                        ("depth loss again", got_out2, want_out)):
                    for i, (g, w) in enumerate(zip(got, want)):
                        g = torch.zeros_like(w) if g is None else g
                        self.assertClose(g, w, dtype, f"{what}: gradient {i}")

    def test_double_backward_raises(self):
        m, n, dim, dtype = 2, 3, 8, torch.float64
        ghc = vwn_torch.DGHC(m, n, dim, dtype=dtype)
        randomise(ghc, self.gen)
        H = self.rand(3, n * dim // m).requires_grad_(True)
        with self.assertRaises(RuntimeError) as e:
            torch.autograd.functional.hessian(lambda H: ghc(H, torch.tanh).square().sum(), H)
        self.assertIn("vwn::dghc<2,3> (D = 8, float64)", str(e.exception))
        self.assertIn("double backward is not implemented", str(e.exception))
        with self.assertRaises(RuntimeError) as e:
            torch.autograd.gradgradcheck(lambda H: ghc(H, torch.tanh), (H,))
        self.assertIn("double backward is not implemented", str(e.exception))
        # A gradient penalty through a backbone inside the GHC: refused, not a silently wrong number.
        W = self.rand(dim, dim).requires_grad_(True)
        out = ghc(H, lambda X: torch.tanh(X @ W))
        (gH,) = torch.autograd.grad(out.sum(), H, create_graph=True)
        with self.assertRaises(RuntimeError) as e:
            gH.square().sum().backward()
        self.assertIn("double backward is not implemented", str(e.exception))
        for make, call in ((lambda: vwn_torch.ReduceHead(4, 8, 16, dtype=dtype), lambda mod, x: mod(x)),
                           (lambda: vwn_torch.MTPMixer(4, 8, 16, dtype=dtype), lambda mod, x: mod(x, x))):
            mod = make()
            x = self.rand(3, 32).requires_grad_(True)
            (g,) = torch.autograd.grad(call(mod, x).square().sum(), x, create_graph=True)
            with self.assertRaises(RuntimeError) as e:
                g.sum().backward()
            self.assertIn("double backward is not implemented", str(e.exception))

    def small_model(self, dtype=torch.float32):
        model = SmallModel(dtype)
        randomise(model, self.gen)
        return model

    def test_trace_records_the_operators(self):
        model = self.small_model()
        tokens = torch.randint(0, 17, (2, 5), generator=self.gen)
        traced = torch.jit.trace(model, (tokens,), check_trace=False)
        graph = str(traced.inlined_graph)
        for op in ("vwn::overwidth_embedding", "vwn::ghc_width", "vwn::ghc_depth", "vwn::reduce_head", "vwn::mtp_mixer"):
            self.assertIn(op, graph)
        new = torch.randint(0, 17, (3, 4), generator=self.gen)
        self.assertTrue(torch.equal(traced(new), model(new)), "traced != eager on a new input")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "traced.pt")
            traced.save(path)
            loaded = torch.jit.load(path)
        self.assertTrue(torch.equal(loaded(new), model(new)), "saved and loaded trace != eager")
        # The traced model trains: gradients through the recorded operators equal eager ones.
        traced(new).square().sum().backward()
        want = {k: p.grad.clone() for k, p in model.named_parameters()}
        model.zero_grad()
        model(new).square().sum().backward()
        for k, p in model.named_parameters():
            self.assertClose(p.grad, want[k], torch.float32, f"traced gradient of {k}")

    def test_script_compiles_a_model_that_calls_them(self):
        model = self.small_model()
        scripted = torch.jit.script(model)
        new = torch.randint(0, 17, (3, 4), generator=self.gen)
        self.assertTrue(torch.equal(scripted(new), model(new)), "scripted != eager")

    def test_onnx_export_refuses(self):
        model = self.small_model()
        tokens = torch.randint(0, 17, (2, 5), generator=self.gen)
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaises(Exception) as e:
                torch.onnx.export(model, (tokens,), os.path.join(d, "model.onnx"))
        self.assertIn("vwn::", str(e.exception))

    def test_deepcopy_pickle_and_averaged_model(self):
        import copy
        import io
        model = self.small_model(torch.float64)
        tokens = torch.randint(0, 17, (2, 5), generator=self.gen)
        want = model(tokens)
        twin = copy.deepcopy(model)
        self.assertTrue(torch.equal(twin(tokens), want), "deepcopy")
        self.assertNotEqual(twin.ghc._owner, model.ghc._owner)
        with torch.no_grad():
            twin.ghc.alpha.add_(1.0)
        self.assertTrue(torch.equal(model(tokens), want), "deepcopy shares memory with the original")
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        self.assertTrue(torch.equal(torch.load(buffer)(tokens), want), "torch.save / torch.load of the module")
        ema = torch.optim.swa_utils.AveragedModel(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            model(tokens).square().sum().backward()
            opt.step()
            ema.update_parameters(model)
        self.assertTrue(torch.isfinite(ema(tokens)).all())

    def test_bf16_autocast(self):
        m, n, dim = 2, 3, 8
        ghc = vwn_torch.DGHC(m, n, dim)
        randomise(ghc, self.gen)
        mlp = torch.nn.Linear(dim, dim)
        head = vwn_torch.ReduceHead(m, n, dim)
        H = torch.randn(4, n * dim // m, generator=self.gen).requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = head(ghc(H, lambda X: torch.tanh(mlp(X))))  # the backbone returns bfloat16
        self.assertEqual(out.dtype, torch.float32)
        out.sum().backward()
        # The same computation without autocast: the backbone in bfloat16 by hand, its output cast to float32.
        H2 = H.detach().clone().requires_grad_(True)
        W, bias = mlp.weight.bfloat16(), mlp.bias.bfloat16()
        want = head(ghc(H2, lambda X: torch.tanh(torch.nn.functional.linear(X.bfloat16(), W, bias)).float()))
        self.assertTrue(torch.equal(out, want), "autocast output")
        want.sum().backward()
        self.assertTrue(torch.equal(H.grad, H2.grad), "autocast gradient")

    def test_non_contiguous_inputs_are_copied(self):
        m, n, dim, dtype = 2, 3, 8, torch.float64
        ghc = vwn_torch.DGHC(m, n, dim, dtype=dtype)
        randomise(ghc, self.gen)
        H = self.rand(n * dim // m, 5).T  # strided
        self.assertFalse(H.is_contiguous())
        self.assertTrue(torch.equal(ghc(H, torch.tanh), ghc(H.contiguous(), torch.tanh)))
        mix = vwn_torch.MTPMixer(m, n, dim, dtype=dtype)
        A = self.rand(12, 4).T
        self.assertTrue(torch.equal(mix(A, A), mix(A.contiguous(), A.contiguous())))
        emb = vwn_torch.OverWidthEmbedding(m, n, 9, dim, dtype=dtype)
        tok = torch.randint(0, 9, (4, 3), generator=self.gen).T
        self.assertTrue(torch.equal(emb(tok), emb(tok.contiguous())))

    def test_initial_values_follow_torch_manual_seed(self):
        torch.manual_seed(5)
        a = vwn_torch.OverWidthEmbedding(2, 3, 10, 8)
        b = vwn_torch.OverWidthEmbedding(2, 3, 10, 8)
        self.assertFalse(torch.equal(a.E, b.E), "two embeddings built in a row are equal")
        torch.manual_seed(5)
        c = vwn_torch.OverWidthEmbedding(2, 3, 10, 8)
        self.assertTrue(torch.equal(a.E, c.E), "the same torch seed gives other values")
        self.assertTrue(torch.equal(vwn_torch.OverWidthEmbedding(2, 3, 10, 8, seed=3).E,
                                    vwn_torch.OverWidthEmbedding(2, 3, 10, 8, seed=3).E), "an explicit seed")

    def test_reset_parameters(self):
        ghc = vwn_torch.DGHC(2, 3, 8)
        fresh = snapshot(ghc)
        randomise(ghc, self.gen)
        ghc.reset_parameters()
        self.assertUnchanged(ghc, fresh, "GHC reset")
        for module in (vwn_torch.OverWidthEmbedding(2, 3, 10, 8), vwn_torch.ReduceHead(4, 8, 8),
                       vwn_torch.MTPMixer(2, 3, 8)):
            before = snapshot(module)
            module.reset_parameters()
            after = snapshot(module)
            self.assertTrue(any(not torch.equal(before[k], after[k]) for k in before), f"{module} not redrawn")


# ----------------------------------------------------------------------------------------------------------------
# The manifold-constrained connection families (docs/mhc.md): finite differences, the independent reference of
# tests/reference/mhc_reference.py, the modules' parameters and errors
# ----------------------------------------------------------------------------------------------------------------

# (family, (m, n)): the paper's (1,4), fractional (2,3), and (4,8) for the Sinkhorn families (mHC-lite's n! logits
# stop at n = 5).
MANIFOLD_CASES = [(c, s) for c in ("mhc", "mhc-lite", "mhc-v4") for s in ((1, 4), (2, 3))] + \
                 [("mhc", (4, 8)), ("mhc-v4", (4, 8))]
MANIFOLD_REF = {"mhc": "mhc", "mhc-lite": "mhc_lite", "mhc-v4": "mhc_v4"}  # the reference's names


def randomise_manifold(module, gen):
    """Parameters away from the initial identity, as the reference's own draws are: pre and post logits N(0, 1)
    (sigmoids not saturated), carry logits N(0, 2^2) (Sinkhorn not converged after 20 iterations, so every
    iteration's backward counts), phi N(0, 0.3^2), gates N(0, 0.7^2)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = {"b_pre": 1.0, "b_post": 1.0, "b_res": 2.0, "phi": 0.3, "gate": 0.7}[name]
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64))


def ref_manifold(conn, H, backbone, m, n, p, dynamic):
    """(X, H_out) of a manifold GHC from the reference's maps, in float64: H [..., D'], p the module's parameters
    (float64 leaves). The reference takes the biases as one vector [b_pre | b_post | b_res]."""
    name = MANIFOLD_REF[conn]
    lead, Dw = H.shape[:-1], H.shape[-1]
    db = Dw // n
    q = {"bias": torch.cat([p["b_pre"].reshape(-1), p["b_post"].reshape(-1), p["b_res"].reshape(-1)])}
    if dynamic:
        q["phi"], q["gate"] = p["phi"], p["gate"]
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the reference builds its constant tensors in the default dtype
    try:
        Ht = H.reshape(-1, Dw)
        H_pre, H_post, H_res = mhc_reference.maps(name, mhc_reference.logits(name, Ht, q, m, n, dynamic), m, n)
        x = Ht.reshape(-1, n, db)
        X = (H_pre @ x).reshape(*lead, m * db)
        Z = backbone(X).reshape(-1, m, db)
        out = (H_post @ Z + H_res @ x).reshape(*lead, Dw)
    finally:
        torch.set_default_dtype(old)
    return X, out


class Manifold(Base):
    def test_gradcheck(self):
        # Central differences in double of every input and parameter, through both connections and a nonlinear
        # backbone; gradcheck's tolerances as for the vwn family above (the maps are smooth, the values O(1)).
        for conn, (m, n) in MANIFOLD_CASES:
            for dynamic in (False, True):
                with self.subTest(connection=conn, m=m, n=n, dynamic=dynamic):
                    dim = 2 * m
                    ghc = vwn_torch.GHC(m, n, dim, dynamic=dynamic, dtype=torch.float64, connection=conn)
                    randomise_manifold(ghc, self.gen)
                    params = [p.detach().clone().requires_grad_(True) for p in ghc.parameters()]
                    H = self.rand(2, 3, n * dim // m).requires_grad_(True)
                    backbone = backbone_of(dim, self.gen, torch.float64)

                    def f(H, *ps):
                        X, C, b = torch.ops.vwn.ghc_width(H, list(ps), m, n, dynamic, 0, conn)
                        return torch.ops.vwn.ghc_depth(backbone(X), C, b, list(ps), m, n, dynamic, 0, conn)

                    self.assertTrue(torch.autograd.gradcheck(f, (H, *params), eps=1e-6, atol=1e-7, rtol=1e-5))

    def test_reference(self):
        # Outputs and every gradient against the reference computed in float64 from the same (float32-representable)
        # values. float64: tol(float64), two orders of summation; float32: tol(float32), float32 round-off of the 40
        # normalisations and of the sums (the C++ float-against-double checks of test_mhc.cpp stay within 1e-4).
        for dtype in (torch.float32, torch.float64):
            for conn, (m, n) in MANIFOLD_CASES:
                for dynamic in (False, True):
                    with self.subTest(dtype=dtype, connection=conn, m=m, n=n, dynamic=dynamic):
                        dim = 4 * m
                        ghc = vwn_torch.GHC(m, n, dim, dynamic=dynamic, dtype=dtype, connection=conn)
                        randomise_manifold(ghc, self.gen)
                        ref_p = {k: v.detach().double().requires_grad_(True) for k, v in ghc.named_parameters()}
                        W = torch.randn(dim, dim, generator=self.gen, dtype=torch.float64).to(dtype) / math.sqrt(dim)
                        backbone = lambda X: torch.tanh(X @ W.to(X.dtype))
                        H = self.rand(3, 4, n * dim // m, dtype=dtype)
                        H1, H2 = H.clone().requires_grad_(True), H.double().requires_grad_(True)
                        X, carry = ghc.width(H1)
                        out = ghc.depth(backbone(X), carry)
                        Xr, want = ref_manifold(conn, H2, backbone, m, n, ref_p, dynamic)
                        self.assertEqual(out.dtype, dtype)
                        self.assertClose(X.double(), Xr, dtype, f"{ghc}: X")
                        self.assertClose(out.double(), want, dtype, f"{ghc}: H_out")
                        g = self.rand(*H.shape, dtype=dtype)
                        (out * g).sum().backward()
                        (want * g.double()).sum().backward()
                        for name, p in ghc.named_parameters():
                            self.assertClose(p.grad.double(), ref_p[name].grad, dtype, f"{ghc}: d{name}")
                        self.assertClose(H1.grad.double(), H2.grad, dtype, f"{ghc}: dH")

    def test_parameter_names_shapes_and_decay(self):
        ghc = vwn_torch.DGHC(2, 3, 16, connection="mhc")
        K = 2 * 3 * 2 + 9
        self.assertEqual([(k, tuple(v.shape)) for k, v in ghc.named_parameters()],
                         [("b_pre", (3, 2)), ("b_post", (3, 2)), ("b_res", (3, 3)), ("phi", (24, K)), ("gate", (3,))])
        self.assertEqual(ghc.weight_decay_names(), ["phi", "gate"])
        lite = vwn_torch.GHC(1, 4, 16, connection="mhc-lite")
        self.assertEqual([(k, tuple(v.shape)) for k, v in lite.named_parameters()],
                         [("b_pre", (4, 1)), ("b_post", (4, 1)), ("b_res", (24,))])
        self.assertEqual(lite.weight_decay_names(), [])
        self.assertEqual(vwn_torch.connections(), ["vwn", "mhc", "mhc-lite", "mhc-v4"])
        self.assertIn("connection='mhc-lite'", repr(lite))

    def test_initialisation_is_the_identity_within_the_logit_gap(self):
        # At initialisation the logits of every coefficient the VWN identity (eq. 15, 16) sets to 0 sit 8 below the
        # others. The backbone output Z is fixed (the backbone ignores X), so H_out - (H + Z[j mod m]) comes from the
        # post map (m - 1 entries of 2 sigmoid(-8) < 2 e^-8 per slot; the 1s are 2 sigmoid(0) = 1 exactly) and the
        # carry, whose diagonal loses and whose column gains at most (n! - 1) e^-8 each (mHC-lite's identity weight
        # against the other n! - 1 permutations: the largest deficit of the three families; Sinkhorn's is (n - 1)
        # e^-8). Bound: 2 (n! - 1 + m) e^-8 max(|H|, |Z|).
        m, n, dim = 2, 3, 8
        for conn in ("mhc", "mhc-lite", "mhc-v4"):
            for dynamic in (False, True):
                with self.subTest(connection=conn, dynamic=dynamic):
                    ghc = vwn_torch.GHC(m, n, dim, dynamic=dynamic, dtype=torch.float64, connection=conn)
                    H = self.rand(5, n * dim // m)
                    Z = torch.cos(H[:, :dim])
                    want = H.clone()
                    db = dim // m
                    for j in range(n):
                        want[:, db * j:db * (j + 1)] += Z[:, db * (j % m):db * (j % m + 1)]
                    bound = 2 * (math.factorial(n) - 1 + m) * math.exp(-8) * max(H.abs().max().item(), 1.0)
                    err = (ghc(H, lambda X: Z) - want).abs().max().item()
                    self.assertLess(err, bound)
                    self.assertGreater(err, 0.0)  # the manifold maps never reach exact 0 and 1

    def test_errors_name_expected_and_got(self):
        mhc = vwn_torch.DGHC(1, 4, 8, connection="mhc")
        H = torch.randn(3, 32, generator=self.gen)
        X, carry = mhc.width(H)
        cases = [
            (lambda: vwn_torch.DGHC(1, 4, 8, connection="sinkhorn"), ValueError,
             "connection: expected one of vwn mhc mhc-lite mhc-v4, got 'sinkhorn'"),
            (lambda: vwn_torch.GHC(4, 8, 16, connection="mhc-lite"), ValueError,
             "connection 'mhc-lite': expected n <= 5 (mhc-lite mixes all n! permutation matrices), got n = 8"),
            (lambda: torch.ops.vwn.ghc_width(H, mhc._params(), 1, 4, True, 0, "vwn"), ValueError,
             "params: expected 7 tensors (alpha, beta, W_alpha, W_beta, S_alpha, S_beta, g), got 5"),
            (lambda: torch.ops.vwn.ghc_width(H, mhc._params(), 1, 4, True, 0, "mhc-lite"), ValueError,
             "parameter b_res: expected shape [24], got [4, 4]"),
            (lambda: torch.ops.vwn.ghc_depth(X, carry.C, carry.b, mhc._params(), 1, 4, True, mhc._owner, "mhc-v4"),
             ValueError, "carry: expected the carry of a width connection of vwn::dghc<1,4,mhc-v4> (D = 8, float32), "
                         "got the carry of vwn::dghc<1,4,mhc> (D = 8, float32)"),
        ]
        for fn, kind, text in cases:
            with self.subTest(text=text):
                with self.assertRaises(kind) as e:
                    fn()
                self.assertIn(text, str(e.exception))

    def test_reset_parameters_and_optimiser(self):
        ghc = vwn_torch.DGHC(2, 3, 8, connection="mhc-lite", dtype=torch.float64)
        fresh = snapshot(ghc)
        backbone = backbone_of(8, self.gen, torch.float64)
        H = self.rand(6, 12)
        opt = torch.optim.AdamW(ghc.parameters(), lr=0.05)
        for _ in range(3):
            opt.zero_grad()
            ghc(H, backbone).square().sum().backward()
            opt.step()
        _, want = ref_manifold("mhc-lite", H, backbone, 2, 3, params_dict(ghc), True)
        self.assertClose(ghc(H, backbone), want, torch.float64, "after AdamW")
        ghc.reset_parameters()
        for k, v in ghc.state_dict().items():
            self.assertTrue(torch.equal(v, fresh[k]), f"reset: {k}")

    def test_checkpoint_of_vwn_train_loads(self):
        # vwn-train --connection mhc writes the manifold tensors under the modules' names; the loaded module
        # computes what the reference computes from the flat tensors.
        tensors, meta = self.trained_checkpoint(["--m", "1", "--n", "4", "--layers", "1", "--dynamic",
                                                 "--connection", "mhc"])
        self.assertEqual(meta["config.connection"], "mhc")
        m, n, dim = int(meta["config.m"]), int(meta["config.n"]), int(meta["config.width"])
        for sub in ("ghc_attn.", "ghc_ffn."):
            prefix = "model.blocks.0." + sub
            ghc = vwn_torch.DGHC(m, n, dim, connection=meta["config.connection"])
            ghc.load_vwn(tensors, prefix)
            names = sorted(k[len(prefix):] for k in tensors if k.startswith(prefix))
            self.assertEqual(names, sorted(k for k, _ in ghc.named_parameters()))
            ref_p = {k: tensors[prefix + k].double().reshape(v.shape) for k, v in ghc.named_parameters()}
            H = self.rand(7, n * dim // m, dtype=torch.float32)
            _, want = ref_manifold("mhc", H.double(), torch.tanh, m, n, ref_p, True)
            self.assertClose(ghc(H, torch.tanh).double(), want, torch.float32, prefix)


# ----------------------------------------------------------------------------------------------------------------
# vwn-train checkpoints load into the modules
# ----------------------------------------------------------------------------------------------------------------

class Checkpoint(Base):
    def test_checkpoint_loads_into_modules(self):
        tensors, meta = self.trained_checkpoint(["--m", "2", "--n", "4", "--layers", "2", "--lowrank", "--mtp"])
        m, n, dim = int(meta["config.m"]), int(meta["config.n"]), int(meta["config.width"])
        dynamic, lowrank = meta["config.dynamic"] == "true", meta["config.lowrank"] == "true"
        self.assertEqual((m, n, dim, dynamic, lowrank), (2, 4, 16, True, True))
        modules = {"model.embed.": vwn_torch.OverWidthEmbedding(m, n, 256, dim, lowrank=lowrank),
                   "model.head.": vwn_torch.ReduceHead(m, n, dim),
                   "model.mtp.mixer.": vwn_torch.MTPMixer(m, n, dim)}
        for block in ["model.blocks.0.", "model.blocks.1.", "model.mtp.block."]:
            for sub in ["ghc_attn.", "ghc_ffn."]:
                modules[block + sub] = vwn_torch.GHC(m, n, dim, dynamic=dynamic)
        used = set()
        for prefix, module in modules.items():
            module.load_vwn(tensors, prefix)
            for name, p in module.named_parameters():
                self.assertTrue(torch.equal(p.detach().reshape(-1), tensors[prefix + name]), prefix + name)
                used.add(prefix + name)
        # Every width tensor of the checkpoint found its module.
        width_names = {k for k in tensors if k.startswith(("model.embed.", "model.head.", "model.mtp.mixer.")) or
                       (k.startswith("model.") and ".ghc_" in k)}
        self.assertEqual(width_names, used)
        # The layout is the documented one: the loaded DGHC computes what the reference math computes from the
        # flat tensors reshaped per docs/checkpoint.md.
        prefix = "model.blocks.1.ghc_ffn."
        db = dim // m
        shapes = {"alpha": (n, m + n), "beta": (n, m), "W_alpha": (db, m + n), "W_beta": (db, m),
                  "S_alpha": (n, m + n), "S_beta": (n, m), "g": (db,)}
        ref_p = {k: tensors[prefix + k].reshape(s) for k, s in shapes.items()}
        H = self.rand(7, n * db, dtype=torch.float32)
        self.assertClose(modules[prefix](H, torch.tanh), ref_ghc(H, torch.tanh, m, n, ref_p, True), torch.float32,
                         "checkpoint DGHC")
        # A tensor of the wrong size is refused before anything is copied.
        bad = dict(tensors)
        bad["model.head.W_reduce"] = bad["model.head.W_reduce"][:-1]
        before = [p.detach().clone() for p in modules["model.head."].parameters()]
        with self.assertRaises(ValueError) as e:
            modules["model.head."].load_vwn(bad, "model.head.")
        self.assertIn("expected 512 values (shape [16, 32]), got 511", str(e.exception))
        for b, p in zip(before, modules["model.head."].parameters()):
            self.assertTrue(torch.equal(b, p.detach()))


if __name__ == "__main__":
    unittest.main()
