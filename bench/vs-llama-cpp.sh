#!/usr/bin/env bash
# Head-to-head speed of llama2 against llama.cpp on this machine's CPU.
#
# Usage (from anywhere; relative paths are taken from the repo root):
#   bench/vs-llama-cpp.sh                       # the full default run (long: the 7B file)
#   bench/vs-llama-cpp.sh --quick --models models/SmolLM2-135M-Instruct.Q4_1.gguf \
#       --threads 1 --builds clang --no-build   # a smoke test of a few seconds
#
# Options:
#   --models A,B,...   GGUF files (default: the four below). An entry may end in @P/N to
#                      set its own prompt/generation lengths, e.g. models/x.gguf@128/16.
#   --threads 1,2      thread counts (default: 1 and all cores)
#   -p N, -n N         prompt / generation length for every model (default per model:
#                      pp512 tg64; pp128 tg16 for files of 1 GiB or more)
#   -r N               repetitions of each test (default 5)
#   --builds LIST      llama.cpp builds to run against: clang, plain (default clang,plain)
#   --interleave MODE  rep (default): per repetition, one call of each engine with -r 1,
#                      the order rotating each time, so drift and other load hit all
#                      engines alike (every call does its own warm-up run first);
#                      block: one call per engine with -r N, order rotating per test
#   --quick            tiny sizes for smoke tests: pp32 tg8 (pp8 tg2 for >= 1 GiB), -r 2,
#                      a 256 MiB bandwidth buffer
#   --out DIR          where results go (default target/bench)
#   --no-build         do not run `cargo build --release -p llama2-cli` (it is run by
#                      default, so the numbers are those of the tree; still built if missing)
#   --no-plot          skip the PNG (no matplotlib / no PyPI)
#   --publish          also copy the figure to bench/bench.png
#   -h, --help         this text
#
# Default models, each made when missing:
#   models/SmolLM2-135M-Instruct.Q4_1.gguf  the default model, copied from the llama2
#                                           cache (fetched into it first if needed)
#   models/SmolLM2-135M-Instruct.Q8_0.gguf  llama-quantize --allow-requantize ... Q8_0
#   models/llama2-7b-random-q4_0.gguf       llama2 convert --random 7b --type q4_0
#                                           (Llama 2 shapes, random weights, 3.8 GB)
#   models/llama2-7b-random-q4_k_m.gguf     llama-quantize --allow-requantize ... Q4_K_M
#                                           of the file above (Q4_K and Q6_K tensors)
#
# What it does: builds what is missing (llama.cpp via scripts/build-llama-cpp.sh into
# target/llama.cpp/build-clang and, with --plain, build-plain; bench/membw.c with
# clang-19 into target/bench/membw); measures the read bandwidth per thread count; runs
# `llama2 bench` and each build's `llama-bench` with -o json on every model x threads x
# test, alternating engines; then bench/report.py pools the per-repetition tokens/s
# (llama2: tokens_per_s; llama-bench: samples_ts) and prints a markdown table (medians,
# ratios llama2/llama.cpp) and the decode memory-bandwidth bound, also written to
# $OUT/results.md and $OUT/results.json; bench/plot.py (matplotlib, in a venv at
# target/bench-venv) draws $OUT/bench.png. Raw JSON and logs of every call: $OUT/raw/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
die() { echo "vs-llama-cpp: $*" >&2; exit 2; }
log() { echo "[bench] $*" >&2; }

DEFAULT_Q4=models/SmolLM2-135M-Instruct.Q4_1.gguf
DEFAULT_Q8=models/SmolLM2-135M-Instruct.Q8_0.gguf
DEFAULT_7B=models/llama2-7b-random-q4_0.gguf
DEFAULT_7BK=models/llama2-7b-random-q4_k_m.gguf
MODELS="$DEFAULT_Q4,$DEFAULT_Q8,$DEFAULT_7B,$DEFAULT_7BK"
NPROC="$(nproc)"
THREADS="1"; [ "$NPROC" -gt 1 ] && THREADS="1,$NPROC"
P=""; N=""; R=""; BUILDS="clang,plain"; INTERLEAVE=rep; QUICK=0
OUT=target/bench; BUILD=1; PLOT=1; PUBLISH=0

