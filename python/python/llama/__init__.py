"""Meta's Llama 2 Python API on a CPU, backed by the llama2 Rust engine.

>>> from llama import Llama, Dialog
>>> generator = Llama.build(ckpt_dir="llama-2-7b-chat/",
...                         tokenizer_path="tokenizer.model",
...                         max_seq_len=512, max_batch_size=4)
>>> dialogs: list[Dialog] = [[{"role": "user", "content": "what is the recipe of mayonnaise?"}]]
>>> generator.chat_completion(dialogs)[0]["generation"]["content"]  # doctest: +SKIP
"""

from .errors import (
    BatchTooLargeError,
    DialogError,
    InvalidArgumentError,
    LlamaError,
    ModelLoadError,
    ModelParallelSizeError,
    PromptTooLongError,
    SafetyClassifierError,
)
from .generation import (
    REFUSAL,
    ChatPrediction,
    CompletionPrediction,
    Dialog,
    Llama,
    Message,
    Role,
)
from .safety import Guard
from .tokenizer import Tokenizer

__all__ = [
    "BatchTooLargeError",
    "ChatPrediction",
    "CompletionPrediction",
    "Dialog",
    "DialogError",
    "Guard",
    "InvalidArgumentError",
    "Llama",
    "LlamaError",
    "Message",
    "ModelLoadError",
    "ModelParallelSizeError",
    "PromptTooLongError",
    "REFUSAL",
    "Role",
    "SafetyClassifierError",
    "Tokenizer",
]
