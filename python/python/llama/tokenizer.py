"""Meta's ``llama.tokenizer.Tokenizer``: ``Tokenizer(model_path)`` with ``encode(s,
bos, eos)``, ``decode(t)`` and the ``n_words``, ``bos_id``, ``eos_id``, ``pad_id``
attributes (``pad_id`` is -1 for Llama 2), implemented by the Rust engine."""

from ._llama import Tokenizer

__all__ = ["Tokenizer"]
