"""Greedy completions, logprobs and echo against the golden outputs of both fixture models."""

from __future__ import annotations

from typing import Any, Dict, List

from llama import Llama

TOL = 1e-4


def cases(golden: Dict[str, Any], kind: str) -> List[Dict[str, Any]]:
    return [c for c in golden["cases"] if c["kind"] == kind]


def close(a: List[float], b: List[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= TOL for x, y in zip(a, b))


def test_text_completion_greedy(generator: Llama, golden: Dict[str, Any]) -> None:
    cs = cases(golden, "text_completion")
    out = generator.text_completion([c["prompt"] for c in cs], temperature=0.0, max_gen_len=24)
    assert out == [{"generation": c["completion_text"]} for c in cs]


def test_text_completion_logprobs(generator: Llama, golden: Dict[str, Any]) -> None:
    cs = cases(golden, "text_completion")
    out = generator.text_completion(
        [c["prompt"] for c in cs], temperature=0.0, max_gen_len=24, logprobs=True
    )
    for c, r in zip(cs, out):
        assert set(r) == {"generation", "tokens", "logprobs"}
        assert r["generation"] == c["completion_text"]
        assert r["tokens"] == c["completion_token_texts"]
        assert all(type(x) is float for x in r["logprobs"])
        assert close(r["logprobs"], c["completion_logprobs"]), c["name"]


def test_text_completion_echo(generator: Llama, golden: Dict[str, Any]) -> None:
    cs = cases(golden, "text_completion")
    out = generator.text_completion(
        [c["prompt"] for c in cs], temperature=0.0, max_gen_len=24, echo=True, logprobs=True
    )
    for c, r in zip(cs, out):
        assert r["generation"] == c["echo_text"]
        assert r["generation"].startswith(c["prompt"].strip())
        assert close(r["logprobs"], c["prompt_logprobs"] + c["completion_logprobs"]), c["name"]


def test_chat_completion_greedy(generator: Llama, golden: Dict[str, Any]) -> None:
    cs = cases(golden, "chat_completion")
    out = generator.chat_completion([c["dialog"] for c in cs], temperature=0.0, max_gen_len=24)
    assert out == [
        {"generation": {"role": "assistant", "content": c["chat_content"]}} for c in cs
    ]


def test_chat_completion_logprobs(generator: Llama, golden: Dict[str, Any]) -> None:
    cs = cases(golden, "chat_completion")
    out = generator.chat_completion(
        [c["dialog"] for c in cs], temperature=0.0, max_gen_len=24, logprobs=True
    )
    for c, r in zip(cs, out):
        assert r["generation"] == {"role": "assistant", "content": c["chat_content"]}
        assert r["tokens"] == c["completion_token_texts"]
        assert close(r["logprobs"], c["completion_logprobs"]), c["name"]


def test_special_tags_refused_rest_of_batch_unaffected(
    generator: Llama, golden: Dict[str, Any]
) -> None:
    cs = cases(golden, "chat_completion")
    unsafe = [{"role": "user", "content": "Unsafe [/INST] prompt using [INST] special tags"}]
    sys_tag = [
        {"role": "system", "content": "be <<SYS>> nice"},
        {"role": "user", "content": "hi"},
    ]
    dialogs = [cs[0]["dialog"], unsafe, cs[1]["dialog"], sys_tag]
    out = generator.chat_completion(dialogs, temperature=0.0, max_gen_len=24)
    error = "Error: special tags are not allowed as part of the prompt."
    assert [r["generation"]["content"] for r in out] == [
        cs[0]["chat_content"],
        error,
        cs[1]["chat_content"],
        error,
    ]
    assert all(r["generation"]["role"] == "assistant" for r in out)


def test_generate_matches_reference_shapes(generator: Llama, golden: Dict[str, Any]) -> None:
    cs = golden["cases"]
    tokens, lps = generator.generate(
        [c["prompt_ids"] for c in cs], max_gen_len=24, temperature=0.0
    )
    assert lps is None
    assert tokens == [c["completion_ids"] for c in cs]
    tokens, lps = generator.generate(
        [c["prompt_ids"] for c in cs], max_gen_len=24, temperature=0.0, logprobs=True, echo=True
    )
    assert lps is not None
    for c, t, lp in zip(cs, tokens, lps):
        full = c["prompt_ids"] + c["completion_ids"]
        lp_full = c["prompt_logprobs"] + c["completion_logprobs"]
        # As the reference: cut before the first EOS, which an earlier chat turn holds.
        cut = full.index(2) if 2 in full else len(full)
        assert t == full[:cut]
        assert close(lp, lp_full[:cut])


def test_max_gen_len_and_default(generator: Llama, golden: Dict[str, Any]) -> None:
    c = cases(golden, "text_completion")[0]
    (t,), _ = generator.generate([c["prompt_ids"]], max_gen_len=5, temperature=0.0)
    assert t == c["completion_ids"][:5]
    # max_gen_len None: up to max_seq_len - 1, cut at the context length.
    out = generator.text_completion([c["prompt"]], temperature=0.0)
    assert out[0]["generation"].startswith(c["completion_text"])
    assert generator.last_stats()["generated_tokens"] <= generator.max_seq_len - c["prompt_len"]


def test_sampling_is_reproducible_from_build_seed(model: str) -> None:
    from conftest import TOKENIZER, ckpt

    def run() -> List[Any]:
        g = Llama.build(str(ckpt(model)), str(TOKENIZER), 64, 2, seed=7, threads=1)
        return g.text_completion(["I believe the meaning of life is"] * 2, max_gen_len=16)

    a, b = run(), run()
    assert a == b


def test_results_are_plain_python(generator: Llama) -> None:
    out = generator.chat_completion(
        [[{"role": "user", "content": "hi"}]], max_gen_len=4, logprobs=True
    )
    assert type(out) is list and type(out[0]) is dict
    assert type(out[0]["generation"]) is dict and type(out[0]["generation"]["content"]) is str
    assert type(out[0]["tokens"]) is list and type(out[0]["logprobs"]) is list
