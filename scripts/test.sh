#!/usr/bin/env bash
# The whole test suite: Meta's Llama Guard prompt references (pip-downloaded), the Rust
# workspace, then the Python package (`llama`) built from
# python/ into a virtual environment under target/ and tested with pytest on the
# fixture checkpoints, then `llama2 serve` driven by the official `openai` client
# (tests/server, on the default model). Needs Rust and Python >= 3.9 (with venv and pip); the Python
# build backend (maturin) and pytest come from PyPI. Where the aarch64 target, its
# linker and qemu-user are present (`.ci/run` installs them), the kernel tests also run
# as aarch64 code under emulation, so the NEON kernels are checked on x86 machines.
set -euo pipefail
cd "$(dirname "$0")/.."

# Meta's Llama Guard prompts, the reference of crates/llama2/tests/guard_prompts.rs, are
# rendered from the llama-cookbook wheel (PyPI) at test time rather than vendored.
[ -s target/guard/prompts.json ] || python3 scripts/record-guard-prompts.py

cargo test --workspace

if rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu &&
    command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" \
        cargo test --target aarch64-unknown-linux-gnu -p llama2 --lib kernels
else
    echo "test.sh: no aarch64 cross toolchain + qemu-user: NEON kernel tests skipped" >&2
fi

venv=target/py-venv
python3 -m venv "$venv"
# pip >= 21.3 builds ./python in place, which its path dependency on crates/llama2 needs.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=21.3"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ./python pytest
"$venv/bin/python" -m pytest python/tests -q -p no:cacheprovider

# The bad-input suite (hostile files and numbers, each under a 4 GiB address-space
# limit) and the server tests run target/debug/llama2 (overflow checks on).
cargo build -p llama2-cli
python3 tests/bad_inputs/run.py --bin target/debug/llama2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check openai
LLAMA2_BIN="$PWD/target/debug/llama2" "$venv/bin/python" -m pytest tests/server -q -p no:cacheprovider