need_arg() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi; }
while [ $# -gt 0 ]; do
    case "$1" in
        --models) need_arg "$@"; MODELS="$2"; shift 2 ;;
        --threads|-t) need_arg "$@"; THREADS="$2"; shift 2 ;;
        -p) need_arg "$@"; P="$2"; shift 2 ;;
        -n) need_arg "$@"; N="$2"; shift 2 ;;
        -r) need_arg "$@"; R="$2"; shift 2 ;;
        --builds) need_arg "$@"; BUILDS="$2"; shift 2 ;;
        --interleave) need_arg "$@"; INTERLEAVE="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --out) need_arg "$@"; OUT="$2"; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-plot) PLOT=0; shift ;;
        --publish) PUBLISH=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

is_count() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
[ -z "$P" ] || is_count "$P" || die "-p must be a positive integer"
[ -z "$N" ] || is_count "$N" || die "-n must be a positive integer"
if [ -z "$R" ]; then R=5; [ "$QUICK" = 1 ] && R=2; fi
is_count "$R" || die "-r must be a positive integer"
case "$INTERLEAVE" in rep|block) ;; *) die "--interleave must be rep or block" ;; esac
IFS=, read -r -a THREAD_LIST <<< "$THREADS"
for t in "${THREAD_LIST[@]}"; do is_count "$t" || die "bad thread count: $t"; done
IFS=, read -r -a BUILD_LIST <<< "$BUILDS"
for b in "${BUILD_LIST[@]}"; do
    case "$b" in clang|plain) ;; *) die "unknown build: $b (clang or plain)" ;; esac
done
IFS=, read -r -a MODEL_SPECS <<< "$MODELS"
[ "${#MODEL_SPECS[@]}" -gt 0 ] || die "no models"

LLAMA2="$ROOT/target/release/llama2"
RAW="$OUT/raw"
mkdir -p "$OUT"
rm -rf "$RAW"; mkdir -p "$RAW"
rm -f "$OUT/runs.tsv" "$OUT/membw.tsv" "$OUT/meta.tsv" "$OUT/results.md" \
      "$OUT/results.json" "$OUT/bench.png"

# ---- 1. binaries ----------------------------------------------------------------------
if [ "$BUILD" = 1 ] || [ ! -x "$LLAMA2" ]; then
    log "cargo build --release -p llama2-cli"
    cargo build --release -p llama2-cli >&2
fi
peer_bench() { echo "$ROOT/target/llama.cpp/build-$1/bin/llama-bench"; }
for b in "${BUILD_LIST[@]}"; do
    if [ ! -x "$(peer_bench "$b")" ]; then
        log "llama.cpp $b build missing: scripts/build-llama-cpp.sh"
        if [ "$b" = plain ]; then scripts/build-llama-cpp.sh --plain >&2
        else scripts/build-llama-cpp.sh >&2; fi
    fi
done
QUANTIZE="$ROOT/target/llama.cpp/build-clang/bin/llama-quantize"
[ -x "$QUANTIZE" ] || QUANTIZE="$ROOT/target/llama.cpp/build-plain/bin/llama-quantize"

MEMBW="$ROOT/target/bench/membw"
mkdir -p "$ROOT/target/bench"
if [ ! -x "$MEMBW" ] || [ bench/membw.c -nt "$MEMBW" ]; then
    command -v clang-19 >/dev/null || die "clang-19 is needed for bench/membw.c (scripts/build-llama-cpp.sh installs it)"
    log "compiling bench/membw.c"
    clang-19 -O3 -march=native -fopenmp bench/membw.c -o "$MEMBW" \
        -Wl,-rpath,/usr/lib/llvm-19/lib
fi

