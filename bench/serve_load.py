#!/usr/bin/env python3
"""A small OpenAI-API load generator (the official `openai` async client, streaming).

Sends `--requests` completions or chat requests to one server, either with a fixed
number of clients in flight (`--concurrency N`) or arriving as a Poisson process
(`--rate R` requests per second), each with its own ~`--prompt-tokens` prompt (unique
from the first word, so no prefix cache helps) and exactly `--max-tokens` generated
tokens (`ignore_eos`). Prints one JSON object: output tokens/s over the run, time to
first token and inter-token latency percentiles (seconds), request count and errors.

Token counts come from the server's own usage chunk (`stream_options.include_usage`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from typing import List, Optional

import openai

try:  # the HTTP library the installed `openai` uses (httpx2 in openai >= 3)
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx

WORDS = (
    "time person year way day thing man world life hand part child eye woman place work "
    "week case point government company number group problem fact river mountain garden "
    "window table kitchen market engine bridge station letter music story answer paper "
    "light water summer winter morning evening city village forest ocean island desert"
).split()


def make_prompt(rng: random.Random, n_words: int, i: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n_words)]
    return f"Request {i}: " + " ".join(words) + ". Continue this list:"


def percentile(xs: List[float], p: float) -> Optional[float]:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def one(client, args, prompt: str, out: dict) -> None:
    start = time.perf_counter()
    stamps: List[float] = []
    usage = None
    common = dict(model=args.model, max_tokens=args.max_tokens, temperature=0, stream=True,
                  stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    try:
        if args.endpoint == "chat":
            stream = await client.chat.completions.create(
                messages=[{"role": "user", "content": prompt}], **common)
        else:
            stream = await client.completions.create(prompt=prompt, **common)
        async for ch in stream:
            if ch.usage is not None:
                usage = ch.usage
            if ch.choices:
                c = ch.choices[0]
                text = c.delta.content if args.endpoint == "chat" else c.text
                if text:
                    stamps.append(time.perf_counter())
    except Exception as e:  # noqa: BLE001 - every failure is counted and reported
        out["errors"].append(f"{type(e).__name__}: {e}")
        return
    if not stamps:
        out["errors"].append("no tokens")
        return
    out["ttft"].append(stamps[0] - start)
    out["itl"].extend(b - a for a, b in zip(stamps, stamps[1:]))
    out["tokens"] += usage.completion_tokens if usage else len(stamps)
    out["prompt_tokens"] += usage.prompt_tokens if usage else 0
    out["done"] += 1


async def run(args) -> dict:
    rng = random.Random(args.seed)
    prompts = [make_prompt(rng, args.prompt_words, i) for i in range(args.requests + 1)]
    client = openai.AsyncOpenAI(
        base_url=args.url.rstrip("/") + "/v1", api_key="none", max_retries=0,
        timeout=args.timeout,
        http_client=openai.DefaultAsyncHttpxClient(
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=0)))
    # (a fresh connection per request: llama-server closes idle keep-alive connections,
    # and a client reusing one gets a connection error)
    warm = {"ttft": [], "itl": [], "tokens": 0, "prompt_tokens": 0, "done": 0, "errors": []}
    await one(client, args, prompts[-1], warm)  # warm-up, not counted
    out = {"ttft": [], "itl": [], "tokens": 0, "prompt_tokens": 0, "done": 0, "errors": []}
    t0 = time.perf_counter()
    if args.rate:
        arrivals = random.Random(args.seed + 1)
        tasks = []
        for i in range(args.requests):
            tasks.append(asyncio.create_task(one(client, args, prompts[i], out)))
            await asyncio.sleep(arrivals.expovariate(args.rate))
        await asyncio.gather(*tasks)
    else:
        queue = list(range(args.requests))

        async def worker():
            while queue:
                i = queue.pop(0)
                await one(client, args, prompts[i], out)

        await asyncio.gather(*[worker() for _ in range(args.concurrency)])
    wall = time.perf_counter() - t0
    await client.close()
    return {
        "label": args.label,
        "endpoint": args.endpoint,
        "concurrency": None if args.rate else args.concurrency,
        "rate": args.rate,
        "requests": args.requests,
        "done": out["done"],
        "errors": out["errors"][:5],
        "n_errors": len(out["errors"]),
        "wall_s": wall,
        "output_tokens": out["tokens"],
        "mean_prompt_tokens": out["prompt_tokens"] / max(out["done"], 1),
        "output_tok_s": out["tokens"] / wall,
        "ttft_p50": percentile(out["ttft"], 50),
        "ttft_p99": percentile(out["ttft"], 99),
        "ttft_mean": statistics.fmean(out["ttft"]) if out["ttft"] else None,
        "itl_p50": percentile(out["itl"], 50),
        "itl_p99": percentile(out["itl"], 99),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="model")
    p.add_argument("--endpoint", choices=["chat", "completions"], default="completions")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--rate", type=float, default=None, help="Poisson arrivals per second")
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--prompt-words", type=int, default=120,
                   help="words per prompt (~1.2 tokens each with the default model)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--label", default="")
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
