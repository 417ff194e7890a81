"""Exceptions raised by the ``llama`` package.

Every error from the engine is a :class:`LlamaError`. Where Meta's reference code fails
with an ``assert``, the exception also subclasses :class:`AssertionError`, so code
written against the reference keeps catching it; argument errors also subclass
:class:`ValueError`, loading errors :class:`OSError`.
"""

from __future__ import annotations

__all__ = [
    "LlamaError",
    "DialogError",
    "InvalidArgumentError",
    "BatchTooLargeError",
    "PromptTooLongError",
    "ModelParallelSizeError",
    "ModelLoadError",
    "SafetyClassifierError",
]


class LlamaError(Exception):
    """Base class of every error raised by the engine."""


class DialogError(LlamaError, AssertionError):
    """A dialog breaks the chat format's role rules.

    The message is the reference's assertion text, e.g. ``"model only supports
    'system', 'user' and 'assistant' roles, starting with 'system', then 'user' and
    alternating (u/a/u/a/u...)"`` or ``"Last message must be from user, got
    assistant"``.
    """


class InvalidArgumentError(LlamaError, ValueError):
    """A generation parameter or token id is out of range."""


class BatchTooLargeError(InvalidArgumentError, AssertionError):
    """More prompts or dialogs than ``max_batch_size`` in one call (an ``assert`` in the
    reference)."""


class PromptTooLongError(InvalidArgumentError, AssertionError):
    """A prompt has more tokens than ``max_seq_len`` (an ``assert`` in the reference)."""


class ModelParallelSizeError(InvalidArgumentError, AssertionError):
    """``model_parallel_size`` differs from the checkpoint's number of shards (an
    ``assert`` in the reference)."""


class ModelLoadError(LlamaError, OSError):
    """The model or tokenizer could not be read: a missing path, a corrupt or
    inconsistent checkpoint, a tokenizer that does not match the model."""


class SafetyClassifierError(LlamaError, RuntimeError):
    """A Llama Guard model answered something that is neither ``safe`` nor
    ``unsafe...``, or cannot be used as a classifier: the message is not passed as safe."""