# ---- 2. models --------------------------------------------------------------------------
default_model_cache() {
    if [ -n "${LLAMA2_CACHE:-}" ]; then echo "$LLAMA2_CACHE"
    elif [ -n "${XDG_CACHE_HOME:-}" ]; then echo "$XDG_CACHE_HOME/llama2"
    else echo "$HOME/.cache/llama2"; fi
}
ensure_model() {  # makes the default models when missing; others must exist
    local m="$1"
    [ -f "$m" ] && return 0
    mkdir -p "$(dirname "$m")"
    case "$m" in
        "$DEFAULT_Q4")
            local cached
            cached="$(default_model_cache)/$(basename "$DEFAULT_Q4")"
            if [ ! -f "$cached" ]; then
                log "fetching the default model into the llama2 cache"
                # with no --model, llama2 fetches (sha256-checked) and reports the path
                cached="$("$LLAMA2" bench -t 1 -p 0 -n 1 -r 1 -o json |
                          python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["model"])')"
            fi
            log "copying $cached -> $m"
            cp "$cached" "$m.tmp" && mv "$m.tmp" "$m" ;;
        "$DEFAULT_Q8")
            ensure_model "$DEFAULT_Q4"
            [ -x "$QUANTIZE" ] || die "no llama-quantize (run scripts/build-llama-cpp.sh)"
            log "making $m (Q8_0 re-quantisation of $DEFAULT_Q4)"
            "$QUANTIZE" --allow-requantize "$DEFAULT_Q4" "$m.tmp" Q8_0 > "$RAW/quantize.log" 2>&1 ||
                { tail -20 "$RAW/quantize.log" >&2; die "llama-quantize failed"; }
            mv "$m.tmp" "$m" ;;
        "$DEFAULT_7BK")
            ensure_model "$DEFAULT_7B"
            [ -x "$QUANTIZE" ] || die "no llama-quantize (run scripts/build-llama-cpp.sh)"
            log "making $m (Q4_K_M re-quantisation of $DEFAULT_7B; takes a while)"
            "$QUANTIZE" --allow-requantize "$DEFAULT_7B" "$m.tmp" Q4_K_M "$NPROC" \
                > "$RAW/quantize-7b.log" 2>&1 ||
                { tail -20 "$RAW/quantize-7b.log" >&2; die "llama-quantize failed"; }
            mv "$m.tmp" "$m" ;;
        "$DEFAULT_7B")
            log "making $m (random weights, Llama 2 7B shapes; takes a while)"
            "$LLAMA2" convert --random 7b --tokenizer tests/fixtures/tokenizer/tokenizer.model \
                --type q4_0 --out "$m.tmp" >&2
            mv "$m.tmp" "$m" ;;
        *) die "model not found: $m" ;;
    esac
}

MODEL_PATHS=(); MODEL_P=(); MODEL_N=()
for spec in "${MODEL_SPECS[@]}"; do
    m="${spec%@*}"; pn=""
    [ "$m" != "$spec" ] && pn="${spec##*@}"
    ensure_model "$m"
    big=0; [ "$(stat -c %s "$m")" -ge $((1 << 30)) ] && big=1
    if [ "$QUICK" = 1 ]; then
        if [ "$big" = 1 ]; then mp=8; mn=2; else mp=32; mn=8; fi
    else
        if [ "$big" = 1 ]; then mp=128; mn=16; else mp=512; mn=64; fi
    fi
    [ -n "$P" ] && mp="$P"
    [ -n "$N" ] && mn="$N"
    if [ -n "$pn" ]; then
        [[ "$pn" =~ ^([0-9]+)/([0-9]+)$ ]] || die "bad size suffix in $spec (want @P/N)"
        mp="${BASH_REMATCH[1]}"; mn="${BASH_REMATCH[2]}"
    fi
    MODEL_PATHS+=("$m"); MODEL_P+=("$mp"); MODEL_N+=("$mn")
done

# ---- 3. memory bandwidth ------------------------------------------------------------------
BW_MIB=1024; [ "$QUICK" = 1 ] && BW_MIB=256
for t in "${THREAD_LIST[@]}"; do
    gbs="$("$MEMBW" "$BW_MIB" "$t" 5 2>/dev/null | cut -d' ' -f1)" || die "bench/membw.c failed"
    log "read bandwidth, $t thread(s): $gbs GB/s"
    printf '%s\t%s\n' "$t" "$gbs" >> "$OUT/membw.tsv"
done

