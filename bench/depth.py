#!/usr/bin/env python3
"""Long-context speed of llama2 against llama.cpp: `llama2 bench -d` and `llama-bench -d`
on the same file and threads, alternating the engines call by call (each call times one
repetition after its own warm-up), llama.cpp with flash attention off and on; prints a
markdown table of medians and the ratio to llama.cpp's faster setting.

Usage (from the repo root, after `cargo build --release -p llama2-cli` and
scripts/build-llama-cpp.sh):
  python3 bench/depth.py --model models/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --threads 1,2 --depth 4096 -p 512 -n 64 --rounds 3
"""
import argparse
import json
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out[out.index("["):])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--depth", default="4096")
    ap.add_argument("-p", default="512")
    ap.add_argument("-n", default="64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--llama2", default=str(ROOT / "target/release/llama2"))
    ap.add_argument("--llama-bench", default=str(ROOT / "target/llama.cpp/build-clang/bin/llama-bench"))
    a = ap.parse_args()
    samples = {}  # (engine, threads, test) -> [t/s]
    for r in range(a.rounds):
        for t in a.threads.split(","):
            calls = [("llama2", [a.llama2, "bench", "-m", a.model, "-p", a.p, "-n", a.n,
                                 "-d", a.depth, "-t", t, "-r", "1", "-o", "json"])]
            for fa in ("0", "1"):
                calls.append((f"llama.cpp fa={fa}", [a.llama_bench, "-m", a.model, "-p", a.p,
                              "-n", a.n, "-d", a.depth, "-t", t, "-r", "1", "-fa", fa,
                              "-o", "json"]))
            if r % 2:
                calls.reverse()  # alternate which engine goes first
            for engine, cmd in calls:
                for row in run_json(cmd):
                    if engine == "llama2":
                        test, speed = row["test"], row["tokens_per_s"][0]
                    else:
                        kind = "pp" if row["n_prompt"] else "tg"
                        n = row["n_prompt"] or row["n_gen"]
                        test = f"{kind}{n} @ d{row['n_depth']}"
                        speed = row["avg_ts"]
                    samples.setdefault((engine, t, test), []).append(speed)
    print("| threads | test | llama2 t/s | llama.cpp fa=0 t/s | llama.cpp fa=1 t/s | llama2 / faster |")
    print("| ---: | --- | ---: | ---: | ---: | ---: |")
    for (engine, t, test), v in samples.items():
        if engine != "llama2":
            continue
        ours = statistics.median(v)
        peers = [statistics.median(samples[(f"llama.cpp fa={fa}", t, test)]) for fa in "01"]
        print(f"| {t} | {test} | {ours:.2f} | {peers[0]:.2f} | {peers[1]:.2f} | "
              f"{ours / max(peers):.2f} |")


if __name__ == "__main__":
    main()
