#!/usr/bin/env python3
"""Reference vectors for llama2's ggml quantization kernels (crates/llama2/src/kernels/quant.rs).

For each of Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K this writes, under tests/fixtures/quant/:

  <TYPE>.bin   the quantized blocks (raw bytes, as stored in a GGUF tensor)
  <TYPE>.json  {"type", "n_values", "block_size", "block_bytes", "generator",
                "input_f32_bits": [u32, ...] | null,   # f32 bit patterns of the input
                "dequant_f32_bits": [u32, ...]}        # f32 bit patterns of the output

Q8_0, Q4_0 and Q4_1 blocks are `gguf.quants.quantize` of a deterministic pseudo-random
f32 input (plus hand-made edge blocks: zeros, a constant block, exact halves, a
negative extreme, tiny and large magnitudes); the gguf package documents these
quantizers as bit-exact with ggml's `quantize_row_*_ref`. The gguf package has no
K-quant quantizer, so Q4_K/Q5_K/Q6_K blocks are random bytes with sane f16 super-block
scales, and only their dequantization is recorded (`input_f32_bits` is null).
`dequant_f32_bits` is always `gguf.quants.dequantize` of the `.bin` bytes.

Rerun (from the repository root; the venv lives outside the repo and is throwaway):

    python3 -m venv /tmp/gguf-venv
    /tmp/gguf-venv/bin/pip install gguf==0.19.0 numpy
    /tmp/gguf-venv/bin/python scripts/gen_quant_vectors.py

The output is deterministic (fixed seeds); rerunning reproduces the files byte for byte.
"""

import json
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "quant")
GENERATOR = "gguf==%s, numpy==%s, scripts/gen_quant_vectors.py" % (
    getattr(sys.modules["gguf"], "__version__", "0.19.0"),
    np.__version__,
)


def bits(a: np.ndarray) -> list:
    return [int(v) for v in np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).ravel()]


def small_block_input(rng: np.random.Generator) -> np.ndarray:
    """16 blocks of 32 values: 10 random blocks at various scales + 6 edge blocks."""
    blocks = []
    for scale in [1.0, 0.02, 3.0, 1e-3, 0.5, 100.0, 0.1, 7.0, 1e-5, 0.25]:
        blocks.append(rng.standard_normal(32).astype(np.float32) * np.float32(scale))
    blocks.append(np.zeros(32, dtype=np.float32))  # d = 0
    blocks.append(np.full(32, 0.75, dtype=np.float32))  # Q4_1: max == min
    # Integers and halves with |max| = 127 (Q8_0: id = 1, so roundf sees exact halves).
    b = (np.arange(32, dtype=np.float32) - 16.0) * np.float32(3.5)
    b[0] = 127.0
    b[1] = -0.5
    b[2] = 0.5
    b[3] = -2.5
    blocks.append(b.astype(np.float32))
    # Negative extreme with max = -8 (Q4_0: d = 1, so x + 8.5 lands on halves).
    b = np.linspace(-8.0, 7.5, 32, dtype=np.float32)
    b[5] = -0.5
    blocks.append(b)
    # Ties in |x| between a positive and a negative value: the first one wins.
    b = rng.uniform(-1, 1, 32).astype(np.float32)
    b[3] = 2.0
    b[9] = -2.0
    blocks.append(b)
    # Wide dynamic range inside one block.
    b = rng.standard_normal(32).astype(np.float32) * np.float32(1e-4)
    b[17] = np.float32(5000.0)
    blocks.append(b)
    return np.concatenate(blocks).astype(np.float32)


def random_k_blocks(rng: np.random.Generator, qtype, n_blocks: int) -> np.ndarray:
    block_size, type_size = quants.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)

    def f16_bytes(lo, hi):
        v = rng.uniform(lo, hi, n_blocks).astype(np.float16)
        return v.reshape(n_blocks, 1).view(np.uint8)

    if qtype in (T.Q4_K, T.Q5_K):
        raw[:, 0:2] = f16_bytes(1e-4, 0.05)  # d
        raw[:, 2:4] = f16_bytes(1e-5, 0.02)  # dmin
    elif qtype == T.Q6_K:
        raw[:, type_size - 2 : type_size] = f16_bytes(1e-4, 0.01)  # d (last 2 bytes)
    else:
        raise ValueError(qtype)
    # One block with d = 0 and one with a negative d (ggml allows any f16).
    if qtype == T.Q6_K:
        raw[0, type_size - 2 :] = 0
        raw[1, type_size - 2 :] = np.array([-0.003], dtype=np.float16).view(np.uint8)
    else:
        raw[0, 0:2] = 0
        raw[1, 2:4] = np.array([-0.001], dtype=np.float16).view(np.uint8)
    return raw


def write(name: str, qtype, q: np.ndarray, x) -> None:
    block_size, type_size = quants.GGML_QUANT_SIZES[qtype]
    q = np.ascontiguousarray(q, dtype=np.uint8).reshape(1, -1)
    y = quants.dequantize(q, qtype).astype(np.float32).ravel()
    assert q.size == y.size // block_size * type_size
    with open(os.path.join(OUT, name + ".bin"), "wb") as f:
        f.write(q.tobytes())
    meta = {
        "type": name,
        "n_values": int(y.size),
        "block_size": block_size,
        "block_bytes": type_size,
        "generator": GENERATOR,
        "input_f32_bits": None if x is None else bits(x),
        "dequant_f32_bits": bits(y),
    }
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(meta, f, separators=(",", ":"))
        f.write("\n")


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for i, (name, qtype) in enumerate([("Q8_0", T.Q8_0), ("Q4_0", T.Q4_0), ("Q4_1", T.Q4_1)]):
        rng = np.random.default_rng(1000 + i)
        x = small_block_input(rng)
        q = quants.quantize(x.reshape(1, -1), qtype)
        write(name, qtype, q, x)
    for i, (name, qtype) in enumerate([("Q4_K", T.Q4_K), ("Q5_K", T.Q5_K), ("Q6_K", T.Q6_K)]):
        rng = np.random.default_rng(2000 + i)
        write(name, qtype, random_k_blocks(rng, qtype, 4), None)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print("wrote %s (%d bytes)" % (os.path.normpath(OUT), total))


if __name__ == "__main__":
    main()
