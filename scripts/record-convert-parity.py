#!/usr/bin/env python3
"""Record llama.cpp's greedy tokens on GGUF files written by `llama2 convert`.

Usage (from the repository root):
    python3 scripts/record-convert-parity.py [--build-dir target/llama.cpp/build-clang]

For each of f16, q8_0 and q4_0 it converts the tiny-gqa Meta fixture with
`cargo run --release -p llama2-cli -- convert`, runs scripts/llama_cpp_greedy.cpp's tool
(built by scripts/build-llama-cpp.sh) on the result with a fixed prompt, and writes
tests/fixtures/parity/convert_tiny_gqa.json: the file's sha256 (conversion is
deterministic, so the test can check it converted the same file llama.cpp saw), the
prompt ids llama.cpp tokenized, and its greedy steps with top-2 gaps.
"""
import argparse
import hashlib
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "I believe the meaning of life is"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-dir", default="target/llama.cpp/build-clang")
    ap.add_argument("-n", type=int, default=24)
    args = ap.parse_args()
    os.chdir(ROOT)
    tool = os.path.join(args.build_dir, "bin", "llama-cpp-greedy")
    if not os.path.exists(tool):
        subprocess.run(["bash", "scripts/build-llama-cpp.sh"], check=True)
    os.makedirs("target/conv", exist_ok=True)
    with open("target/conv/prompt.txt", "w") as f:
        f.write(PROMPT)
    cases = []
    for t in ["f16", "q8_0", "q4_0"]:
        out = f"target/conv/tiny-gqa-{t}.gguf"
        conv = ["cargo", "run", "--release", "-q", "-p", "llama2-cli", "--", "convert",
                "--model", "tests/fixtures/models/tiny-gqa/meta",
                "--tokenizer", "tests/fixtures/tokenizer/tokenizer.model",
                "--out", out, "--type", t]
        subprocess.run(conv, check=True)
        with open(out, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        greedy = [tool, "-m", out, "-f", "target/conv/prompt.txt", "-n", str(args.n), "--threads", "1"]
        res = json.loads(subprocess.run(greedy, check=True, capture_output=True, text=True).stdout)
        cases.append({
            "type": t,
            "convert_command": " ".join(conv),
            "llama_cpp_command": " ".join(greedy),
            "sha256": sha,
            "prompt": PROMPT,
            "prompt_ids": res["prompt_ids"],
            "steps": [{"token": s["token"], "gap": s["gap"], "top1_logit": s["top1_logit"]}
                      for s in res["steps"]],
        })
    with open("tests/fixtures/parity/convert_tiny_gqa.json", "w") as f:
        json.dump({"description": __doc__.strip().splitlines()[0], "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
