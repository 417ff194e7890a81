#!/usr/bin/env python3
"""Summarises bench/vs-llama-server.sh: medians over repetitions per server and load,
ratios llama2/llama.cpp, as a markdown table; plots output tokens/s and TTFT p50 per
load to DIR/serve.png when matplotlib is there.

Usage: serve_report.py DIR   (reads DIR/results.jsonl)
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

SERVERS = ["llama2", "llama.cpp"]
FIELDS = [
    ("output_tok_s", "out tok/s", "{:.1f}"),
    ("ttft_p50", "TTFT p50 s", "{:.3f}"),
    ("ttft_p99", "TTFT p99 s", "{:.3f}"),
    ("itl_p50", "ITL p50 ms", "{:.1f}"),
    ("itl_p99", "ITL p99 ms", "{:.1f}"),
]


def main() -> None:
    out = Path(sys.argv[1])
    runs = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines() if l.strip()]
    by = defaultdict(list)
    labels = []
    for r in runs:
        by[(r["server"], r["label"])].append(r)
        if r["label"] not in labels:
            labels.append(r["label"])

    def med(server, label, key):
        xs = [r[key] for r in by[(server, label)] if r.get(key) is not None]
        if not xs:
            return None
        m = statistics.median(xs)
        return m * 1000 if key.startswith("itl") else m

    errors = sum(r["n_errors"] for r in runs)
    reps = max((len(v) for v in by.values()), default=0)
    print(f"medians of {reps} repetitions; failed requests: {errors}\n")
    head = ["load"]
    for _, name, _ in FIELDS:
        head += [f"llama2 {name}", f"llama.cpp {name}", "ratio"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for label in labels:
        row = [label]
        for key, _, fmt in FIELDS:
            a, b = med("llama2", label, key), med("llama.cpp", label, key)
            row += [fmt.format(a) if a is not None else "-", fmt.format(b) if b is not None else "-",
                    f"{a / b:.2f}" if a and b else "-"]
        print("| " + " | ".join(row) + " |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    x = range(len(labels))
    for i, (key, name) in enumerate([("output_tok_s", "output tokens/s (higher is better)"),
                                     ("ttft_p50", "time to first token p50, s"),
                                     ("itl_p99", "inter-token latency p99, ms")]):
        ax = axes[i]
        w = 0.38
        for j, s in enumerate(SERVERS):
            ys = [med(s, l, key) or 0 for l in labels]
            ax.bar([k + (j - 0.5) * w for k in x], ys, w, label=s)
        ax.set_xticks(list(x), labels)
        ax.set_title(name, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle((out / "machine.txt").read_text().splitlines()[2] if (out / "machine.txt").exists()
                 else "", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "serve.png", dpi=80)


if __name__ == "__main__":
    main()
