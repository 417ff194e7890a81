#!/usr/bin/env python3
"""Grouped bar chart of a bench/vs-llama-cpp.sh run.

    python bench/plot.py OUT_DIR/results.json OUT_DIR/bench.png

One panel per model x test kind (prompt processing pp, generation tg), each with its
own linear axis from 0; in each, one group of bars per thread count and test size:
llama2, llama.cpp clang, llama.cpp plain (those that ran).
Bar = median tokens/s, whisker = min..max of the repetitions; above each llama2 bar its
ratio to the clang build (or to plain when clang did not run). Needs matplotlib.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ENGINES = [("llama2", "llama2", "#d1495b"), ("clang", "llama.cpp (clang)", "#30638e"),
           ("plain", "llama.cpp (gcc, plain)", "#8fb8de")]
KINDS = [("pp", "prompt processing"), ("tg", "generation")]


def main():
    src, dst = sys.argv[1], sys.argv[2]
    with open(src) as f:
        res = json.load(f)
    rows = res["rows"]
    kinds = [(k, t) for k, t in KINDS if any(r["kind"] == k for r in rows)]
    models = list(dict.fromkeys(r["model"] for r in rows))
    engines = [e for e in ENGINES if any(e[0] in r["engines"] for r in rows)]
    fig, axes = plt.subplots(len(kinds), len(models), squeeze=False,
                             figsize=(max(5.5, 3.2 * len(models)), 3.4 * len(kinds)))
    width = 0.8 / len(engines)
    for (kind, title), ax_row in zip(kinds, axes):
        for model, ax in zip(models, ax_row):
            sel = [r for r in rows if r["kind"] == kind and r["model"] == model]
            top = 0.0
            for i, (key, name, color) in enumerate(engines):
                xs, ys, lo, hi = [], [], [], []
                for g, r in enumerate(sel):
                    s = r["engines"].get(key)
                    if s is None:
                        continue
                    xs.append(g + (i - (len(engines) - 1) / 2) * width)
                    ys.append(s["median"])
                    lo.append(s["median"] - s["min"])
                    hi.append(s["max"] - s["median"])
                    top = max(top, s["max"])
                ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, color=color, label=name)
                if key == "llama2":
                    for x, y, h, r in zip(xs, ys, hi, sel):
                        ratio = r.get("ratio_clang", r.get("ratio_plain"))
                        if ratio is not None:
                            ax.annotate(f"{ratio:.2f}x", (x, y + h), ha="center",
                                        va="bottom", fontsize=7, xytext=(0, 2),
                                        textcoords="offset points")
            ax.set_ylim(0, top * 1.15 if top > 0 else 1)
            ax.set_xticks(range(len(sel)))
            ax.set_xticklabels([f"{r['test']}, {r['threads']} thr" for r in sel], fontsize=8)
            ax.set_title(f"{model.removesuffix('.gguf')}\n{title}", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            ax.tick_params(axis="y", labelsize=7)
        ax_row[0].set_ylabel("tokens/s (median, min..max)", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(engines), fontsize=8,
               frameon=False)
    cpu = res.get("cpu", {})
    commit = ((res.get("git") or {}).get("commit") or "unknown")[:10]
    ref = "clang" if any(e[0] == "clang" for e in engines) else "plain"
    fig.suptitle(f"llama2 {commit} vs llama.cpp {res.get('llama_cpp') or ''}\n"
                 f"{cpu.get('model', '?')}, {res.get('date', '')[:10]}; "
                 f"bar label: llama2 / llama.cpp {ref}", fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(dst, dpi=130)


if __name__ == "__main__":
    main()
