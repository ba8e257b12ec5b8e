#!/usr/bin/env python3
"""Compares the tensors of two vwn-train checkpoints (safetensors, read with the standard library only).

    compare_checkpoints.py A B [--tolerance X] [--prefix model.,optim.]

Prints, for the tensors whose names start with one of the prefixes (the parameters and the optimiser moments by
default), how many differ and the largest absolute difference. Exit status 0 when every tensor is identical bit for
bit (no --tolerance) or within X (--tolerance X, on the absolute difference), 1 otherwise, 2 on unreadable input.
"""
import argparse
import json
import struct
import sys


def read(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        sys.exit(f"compare_checkpoints: {path}: expected a safetensors file, got {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        tensors[name] = (info["dtype"], body[begin:end])
    return header.get("__metadata__", {}), tensors


def values(dtype, raw):
    code = {"F32": "f", "F64": "d"}.get(dtype)
    if code is None:
        return None
    return struct.unpack(f"<{len(raw) // struct.calcsize(code)}{code}", raw)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--tolerance", type=float, default=None)
    ap.add_argument("--prefix", default="model.,optim.")
    args = ap.parse_args()
    prefixes = tuple(args.prefix.split(","))
    meta_a, a = read(args.a)
    meta_b, b = read(args.b)
    for key in ("step", "optimizer_step"):
        if meta_a.get(key) != meta_b.get(key):
            print(f"compare_checkpoints: metadata '{key}' differs: {meta_a.get(key)} vs {meta_b.get(key)}")
            return 1
    names = sorted(n for n in a if n.startswith(prefixes))
    if names != sorted(n for n in b if n.startswith(prefixes)):
        print("compare_checkpoints: the checkpoints hold different tensors")
        return 1
    differing, elements, worst, worst_name = 0, 0, 0.0, ""
    for name in names:
        (ta, ra), (tb, rb) = a[name], b[name]
        if ta != tb or len(ra) != len(rb):
            print(f"compare_checkpoints: {name}: {ta} of {len(ra)} bytes vs {tb} of {len(rb)} bytes")
            return 1
        elements += len(ra) // 4
        if ra == rb:
            continue
        differing += 1
        va, vb = values(ta, ra), values(tb, rb)
        d = max(abs(x - y) for x, y in zip(va, vb))
        if d > worst:
            worst, worst_name = d, name
    print(f"compare_checkpoints: {len(names)} tensors ({elements} values): {differing} differ"
          + (f", largest absolute difference {worst:.3g} in {worst_name}" if differing else " (identical bit for bit)"))
    if args.tolerance is None:
        return 0 if differing == 0 else 1
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
