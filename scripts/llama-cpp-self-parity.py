#!/usr/bin/env python3
"""How far llama.cpp's own code paths are from each other, on a parity fixture.

Usage (after scripts/build-llama-cpp.sh and scripts/record-llama-cpp-parity.py --more):
    python3 scripts/llama-cpp-self-parity.py [--fixture tests/fixtures/parity/smollm2-q4_1-more.json]
                                             [--build-dir target/llama.cpp/build-clang]

The fixture holds llama.cpp's greedy decode with its defaults (F16 cache, flash attention
auto, one token per call after the prompt). Per prompt this prints the same two figures
`cargo run --release -p llama2 --example parity_report` prints for llama2, for two other
runs of the same llama.cpp build on the same machine and thread count:
  - one batch: the prompt and the record's tokens in one call (llama-cpp-logits, defaults):
    max |logit - the decode's logit| for the decode's token, and the steps whose argmax
    agrees (its flash attention takes a tiled kernel for 64+ queries, another for one);
  - flash attention off: greedy decode again (llama-cpp-greedy --flash-attn off): tokens
    equal to the fixture's, against the fixture's first step with a top-2 gap below 0.1.
Standard library only.
"""
import argparse
import array
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixture", default="tests/fixtures/parity/smollm2-q4_1-more.json")
    ap.add_argument("--build-dir", default="target/llama.cpp/build-clang")
    args = ap.parse_args()
    fixture = os.path.abspath(args.fixture) if os.path.exists(args.fixture) else args.fixture
    os.chdir(ROOT)  # the fixture's model path and the build dir are repo-relative
    fx = json.load(open(fixture, encoding="utf-8"))
    model, threads = fx["model"], str(fx["llama_cpp_version"]["n_threads"])
    bins = os.path.join(args.build_dir, "bin")
    for tool in ("llama-cpp-logits", "llama-cpp-greedy"):
        if not os.path.exists(os.path.join(bins, tool)):
            sys.exit(f"missing {bins}/{tool} (scripts/build-llama-cpp.sh; llama-cpp-logits is built by "
                     "scripts/make-tiny-llama3.py or by hand, see its header)")
    print("| prompt | one batch: max \\|Δlogit\\| | one batch: argmax equal | fa off: greedy equal "
          "| first gap < 0.1 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    worst_all, short = 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        for c in fx["cases"]:
            prompt, steps = c["prompt_ids"], c["steps"]
            tokens = [s["token"] for s in steps]
            ids = prompt + tokens[:-1]
            out = os.path.join(tmp, "logits.f32")
            meta = json.loads(subprocess.run(
                [os.path.join(bins, "llama-cpp-logits"), "-m", model, "--ids", ",".join(map(str, ids)),
                 "--out", out, "--threads", threads, "--kv-type", "f16", "--flash-attn", "auto"],
                check=True, capture_output=True, text=True).stdout)
            vocab = meta["n_vocab"]
            logits = array.array("f")
            with open(out, "rb") as f:
                logits.frombytes(f.read())
            worst, agree = 0.0, 0
            for i, s in enumerate(steps):
                row = logits[(len(prompt) - 1 + i) * vocab:(len(prompt) + i) * vocab]
                worst = max(worst, abs(row[s["token"]] - s["top1_logit"]))
                agree += row.index(max(row)) == s["token"]  # ties: the lowest id
            prompt_file = os.path.join(tmp, "prompt.txt")
            with open(prompt_file, "w", encoding="utf-8", newline="") as f:
                f.write(c["rendered_prompt"])
            off = json.loads(subprocess.run(
                [os.path.join(bins, "llama-cpp-greedy"), "-m", model, "-f", prompt_file, "-n", str(len(steps)),
                 "--threads", threads, "--flash-attn", "off"],
                check=True, capture_output=True, text=True).stdout)
            if off["prompt_ids"] != prompt:
                sys.exit(f"{c['name']}: llama-cpp-greedy tokenized the prompt differently from the record")
            equal = 0
            for a, b in zip(off["steps"], steps):
                if a["token"] != b["token"]:
                    break
                equal += 1
            tie = next((i for i, s in enumerate(steps) if s["gap"] < 0.1), len(steps))
            reached = equal >= tie
            short += not reached
            worst_all = max(worst_all, worst)
            print(f"| {c['name']} | {worst:.3f} | {agree}/{len(steps)} | {equal}{'' if reached else ' (short)'} "
                  f"| {tie} |", flush=True)
    print(f"\nmax |Δlogit| one batch vs decode {worst_all:.3f}; flash attention off parts from the default "
          f"before its first gap < 0.1 on {short} prompt(s)")


if __name__ == "__main__":
    main()
