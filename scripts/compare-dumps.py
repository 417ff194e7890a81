#!/usr/bin/env python3
"""Layer-by-layer comparison of one forward pass in llama2 and in llama.cpp.

Usage:
    target/llama.cpp/build-clang/bin/llama-cpp-logits -m MODEL --ids IDS --out /tmp/l.f32 \\
        --kv-type f16 --flash-attn auto --dump target/parity/cpp
    cargo run --release -p llama2 --example dump_tensors -- MODEL IDS target/parity/ours f16
    python3 scripts/compare-dumps.py target/parity/ours target/parity/cpp [--rows A:B]

For each tensor llama2 traced (in the order of its forward pass), takes the last tensor of
the same name in llama.cpp's dump (so `Qcur-0` after rotation) and prints the largest
absolute difference, that difference relative to the largest magnitude of the tensor, the
root-mean-square difference and the token row of the largest difference. Standard
library only.
"""
import argparse
import array
import math
import os
import sys


def load(path):
    a = array.array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    if sys.byteorder != "little":
        a.byteswap()
    return a


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours")
    ap.add_argument("cpp")
    ap.add_argument("--rows", help="token rows A:B only (python slice of rows)")
    ap.add_argument("--only", help="comma-separated name prefixes to show (e.g. l_out,result)")
    args = ap.parse_args()

    cpp = {}
    with open(os.path.join(args.cpp, "index.tsv")) as f:
        for line in f:
            seq, name, op, ne0, ne1, ne2, ne3 = line.rstrip("\n").split("\t")
            cpp[name] = (f"{int(seq):04d}-{name}.f32", op, int(ne0) * int(ne1) * int(ne2) * int(ne3))
    print(f"{'tensor':<16} {'width':>6} {'max|d|':>10} {'rel':>9} {'rms d':>10} {'row':>4}  llama.cpp op")
    with open(os.path.join(args.ours, "index.tsv")) as f:
        for line in f:
            name, width, rows = line.rstrip("\n").split("\t")
            width, rows = int(width), int(rows)
            if args.only and not any(name.startswith(p) for p in args.only.split(",")):
                continue
            if name not in cpp:
                print(f"{name:<16} (not in llama.cpp's dump)")
                continue
            file, op, count = cpp[name]
            a = load(os.path.join(args.ours, f"{name}.f32"))
            b = load(os.path.join(args.cpp, file))
            if len(a) != len(b):
                print(f"{name:<16} sizes differ: {len(a)} vs {len(b)} ({op})")
                continue
            r0, r1 = 0, rows
            if args.rows:
                lo, hi = args.rows.split(":")
                r0, r1 = max(0, int(lo or 0)), min(rows, int(hi or rows))
            if r1 <= r0:
                sys.exit(f"--rows {args.rows}: no rows of {rows}")
            worst, worst_row, peak, sq, nans = 0.0, -1, 0.0, 0.0, 0
            for r in range(r0, r1):
                for i in range(r * width, (r + 1) * width):
                    d = abs(a[i] - b[i])
                    if math.isnan(d):
                        # A NaN in either engine (but not both) is a difference, not a match.
                        nans += math.isnan(a[i]) != math.isnan(b[i])
                        continue
                    sq += d * d
                    peak = max(peak, abs(b[i]))
                    if d > worst:
                        worst, worst_row = d, r
            if nans:
                print(f"{name:<16} {nans} NaN(s) in one engine only ({op})")
            n = (r1 - r0) * width
            rel = worst / peak if peak else 0.0
            print(f"{name:<16} {width:>6} {worst:>10.3g} {rel:>9.2e} {math.sqrt(sq / n):>10.3g} {worst_row:>4}  {op}")


if __name__ == "__main__":
    main()
