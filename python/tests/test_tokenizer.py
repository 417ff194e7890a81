"""`generator.tokenizer` and `llama.Tokenizer` against the tokenizer fixtures."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from conftest import FIXTURES, TOKENIZER, load_json
from llama import InvalidArgumentError, Llama, Tokenizer
from llama.generation import B_INST, B_SYS, E_INST, E_SYS

TOK = FIXTURES / "tokenizer"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(str(TOKENIZER))


def test_attributes(tok: Tokenizer, generator: Llama) -> None:
    info = load_json(TOK / "tokenizer_info.json")
    for t in (tok, generator.tokenizer):
        assert (t.n_words, t.bos_id, t.eos_id, t.pad_id) == (
            info["n_words"],
            info["bos_id"],
            info["eos_id"],
            info["pad_id"],
        )
        assert t.pad_id == -1


@pytest.mark.parametrize("file", ["encode_cases.json", "llama_cpp_vectors.json"])
def test_encode_cases(tok: Tokenizer, generator: Llama, file: str) -> None:
    for case in load_json(TOK / file):
        assert tok.encode(case["text"], False, False) == case["ids"], case["text"]
        assert generator.tokenizer.encode(case["text"], True, True) == [1, *case["ids"], 2]


def test_decode_cases(tok: Tokenizer) -> None:
    for case in load_json(TOK / "decode_cases.json"):
        assert tok.decode(case["ids"]) == case["text"], case["ids"]


def test_readme_examples(tok: Tokenizer) -> None:
    assert tok.encode("Hello world", False, False) == [15043, 3186]
    assert tok.decode([1, 15043, 3186]) == "Hello world"
    assert tok.encode("[INST]", False, False) == [518, 25580, 29962]


def _reference_dialog_tokens(t: Tokenizer, dialog: List[Dict[str, str]]) -> List[int]:
    """Meta's chat_completion prompt construction, written with the tokenizer object."""
    if dialog[0]["role"] == "system":
        dialog = [
            {
                "role": dialog[1]["role"],
                "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"],
            }
        ] + dialog[2:]
    ids: List[int] = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        ids += t.encode(
            f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} ",
            True,
            True,
        )
    ids += t.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}", True, False)
    return ids


def test_chat_format_cases(tok: Tokenizer, generator: Llama) -> None:
    cases: List[Dict[str, Any]] = load_json(TOK / "chat_format_cases.json")
    for case in cases:
        assert _reference_dialog_tokens(tok, case["dialog"]) == case["prompt_ids"]
    # The engine's own chat prompt: its echo of the prompt equals these ids.
    safe = [c for c in cases if not c["unsafe"]]
    for c in safe:
        if len(c["prompt_ids"]) > generator.max_seq_len:
            continue
        out = generator.chat_completion([c["dialog"]], temperature=0.0, max_gen_len=1)
        (gen,), _ = generator.generate([c["prompt_ids"]], max_gen_len=1, temperature=0.0)
        assert out[0]["generation"]["content"] == tok.decode(gen)


def test_decode_rejects_bad_ids(tok: Tokenizer) -> None:
    with pytest.raises(ValueError):
        tok.decode([32000])
    with pytest.raises(InvalidArgumentError):
        tok.decode([-1])


def test_missing_tokenizer_file() -> None:
    with pytest.raises(OSError):
        Tokenizer("/nonexistent/tokenizer.model")
