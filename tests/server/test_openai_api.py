"""`llama2 serve` driven by the official `openai` Python client: chat and completions,
streamed and not, logprobs, stop strings, n, seeds, and the CLI's answer for the same
greedy request."""

from __future__ import annotations

import json
import math
import subprocess

try:  # the HTTP library the installed `openai` uses (httpx2 in openai >= 3)
    import httpx2 as httpx
except ImportError:
    import httpx
import pytest

from conftest import BIN

ASK = "Write a Python function that reverses a string."


def chat(client, content=ASK, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 40)
    return client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": content}], **kw
    )


def test_chat_answer_is_the_clis_greedy_answer(server):
    r = chat(server.client())
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "SmolLM2-135M-Instruct.Q4_1"
    (c,) = r.choices
    assert c.index == 0 and c.message.role == "assistant"
    assert c.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 40
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    cli = subprocess.run(
        [str(BIN), "chat", "--temperature", "0", "--max-gen-len", "40", "--json", ASK],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(cli.stdout)[0]["generation"]["content"] == c.message.content


def test_streamed_chat_equals_the_whole_answer(server):
    whole = chat(server.client(), max_tokens=30)
    chunks = list(chat(server.client(), max_tokens=30, stream=True,
                       stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    reasons = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert reasons[-1] == whole.choices[0].finish_reason and reasons[:-1] == [None] * (len(reasons) - 1)
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == whole.usage.completion_tokens
    assert usage.usage.prompt_tokens == whole.usage.prompt_tokens
    assert all(ch.usage is None for ch in chunks[:-1])


def test_stream_without_usage_has_no_usage_chunk(server):
    chunks = list(chat(server.client(), max_tokens=5, stream=True))
    assert all(ch.choices for ch in chunks)


def test_max_tokens_ends_with_length(server):
    r = chat(server.client(), content="Count from one to one hundred in words.", max_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    r = chat(server.client(), content="Count from one to one hundred in words.",
             max_tokens=None, max_completion_tokens=3)
    assert r.usage.completion_tokens == 3


def test_chat_logprobs_with_alternatives(server):
    r = chat(server.client(), max_tokens=8, logprobs=True, top_logprobs=3)
    lps = r.choices[0].logprobs.content
    assert len(lps) == r.usage.completion_tokens
    assert "".join(t.token for t in lps) == r.choices[0].message.content
    for t in lps:
        assert len(t.top_logprobs) == 3
        tops = [a.logprob for a in t.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert t.token == t.top_logprobs[0].token
        assert math.isclose(t.logprob, tops[0], rel_tol=1e-5, abs_tol=1e-6)
        assert t.logprob <= 0 and bytes(t.bytes).decode() == t.token
    streamed = list(chat(server.client(), max_tokens=8, logprobs=True, top_logprobs=3, stream=True))
    s_lps = [t for ch in streamed if ch.choices and ch.choices[0].logprobs
             for t in ch.choices[0].logprobs.content]
    assert [(t.token, t.logprob) for t in s_lps] == [(t.token, t.logprob) for t in lps]


def test_stop_strings_end_the_answer_before_them(server):
    free = chat(server.client(), max_tokens=40).choices[0].message.content
    words = free.split()
    assert len(words) > 4
    stop = " " + words[3]
    cut = free[: free.index(stop)]
    for stream in (False, True):
        if stream:
            chunks = list(chat(server.client(), max_tokens=40, stop=[stop, "zzzz"], stream=True))
            text = "".join(c.choices[0].delta.content or "" for c in chunks)
            reason = chunks[-1].choices[0].finish_reason
        else:
            r = chat(server.client(), max_tokens=40, stop=stop)
            text, reason = r.choices[0].message.content, r.choices[0].finish_reason
        assert text == cut and reason == "stop"


def test_n_choices_and_seeds(server):
    kw = dict(content="Name a color.", temperature=1.0, max_tokens=12, n=3, seed=1234)
    a = chat(server.client(), **kw)
    b = chat(server.client(), **kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    # Different streams of one seed: the three choices are not all the same text.
    assert len({c.message.content for c in a.choices}) > 1
    other = chat(server.client(), **{**kw, "seed": 99})
    assert [c.message.content for c in other.choices] != [c.message.content for c in a.choices]
    chunks = list(chat(server.client(), **kw, stream=True))
    streamed = ["", "", ""]
    for ch in chunks:
        for c in ch.choices:
            streamed[c.index] += c.delta.content or ""
    assert streamed == [c.message.content for c in a.choices]


def test_completions_whole_streamed_echo_and_ids(server):
    client = server.client()
    prompt = "def fibonacci(n):"
    r = client.completions.create(model="m", prompt=prompt, max_tokens=20, temperature=0)
    assert r.object == "text_completion"
    text = r.choices[0].text
    s = "".join(c.choices[0].text for c in client.completions.create(
        model="m", prompt=prompt, max_tokens=20, temperature=0, stream=True))
    assert s == text
    e = client.completions.create(model="m", prompt=prompt, max_tokens=20, temperature=0, echo=True)
    assert e.choices[0].text == prompt + text
    ids = httpx.post(server.url + "/tokenize", json={"content": prompt}).json()["tokens"]
    t = client.completions.create(model="m", prompt=ids, max_tokens=20, temperature=0)
    assert t.choices[0].text == text
    two = client.completions.create(model="m", prompt=[prompt, "1, 2, 3,"], max_tokens=5,
                                    temperature=0, n=2)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]
    assert two.choices[0].text == two.choices[1].text == text[: len(two.choices[0].text)]


def test_completion_logprobs(server):
    client = server.client()
    r = client.completions.create(model="m", prompt="The alphabet: a, b, c,", max_tokens=6,
                                  temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == r.usage.completion_tokens
    assert "".join(lp.tokens) == r.choices[0].text
    for tok, p, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 2 and math.isclose(max(top.values()), p, rel_tol=1e-5, abs_tol=1e-6)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    e = client.completions.create(model="m", prompt="The alphabet: a, b, c,", max_tokens=6,
                                  temperature=0, logprobs=1, echo=True)
    n_prompt = e.usage.prompt_tokens
    elp = e.choices[0].logprobs
    assert len(elp.tokens) == n_prompt + e.usage.completion_tokens
    assert elp.token_logprobs[0] is None
    assert all(x is not None and x <= 0 for x in elp.token_logprobs[1:])
    assert elp.token_logprobs[n_prompt:] == pytest.approx(lp.token_logprobs, abs=1e-4)


def test_a_second_turn_reuses_the_first(server):
    client = server.client()
    msgs = [{"role": "user", "content": "Give me a list of three animals."}]
    r = client.chat.completions.create(model="m", messages=msgs, temperature=0, max_tokens=30)
    msgs += [{"role": "assistant", "content": r.choices[0].message.content},
             {"role": "user", "content": "Now three plants."}]
    r2 = client.chat.completions.create(model="m", messages=msgs, temperature=0, max_tokens=10)
    assert r2.usage.prompt_tokens_details.cached_tokens >= r.usage.prompt_tokens


def test_models_tokenize_detokenize(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct.Q4_1"]
    assert models.data[0].object == "model"
    text = "Hello, world! Ünïcode ✓"
    t = httpx.post(server.url + "/tokenize", json={"content": text}).json()
    assert t["count"] == len(t["tokens"]) > 3 and t["max_model_len"] == 1024
    d = httpx.post(server.url + "/detokenize", json={"tokens": t["tokens"]}).json()
    assert d["content"] == text
    assert httpx.post(server.url + "/detokenize", json={"tokens": [10**9]}).status_code == 400


def test_metrics_count_requests_and_tokens(server):
    before = server.metric("llama2_generation_tokens_total")
    r = chat(server.client(), max_tokens=7, content="Say hi.")
    after = server.metric("llama2_generation_tokens_total")
    assert after - before == r.usage.completion_tokens
    text = httpx.get(server.url + "/metrics").text
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running",
                 "vllm:gpu_cache_usage_perc", "llama2_time_to_first_token_seconds_count",
                 "llama2_inter_token_latency_seconds_bucket"):
        assert name in text, name
    assert 'llama2_requests_total{route="/v1/chat/completions",status="200"}' in text
