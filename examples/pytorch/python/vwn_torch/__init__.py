"""vwn's width-connection primitives as PyTorch operators and modules (CPU, float32 or float64).

    import torch, vwn_torch
    ghc = vwn_torch.DGHC(m=2, n=3, dim=512)                # (m, n) chosen at run time from the compiled set
    mhc = vwn_torch.DGHC(1, 4, 512, connection="mhc")      # the manifold-constrained families (docs/mhc.md)
    H_out = ghc(H, backbone)                               # H: [..., D'] with D' = n * dim / m
    X, carry = ghc.width(H); H_out = ghc.depth(f(X), carry)  # the two connections separately

The forward and the hand-written backward are vwn's host back end (C++), registered as the operators
torch.ops.vwn.ghc_width, ghc_depth, overwidth_embedding, reduce_head and mtp_mixer (visible to torch.jit.trace and
TorchScript). The modules' parameters are ordinary tensors under vwn's names and logical shapes
(docs/checkpoint.md); each call computes with the tensors it is handed and never writes them. See docs/torch.md.
"""

import itertools
from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import _C  # loading it registers torch.ops.vwn.*

__all__ = ["GHC", "DGHC", "GHCCarry", "OverWidthEmbedding", "ReduceHead", "MTPMixer", "compiled_shapes",
           "connections", "read_checkpoint"]


def compiled_shapes():
    """The shapes (m, n) this build compiled, as a list of pairs."""
    return [tuple(int(v) for v in s.strip("()").split(",")) for s in _C.compiled_shapes().split()]


def connections():
    """The connection families of GHC / DGHC: ["vwn", "mhc", "mhc-lite", "mhc-v4"] (docs/mhc.md)."""
    return _C.connection_names().split()


def read_checkpoint(path):
    """A verified vwn-train checkpoint: (tensors, metadata). `tensors` maps every file name (`model.embed.E`,
    `model.blocks.0.ghc_attn.alpha`, `optim.<name>.m`, ...) to a flat float32 tensor; `metadata` maps
    `config.m`, `config.width`, ... to text. Raises RuntimeError for a missing, corrupted or foreign file."""
    return _C.read_checkpoint(str(path))


class GHCCarry(NamedTuple):
    """What a GHC width connection hands to its depth connection: the carried state `C` ([..., D']) and each token's
    depth coefficients `b` ([..., n, m]), which also hold the call's saved state. Give it to the depth connection
    of the same module, unchanged."""
    C: Tensor
    b: Tensor


_module_ids = itertools.count(1)


def _seed(seed):
    """`seed`, or one drawn from PyTorch's generator (so that torch.manual_seed decides the initial values)."""
    if seed is not None:
        return int(seed)
    return int(torch.randint(0, 2**62, (1,), dtype=torch.int64).item())


def _dtype(dtype):
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"vwn_torch: dtype: expected torch.float32 or torch.float64, got {dtype}")
    return dtype


