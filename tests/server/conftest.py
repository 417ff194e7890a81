"""Starts `llama2 serve` on free loopback ports for the server tests.

The binary is $LLAMA2_BIN (default target/debug/llama2, built by scripts/test.sh) and
the model is the default one (SmolLM2-135M-Instruct, fetched on first use).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import List, Optional

try:  # the HTTP library the installed `openai` uses (httpx2 in openai >= 3)
    import httpx2 as httpx
except ImportError:
    import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("LLAMA2_BIN", REPO / "target" / "debug" / "llama2"))


class Server:
    """One `llama2 serve` process, its address and its standard error."""

    def __init__(self, *args: str) -> None:
        self.args = [str(BIN), "serve", "--port", "0", "--threads", "2", *args]
        self.proc = subprocess.Popen(
            self.args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )
        self.log: List[str] = []
        self.port: Optional[int] = None
        found = threading.Event()

        def pump() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    found.set()
            found.set()

        self.reader = threading.Thread(target=pump, daemon=True)
        self.reader.start()
        if not found.wait(120) or self.port is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.log))
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("server never became ready:\n" + "".join(self.log))

    def client(self, key: str = "none", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)

    def async_client(self, key: str = "none", **kw) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, **kw)

    def metric(self, name: str, key: Optional[str] = None) -> float:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        text = httpx.get(self.url + "/metrics", headers=headers).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def peak_rss_kib(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmHWM")

    def terminate(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def server():
    """The main server: 4 slots, queue 64, 1024 positions per slot."""
    s = Server("--parallel", "4", "--queue", "64", "--ctx-size", "1024")
    yield s
    s.stop()
    crashes = [l for l in s.log if "panic" in l or "bug:" in l]
    assert not crashes, "".join(s.log)
