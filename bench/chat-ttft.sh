#!/usr/bin/env bash
# Time to first token of a chat's second turn against its first, in one interactive
# `llama2 chat` session (the second turn reuses the first's KV slot, so only the new
# message is prefilled). The first message is about 300 tokens.
#
# Usage: bench/chat-ttft.sh [--model FILE] [--threads N] [-r 3]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODEL_ARGS=() THREADS=2 REPS=3
while [ $# -gt 0 ]; do
    case "$1" in
        --model) MODEL_ARGS=(--model "$2"); shift 2 ;;
        --threads|-t) THREADS="$2"; shift 2 ;;
        -r) REPS="$2"; shift 2 ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
cargo build --release -q -p llama2-cli
FIRST="Here are my notes from this week's planning meeting. We agreed to move the release \
of the reporting dashboard to the second week of next month, because the data export job \
still fails on accounts with more than ten thousand rows and the fix needs a schema change. \
Maria will own the schema change and will write a migration that can run without downtime; \
she estimates four days including review. Tom will add a retry with backoff to the export \
job and alert the on-call engineer after three failures. The design team asked for one \
more round of feedback on the chart colors, since two customers said the red and orange \
series are hard to tell apart. We also discussed the onboarding flow: new users drop off \
at the step where they connect a data source, and the support team says most tickets are \
about finding API keys. Priya suggested a short video and a link to the provider's key \
page right in the form. Finally, the budget for the offsite was approved, and Lee will \
book the venue by Friday. Please list the action items from these notes, one per line, \
with the owner's name first."
SECOND="Which of those items are due this week?"
for r in $(seq 1 "$REPS"); do
    printf '%s\n%s\n' "$FIRST" "$SECOND" |
        target/release/llama2 chat "${MODEL_ARGS[@]}" --threads "$THREADS" --temperature 0 \
            --max-gen-len 48 --stats 2>&1 >/dev/null | grep '^prompt:'
done | python3 -c '
import re, statistics, sys
lines = [l for l in sys.stdin]
pat = re.compile(r"prompt: (\d+) tokens \((\d+) reused\) in ([\d.]+)s")
turns = [pat.match(l).groups() for l in lines]
first = [float(t[2]) for t in turns[0::2]]
second = [float(t[2]) for t in turns[1::2]]
for t in turns[:2]:
    print(f"prompt {t[0]} tokens, {t[1]} reused: time to first token {float(t[2])*1000:.1f} ms")
f, s = statistics.median(first), statistics.median(second)
print(f"median TTFT first turn {f*1000:.1f} ms, second turn {s*1000:.1f} ms: ratio {s/f:.3f} ({len(first)} runs)")
'
