#!/usr/bin/env python3
"""Overhead of the Python layer: greedy tokens/s through ``llama`` vs the CLI.

    python python/bench/overhead.py [--model PATH] [--threads N] [--max_gen_len N] [--reps N]

Both sides run the same model, prompt, thread count and greedy settings, alternately,
``--reps`` times each; the medians are reported. CLI: generated tokens over the engine's
prefill + decode time (``llama2 complete --stats``, load time excluded). Python:
generated tokens over the wall time of the ``text_completion`` call (everything the
Python layer adds: the worker thread, per-token signal checks, result conversion), each
run in a fresh process like the CLI's (``--warm``: repeated calls in this process).
"""

from __future__ import annotations

import argparse
import re
import statistics
import json
import subprocess
import sys
import time
from pathlib import Path

from llama import Llama

REPO = Path(__file__).resolve().parents[2]
PROMPT = "Once upon a time, in a small village by the sea, there lived"


def build(a: argparse.Namespace) -> Llama:
    return Llama.build(model_path=a.model, tokenizer_path=a.tokenizer, max_seq_len=512,
                       max_batch_size=1, threads=a.threads)


def python_once(a: argparse.Namespace, g: "Llama | None" = None) -> dict:
    """One timed greedy call: tokens/s over its wall time and over the engine's time."""
    g = g or build(a)
    t0 = time.perf_counter()
    g.text_completion([PROMPT], temperature=0.0, max_gen_len=a.max_gen_len)
    wall = time.perf_counter() - t0
    s = g.last_stats()
    return {"wall": s["generated_tokens"] / wall,
            "engine": s["generated_tokens"] / (s["prefill_s"] + s["decode_s"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--tokenizer", default=None, help="tokenizer.model (Meta folders)")
    p.add_argument("--cli", default=str(REPO / "target" / "release" / "llama2"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max_gen_len", type=int, default=200)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warm", action="store_true", help="time repeated calls in this process")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print(json.dumps(python_once(a)))
        return

    g = None
    if a.warm:
        g = build(a)
        g.text_completion([PROMPT], temperature=0.0, max_gen_len=8)  # warm-up
    cli_rates, py_rates, py_engine_rates = [], [], []
    tok = ["--tokenizer", a.tokenizer] if a.tokenizer else []
    for _ in range(a.reps):
        r = subprocess.run(
            [a.cli, "complete", "--model", a.model, *tok, "--max-seq-len", "512", "--temperature",
             "0", "--max-gen-len", str(a.max_gen_len), "--threads", str(a.threads), "--stats",
             PROMPT],
            capture_output=True, text=True, check=True,
        )
        m = re.search(r"in ([\d.]+)s .*generated: (\d+) tokens in ([\d.]+)s", r.stderr)
        assert m, r.stderr
        cli_rates.append(int(m.group(2)) / (float(m.group(1)) + float(m.group(3))))

        if a.warm:
            one = python_once(a, g)
        else:
            r = subprocess.run([sys.executable, __file__, "--one", *sys.argv[1:]],
                               capture_output=True, text=True, check=True)
            one = json.loads(r.stdout)
        py_rates.append(one["wall"])
        py_engine_rates.append(one["engine"])

    cli, py, eng = (statistics.median(x) for x in (cli_rates, py_rates, py_engine_rates))
    print(f"model {Path(a.model).name}, {a.threads} thread(s), {a.max_gen_len} greedy tokens, "
          f"{a.reps} reps, {'warm' if a.warm else 'fresh processes'}")
    print(f"CLI    : {cli:7.2f} tok/s   {[round(x, 1) for x in cli_rates]}")
    print(f"Python : {py:7.2f} tok/s   {[round(x, 1) for x in py_rates]} (wall time of the call)")
    print(f"  engine inside the Python call: {eng:7.2f} tok/s")
    print(f"Python / CLI = {py / cli:.4f}  ({(py / cli - 1) * 100:+.2f}%)")


if __name__ == "__main__":
    main()
