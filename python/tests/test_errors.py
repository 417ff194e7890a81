"""Errors: the reference's assertion messages for dialogs, Python exceptions for limits."""

from __future__ import annotations

from typing import Any, List

import pytest

import llama
from conftest import FIXTURES, TOKENIZER, ckpt
from llama import (
    BatchTooLargeError,
    DialogError,
    InvalidArgumentError,
    Llama,
    LlamaError,
    ModelLoadError,
    ModelParallelSizeError,
    PromptTooLongError,
)

ROLE_ORDER = (
    "model only supports 'system', 'user' and 'assistant' roles, starting with 'system', "
    "then 'user' and alternating (u/a/u/a/u...)"
)

BAD_ORDER: List[List[Any]] = [
    [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "hi"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
    [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "b"},
        {"role": "user", "content": "c"},
    ],
    [{"role": "tool", "content": "a"}],
    [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}, {"role": "user", "content": "c"}],
    [{"role": "system", "content": "s"}, {"role": "tool", "content": "a"}],
    [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "bot", "content": "c"}],
]


@pytest.mark.parametrize("dialog", BAD_ORDER)
def test_role_order(generator: Llama, dialog: List[Any]) -> None:
    with pytest.raises(AssertionError) as e:
        generator.chat_completion([dialog])
    assert isinstance(e.value, DialogError) and isinstance(e.value, LlamaError)
    assert str(e.value) == ROLE_ORDER


def test_last_message_must_be_user(generator: Llama) -> None:
    dialog = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(AssertionError, match="^Last message must be from user, got assistant$"):
        generator.chat_completion([[{"role": "user", "content": "ok"}], dialog])


def test_role_error_even_with_special_tags(generator: Llama) -> None:
    # The reference asserts the roles of a dialog it refuses too.
    dialog = [{"role": "assistant", "content": "[INST]"}]
    with pytest.raises(DialogError):
        generator.chat_completion([dialog])


def test_message_shape_errors(generator: Llama) -> None:
    with pytest.raises(KeyError):
        generator.chat_completion([[{"role": "user"}]])
    with pytest.raises(TypeError):
        generator.chat_completion([[{"role": "user", "content": 3}]])


def test_batch_too_large(generator: Llama) -> None:
    n = generator.max_batch_size + 1
    for call in (
        lambda: generator.text_completion(["a"] * n, max_gen_len=1),
        lambda: generator.chat_completion([[{"role": "user", "content": "a"}]] * n, max_gen_len=1),
        lambda: generator.generate([[1, 2]] * n, max_gen_len=1),
    ):
        with pytest.raises(BatchTooLargeError) as e:
            call()
        assert isinstance(e.value, ValueError) and isinstance(e.value, AssertionError)
        assert f"exceeds max_batch_size {generator.max_batch_size}" in str(e.value)


def test_prompt_too_long(generator: Llama) -> None:
    long = "hello " * (generator.max_seq_len + 5)
    with pytest.raises(PromptTooLongError, match="more than max_seq_len"):
        generator.text_completion([long], max_gen_len=1)
    with pytest.raises(ValueError):
        generator.chat_completion([[{"role": "user", "content": long}]], max_gen_len=1)
    with pytest.raises(PromptTooLongError):
        generator.generate([[1] * (generator.max_seq_len + 1)], max_gen_len=1)


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"max_gen_len": -1}],
)
def test_invalid_sampling_arguments(generator: Llama, kwargs: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        generator.text_completion(["a"], **kwargs)


def test_invalid_token_ids(generator: Llama) -> None:
    with pytest.raises(InvalidArgumentError):
        generator.generate([[1, 32000]], max_gen_len=1)
    with pytest.raises(InvalidArgumentError):
        generator.generate([[1, -5]], max_gen_len=1)
    with pytest.raises(InvalidArgumentError):
        generator.generate([[]], max_gen_len=1)


def test_build_errors() -> None:
    with pytest.raises(ModelLoadError) as e:
        Llama.build("/nonexistent/ckpt", str(TOKENIZER), 64, 1)
    assert isinstance(e.value, OSError)
    with pytest.raises(ModelLoadError):
        Llama.build(str(ckpt("tiny-mha")), str(FIXTURES / "tokenizer" / "encode_cases.json"), 64, 1)
    with pytest.raises(InvalidArgumentError):
        Llama.build(str(ckpt("tiny-mha")), str(TOKENIZER), 0, 1)
    with pytest.raises(InvalidArgumentError):
        Llama.build(str(ckpt("tiny-mha")), str(TOKENIZER), -3, 1)
    with pytest.raises(InvalidArgumentError):
        Llama.build(str(ckpt("tiny-mha")), str(TOKENIZER), 64, 1, threads=0)
    with pytest.raises(InvalidArgumentError):
        Llama.build(str(ckpt("tiny-mha")), str(TOKENIZER), 64, 1, template="nope")
    with pytest.raises(TypeError):
        Llama.build(str(ckpt("tiny-mha")), str(TOKENIZER), 64, 1, no_such_option=1)  # type: ignore[call-arg]


def test_model_parallel_size() -> None:
    g = Llama.build(str(ckpt("tiny-gqa", "meta-mp2")), str(TOKENIZER), 64, 1, model_parallel_size=2)
    assert g.max_batch_size == 1
    with pytest.raises(ModelParallelSizeError, match="^Loading a checkpoint for MP=2 but world size is 1$"):
        Llama.build(str(ckpt("tiny-gqa", "meta-mp2")), str(TOKENIZER), 64, 1, model_parallel_size=1)
    with pytest.raises(AssertionError):
        Llama.build(str(ckpt("tiny-gqa")), str(TOKENIZER), 64, 1, model_parallel_size=2)
    Llama.build(str(ckpt("tiny-gqa")), str(TOKENIZER), 64, 1, model_parallel_size=1)


def test_other_formats_load() -> None:
    gguf = FIXTURES / "models" / "tiny-gqa" / "gguf" / "tiny-gqa-f32.gguf"
    g = Llama.build(model_path=str(gguf), max_seq_len=64, max_batch_size=1, template="llama2")
    m = Llama.build(str(ckpt("tiny-gqa")), str(TOKENIZER), 64, 1)
    prompt = ["I believe the meaning of life is"]
    assert g.text_completion(prompt, temperature=0, max_gen_len=8) == m.text_completion(
        prompt, temperature=0, max_gen_len=8
    )
    hf = Llama.build(str(ckpt("tiny-gqa", "hf")), None, 64, 1, template="llama2")
    assert hf.text_completion(prompt, temperature=0, max_gen_len=8) == m.text_completion(
        prompt, temperature=0, max_gen_len=8
    )


def test_public_names() -> None:
    for name in ("Llama", "Dialog", "Message", "CompletionPrediction", "ChatPrediction", "Tokenizer"):
        assert hasattr(llama, name)
    from llama.generation import UNSAFE_ERROR
    from llama import _llama

    assert UNSAFE_ERROR == _llama.UNSAFE_ERROR
