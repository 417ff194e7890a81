#!/usr/bin/env python3
"""Record llama.cpp's tokenization of tests/fixtures/parity/bpe_strings.json with SmolLM2 (GPT-2-style BPE).

Usage (from a clean checkout; model and llama.cpp are fetched/built on demand):
    python3 scripts/record-bpe-tokenize.py [--model PATH] [--build-dir target/llama.cpp/build-clang]
                                           [--strings tests/fixtures/parity/bpe_strings.json]
                                           [--out tests/fixtures/parity/smollm2_tokenize.json]

Each string is tokenized by `llama-cpp-greedy --tokenize-only` (our tool, scripts/llama_cpp_greedy.cpp;
it calls llama_tokenize() of the vendored llama.cpp directly) twice, add_special OFF:
  ids_parse_special: special/control tokens in the text (<|im_start|> ...) become their ids;
  ids_plain:         special tokens are treated as plain text.
Strings travel to the tool hex-encoded, one per line, so newlines and any bytes survive.
Output: {"command", "model", "model_sha256", "tokenizer_ggml_pre", "cases": [{"text", "ids_parse_special",
"ids_plain"}]}. Python stdlib only.
"""
import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_parity_module():
    # Reuse model fetching, build and the GGUF reader from record-llama-cpp-parity.py.
    path = os.path.join(ROOT, "scripts", "record-llama-cpp-parity.py")
    spec = importlib.util.spec_from_file_location("record_llama_cpp_parity", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    parity = load_parity_module()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=parity.DEFAULT_MODEL)
    ap.add_argument("--build-dir", default="target/llama.cpp/build-clang")
    ap.add_argument("--strings", default="tests/fixtures/parity/bpe_strings.json")
    ap.add_argument("--out", default="tests/fixtures/parity/smollm2_tokenize.json")
    args = ap.parse_args()
    os.chdir(ROOT)

    parity.ensure_model(args.model)
    exe = os.path.relpath(parity.ensure_greedy(os.path.abspath(args.build_dir)), ROOT)
    meta = parity.read_gguf_metadata(args.model)
    with open(args.strings, encoding="utf-8") as f:
        strings = json.load(f)
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        sys.exit(f"{args.strings}: expected a JSON list of strings")

    os.makedirs("target/llama.cpp/parity", exist_ok=True)
    hex_file = "target/llama.cpp/parity/bpe_strings.hex"
    with open(hex_file, "w", encoding="ascii") as f:
        for s in strings:
            f.write(s.encode("utf-8").hex() + "\n")
    cmd = [exe, "-m", args.model, "--tokenize-only", "--input-hex", hex_file]
    print("[record-bpe-tokenize] running: " + shlex.join(cmd), file=sys.stderr)
    lines = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
    if len(lines) != len(strings):
        sys.exit(f"tool printed {len(lines)} lines for {len(strings)} strings")
    cases = []
    for s, line in zip(strings, lines):
        r = json.loads(line)
        cases.append({"text": s, "ids_parse_special": r["ids_parse_special"], "ids_plain": r["ids_plain"]})

    # Sanity check against PEERS.md.
    hello = next(c for c in cases if c["text"] == "Hello world! How are you?")
    if hello["ids_plain"] != [19556, 905, 17, 1073, 359, 346, 47]:
        sys.exit(f"sanity check failed: 'Hello world! How are you?' -> {hello['ids_plain']}")

    fixture = {
        "description": "llama.cpp llama_tokenize() of each string with SmolLM2-135M-Instruct's GPT-2-style BPE "
                       "vocabulary, add_special OFF; ids_parse_special with parse_special=true, ids_plain with "
                       "parse_special=false. Produced by scripts/record-bpe-tokenize.py from "
                       + args.strings + ".",
        "command": "python3 scripts/record-bpe-tokenize.py  # runs: " + shlex.join(cmd)
                   + "  (the --input-hex file has one hex-encoded UTF-8 string per line)",
        "llama_cpp_version": f"llama-cpp-python=={parity.LLAMA_CPP_PYTHON_VERSION} (vendor/llama.cpp)",
        "model": args.model,
        "model_sha256": parity.sha256_of(args.model),
        "tokenizer_ggml_model": meta.get("tokenizer.ggml.model"),
        "tokenizer_ggml_pre": meta.get("tokenizer.ggml.pre"),
        "add_special": False,
        "cases": cases,
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, indent=1, ensure_ascii=False)
        f.write("\n")
    n_diff = sum(c["ids_parse_special"] != c["ids_plain"] for c in cases)
    print(f"[record-bpe-tokenize] wrote {args.out}: {len(cases)} strings, {n_diff} differ between "
          f"parse_special on/off; tokenizer.ggml.pre = {fixture['tokenizer_ggml_pre']!r}", file=sys.stderr)


if __name__ == "__main__":
    main()
