#!/usr/bin/env bash
# `pip install` of vwn_torch (examples/pytorch/setup.py) as a user does it, offline: a fresh venv that sees the
# system's PyTorch (--system-site-packages), pip with --no-build-isolation --no-index, then `import vwn_torch` and one
# AdamW step of a small over-width model, from outside the source tree. The sources are copied first, so that the
# build leaves nothing in the checkout. One shape (2,3) at -O0 keeps the compile short.
#   tests/pytorch/pip_install.sh <source root> <python with torch>
set -euo pipefail
root="$1"
python="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/src"
cp -r "$root/include" "$root/examples" "$work/src/"
rm -rf "$work/src/examples/pytorch/build" "$work/src/examples/pytorch/"*.egg-info

"$python" -m venv --system-site-packages "$work/venv"
SECONDS=0
VWN_SHAPES="2_3" VWN_OPT="-O0" MAX_JOBS="$(nproc)" \
  "$work/venv/bin/pip" install --no-build-isolation --no-index "$work/src/examples/pytorch" > "$work/pip.log" 2>&1 || {
  tail -n 60 "$work/pip.log"
  echo "pip_install.sh: pip install failed" >&2
  exit 1
}
grep -E "^Successfully installed" "$work/pip.log"
echo "pip_install.sh: pip install took ${SECONDS} s"

cd "$work"
VWN_TORCH_POISON=1 "$work/venv/bin/python" - <<'PY'
import torch
import vwn_torch
print("imported", vwn_torch.__file__, "shapes", vwn_torch.compiled_shapes())
assert "/venv/" in vwn_torch.__file__, "vwn_torch was not imported from the venv"
torch.manual_seed(0)
embed = vwn_torch.OverWidthEmbedding(2, 3, 32, 16)
ghc = vwn_torch.DGHC(2, 3, 16)
mlp = torch.nn.Linear(16, 16)
head = vwn_torch.ReduceHead(2, 3, 16)
out = torch.nn.Linear(16, 32)
params = [p for mod in (embed, ghc, mlp, head, out) for p in mod.parameters()]
opt = torch.optim.AdamW(params, lr=1e-2)
tokens = torch.randint(0, 32, (2, 9))
def loss_of():
    h = head(ghc(embed(tokens[:, :-1]), lambda X: torch.tanh(mlp(X))))
    return torch.nn.functional.cross_entropy(out(h).reshape(-1, 32), tokens[:, 1:].reshape(-1))
before = loss_of().item()
opt.zero_grad()
loss_of().backward()
opt.step()
after = loss_of().item()
print(f"one AdamW step: loss {before:.4f} -> {after:.4f}")
assert torch.isfinite(torch.tensor([before, after])).all() and after < before
PY
