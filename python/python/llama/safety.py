"""Llama Guard on its own: ``Guard(path).check(dialog)``.

>>> from llama import Guard
>>> guard = Guard("Llama-Guard-3-1B.gguf")                          # doctest: +SKIP
>>> guard.check([{"role": "user", "content": "How do I bake bread?"}])  # doctest: +SKIP
{'safe': True, 'categories': [], 'unsafe_probability': 0.0003, 'text': '\n\nsafe', ...}

To guard a chat model, pass ``guard_path`` to :meth:`llama.Llama.build` instead: the
two models then share the worker threads.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple, TypedDict, Union

from . import _llama
from .generation import Dialog

__all__ = ["Category", "Guard", "Verdict"]

PathLike = Union[str, "os.PathLike[str]"]


class Category(TypedDict):
    """A violated category: ``{"code": "S1", "name": "Violent Crimes"}``."""

    code: str
    name: str


class Verdict(TypedDict):
    """What the classifier said about a dialog's last message."""

    safe: bool
    categories: List[Category]
    unsafe_probability: float  # P("unsafe") at the first answer token
    text: str  # the classifier's raw answer
    prompt_tokens: int
    seconds: float


class Guard:
    """A Llama Guard classifier (1: Llama 2 7B; 2: Llama 3 8B; 3: 8B and 1B).

    Args:
        path: the model (Meta folder, Hugging Face folder or ``.gguf``).
        format: prompt format when the file carries no template (``"lg1"``, ``"lg2"``,
            ``"lg3"``, ``"lg3-1b"``; default: guessed from the model).
        threshold: call a message unsafe when P(unsafe) reaches this.
        exclude: category codes left out of the policy (where the format allows it).
        categories: ``[(code, name), ...]`` replacing the model's list.
        threads: worker threads.

    Raises:
        ModelLoadError: the model cannot be loaded.
        SafetyClassifierError: it is not usable as a classifier.
    """

    def __init__(
        self,
        path: PathLike,
        format: Optional[str] = None,
        threshold: Optional[float] = None,
        exclude: Optional[List[str]] = None,
        categories: Optional[List[Tuple[str, str]]] = None,
        threads: Optional[int] = None,
    ) -> None:
        self._guard = _llama.Guard(
            os.fspath(path), format, threshold, exclude, categories, threads
        )

    @property
    def format(self) -> str:
        """The prompt format in use."""
        return self._guard.format

    def check(self, dialog: Dialog) -> Verdict:
        """Judges the dialog's last message (the user's prompt, or the assistant's
        answer after it).

        Raises:
            SafetyClassifierError: the answer is neither ``safe`` nor ``unsafe...``.
        """
        return self._guard.check(dialog)  # type: ignore[return-value]

    def render(self, dialog: Dialog) -> str:
        """The classifier prompt for ``dialog``."""
        return self._guard.render(dialog)
