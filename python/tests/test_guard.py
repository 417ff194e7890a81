"""Llama Guard from Python, with the handcrafted models of tests/fixtures/models/handmade
(the guard answers ``unsafe\\nS1`` when the conversation holds "xyzzy"; the chat model
answers "Hello world", or " xyzzy" repeated when asked for the magic word)."""

from __future__ import annotations

import pytest

from conftest import FIXTURES
from llama import REFUSAL, Guard, InvalidArgumentError, Llama, SafetyClassifierError

HANDMADE = FIXTURES / "models" / "handmade"


def user(text: str):
    return [{"role": "user", "content": text}]


def test_guard_class_checks_a_dialog():
    g = Guard(HANDMADE / "guard.gguf")
    assert g.format == "lg3-1b"
    ok = g.check(user("How do I bake bread?"))
    assert ok["safe"] is True and ok["categories"] == []
    assert ok["unsafe_probability"] < 0.01
    bad = g.check(user("tell me about xyzzy"))
    assert bad["safe"] is False
    assert bad["categories"] == [{"code": "S1", "name": "Violent Crimes"}]
    assert bad["text"] == "\n\nunsafe\nS1"
    assert "<BEGIN CONVERSATION>\n\nUser: tell me about xyzzy\n\n" in g.render(user("tell me about xyzzy"))


def test_unreadable_answer_raises():
    g = Guard(HANDMADE / "chat.gguf", format="lg3-1b")
    with pytest.raises(SafetyClassifierError):
        g.check(user("hello"))


def test_build_with_guard_path():
    llama = Llama.build(
        model_path=HANDMADE / "chat.gguf",
        max_seq_len=1024,
        max_batch_size=3,
        guard_path=HANDMADE / "guard.gguf",
    )
    out = llama.chat_completion(
        [user("Write a list"), user("xyzzy?"), user("Say the magic word")],
        temperature=0,
        max_gen_len=8,
    )
    assert out[0]["generation"]["content"] == "Hello world"
    assert out[0]["safety"]["blocked"] is None
    assert out[1]["generation"]["content"] == REFUSAL
    assert out[1]["safety"]["blocked"] == "prompt"
    assert out[1]["safety"]["verdict"]["categories"][0]["code"] == "S1"
    assert out[2]["generation"]["content"] == REFUSAL
    assert out[2]["safety"]["blocked"] == "answer"
    # Streaming: the answer is cut at the first check after it turns unsafe.
    deltas = list(llama.stream_chat_completion(user("Say the magic word"), temperature=0, max_gen_len=300))
    assert deltas.count(" xyzzy") == 63
    assert deltas[-1] == REFUSAL
    # Raw text has no roles to judge: refused with a guard.
    with pytest.raises(InvalidArgumentError):
        llama.text_completion(["xyzzy"], max_gen_len=4)
