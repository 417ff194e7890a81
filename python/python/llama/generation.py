"""Meta's ``llama.generation`` API (``Llama``, ``Dialog``, ``Message``, predictions),
backed by the Rust engine instead of PyTorch.

``Llama.build`` loads a model; ``text_completion``, ``chat_completion`` and
``generate`` behave and return as in Meta's Llama 2 release. Beyond the reference:
``stream_text_completion`` / ``stream_chat_completion`` (iterators of text deltas),
any model format the engine opens (Meta folder, Hugging Face folder, ``.gguf``), and
the ``threads``/``template``/``precision`` build options.

Calls release the GIL while the engine works; Ctrl-C stops a generation within one
token and raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import os
from typing import Iterator, List, Literal, Optional, Tuple, TypedDict, Union

from . import _llama
from .errors import InvalidArgumentError
from .tokenizer import Tokenizer

__all__ = [
    "B_INST",
    "B_SYS",
    "ChatPrediction",
    "CompletionPrediction",
    "Dialog",
    "E_INST",
    "E_SYS",
    "Llama",
    "Message",
    "REFUSAL",
    "Role",
    "SPECIAL_TAGS",
    "UNSAFE_ERROR",
]

Role = Literal["system", "user", "assistant"]


class Message(TypedDict):
    """One chat message."""

    role: Role
    content: str


class CompletionPrediction(TypedDict, total=False):
    """One ``text_completion`` result."""

    generation: str
    tokens: List[str]  # not required
    logprobs: List[float]  # not required


class ChatPrediction(TypedDict, total=False):
    """One ``chat_completion`` result."""

    generation: Message
    tokens: List[str]  # not required
    logprobs: List[float]  # not required


Dialog = List[Message]

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

SPECIAL_TAGS = [B_INST, E_INST, "<<SYS>>", "<</SYS>>"]
UNSAFE_ERROR = "Error: special tags are not allowed as part of the prompt."
REFUSAL = _llama.REFUSAL  # a guard-blocked turn's answer

PathLike = Union[str, "os.PathLike[str]"]


def _path(p: Optional[PathLike]) -> Optional[str]:
    if p is None:
        return None
    s = os.fspath(p)
    return s if s else None


class Llama:
    """A loaded model with its tokenizer: the reference's generator object.

    Build one with :meth:`Llama.build`.
    """

    @staticmethod
    def build(
        ckpt_dir: Optional[PathLike] = None,
        tokenizer_path: Optional[PathLike] = None,
        max_seq_len: Optional[int] = None,
        max_batch_size: int = 8,
        model_parallel_size: Optional[int] = None,
        seed: int = 1,
        *,
        threads: Optional[int] = None,
        model_path: Optional[PathLike] = None,
        template: str = "auto",
        precision: str = "fast",
        guard_path: Optional[PathLike] = None,
        guard_format: Optional[str] = None,
        guard_threshold: Optional[float] = None,
        guard_exclude: Optional[List[str]] = None,
    ) -> "Llama":
        """Loads a model and its tokenizer, as Meta's ``Llama.build``.

        Args:
            ckpt_dir: Meta checkpoint folder (``params.json`` + ``consolidated.NN.pth``);
                a Hugging Face folder or a ``.gguf`` file works too. ``None`` (and no
                ``model_path``): the default model, fetched on first use.
            tokenizer_path: ``tokenizer.model``; ``None`` uses the tokenizer found
                with the model (Hugging Face folders and GGUF files carry one).
            max_seq_len: context length per sequence, prompt plus generation
                (``None``: the model's, at most 4096).
            max_batch_size: most prompts or dialogs per call.
            model_parallel_size: accepted for compatibility and checked against the
                number of checkpoint shards (1 for non-Meta formats); not needed to run.
            seed: seed of the sampler (the reference seeds with 1).
            threads: worker threads (default: the physical cores).
            model_path: any model path (instead of ``ckpt_dir``).
            template: chat format: ``"auto"`` (the model's own Jinja template if it has
                one, else Llama 3's for a Llama 3 vocabulary, else Llama 2's),
                ``"llama2"``, ``"llama3"``, ``"chatml"``, or Jinja source.
            precision: ``"fast"`` (llama.cpp's integer arithmetic for quantized
                weights) or ``"exact"`` (dequantize to float32).
            guard_path: a Llama Guard model (1, 2, 3 8B or 3 1B) that judges every
                dialog's last user message before the model answers and the answer
                once complete (streamed answers every 64 tokens); a blocked turn is
                answered with :data:`REFUSAL` and each ``chat_completion`` result gets a
                ``"safety"`` entry (``{"blocked": None | "prompt" | "answer",
                "verdict": ..., "checks": n}``). It runs on the model's worker threads.
                With a guard, ``text_completion`` and ``generate`` (raw text and ids,
                no roles to judge) raise ``InvalidArgumentError``.
            guard_format: the guard's prompt format instead of its file's template (or
                of the guess for a file without one): ``"lg1"``, ``"lg2"``, ``"lg3"``,
                ``"lg3-1b"``.
            guard_threshold: block when P(unsafe) at the guard's first answer token
                reaches this (default: the guard's own answer decides).
            guard_exclude: category codes left out of the guard's policy.

        Raises:
            ModelLoadError: the model or tokenizer cannot be loaded.
            ModelParallelSizeError: ``model_parallel_size`` differs from the shards.
            InvalidArgumentError: an option is out of range.
        """
        ckpt = _path(ckpt_dir)
        model = _path(model_path)
        if ckpt is not None and model is not None and ckpt != model:
            raise InvalidArgumentError("give either ckpt_dir or model_path, not both")
        engine = _llama.Engine(
            model if model is not None else ckpt,
            _path(tokenizer_path),
            max_seq_len,
            max_batch_size,
            seed,
            threads,
            template,
            precision,
            model_parallel_size,
            _path(guard_path),
            guard_format,
            guard_threshold,
            guard_exclude,
        )
        return Llama(engine)

    def __init__(self, engine: _llama.Engine) -> None:
        """Wraps a loaded engine; use :meth:`Llama.build` instead."""
        self._engine = engine
        self.tokenizer: Tokenizer = engine.tokenizer

    @property
    def max_seq_len(self) -> int:
        """Context length per sequence."""
        return self._engine.max_seq_len

    @property
    def max_batch_size(self) -> int:
        """Most prompts or dialogs per call."""
        return self._engine.max_batch_size

    @property
    def threads(self) -> int:
        """Worker threads of the engine."""
        return self._engine.threads

    @property
    def model_path(self) -> str:
        """The model that was loaded."""
        return os.fspath(self._engine.model_path)

    def last_stats(self) -> dict:
        """Timing of the last call: ``prompt_tokens``, ``generated_tokens``,
        ``prefill_s``, ``decode_s``, ``prefill_tokens_per_s``, ``decode_tokens_per_s``."""
        return self._engine.last_stats()

    def generate(
        self,
        prompt_tokens: List[List[int]],
        max_gen_len: int,
        temperature: float = 0.6,
        top_p: float = 0.9,
        logprobs: bool = False,
        echo: bool = False,
    ) -> Tuple[List[List[int]], Optional[List[List[float]]]]:
        """Continues each list of token ids, as the reference's ``generate``.

        Returns ``(tokens, logprobs)``: per prompt, the generated ids (the prompt's too
        with ``echo``) cut before the first EOS, and with ``logprobs=True`` the
        log-probability of each (else ``None``).

        Raises:
            BatchTooLargeError: more prompts than ``max_batch_size``.
            PromptTooLongError: a prompt longer than ``max_seq_len``.
            InvalidArgumentError: empty prompt, id out of range, bad sampling value.
        """
        return self._engine.generate(
            prompt_tokens, max_gen_len, temperature, top_p, logprobs, echo
        )

    def text_completion(
        self,
        prompts: List[str],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
        logprobs: bool = False,
        echo: bool = False,
    ) -> List[CompletionPrediction]:
        """Continues each prompt (encoded with BOS), as the reference.

        ``max_gen_len`` None means ``max_seq_len - 1``. Returns per prompt
        ``{"generation": str}``, plus ``"tokens"`` (each token decoded alone) and
        ``"logprobs"`` with ``logprobs=True``; with ``echo`` the prompt comes first.
        """
        return self._engine.text_completion(
            prompts, temperature, top_p, max_gen_len, logprobs, echo
        )  # type: ignore[return-value]

    def chat_completion(
        self,
        dialogs: List[Dialog],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
        logprobs: bool = False,
    ) -> List[ChatPrediction]:
        """Answers each dialog, as the reference.

        Returns per dialog ``{"generation": {"role": "assistant", "content": str}}``
        (plus ``"tokens"``/``"logprobs"`` with ``logprobs=True``). A dialog whose
        messages contain ``[INST]``, ``[/INST]``, ``<<SYS>>`` or ``<</SYS>>`` is answered
        with :data:`UNSAFE_ERROR`; the rest of the batch is unaffected.

        Raises:
            DialogError: (an ``AssertionError``) roles are not (system,) user,
                assistant, user, ... ending with user.
            BatchTooLargeError, PromptTooLongError, InvalidArgumentError: as
                :meth:`generate`.
        """
        return self._engine.chat_completion(
            dialogs, temperature, top_p, max_gen_len, logprobs
        )  # type: ignore[return-value]

    def stream_text_completion(
        self,
        prompt: str,
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
    ) -> Iterator[str]:
        """Continues one prompt, yielding text deltas as tokens are generated; their
        concatenation is ``text_completion([prompt])[0]["generation"]`` (same seed
        state). Closing or dropping the iterator stops the generation."""
        return self._engine.stream_text_completion(prompt, temperature, top_p, max_gen_len)

    def stream_chat_completion(
        self,
        dialog: Dialog,
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
    ) -> Iterator[str]:
        """Answers one dialog, yielding text deltas (see
        :meth:`stream_text_completion`). Role errors are raised by the first
        ``next()``."""
        return self._engine.stream_chat_completion(dialog, temperature, top_p, max_gen_len)

    def __repr__(self) -> str:
        return (
            f"Llama(model_path={self.model_path!r}, max_seq_len={self.max_seq_len}, "
            f"max_batch_size={self.max_batch_size}, threads={self.threads})"
        )
