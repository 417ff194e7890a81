#!/usr/bin/env python3
"""Writes tests/fixtures/tokenizer/smollm2_vocab.json: the GPT-2 BPE vocabulary of a GGUF.

Usage (throwaway venv: `python3 -m venv /tmp/tok-venv && /tmp/tok-venv/bin/pip install gguf`):
    /tmp/tok-venv/bin/python scripts/make-smollm2-vocab-json.py \
        models/SmolLM2-135M-Instruct.Q4_1.gguf tests/fixtures/tokenizer/smollm2_vocab.json

The JSON holds exactly the tokenizer.ggml.* metadata the engine reads, so tokenizer tests
do not need the 100 MB model: model, pre, tokens, token_type, merges, bos/eos/unk/padding
ids (null when absent), add_bos/add_eos (null when absent).
"""
import json
import sys

from gguf import GGUFReader


def main() -> None:
    src, dst = sys.argv[1], sys.argv[2]
    r = GGUFReader(src)

    def get(key):
        f = r.fields.get(key)
        return None if f is None else f.contents()

    out = {
        "source": src.rsplit("/", 1)[-1],
        "model": get("tokenizer.ggml.model"),
        "pre": get("tokenizer.ggml.pre"),
        "bos_token_id": get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": get("tokenizer.ggml.eos_token_id"),
        "unknown_token_id": get("tokenizer.ggml.unknown_token_id"),
        "padding_token_id": get("tokenizer.ggml.padding_token_id"),
        "add_bos_token": get("tokenizer.ggml.add_bos_token"),
        "add_eos_token": get("tokenizer.ggml.add_eos_token"),
        "tokens": get("tokenizer.ggml.tokens"),
        "token_type": get("tokenizer.ggml.token_type"),
        "merges": get("tokenizer.ggml.merges"),
    }
    with open(dst, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
