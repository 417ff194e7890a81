"""Type stubs of the native module ``llama._llama`` (the Rust engine)."""

import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

UNSAFE_ERROR: str

class Tokenizer:
    """The model's tokenizer, as Meta's ``llama.Tokenizer``."""

    def __init__(self, model_path: Union[str, os.PathLike[str]]) -> None:
        """Loads a SentencePiece ``tokenizer.model`` (or a ``tokenizer.json``)."""
    def encode(self, s: str, bos: bool, eos: bool) -> List[int]:
        """Token ids of ``s``, with BOS first if ``bos`` and EOS last if ``eos``."""
    def decode(self, t: Sequence[int]) -> str:
        """The text of token ids ``t`` (control tokens produce nothing)."""
    @property
    def n_words(self) -> int:
        """Vocabulary size."""
    @property
    def bos_id(self) -> int:
        """Beginning-of-sequence id."""
    @property
    def eos_id(self) -> int:
        """End-of-sequence id."""
    @property
    def pad_id(self) -> int:
        """Padding id, -1 when there is none (Llama 2)."""

class TextStream(Iterator[str]):
    """Text deltas of a streaming call; Ctrl-C, ``close()`` or dropping it stops the
    generation."""

    def __iter__(self) -> "TextStream": ...
    def __next__(self) -> str: ...
    def close(self) -> None:
        """Stops the generation at its next token."""
    def __enter__(self) -> "TextStream": ...
    def __exit__(self, *args: Any) -> bool: ...

class Engine:
    """A loaded model (used by ``llama.Llama``)."""

    def __init__(
        self,
        model_path: Optional[str] = None,
        tokenizer_path: Optional[str] = None,
        max_seq_len: Optional[int] = None,
        max_batch_size: int = 8,
        seed: int = 1,
        threads: Optional[int] = None,
        template: str = "auto",
        precision: str = "fast",
        model_parallel_size: Optional[int] = None,
        guard_path: Optional[str] = None,
        guard_format: Optional[str] = None,
        guard_threshold: Optional[float] = None,
        guard_exclude: Optional[Sequence[str]] = None,
    ) -> None: ...
    @property
    def tokenizer(self) -> Tokenizer: ...
    @property
    def max_seq_len(self) -> int: ...
    @property
    def max_batch_size(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def model_path(self) -> str: ...
    def last_stats(self) -> Dict[str, float]: ...
    def generate(
        self,
        prompt_tokens: Sequence[Sequence[int]],
        max_gen_len: Optional[int],
        temperature: float = 0.6,
        top_p: float = 0.9,
        logprobs: bool = False,
        echo: bool = False,
    ) -> Tuple[List[List[int]], Optional[List[List[float]]]]: ...
    def text_completion(
        self,
        prompts: Sequence[str],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
        logprobs: bool = False,
        echo: bool = False,
    ) -> List[Dict[str, Any]]: ...
    def chat_completion(
        self,
        dialogs: Sequence[Sequence[Mapping[str, str]]],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
        logprobs: bool = False,
    ) -> List[Dict[str, Any]]: ...
    def stream_text_completion(
        self,
        prompt: str,
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
    ) -> TextStream: ...
    def stream_chat_completion(
        self,
        dialog: Sequence[Mapping[str, str]],
        temperature: float = 0.6,
        top_p: float = 0.9,
        max_gen_len: Optional[int] = None,
    ) -> TextStream: ...

class Guard:
    """A Llama Guard classifier (used by ``llama.Guard``)."""

    def __init__(
        self,
        path: str,
        format: Optional[str] = None,
        threshold: Optional[float] = None,
        exclude: Optional[Sequence[str]] = None,
        categories: Optional[Sequence[Tuple[str, str]]] = None,
        threads: Optional[int] = None,
    ) -> None: ...
    @property
    def format(self) -> str: ...
    def check(self, dialog: Sequence[Mapping[str, str]]) -> Dict[str, Any]: ...
    def render(self, dialog: Sequence[Mapping[str, str]]) -> str: ...

REFUSAL: str