# ---- 4. the runs ----------------------------------------------------------------------------
{
    printf 'date\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf 'repetitions\t%s\n' "$R"
    printf 'interleave\t%s\n' "$INTERLEAVE"
    printf 'builds\t%s\n' "$BUILDS"
    printf 'threads\t%s\n' "$THREADS"
    printf 'load_before\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf 'llama2_binary_mtime\t%s\n' "$(date -u -r "$LLAMA2" +%Y-%m-%dT%H:%M:%SZ)"
    printf 'membw_mib\t%s\n' "$BW_MIB"
} > "$OUT/meta.tsv"

ENGINES=(llama2 "${BUILD_LIST[@]}")
sample_of() {  # first tokens/s sample of a result file, for the progress line
    python3 -c 'import json,sys
r = json.load(open(sys.argv[1]))[0]
s = r.get("tokens_per_s") or r.get("samples_ts")
print("%.2f" % s[0])' "$1" 2>/dev/null || echo "?"
}
call=0
run_engine() {  # engine model threads kind n reps rep_label
    local e="$1" m="$2" t="$3" kind="$4" n="$5" reps="$6" rep="$7"
    local pp=0 tg=0 tag out
    if [ "$kind" = pp ]; then pp="$n"; else tg="$n"; fi
    call=$((call + 1))
    tag="$(printf '%04d' "$call")-$(basename "$m" .gguf)-t$t-$kind$n-$e-$rep"
    out="$RAW/$tag.json"
    if [ "$e" = llama2 ]; then
        "$LLAMA2" bench -m "$m" -t "$t" -p "$pp" -n "$tg" -r "$reps" -o json \
            > "$out" 2> "$RAW/$tag.log" || { tail -20 "$RAW/$tag.log" >&2; die "llama2 bench failed ($tag)"; }
    else
        "$(peer_bench "$e")" -m "$m" -t "$t" -p "$pp" -n "$tg" -r "$reps" -o json \
            > "$out" 2> "$RAW/$tag.log" || { tail -20 "$RAW/$tag.log" >&2; die "llama-bench ($e) failed ($tag)"; }
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$m" "$t" "$kind" "$n" "$e" "$rep" "$out" >> "$OUT/runs.tsv"
    log "$(basename "$m") t=$t $kind$n $e rep $rep: $(sample_of "$out") t/s"
}

k=${#ENGINES[@]}
test_no=0
for i in "${!MODEL_PATHS[@]}"; do
    m="${MODEL_PATHS[$i]}"
    for t in "${THREAD_LIST[@]}"; do
        for kind in pp tg; do
            if [ "$kind" = pp ]; then n="${MODEL_P[$i]}"; else n="${MODEL_N[$i]}"; fi
            [ "$n" -gt 0 ] || continue
            if [ "$INTERLEAVE" = rep ]; then
                for ((rep = 0; rep < R; rep++)); do
                    for ((j = 0; j < k; j++)); do
                        e="${ENGINES[$(( (j + rep + test_no) % k ))]}"
                        run_engine "$e" "$m" "$t" "$kind" "$n" 1 "$((rep + 1))"
                    done
                done
            else
                for ((j = 0; j < k; j++)); do
                    e="${ENGINES[$(( (j + test_no) % k ))]}"
                    run_engine "$e" "$m" "$t" "$kind" "$n" "$R" all
                done
            fi
            test_no=$((test_no + 1))
        done
    done
done

# ---- 5. report and plot -------------------------------------------------------------------
echo
python3 bench/report.py "$OUT"
echo
echo "written: $OUT/results.md $OUT/results.json (raw calls: $RAW/)"

if [ "$PLOT" = 1 ]; then
    VENV="$ROOT/target/bench-venv"
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
        log "creating $VENV with matplotlib"
        { python3 -m venv "$VENV" &&
          "$VENV/bin/python" -m pip install -q --disable-pip-version-check matplotlib; } >&2 ||
            { log "warning: matplotlib venv could not be made; no plot (rerun, or --no-plot)"; PLOT=0; }
    fi
    if [ "$PLOT" = 1 ]; then
        "$VENV/bin/python" bench/plot.py "$OUT/results.json" "$OUT/bench.png"
        echo "written: $OUT/bench.png"
        if [ "$PUBLISH" = 1 ]; then
            cp "$OUT/bench.png" bench/bench.png
            echo "published: bench/bench.png"
        fi
    fi
elif [ "$PUBLISH" = 1 ]; then
    log "warning: --publish without a plot: nothing copied"
fi
