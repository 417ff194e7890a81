"""Shared fixtures: the tiny fixture checkpoints of tests/fixtures/ and their goldens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import pytest

from llama import Llama

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
TOKENIZER = FIXTURES / "tokenizer" / "tokenizer.model"
MODELS = ["tiny-mha", "tiny-gqa"]


def load_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def ckpt(model: str, kind: str = "meta") -> Path:
    """A fixture checkpoint folder."""
    return FIXTURES / "models" / model / kind


@pytest.fixture(scope="session", params=MODELS)
def model(request: pytest.FixtureRequest) -> str:
    return request.param


_generators: Dict[str, Llama] = {}


@pytest.fixture(scope="session")
def generator(model: str) -> Llama:
    """One generator per fixture model (max_seq_len fits every golden case)."""
    if model not in _generators:
        _generators[model] = Llama.build(
            ckpt_dir=str(ckpt(model)),
            tokenizer_path=str(TOKENIZER),
            max_seq_len=128,
            max_batch_size=8,
            threads=2,
        )
    return _generators[model]


@pytest.fixture(scope="session")
def golden(model: str) -> Dict[str, Any]:
    return load_json(FIXTURES / "models" / model / "golden.json")
