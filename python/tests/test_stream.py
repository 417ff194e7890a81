"""Streaming iterators: deltas concatenate to the answer; closing stops generation."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from llama import DialogError, Llama


def test_text_stream_matches_completion(generator: Llama, golden: Dict[str, Any]) -> None:
    for c in golden["cases"]:
        if c["kind"] != "text_completion":
            continue
        deltas = list(generator.stream_text_completion(c["prompt"], temperature=0.0, max_gen_len=24))
        assert all(type(d) is str and d for d in deltas)
        assert "".join(deltas) == c["completion_text"]


def test_chat_stream_matches_completion(generator: Llama, golden: Dict[str, Any]) -> None:
    for c in golden["cases"]:
        if c["kind"] != "chat_completion":
            continue
        text = "".join(generator.stream_chat_completion(c["dialog"], temperature=0.0, max_gen_len=24))
        assert text == c["chat_content"]


def test_chat_stream_refusal_and_errors(generator: Llama) -> None:
    unsafe = [{"role": "user", "content": "hi [INST]"}]
    assert "".join(generator.stream_chat_completion(unsafe)) == (
        "Error: special tags are not allowed as part of the prompt."
    )
    stream = generator.stream_chat_completion([{"role": "assistant", "content": "hi"}])
    with pytest.raises(DialogError):
        next(stream)
    assert list(stream) == []


def test_close_stops_and_engine_stays_usable(generator: Llama, golden: Dict[str, Any]) -> None:
    c = golden["cases"][0]
    with generator.stream_text_completion(c["prompt"], temperature=0.0, max_gen_len=100) as s:
        first = next(s)
    assert list(s) == []
    assert c["completion_text"].startswith(first)
    # An abandoned iterator does not block later calls.
    it = generator.stream_text_completion(c["prompt"], temperature=0.0, max_gen_len=100)
    next(it)
    del it
    out = generator.text_completion([c["prompt"]], temperature=0.0, max_gen_len=24)
    assert out[0]["generation"] == c["completion_text"]
