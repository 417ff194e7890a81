#!/usr/bin/env bash
# The whole test suite: the Rust workspace, then the Python package (`llama`) built from
# python/ into a virtual environment under target/ and tested with pytest on the
# fixture checkpoints. Needs Rust and Python >= 3.9 (with venv and pip); the Python
# build backend (maturin) and pytest come from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace

venv=target/py-venv
python3 -m venv "$venv"
# pip >= 21.3 builds ./python in place, which its path dependency on crates/llama2 needs.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=21.3"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ./python pytest
"$venv/bin/python" -m pytest python/tests -q -p no:cacheprovider
