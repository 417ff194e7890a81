"""Python-citizen behaviour: GIL released while generating, Ctrl-C, example scripts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from conftest import FIXTURES, REPO, TOKENIZER, ckpt
from llama import Llama

EXAMPLES = REPO / "python" / "examples"


def test_gil_released_during_generation() -> None:
    g = Llama.build(str(ckpt("tiny-gqa")), str(TOKENIZER), 1024, 4, threads=1)
    done = threading.Event()
    ticks = 0

    def work() -> None:
        g.text_completion(["I believe"] * 4, temperature=0.0, max_gen_len=800)
        done.set()

    t = threading.Thread(target=work)
    t.start()
    while not done.is_set():
        ticks += 1  # runs only while the engine does not hold the GIL
        time.sleep(0.001)
    t.join()
    assert ticks > 20


def test_threads_share_the_engine_without_a_lock() -> None:
    """Calls from several threads run together: a short call started during a long one
    ends first (with a lock it would wait), and every greedy answer equals its answer
    alone."""
    g = Llama.build(str(ckpt("tiny-gqa")), str(TOKENIZER), 1024, 4, threads=1)
    prompts = ["I believe", "Simply put, the theory", "Hi", "A brief message"]
    alone = [
        g.text_completion([p], temperature=0.0, max_gen_len=24)[0]["generation"]
        for p in prompts
    ]
    finished: list = []
    results: dict = {}
    long_started = threading.Event()

    def long_call() -> None:
        long_started.set()
        g.text_completion(["I believe"], temperature=0.0, max_gen_len=900)
        finished.append("long")

    def short_call(i: int) -> None:
        out = g.text_completion([prompts[i]], temperature=0.0, max_gen_len=24)
        results[i] = out[0]["generation"]
        finished.append(i)

    t_long = threading.Thread(target=long_call)
    t_long.start()
    long_started.wait()
    time.sleep(0.05)
    shorts = [threading.Thread(target=short_call, args=(i,)) for i in range(len(prompts))]
    for t in shorts:
        t.start()
    for t in shorts:
        t.join()
    t_long.join()
    assert finished[-1] == "long", finished
    assert [results[i] for i in range(len(prompts))] == alone


INTERRUPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from llama import Llama
    # Python leaves SIGINT ignored when it starts ignored (a background job of a
    # non-interactive shell, as CI may run it): raise KeyboardInterrupt regardless.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    g = Llama.build(sys.argv[1], sys.argv[2], 4096, 4, threads=1)
    mode = sys.argv[3]
    threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    t0 = time.time()
    try:
        # Calls after calls (a fast machine finishes one in well under the 0.5 s), so
        # the interrupt lands inside one of them.
        for _ in range(200):
            if mode == "text":
                g.text_completion(["I believe"] * 4, temperature=0.0, max_gen_len=4000)
            elif mode == "chat":
                g.chat_completion([[{"role": "user", "content": "hi"}]] * 4, temperature=0.0, max_gen_len=4000)
            else:
                for _ in g.stream_text_completion("I believe", temperature=0.0, max_gen_len=4000):
                    time.sleep(0.002)
        print("finished without interrupt")
        sys.exit(1)
    except KeyboardInterrupt:
        waited = time.time() - t0
    # The engine stopped: the next call gets it at once and completes.
    t1 = time.time()
    out = g.text_completion(["I believe"], temperature=0.0, max_gen_len=4)
    print("interrupted after %.2fs, next call %.2fs" % (waited, time.time() - t1))
    assert waited < 2.0, waited
    assert time.time() - t1 < 1.0
    assert len(out) == 1
    """
)


def test_ctrl_c_raises_keyboard_interrupt_and_stops() -> None:
    for mode in ("text", "chat", "stream"):
        r = subprocess.run(
            [sys.executable, "-c", INTERRUPT, str(ckpt("tiny-gqa")), str(TOKENIZER), mode],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, (mode, r.stdout, r.stderr)
        assert "interrupted after" in r.stdout


def _run_example(name: str, *args: str) -> str:
    r = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / name),
            "--ckpt_dir",
            str(ckpt("tiny-mha")),
            "--tokenizer_path",
            str(TOKENIZER),
            "--max_gen_len",
            "8",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(Path(__file__).parent),
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_example_chat_completion() -> None:
    out = _run_example("example_chat_completion.py", "--temperature", "0", "--max_batch_size", "6")
    assert out.count("> Assistant: ") == 6
    assert "User: what is the recipe of mayonnaise?" in out
    assert "System: Always answer with Haiku" in out
    assert "System: Always answer with emojis" in out
    assert "User: Write a brief birthday message to John" in out
    assert "> Assistant: Error: special tags are not allowed as part of the prompt." in out
    assert out.count("==================================") == 6


def test_example_text_completion() -> None:
    out = _run_example("example_text_completion.py", "--top_p", "0.5", "--max_seq_len", "128")
    assert out.count("\n> ") == 4
    assert "I believe the meaning of life is" in out
    assert "cheese =>" in out


def test_fixtures_present() -> None:
    assert (FIXTURES / "models").is_dir()