class _Primitive(torch.nn.Module):
    """A module around one vwn part: registers its parameters under vwn's names."""

    def __init__(self, params):
        super().__init__()
        self._vwn_names: List[str] = []
        self._vwn_decay: List[str] = []
        for name, tensor, decay in params:
            self.register_parameter(name, torch.nn.Parameter(tensor))
            self._vwn_names.append(name)
            if decay:
                self._vwn_decay.append(name)
        self._owner: int = next(_module_ids)

    def __setstate__(self, state):
        # A copy (copy.deepcopy, pickle) is a module of its own: its GHC carries are not the original's.
        super().__setstate__(state)
        self._owner = next(_module_ids)

    def weight_decay_names(self):
        """The names of the parameters vwn's trainer applies weight decay to."""
        return list(self._vwn_decay)

    def _assign(self, params):
        with torch.no_grad():
            for name, tensor, _ in params:
                getattr(self, name).copy_(tensor)

    def load_vwn(self, tensors, prefix):
        """Copies `tensors[prefix + name]` (e.g. a checkpoint's `model.blocks.0.ghc_attn.`) into each parameter.
        Every tensor must exist and hold as many values as the parameter; nothing is copied unless all do."""
        found = []
        for name in self._vwn_names:
            key = prefix + name
            param = getattr(self, name)
            if key not in tensors:
                raise KeyError(f"{self._label()}: load: expected a tensor '{key}', got none")
            t = tensors[key]
            if t.numel() != param.numel():
                raise ValueError(f"{self._label()}: load: tensor '{key}': expected {param.numel()} values "
                                 f"(shape {list(param.shape)}), got {t.numel()} (shape {list(t.shape)})")
            found.append((param, t))
        with torch.no_grad():
            for param, t in found:
                param.copy_(t.reshape(param.shape).to(param.dtype))

    def _label(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class GHC(_Primitive):
    """A static GHC sub-layer (`dynamic=False`) or a dynamic one (DGHC) of shape (m, n) for backbone width `dim`.

    `forward(H, backbone)` returns `H_out = b backbone(X) + C` for the over-width state `H` ([..., D'],
    D' = n * dim / m); `width(H)` returns `(X, carry)` and `depth(Z, carry)` the output, for a backbone that is not
    a single callable (and for TorchScript).

    `connection` chooses the family of the coefficients (docs/mhc.md): "vwn" (the VWN paper's; parameters `alpha`,
    `beta` and, dynamic, `W_alpha`, `W_beta`, `S_alpha`, `S_beta`, `g`, initialised as in the paper, eq. 15, 16),
    "mhc" (sigmoid pre and post maps, Sinkhorn-projected doubly stochastic carry, 20 iterations), "mhc-lite" (the
    carry a softmax mixture of the n! permutation matrices; n <= 5) or "mhc-v4" (DeepSeek-V4's variant); the
    manifold families' parameters are the logit biases `b_pre`, `b_post` [n, m], `b_res` [n, n] ([n!] for mhc-lite)
    and, dynamic, `phi` [n db, K] and `gate` [3], initialised to the same identity within sigmoid(-8)."""

    def __init__(self, m, n, dim, dynamic=False, dtype=torch.float32, connection="vwn"):
        super().__init__(_C.ghc_parameters(int(m), int(n), int(dim), bool(dynamic), _dtype(dtype), str(connection)))
        self.m, self.n, self.dim, self.dynamic = int(m), int(n), int(dim), bool(dynamic)
        self.connection: str = str(connection)

    def _params(self) -> List[Tensor]:
        if hasattr(self, "W_alpha"):
            return [self.alpha, self.beta, self.W_alpha, self.W_beta, self.S_alpha, self.S_beta, self.g]
        if hasattr(self, "phi"):
            return [self.b_pre, self.b_post, self.b_res, self.phi, self.gate]
        if hasattr(self, "b_pre"):
            return [self.b_pre, self.b_post, self.b_res]
        return [self.alpha, self.beta]

    def width(self, H: Tensor) -> Tuple[Tensor, GHCCarry]:
        """The width connection: `(X, carry)`, `X` of [..., dim]; `carry.C` is the carried state."""
        X, C, b = torch.ops.vwn.ghc_width(H, self._params(), self.m, self.n, self.dynamic, self._owner,
                                          self.connection)
        return X, GHCCarry(C, b)

    def depth(self, Z: Tensor, carry: GHCCarry) -> Tensor:
        """The depth connection `H_out = b Z + C` for the backbone output `Z` ([..., dim]) of this module's width
        connection (another module's carry is refused)."""
        return torch.ops.vwn.ghc_depth(Z, carry.C, carry.b, self._params(), self.m, self.n, self.dynamic,
                                       self._owner, self.connection)

    @torch.jit.unused
    def forward(self, H, backbone):
        X, carry = self.width(H)
        return self.depth(backbone(X), carry)

    def reset_parameters(self):
        """Back to the initial values (eq. 15, 16, or the manifold families' identity)."""
        self._assign(_C.ghc_parameters(self.m, self.n, self.dim, self.dynamic, self._params()[0].dtype,
                                       self.connection))

    def extra_repr(self):
        family = "" if self.connection == "vwn" else f", connection={self.connection!r}"
        return f"m={self.m}, n={self.n}, dim={self.dim}, dynamic={self.dynamic}{family}"


class DGHC(GHC):
    """A dynamic GHC sub-layer: `GHC(..., dynamic=True)`."""

    def __init__(self, m, n, dim, dtype=torch.float32, connection="vwn"):
        super().__init__(m, n, dim, dynamic=True, dtype=dtype, connection=connection)


class OverWidthEmbedding(_Primitive):
    """The over-width embedding: integer tokens [...] -> H0 [..., D']. Direct (`E`, V x D') or low-rank
    (`lowrank=True`: `E_base` V x D, `W_expand` D' x D), drawn as vwn draws it with `seed` (default: a seed from
    PyTorch's generator)."""

    def __init__(self, m, n, vocab, dim, lowrank=False, seed: Optional[int] = None, dtype=torch.float32):
        self_seed = _seed(seed)
        super().__init__(_C.embedding_parameters(int(m), int(n), int(vocab), int(dim), bool(lowrank), self_seed,
                                                 _dtype(dtype)))
        self.m, self.n, self.vocab, self.dim, self.lowrank = int(m), int(n), int(vocab), int(dim), bool(lowrank)

    def _params(self) -> List[Tensor]:
        if hasattr(self, "E_base"):
            return [self.E_base, self.W_expand]
        return [self.E]

    def forward(self, tokens: Tensor) -> Tensor:
        return torch.ops.vwn.overwidth_embedding(tokens, self._params(), self.m, self.n, self.lowrank)

    def reset_parameters(self):
        """New values drawn with a seed from PyTorch's generator."""
        self._assign(_C.embedding_parameters(self.m, self.n, self.vocab, self.dim, self.lowrank, _seed(None),
                                             self._params()[0].dtype))

    def extra_repr(self):
        return f"m={self.m}, n={self.n}, vocab={self.vocab}, dim={self.dim}, lowrank={self.lowrank}"


class ReduceHead(_Primitive):
    """The reduce head `h = W_reduce GroupNorm(H)`: [..., D'] -> [..., dim]. No GroupNorm where n/m is not an
    integer; the identity (no parameters) where n == m."""

    def __init__(self, m, n, dim, seed: Optional[int] = None, dtype=torch.float32):
        super().__init__(_C.reduce_head_parameters(int(m), int(n), int(dim), _seed(seed), _dtype(dtype)))
        self.m, self.n, self.dim = int(m), int(n), int(dim)

    def _params(self) -> List[Tensor]:
        if hasattr(self, "gn_weight"):
            return [self.gn_weight, self.gn_bias, self.W_reduce]
        if hasattr(self, "W_reduce"):
            return [self.W_reduce]
        return torch.jit.annotate(List[Tensor], [])

    def forward(self, H: Tensor) -> Tensor:
        return torch.ops.vwn.reduce_head(H, self._params(), self.m, self.n)

    def reset_parameters(self):
        """New values drawn with a seed from PyTorch's generator."""
        params = self._params()
        if params:
            self._assign(_C.reduce_head_parameters(self.m, self.n, self.dim, _seed(None), params[0].dtype))

    def extra_repr(self):
        return f"m={self.m}, n={self.n}, dim={self.dim}"


class MTPMixer(_Primitive):
    """The block-level MTP mixer `U[j] = W_mix [A[j]; B[j]]` for every slot j: A, B [..., D'] -> U [..., D']."""

    def __init__(self, m, n, dim, seed: Optional[int] = None, dtype=torch.float32):
        super().__init__(_C.mtp_mixer_parameters(int(m), int(n), int(dim), _seed(seed), _dtype(dtype)))
        self.m, self.n, self.dim = int(m), int(n), int(dim)

    def _params(self) -> List[Tensor]:
        return [self.W_mix]

    def forward(self, A: Tensor, B: Tensor) -> Tensor:
        return torch.ops.vwn.mtp_mixer(A, B, self._params(), self.m, self.n)

    def reset_parameters(self):
        """New values drawn with a seed from PyTorch's generator."""
        self._assign(_C.mtp_mixer_parameters(self.m, self.n, self.dim, _seed(None), self.W_mix.dtype))

    def extra_repr(self):
        return f"m={self.m}, n={self.n}, dim={self.dim}"
