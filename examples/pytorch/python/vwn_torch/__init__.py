"""vwn's width-connection primitives as PyTorch modules (CPU, float32 or float64).

    import torch, vwn_torch
    ghc = vwn_torch.DGHC(m=2, n=3, dim=512)                # (m, n) chosen at run time from the compiled set
    H_out = ghc(H, backbone)                               # H: [..., D'] with D' = n * dim / m
    X, carry = ghc.width(H); H_out = ghc.depth(f(X), carry)  # the two connections separately

The forward and the hand-written backward are vwn's host back end (C++), not autograd over small PyTorch ops.
Parameters carry vwn's names and logical shapes (docs/checkpoint.md) and share memory with the C++ primitive:
an optimiser step updates them in place. Inputs must be contiguous CPU tensors of the module's dtype; anything
else raises ValueError / TypeError naming what was expected and what was given. See docs/torch.md.
"""

import torch

from . import _C

__all__ = ["GHC", "DGHC", "OverWidthEmbedding", "ReduceHead", "MTPMixer", "compiled_shapes", "read_checkpoint"]


def compiled_shapes():
    """The shapes (m, n) this build compiled, as a list of pairs."""
    return [tuple(int(v) for v in s.strip("()").split(",")) for s in _C.compiled_shapes().split()]


def read_checkpoint(path):
    """A verified vwn-train checkpoint: (tensors, metadata). `tensors` maps every file name (`model.embed.E`,
    `model.blocks.0.ghc_attn.alpha`, `optim.<name>.m`, ...) to a flat float32 tensor; `metadata` maps
    `config.m`, `config.width`, ... to text. Raises RuntimeError for a missing, corrupted or foreign file."""
    return _C.read_checkpoint(str(path))


class _Primitive(torch.nn.Module):
    """A module around one vwn primitive: registers its parameters under vwn's names."""

    def __init__(self, core):
        super().__init__()
        self._core = core
        self._names = []
        self._decay = {}
        for name, tensor, decay in _C.parameters_of(core):
            # nn.Parameter shares the tensor's storage: the primitive computes with these very values.
            self.register_parameter(name, torch.nn.Parameter(tensor))
            self._names.append(name)
            self._decay[name] = decay

    def _params(self):
        return [getattr(self, name) for name in self._names]

    def weight_decay_names(self):
        """The names of the parameters vwn's trainer applies weight decay to."""
        return [name for name in self._names if self._decay[name]]

    def load_vwn(self, tensors, prefix):
        """Copies `tensors[prefix + name]` (e.g. a checkpoint's `model.blocks.0.ghc_attn.`) into each parameter.
        Every tensor must exist and hold as many values as the parameter; nothing is copied unless all do."""
        found = []
        for name in self._names:
            key = prefix + name
            param = getattr(self, name)
            if key not in tensors:
                raise KeyError(f"{_C_label(self)}: load: expected a tensor '{key}', got none")
            t = tensors[key]
            if t.numel() != param.numel():
                raise ValueError(f"{_C_label(self)}: load: tensor '{key}': expected {param.numel()} values "
                                 f"(shape {list(param.shape)}), got {t.numel()} (shape {list(t.shape)})")
            found.append((param, t))
        with torch.no_grad():
            for param, t in found:
                param.copy_(t.reshape(param.shape).to(param.dtype))

    def extra_repr(self):
        return repr(self._core).removeprefix("<vwn_torch primitive ").removesuffix(">")

    def __deepcopy__(self, memo):
        raise TypeError(f"{_C_label(self)}: a vwn_torch module cannot be deep-copied (its parameters share memory "
                        "with a C++ primitive); build a new module and load_state_dict into it")


def _C_label(module):
    return type(module).__name__ + "(" + module.extra_repr() + ")"


def _dtype(dtype):
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"vwn_torch: dtype: expected torch.float32 or torch.float64, got {dtype}")
    return dtype


class GHC(_Primitive):
    """A static GHC sub-layer (`dynamic=False`) or a dynamic one (DGHC) of shape (m, n) for backbone width `dim`.

    `forward(H, backbone)` returns `H_out = b backbone(X) + C` for the over-width state `H` ([..., D'],
    D' = n * dim / m); `width(H)` returns `(X, carry)` and `depth(Z, carry)` the output, for a backbone that is not
    a single callable. Parameters: `alpha`, `beta` and, dynamic, `W_alpha`, `W_beta`, `S_alpha`, `S_beta`, `g`."""

    def __init__(self, m, n, dim, dynamic=False, dtype=torch.float32):
        super().__init__(_C.make_ghc(int(m), int(n), int(dim), bool(dynamic), _dtype(dtype)))
        self.m, self.n, self.dim, self.dynamic, self.dtype = int(m), int(n), int(dim), bool(dynamic), dtype

    def width(self, H):
        """The width connection: `(X, carry)`, `X` of [..., dim]; `carry.C` is the carried state."""
        return _C.ghc_width(self._core, H, self._params())

    def depth(self, Z, carry):
        """The depth connection `H_out = b Z + C` for the backbone output `Z` ([..., dim]) of one width call."""
        return _C.ghc_depth(Z, carry, self._params())

    def forward(self, H, backbone):
        X, carry = self.width(H)
        return self.depth(backbone(X), carry)


class DGHC(GHC):
    """A dynamic GHC sub-layer: `GHC(..., dynamic=True)`."""

    def __init__(self, m, n, dim, dtype=torch.float32):
        super().__init__(m, n, dim, dynamic=True, dtype=dtype)


class OverWidthEmbedding(_Primitive):
    """The over-width embedding: integer tokens [...] -> H0 [..., D']. Direct (`E`, V x D') or low-rank
    (`lowrank=True`: `E_base` V x D, `W_expand` D' x D), drawn with `seed` as vwn draws it."""

    def __init__(self, m, n, vocab, dim, lowrank=False, seed=1, dtype=torch.float32):
        super().__init__(_C.make_embedding(int(m), int(n), int(vocab), int(dim), bool(lowrank), int(seed), _dtype(dtype)))
        self.m, self.n, self.vocab, self.dim, self.lowrank, self.dtype = int(m), int(n), int(vocab), int(dim), bool(lowrank), dtype

    def forward(self, tokens):
        return _C.embedding_forward(self._core, tokens, self._params())


class ReduceHead(_Primitive):
    """The reduce head `h = W_reduce GroupNorm(H)`: [..., D'] -> [..., dim]. No GroupNorm where n/m is not an
    integer; the identity (no parameters) where n == m."""

    def __init__(self, m, n, dim, seed=2, dtype=torch.float32):
        super().__init__(_C.make_reduce_head(int(m), int(n), int(dim), int(seed), _dtype(dtype)))
        self.m, self.n, self.dim, self.dtype = int(m), int(n), int(dim), dtype

    def forward(self, H):
        return _C.reduce_head_forward(self._core, H, self._params())


class MTPMixer(_Primitive):
    """The block-level MTP mixer `U[j] = W_mix [A[j]; B[j]]` for every slot j: A, B [..., D'] -> U [..., D']."""

    def __init__(self, m, n, dim, seed=3, dtype=torch.float32):
        super().__init__(_C.make_mtp_mixer(int(m), int(n), int(dim), int(seed), _dtype(dtype)))
        self.m, self.n, self.dim, self.dtype = int(m), int(n), int(dim), dtype

    def forward(self, A, B):
        return _C.mtp_mixer_forward(self._core, A, B, self._params())
