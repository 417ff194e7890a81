#!/usr/bin/env python3
"""Meta's ``example_text_completion.py``, run with plain ``python`` on a CPU.

    python example_text_completion.py --ckpt_dir llama-2-7b/ \\
        --tokenizer_path tokenizer.model --max_seq_len 128 --max_batch_size 4

The same arguments and prompts as Meta's script (which needs ``torchrun`` and CUDA).
Without ``--ckpt_dir`` the engine's default model is used; ``--ckpt_dir`` also takes a
Hugging Face folder or a ``.gguf`` file.
"""

from __future__ import annotations

import argparse
from typing import List, Optional

from llama import Llama


def main(
    ckpt_dir: Optional[str],
    tokenizer_path: Optional[str],
    temperature: float = 0.6,
    top_p: float = 0.9,
    max_seq_len: int = 128,
    max_gen_len: int = 64,
    max_batch_size: int = 4,
    threads: Optional[int] = None,
) -> None:
    """Continues four prompts as one batch and prints each with its continuation."""
    generator = Llama.build(
        ckpt_dir=ckpt_dir,
        tokenizer_path=tokenizer_path,
        max_seq_len=max_seq_len,
        max_batch_size=max_batch_size,
        threads=threads,
    )

    prompts: List[str] = [
        # For these prompts, the expected answer is the natural continuation of the prompt
        "I believe the meaning of life is",
        "Simply put, the theory of relativity states that ",
        """A brief message congratulating the team on the launch:

        Hi everyone,

        I just """,
        # Few shot prompt (providing a few examples before asking model to complete more);
        """Translate English to French:

        sea otter => loutre de mer
        peppermint => menthe poivrée
        plush girafe => girafe peluche
        cheese =>""",
    ]
    results = generator.text_completion(
        prompts,
        max_gen_len=max_gen_len,
        temperature=temperature,
        top_p=top_p,
    )
    for prompt, result in zip(prompts, results):
        print(prompt)
        print(f"> {result['generation']}")
        print("\n==================================\n")


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt_dir", default=None, help="model: Meta folder, HF folder or .gguf")
    p.add_argument("--tokenizer_path", default=None, help="tokenizer.model")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top_p", type=float, default=0.9)
    p.add_argument("--max_seq_len", type=int, default=128)
    p.add_argument("--max_gen_len", type=int, default=64)
    p.add_argument("--max_batch_size", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="worker threads (default: the physical cores)")
    return p.parse_args()


if __name__ == "__main__":
    main(**vars(_args()))
