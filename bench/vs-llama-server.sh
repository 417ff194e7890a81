#!/usr/bin/env bash
# Serving benchmark: `llama2 serve` against llama.cpp's `llama-server` on the same GGUF,
# slots, context per slot and threads, the two servers alternating per repetition, load
# from bench/serve_load.py (the official `openai` async client, streaming, ignore_eos).
#
# Usage (from the repository root):
#   bench/vs-llama-server.sh [--model FILE] [--threads 2] [--parallel 4] [--ctx 1024]
#                            [--clients 1,4,8,16] [--rate 2] [--rate-requests 32]
#                            [--per-client 4] [--min-requests 8] [--prompt-words 120] [--max-tokens 64]
#                            [--endpoint completions|chat] [-r 3] [--out DIR] [--publish]
#
# Default model: the default model's cache file. Builds what is missing (llama2 release,
# llama-server through scripts/build-llama-cpp.sh, a venv under target/ with openai and
# matplotlib). For each repetition and server: start it, wait for /health, run one load
# per client count (clients x --per-client requests, at least --min-requests 8), then --rate-requests
# requests arriving as a Poisson process at --rate per second (none with
# --rate-requests 0), stop it. Raw JSON lines
# go to --out (default target/bench-serve)/results.jsonl; the summary (medians over
# repetitions, ratios llama2/llama.cpp) is printed as markdown and plotted to
# --out/serve.png (--publish also copies it to bench/serve.png).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL="" THREADS=2 PARALLEL=4 CTX=1024 CLIENTS=1,4,8,16 RATE=2 PER_CLIENT=4
WORDS=120 MAXTOK=64 ENDPOINT=completions REPS=3 OUT=target/bench-serve PUBLISH=0
RATE_REQUESTS=32 MIN_REQ=8
while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODEL="$2"; shift 2 ;;
        --threads|-t) THREADS="$2"; shift 2 ;;
        --parallel) PARALLEL="$2"; shift 2 ;;
        --ctx) CTX="$2"; shift 2 ;;
        --clients) CLIENTS="$2"; shift 2 ;;
        --min-requests) MIN_REQ="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --rate-requests) RATE_REQUESTS="$2"; shift 2 ;;
        --per-client) PER_CLIENT="$2"; shift 2 ;;
        --prompt-words) WORDS="$2"; shift 2 ;;
        --max-tokens) MAXTOK="$2"; shift 2 ;;
        --endpoint) ENDPOINT="$2"; shift 2 ;;
        -r) REPS="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --publish) PUBLISH=1; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
cargo build --release -q -p llama2-cli
LLAMA2="$ROOT/target/release/llama2"
PEER="$ROOT/target/llama.cpp/build-clang/bin/llama-server"
[ -x "$PEER" ] || scripts/build-llama-cpp.sh >&2
VENV="$ROOT/target/bench-venv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import openai, matplotlib' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check openai matplotlib
fi
if [ -z "$MODEL" ]; then
    MODEL="${LLAMA2_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llama2}/SmolLM2-135M-Instruct.Q4_1.gguf"
    [ -f "$MODEL" ] || "$LLAMA2" batched-bench -npp 1 -ntg 1 -npl 1 >/dev/null  # fetches it
fi
[ -f "$MODEL" ] || { echo "no model file $MODEL" >&2; exit 2; }
mkdir -p "$OUT"
: > "$OUT/results.jsonl"
{
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "flags: $(grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|avx512f|avx512_vnni|avx_vnni|amx_int8|f16c|fma)$' | tr '\n' ' ')"
    echo "model: $MODEL; threads $THREADS; slots $PARALLEL x $CTX positions; endpoint $ENDPOINT"
    echo "load: clients $CLIENTS x $PER_CLIENT requests (at least 8); Poisson $RATE req/s x $RATE_REQUESTS; ~$WORDS-word prompts; $MAXTOK tokens"
} | tee "$OUT/machine.txt"
PORT=18181
PID=""
stop_server() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
        PID=""
    fi
}
trap stop_server EXIT
start_server() {  # $1 = llama2 | llama.cpp, $2 = log file
    if [ "$1" = llama2 ]; then
        "$LLAMA2" serve --model "$MODEL" --port "$PORT" --parallel "$PARALLEL" \
            --ctx-size "$CTX" --threads "$THREADS" --queue 1024 2> "$2" &
    else
        # llama-server divides -c among its slots: give it CTX per slot.
        "$PEER" -m "$MODEL" --port "$PORT" --host 127.0.0.1 -np "$PARALLEL" \
            -c $((PARALLEL * CTX)) -t "$THREADS" -tb "$THREADS" > "$2" 2>&1 &
    fi
    PID=$!
    for _ in $(seq 1 600); do
        if curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    echo "$1 did not become ready; see $2" >&2
    exit 1
}
load() {  # $1 = server name, $2 = rep, then serve_load.py arguments
    local name="$1" rep="$2"
    shift 2
    "$VENV/bin/python" bench/serve_load.py --url "http://127.0.0.1:$PORT" \
        --endpoint "$ENDPOINT" --prompt-words "$WORDS" --max-tokens "$MAXTOK" "$@" |
        "$VENV/bin/python" -c 'import json,sys; d=json.loads(sys.stdin.read()); d.update(server=sys.argv[1], rep=int(sys.argv[2])); print(json.dumps(d))' "$name" "$rep" |
        tee -a "$OUT/results.jsonl" >&2
}
for r in $(seq 1 "$REPS"); do
    if [ $((r % 2)) = 1 ]; then order="llama2 llama.cpp"; else order="llama.cpp llama2"; fi
    for s in $order; do
        echo "repetition $r/$REPS: $s" >&2
        start_server "$s" "$OUT/$s-$r.log"
        for c in ${CLIENTS//,/ }; do
            n=$((c * PER_CLIENT)); [ "$n" -ge "$MIN_REQ" ] || n=$MIN_REQ
            load "$s" "$r" --concurrency "$c" --requests "$n" --seed "$r" --label "c$c"
        done
        if [ "$RATE_REQUESTS" -gt 0 ]; then
            load "$s" "$r" --rate "$RATE" --requests "$RATE_REQUESTS" --seed "$r" --label "rate$RATE"
        fi
        stop_server
    done
done
"$VENV/bin/python" bench/serve_report.py "$OUT" | tee "$OUT/summary.md"
if [ "$PUBLISH" = 1 ]; then cp "$OUT/serve.png" bench/serve.png; fi
