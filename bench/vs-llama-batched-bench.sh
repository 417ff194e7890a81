#!/usr/bin/env bash
# Batched decoding of llama2 against llama.cpp's llama-batched-bench on the same GGUF
# file, threads, prompt and generation lengths and batch sizes, the two engines
# alternating per repetition; medians and ratios as a markdown table.
#
# Usage (from the repository root):
#   bench/vs-llama-batched-bench.sh [--model FILE] [--threads N] [--npp 128] [--ntg 64]
#                                   [--npl 1,4,8] [-r 3] [--build clang|plain] [--out DIR]
#
# Default model: the default model's cache file. Builds what is missing (llama2 release,
# llama.cpp through scripts/build-llama-cpp.sh). Writes every raw table to --out
# (default target/bench-batched) and prints the summary: per batch size B, the median
# aggregate decode speed S_TG of each engine, their ratio, and each engine's S_TG at B
# over its S_TG at B = 1 (how much batching gains).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="" THREADS=2 NPP=128 NTG=64 NPL=1,4,8 REPS=3 BUILD=clang OUT=target/bench-batched
while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODEL="$2"; shift 2 ;;
        --threads|-t) THREADS="$2"; shift 2 ;;
        --npp) NPP="$2"; shift 2 ;;
        --ntg) NTG="$2"; shift 2 ;;
        --npl) NPL="$2"; shift 2 ;;
        -r) REPS="$2"; shift 2 ;;
        --build) BUILD="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
cargo build --release -q -p llama2-cli
LLAMA2="$ROOT/target/release/llama2"
PEER="$ROOT/target/llama.cpp/build-$BUILD/bin/llama-batched-bench"
if [ ! -x "$PEER" ]; then
    if [ "$BUILD" = plain ]; then scripts/build-llama-cpp.sh --plain >&2
    else scripts/build-llama-cpp.sh >&2; fi
fi
if [ -z "$MODEL" ]; then
    MODEL="${LLAMA2_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama2}/SmolLM2-135M-Instruct.Q4_1.gguf"
    [ -f "$MODEL" ] || "$LLAMA2" batched-bench -npp 1 -ntg 1 -npl 1 >/dev/null  # fetches it
fi
[ -f "$MODEL" ] || { echo "no model file $MODEL" >&2; exit 2; }
# llama.cpp divides one context among the sequences: make it hold the largest case.
MAXB=$(tr ',' '\n' <<<"$NPL" | sort -n | tail -1)
MAXPP=$(tr ',' '\n' <<<"$NPP" | sort -n | tail -1)
MAXTG=$(tr ',' '\n' <<<"$NTG" | sort -n | tail -1)
CTX=$(( MAXB * (MAXPP + MAXTG) ))
mkdir -p "$OUT"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" | tee "$OUT/machine.txt"
echo "flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_vnni|avx_vnni|amx_int8|f16c|fma)$' | tr '\n' ' ')" | tee -a "$OUT/machine.txt"
for r in $(seq 1 "$REPS"); do
    echo "repetition $r/$REPS" >&2
    "$LLAMA2" batched-bench -m "$MODEL" -npp "$NPP" -ntg "$NTG" -npl "$NPL" -t "$THREADS" \
        > "$OUT/llama2-$r.md"
    "$PEER" -m "$MODEL" -c "$CTX" -b 2048 -ub 512 -npp "$NPP" -ntg "$NTG" -npl "$NPL" \
        -t "$THREADS" -tb "$THREADS" > "$OUT/llama-cpp-$r.md" 2> "$OUT/llama-cpp-$r.log"
done
python3 - "$OUT" "$REPS" <<'PY'
import statistics, sys
out, reps = sys.argv[1], int(sys.argv[2])
def table(path):
    rows = {}
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0].isdigit():
            pp, tg, b = int(cells[0]), int(cells[1]), int(cells[2])
            rows[(pp, tg, b)] = {"s_pp": float(cells[5]), "s_tg": float(cells[7]), "s": float(cells[9])}
    return rows
runs = {e: [table(f"{out}/{e}-{r}.md") for r in range(1, reps + 1)] for e in ("llama2", "llama-cpp")}
keys = sorted(runs["llama2"][0])
med = {e: {k: {m: statistics.median(t[k][m] for t in runs[e]) for m in ("s_pp", "s_tg", "s")} for k in keys} for e in runs}
print(f"\n{reps} repetitions, medians; ratio = llama2 / llama.cpp; scaling = S_TG at B / S_TG at B=1\n")
print("| PP | TG | B | llama2 S_PP | llama.cpp S_PP | ratio | llama2 S_TG | llama.cpp S_TG | ratio | llama2 scaling | llama.cpp scaling |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for (pp, tg, b) in keys:
    l, p = med["llama2"][(pp, tg, b)], med["llama-cpp"][(pp, tg, b)]
    b1 = (pp, tg, 1)
    sl = l["s_tg"] / med["llama2"][b1]["s_tg"] if b1 in med["llama2"] else float("nan")
    sp = p["s_tg"] / med["llama-cpp"][b1]["s_tg"] if b1 in med["llama-cpp"] else float("nan")
    print(f"| {pp} | {tg} | {b} | {l['s_pp']:.2f} | {p['s_pp']:.2f} | {l['s_pp']/p['s_pp']:.2f} | "
          f"{l['s_tg']:.2f} | {p['s_tg']:.2f} | {l['s_tg']/p['s_tg']:.2f} | {sl:.2f} | {sp:.2f} |")
PY
