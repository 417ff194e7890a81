"""Hostile model and tokenizer files through the Python API: the bad-input suite's cases
(tests/bad_inputs/run.py builds them from the fixtures) raise a `llama.errors` exception
each, never a panic (`pyo3_runtime.PanicException` is not an `Exception`) nor an abort
of the interpreter, and the interpreter's memory stays bounded."""

from __future__ import annotations

import importlib.util
import resource
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from conftest import REPO
from llama import InvalidArgumentError, Llama, LlamaError, ModelLoadError, Tokenizer

spec = importlib.util.spec_from_file_location("bad_inputs", REPO / "tests" / "bad_inputs" / "run.py")
assert spec and spec.loader
bad_inputs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bad_inputs)

Case = Tuple[str, str, List[str], int]


def flag(argv: List[str], name: str) -> Optional[str]:
    return argv[argv.index(name) + 1] if name in argv else None


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> List[Case]:
    suite = bad_inputs.Suite(tmp_path_factory.mktemp("bad-inputs"))
    for build in (bad_inputs.gguf_cases, bad_inputs.meta_cases, bad_inputs.hf_cases,
                  bad_inputs.tokenizer_cases):
        build(suite)
    return [(klass, name, argv, code) for klass, name, argv, code, _, _ in suite.cases]


def peak_rss_mb() -> float:
    """This process's peak resident memory since the last reset_peak_rss()."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM
    except OSError:
        pass


# The exception each expected exit code of the CLI corresponds to.
EXPECTED = {3: ModelLoadError, 2: InvalidArgumentError}


def test_hostile_files_raise_typed_errors(cases: List[Case]) -> None:
    reset_peak_rss()
    rss_before = peak_rss_mb()
    failures, checked = [], 0
    for klass, name, argv, code in cases:
        model, tokenizer = flag(argv, "--model"), flag(argv, "--tokenizer")
        try:
            if argv[0] == "tokenize":
                Tokenizer(tokenizer)
            else:
                llama = Llama.build(model_path=model, tokenizer_path=tokenizer, max_seq_len=64,
                                    max_batch_size=1, threads=1)
                if argv[0] == "chat":
                    llama.chat_completion([[{"role": "user", "content": "Write a list"}]],
                                          max_gen_len=2)
        except (ModelLoadError, InvalidArgumentError) as e:
            checked += 1
            if code == 0:
                failures.append(f"{klass} / {name}: raised {e!r}")
            elif not isinstance(e, EXPECTED[code]):
                failures.append(f"{klass} / {name}: {type(e).__name__}, want {EXPECTED[code].__name__}: {e}")
            elif str(e).strip() == "":
                failures.append(f"{klass} / {name}: {type(e).__name__} without a message")
        except LlamaError as e:
            failures.append(f"{klass} / {name}: untyped {type(e).__name__}: {e}")
        else:
            checked += 1
            if code != 0:
                failures.append(f"{klass} / {name}: loaded without an error")
    assert not failures, "\n".join(failures)
    assert checked > 100
    grown_mb = peak_rss_mb() - rss_before
    assert grown_mb < bad_inputs.RSS_BOUND_MB, f"peak memory grew by {grown_mb:.0f} MB"


def test_a_tokenizer_path_that_never_ends_is_cut_at_its_limit() -> None:
    with pytest.raises(ModelLoadError, match="64 MiB"):
        Tokenizer("/dev/zero")
    with pytest.raises(ModelLoadError):
        Tokenizer(str(Path("/nonexistent/tokenizer.model")))
