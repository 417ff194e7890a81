#!/usr/bin/env python3
"""Record Llama 3 tokenizer (tiktoken) and chat-format reference fixtures from Meta's llama-models.

Usage (a Python with tiktoken, pydantic and Pillow, e.g. target/bench-tools-venv):
    target/bench-tools-venv/bin/python scripts/record-llama3-tokenize.py [--gguf] [--eos 128009]
        [--wheel target/llama-models/llama_models-0.3.0-py3-none-any.whl]
        [--build-dir target/llama.cpp/build-clang]

Reference: the `llama-models==0.3.0` wheel from PyPI (Meta's reference code). If the wheel is
not at --wheel it is fetched with `pip download --no-deps llama-models==0.3.0`. The wheel is put
on sys.path (zipimport) and `llama_models.llama3.tokenizer.Tokenizer` and
`llama_models.llama3.chat_format.ChatFormat` are used as they are: nothing is replicated.
The tokenizer file used is tests/fixtures/tokenizer/llama3/tokenizer.model, which is checked to
be byte-identical to the wheel's `llama_models/llama3/tokenizer.model` (copied from it if absent).

Writes, under tests/fixtures/tokenizer/llama3/:
  info.json              special tokens (name -> id), pat_str, ids, file hashes, summaries
  encode_cases.json      [{"text", "ids"}] = Tokenizer.encode(text, bos=False, eos=False)
                         (disallowed_special=(), allowed_special=set(): special-token text is
                         plain text); optional "tiktoken_unsplit_ids", "llama_cpp_ids", "hf_ids"
                         where those differ from "ids"
  decode_cases.json      [{"ids", "text", "bytes_hex"}] = Tokenizer.decode(ids)
                         (tiktoken decode, errors="replace")
  chat_format_cases.json [{"name", "dialog", "ids", "text", ...}] = ChatFormat.encode_dialog_prompt

--gguf: also writes target/llama3-vocab.gguf (vocab-only, arch llama, tokenizer.ggml.model gpt2,
pre llama-bpe; tokens = GPT-2 byte-to-unicode of each rank's bytes, merges derived from the
ranks as transformers' TikTokenConverter does) and runs <build-dir>/bin/llama-tokenize on every
encode case and on the chat prompts; results go into the fixtures and info.json["llama_cpp"].
Without --gguf, llama.cpp fields already in the existing fixtures are kept if the ids they
refer to are unchanged.

If `transformers` + `tokenizers` import, the HF fast tokenizer built by TikTokenConverter is
also compared (info.json["hf_tokenizers"]).
"""
import argparse
import base64
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = "tests/fixtures/tokenizer/llama3"
WHEEL_VERSION = "0.3.0"
DEFAULT_WHEEL = f"target/llama-models/llama_models-{WHEEL_VERSION}-py3-none-any.whl"
WHEEL_MEMBER = "llama_models/llama3/tokenizer.model"
LLAMA_CPP_SRC = "target/llama.cpp/src/llama_cpp_python-0.3.36/vendor/llama.cpp"
GGUF_OUT = "target/llama3-vocab.gguf"


# --------------------------------------------------------------------------------------------
# reference code from the wheel

def ensure_wheel(path):
    if not os.path.exists(path):
        d = os.path.dirname(path)
        os.makedirs(d, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                        f"llama-models=={WHEEL_VERSION}", "-d", d], check=True, stdout=sys.stderr)
    return path


def md5(b):
    return hashlib.md5(b).hexdigest()


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def load_reference(wheel):
    with zipfile.ZipFile(wheel) as z:
        member = z.read(WHEEL_MEMBER)
    fix_model = os.path.join(FIX, "tokenizer.model")
    if not os.path.exists(fix_model):
        os.makedirs(FIX, exist_ok=True)
        with open(fix_model, "wb") as f:
            f.write(member)
    with open(fix_model, "rb") as f:
        data = f.read()
    if data != member:
        sys.exit(f"{fix_model} differs from {WHEEL_MEMBER} in {wheel}")
    sys.path.insert(0, os.path.abspath(wheel))
    from llama_models.llama3.tokenizer import Tokenizer  # noqa: E402
    from llama_models.llama3.chat_format import ChatFormat  # noqa: E402
    from llama_models.datatypes import RawMessage  # noqa: E402
    tok = Tokenizer(Path(fix_model))
    return tok, ChatFormat(tok), RawMessage, data


# --------------------------------------------------------------------------------------------
# test strings

CONTRACTIONS = [
    "don't", "DON'T", "Don't", "I'M here", "I'm", "i'm", "they'VE", "They've", "we'Ll go", "WE'LL",
    "she'D", "he'd've", "it'S", "IT'S", "It's", "'s", "'S", "'t", "'re", "'RE you sure?", "'Ve",
    "'m", "'ll", "'d", "'", "''", "'''", "'x", "rock 'n' roll", "y'all", "Y'ALL", "o'clock",
    "can't won't shouldn't", "I'm   you're", "don 't", "don' t", "it\u2019s", "It\u2019S",
    "it'\u017f",  # LONG S: case-folds to 's' under (?i)
    "'\u212a", "cat's'", "Ma'am", "ain't'll", "students' books", "'tis", "l'homme", "L'HÔTEL",
    "'s's's", "x'Sy", "'DD", "1's", "5'11\"", "\u00e9'Ve",
]

DIGITS = [
    "0", "7", "12", "123", "1234", "12345", "123456", "1234567", "12345678", "123456789",
    "3.14159", "1,000,000", "1 000 000", "2024-01-31", "12:34:56", "0x1F4A9", "1e-5", "-42",
    "+1 (555) 010-9999", "v1.2.3", "abc123def", "123abc", "a1b2c3", "$1.99", "50%",
    "\u0661\u0662\u0663\u0664", "\u00b2\u00b3\u00b9", "\u2167\u216b", "\u4e00\u4e8c\u4e09",
    "\uff11\uff12\uff13\uff14", "\u0967\u0968\u0969", "\u00bd \u00bc", "1\u00bd",
    "31415926535897932384626433832795028841971693993751058209749445923078164062862089986280",
    "0000000000", "9" * 40, "12 345 6789",
]

WHITESPACE = [
    " ", "  ", "   ", "    ", " " * 8, " " * 17, " " * 100, "\t", "\t\t", "\t\t\t\t", "\n", "\n\n",
    "\n\n\n", "\n" * 10, "\r", "\r\n", "\r\n\r\n", "\n\r", " \n", "\n ", " \n ", "  \n  ",
    "\t\n", "\n\t", " \t ", "a ", "a  ", "a   ", "a\n", "a\n\n", " a", "  a", "   a", "a b",
    "a  b", "a   b", "a\tb", "a \tb", "a\t b", "a\nb", "a\n\nb", "a\r\nb", "a \nb", "a\n b",
    "a \n b", "   leading", "trailing   ", "  both  ", "x\n\n\n", "\n\n\nx", " \r\n \r\n",
    "\u000b", "\u000c", "a\u000bb", "a\u000cb", "\u0085", "a\u0085b", "\u2028", "\u2029",
    "\u00a0", "a\u00a0b", "a \u00a0b", "\u00a0\u00a0", "\u3000", "a\u3000b", "\u3000\u3000x",
    "\u2003", "\u200b", "a\u200bb", "\ufeffBOM", "\u1680", "\u202f", " \t\n\r\u000b\u000c",
    "Hello\n\n\n\nWorld", "line1\nline2\r\nline3\rline4", "  indented\n    more\n\tand tab",
    "end with spaces and newline  \n", "!\n", "!\n\n", ".\r\n", "?!\n \n",
]

CODE = [
    "def f(x):\n    return x * 2\n",
    "import numpy as np\nimport torch.nn.functional as F\n",
    "class Foo(Bar):\n    \"\"\"Doc.\"\"\"\n\n    def __init__(self, a: int = 0) -> None:\n        self.a = a\n",
    "for i in range(10):\n\tprint(f\"{i:03d}\")\n",
    "if __name__ == '__main__':\n    main()\n",
    "lambda x, y: (x ** 2 + y ** 2) ** 0.5",
    "fn main() {\n    println!(\"Hello, {}!\", name);\n}\n",
    "impl<'a, T: Clone + Send> Iterator for Foo<'a, T> {\n    type Item = &'a T;\n}",
    "let v: Vec<u32> = (0..10).map(|x| x * x).collect();",
    "#[derive(Debug, Clone, PartialEq)]\npub struct Point { x: f64, y: f64 }",
    "match x { Some(ref y) => *y, None => return Err(e)?, }",
    "{\"name\": \"llama\", \"size\": 8, \"tags\": [\"a\", \"b\"], \"ok\": true, \"x\": null}",
    "{\n  \"a\": 1,\n  \"b\": [1, 2, 3],\n  \"c\": {\"d\": \"e\"}\n}",
    "[{\"role\":\"user\",\"content\":\"hi\"}]",
    "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>T</title></head>\n<body><p class=\"x\">Hi &amp; bye</p></body>\n</html>",
    "<div id='main'><a href=\"https://example.com/?q=1&r=2\">link</a></div>",
    "body { margin: 0; padding: 0 1rem; } .a > .b:hover { color: #ff00ff; }",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
    "$ ls -la | grep '\\.rs$' && echo \"done\" > /dev/null 2>&1",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }",
    "const f = async (a, b) => { await g(a ?? b); };",
    "x = y != z && a <= b || !c; i++; j--; k += 1; m <<= 2;",
    "^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$",
    "# Title\n\n* item **bold** _it_ `code`\n\n```python\nprint(1)\n```\n",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "https://www.example.com/path/to/page.html?query=value#frag",
    "user@example.com", "C:\\Users\\name\\file.txt", "../../etc/passwd",
    "((((((((((", "))))))))))", "----------", "==========", "..........", "!!!!!!????", "'''''", "```````",
    "\"\"\"\"\"", ";;;;", "->=>::<<>>", "    \n        \n",
]

PROSE = [
    "Hello world", "Hello World", " Hello world", "hello", "HELLO", "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "I saw a girl with a telescope.",
    "Llamas are domesticated South American camelids, widely used as meat and pack animals.",
    "It was the best of times, it was the worst of times, it was the age of wisdom...",
    "What is the recipe of mayonnaise?",
    "Simply put, the theory of relativity states that ",
    "A list: apples, bananas; cherries -- and dates (maybe).",
    "e.g. i.e. etc. Mr. Smith vs. Dr. Jones",
    "supercalifragilisticexpialidocious", "antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "a", "A", "z", ".", ",", "!", "?", "-", "_", "~", "`", "\\", "/", "|", "@", "#", "$", "%", "^", "&", "*",
    "\"quoted\"", "(parenthesized)", "[bracketed]", "{braced}", "<angled>",
    "The year 2024 had 366 days.", "Call 911 now!", "A-1 B-2 C-3",
]

UNICODE = [
    "caf\u00e9", "cafe\u0301", "na\u00efve", "\u00c5ngstr\u00f6m", "A\u030angstro\u0308m", "Stra\u00dfe",
    "\u0130stanbul", "\u00c6sir \u00f8 \u00fe \u00f0", "\u0141\u00f3d\u017a", "Cr\u00e8me br\u00fbl\u00e9e",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0627\u0644\u0639\u0627\u0644\u0645", "\u05e9\u05dc\u05d5\u05dd \u05e2\u05d5\u05dc\u05dd",
    "\u0928\u092e\u0938\u094d\u0924\u0947 \u0926\u0941\u0928\u093f\u092f\u093e", "\u0939\u093f\u0928\u094d\u0926\u0940",
    "\u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35\u0e0a\u0e32\u0e27\u0e42\u0e25\u0e01",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01", "\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3002", "\u30ab\u30bf\u30ab\u30ca\u30fc",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8", "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440!",
    "\u041d\u0415\u0429\u041e \u043d\u0430 \u0431\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438",
    "\u0393\u03b5\u03b9\u03ac \u03c3\u03bf\u03c5 \u039a\u03cc\u03c3\u03bc\u03b5", "\u10d2\u10d0\u10db\u10d0\u10e0\u10ef\u10dd\u10d1\u10d0",
    "\u0531\u0562\u0563", "\u1781\u17d2\u1798\u17c2\u179a", "\u0dc3\u0dd2\u0d82\u0dc4\u0dbd",
    "\U0001f999", " \U0001f999", "\U0001f999\U0001f999\U0001f999", "\U0001f44d", "\U0001f44d\U0001f3fd",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466", "\U0001f3f3\ufe0f\u200d\U0001f308",
    "\U0001f1fa\U0001f1f8\U0001f1ef\U0001f1f5", "1\ufe0f\u20e3", "\u2764\ufe0f", "\u263a", "\U0001f636\u200d\U0001f32b\ufe0f",
    "I \u2764\ufe0f \U0001f999s!", "\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f (multiple emojis concatenated) \u2705",
    "a\u0300\u0301\u0302", "Z\u0324\u0354\u0367\u0311\u0313", "\u0301", "\u20dd", "e\u20dd",
    "\u2200x\u2208\u211d: x\u00b2 \u2265 0", "\u222b\u2080\u00b9 f(x) dx \u2248 \u03c0", "\u20ac100 \u00a350 \u00a51000 \u20b9",
    "\u00a9\u00ae\u2122", "\u2190\u2191\u2192\u2193", "\u2500\u2500\u2510\n\u2502 \u2502", "\u2603\u2614",
    "\uff21\uff22\uff23\uff41\uff42\uff43", "\U0001d518\U0001d52b\U0001d526\U0001d520\U0001d52c\U0001d521\U0001d522",
    "\U00010348", "\U0001f600" * 5, "\u00bfQu\u00e9 tal?", "\u00a1Hola!", "\u00ab guillemets \u00bb",
    "\u201csmart quotes\u201d \u2018single\u2019", "en\u2013dash em\u2014dash\u2026", "\u200e\u200f\u202a\u202c",
    "\u1e9e\u00df", "\ufb01\ufb02", "\u0132\u0133", "\u01c4\u01c5\u01c6", "\u2126\u212b",
    "C\u1eeda Vi\u1ec7t", "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u", "\u00e4\u00f6\u00fc\u00c4\u00d6\u00dc",
    "\U000e0041", "\ue000\uf8ff", "\U0010fffd", "\ufffd", "\u0000", "a\u0000b", "\u0001\u0002\u001f\u007f",
    "\u00ad", "ab\u00adcd",
]

SPECIAL_LOOKING = [
    "<|eot_id|>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
    "<|eom_id|>", "<|python_tag|>", "<|image|>", "<|finetune_right_pad_id|>", "<|step_id|>",
    "<|reserved_special_token_0|>", "<|reserved_special_token_245|>", "<|reserved_special_token_250|>",
    "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>", "Hello<|eot_id|>world", " <|eot_id|> ",
    "<|", "|>", "<||>", "<|eot_id", "eot_id|>", "<s>", "</s>", "<unk>", "[INST]", "[/INST]",
    "<<SYS>>\n", "<</SYS>>\n\n", "<|im_start|>", "<|endoftext|>",
]


def random_strings(n, seed=20240731):
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789",
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~", "    \t\n\r", "\u00a0\u3000\u2003\u0085\u000b",
        "\u00e9\u00e8\u00fc\u00f1\u00e7\u00df\u00f8\u00e5", "\u4e2d\u6587\u5b57\u65e5\u672c\u8a9e\uc548\ub155",
        "\u0627\u0644\u0639\u0631\u0628\u064a\u0629", "\u0928\u092e\u0938\u094d\u0924\u0947\u093f",
        "\u0301\u0300\u0308\u20dd\u200d\ufe0f", "\U0001f999\U0001f680\U0001f44d\U0001f3fd\U0001f1fa\U0001f1f8",
        "\u0436\u0449\u044b\u0416\u0429", "'", "\u00b2\u0661\u2167\uff11",
    ]
    out = []
    for i in range(n):
        length = rng.randint(1, 48)
        k = rng.randint(1, 5)
        chosen = rng.sample(pools, k)
        out.append("".join(rng.choice(rng.choice(chosen)) for _ in range(length)))
    # a few word-like mixtures
    words = ["the", "The", "THE", "llama", "it's", "I'M", "don't", "123", "4567", "\u00e9t\u00e9",
             "\u4e2d\u6587", "\U0001f999", " ", "  ", "\n", "\t", ".", ",", "'", "\u00a0", "\r\n"]
    for i in range(n // 3):
        out.append("".join(rng.choice(words) for _ in range(rng.randint(2, 16))))
    return out


def llama_cpp_test_strings():
    p = os.path.join(LLAMA_CPP_SRC, "models", "ggml-vocab-llama-bpe.gguf.inp")
    if not os.path.exists(p):
        return [], []
    raw = open(p, encoding="utf-8").read()
    strs = raw.split("\n__ggml_vocab_test__\n")
    if strs and strs[-1] == "":
        strs = strs[:-1]
    outp = p[:-4] + ".out"
    outs = open(outp, encoding="utf-8").read().split("\n")[: len(strs)]
    return strs, [[int(x) for x in line.split()] for line in outs]


def all_encode_texts():
    texts = [""]
    for group in (PROSE, CONTRACTIONS, DIGITS, WHITESPACE, CODE, UNICODE, SPECIAL_LOOKING):
        texts.extend(group)
    texts.extend(llama_cpp_test_strings()[0])
    texts.extend(random_strings(60))
    # Meta's Tokenizer.encode cuts runs of > 25000 whitespace / non-whitespace chars
    # (MAX_NO_WHITESPACES_CHARS) into separate tiktoken calls.
    texts.append("a" * 25001)
    texts.append("x" + " " * 25003 + "y")
    seen, uniq = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            uniq.append(t)
    return uniq


# --------------------------------------------------------------------------------------------
# GGUF (vocab only) and llama.cpp

def bytes_to_unicode():
    """GPT-2's byte -> printable unicode char table (as in transformers / llama.cpp)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + \
        list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def derive_merges(ranks):
    """transformers' TikTokenConverter.extract_vocab_merges_from_model: for every token of
    length > 1 and every split point where both halves are tokens, a merge (left, right);
    merges sorted by the rank of the merged token, ties by (rank(left), rank(right))."""
    merges = []
    for token, rank in ranks.items():
        if len(token) == 1:
            continue
        local = []
        for i in range(1, len(token)):
            l, r = token[:i], token[i:]
            if l in ranks and r in ranks:
                local.append((l, r, rank))
        local.sort(key=lambda x: (ranks[x[0]], ranks[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda x: x[2])  # stable
    return merges


def import_gguf():
    sys.path.insert(0, os.path.join(ROOT, LLAMA_CPP_SRC, "gguf-py"))
    import gguf  # noqa: E402
    return gguf


def make_gguf(tok, out, eos_id):
    gguf = import_gguf()
    ranks = tok.model._mergeable_ranks
    enc = bytes_to_unicode()
    n_base = len(ranks)
    by_rank = [None] * n_base
    for b, r in ranks.items():
        by_rank[r] = b
    assert all(b is not None for b in by_rank), "ranks are not dense 0..n-1"

    def s(b):
        return "".join(enc[x] for x in b)

    tokens = [s(b) for b in by_rank]
    specials = sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    assert [i for _, i in specials] == list(range(n_base, n_base + len(specials)))
    tokens += [name for name, _ in specials]
    types = [int(gguf.TokenType.NORMAL)] * n_base + [int(gguf.TokenType.CONTROL)] * len(specials)
    merges = [f"{s(l)} {s(r)}" for l, r, _ in derive_merges(ranks)]

    w = gguf.GGUFWriter(out, "llama")
    w.add_name("llama3-vocab (llama-models 0.3.0 tokenizer.model)")
    # hparams of Llama 3.1 8B, so that llama.cpp accepts the (vocab-only) file
    w.add_block_count(32)
    w.add_context_length(131072)
    w.add_embedding_length(4096)
    w.add_feed_forward_length(14336)
    w.add_head_count(32)
    w.add_head_count_kv(8)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(1)
    w.add_vocab_size(len(tokens))
    w.add_rope_dimension_count(128)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tok.bos_id)
    w.add_eos_token_id(eos_id)
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tokens, merges


def compare_with_llama_cpp_vocab(tokens, merges):
    """Compare with llama.cpp's own Llama 3 vocab file (converted from HF Meta-Llama-3-8B)."""
    p = os.path.join(LLAMA_CPP_SRC, "models", "ggml-vocab-llama-bpe.gguf")
    if not os.path.exists(p):
        return None
    gguf = import_gguf()
    r = gguf.GGUFReader(p)
    ref_tokens = r.fields["tokenizer.ggml.tokens"].contents()
    ref_merges = r.fields["tokenizer.ggml.merges"].contents()
    return {
        "file": os.path.relpath(p, ROOT),
        "n_merges": len(ref_merges),
        "merges_identical_in_order": list(ref_merges) == merges,
        "first_128000_tokens_identical": list(ref_tokens[:128000]) == tokens[:128000],
        "n_special_token_names_differing": sum(ref_tokens[i] != tokens[i] for i in range(128000, len(tokens))),
        "special_token_names_differing_first": {
            str(i): [ref_tokens[i], tokens[i]] for i in range(128000, 128014) if ref_tokens[i] != tokens[i]
        },
        "its_bos_eos": [int(r.fields["tokenizer.ggml.bos_token_id"].contents()),
                        int(r.fields["tokenizer.ggml.eos_token_id"].contents())],
    }


def llama_tokenize_cmd(exe, gguf_path, path, parse_special, no_bos):
    cmd = [exe, "-m", gguf_path, "-f", path, "--no-escape", "--ids", "--log-disable"]
    if not parse_special:  # llama-tokenize parses special tokens by default (no --parse-special flag)
        cmd.append("--no-parse-special")
    if no_bos:
        cmd.append("--no-bos")
    return cmd


def run_llama_tokenize(exe, gguf_path, text, parse_special=False, no_bos=True):
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(text.encode("utf-8"))
        path = f.name
    try:
        p = subprocess.run(llama_tokenize_cmd(exe, gguf_path, path, parse_special, no_bos),
                           capture_output=True, check=False)
    finally:
        os.unlink(path)
    if p.returncode != 0:
        raise RuntimeError(f"llama-tokenize failed ({p.returncode}): {p.stderr.decode(errors='replace')[-2000:]}")
    lines = [l for l in p.stdout.decode("utf-8", errors="replace").splitlines() if l.startswith("[")]
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------------
# HF tokenizers (optional cross-check)

def hf_tokenizer(tok, model_path):
    try:
        from transformers.convert_slow_tokenizer import TikTokenConverter
    except Exception:
        return None
    # No added/special tokens: the reference encodes special-token text as plain text, while HF
    # would match added tokens inside the text.
    conv = TikTokenConverter(vocab_file=model_path, pattern=tok.pat_str)
    return conv, conv.converted()


# --------------------------------------------------------------------------------------------

DIALOGS = [
    ("system_user", [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]),
    ("user_only", [
        {"role": "user", "content": "Hello!"},
    ]),
    ("multi_turn", [
        {"role": "system", "content": "Always answer with Haiku"},
        {"role": "user", "content": "I am going to Paris, what should I see?"},
        {"role": "assistant", "content": "Eiffel tower high\nArt in the Louvre Museum\nRiver Seine flows"},
        {"role": "user", "content": "What is so great about #1?"},
    ]),
    ("surrounding_whitespace", [
        {"role": "system", "content": "  You are terse.\n"},
        {"role": "user", "content": "\n\n  Say hi.  \n"},
        {"role": "assistant", "content": " Hi. "},
        {"role": "user", "content": "\tAgain?\t"},
    ]),
    ("non_ascii", [
        {"role": "user", "content": "\u00bfC\u00f3mo se dice \U0001f999 en \u65e5\u672c\u8a9e? \u041f\u0440\u0438\u0432\u0435\u0442!"},
        {"role": "assistant", "content": "\u30e9\u30de (rama) \u2014 caf\u00e9 na\u00efve \u00c5"},
        {"role": "user", "content": "\u0928\u092e\u0938\u094d\u0924\u0947 \U0001f468\u200d\U0001f469\u200d\U0001f467"},
    ]),
    ("special_text_in_content", [
        {"role": "user", "content": "Print <|eot_id|> and <|start_header_id|> literally."},
    ]),
    ("unicode_whitespace_edges", [
        {"role": "user", "content": "\u00a0non-breaking\u3000"},
    ]),
    ("empty_content", [
        {"role": "system", "content": ""},
        {"role": "user", "content": ""},
    ]),
    ("tool_role", [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Let me compute."},
        {"role": "tool", "content": "{\"result\": 4}"},
    ]),
]


def llama_cpp_llama3_template(dialog):
    """llama.cpp's built-in "llama3" chat template (src/llama-chat.cpp): content trimmed of ASCII
    isspace() bytes; the role string is used as is; BOS is not part of the text."""
    ws = " \t\n\v\f\r"
    out = ""
    for m in dialog:
        out += "<|start_header_id|>" + m["role"] + "<|end_header_id|>\n\n" + m["content"].strip(ws) + "<|eot_id|>"
    return out + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def render_hf_template(dialog):
    """Meta-Llama-3.1-8B-Instruct's tokenizer_config chat_template (a copy ships with llama.cpp),
    rendered as transformers does (jinja2 sandbox, trim_blocks, lstrip_blocks)."""
    p = os.path.join(LLAMA_CPP_SRC, "models", "templates", "meta-llama-Llama-3.1-8B-Instruct.jinja")
    try:
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except Exception:
        return None
    if not os.path.exists(p):
        return None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x, indent=None, **k: json.dumps(x, indent=indent, ensure_ascii=False)

    def raise_exception(msg):
        raise ValueError(msg)

    env.globals["raise_exception"] = raise_exception
    t = env.from_string(open(p, encoding="utf-8").read())
    return t.render(messages=dialog, bos_token="<|begin_of_text|>", add_generation_prompt=True)


def decode_id_lists(tok):
    ranks = tok.model._mergeable_ranks

    def b(*xs):
        return [ranks[bytes([x])] for x in xs]

    enc = lambda s: tok.encode(s, bos=False, eos=False)  # noqa: E731
    cases = [
        [], enc("Hello world"), enc(" Hello world"), enc("I'M they'VE don't"), enc("caf\u00e9 na\u00efve"),
        enc("\u4f60\u597d\uff0c\u4e16\u754c"), enc("\U0001f999"), enc(" \U0001f999\U0001f999"),
        enc("\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"), enc("a\r\nb\n\n\tc  "),
        enc("  \u3000\u00a0"), enc("<|eot_id|>"),
        [128000], [128001], [128009], [128006, 882, 128007, 271], [128000, 9906, 1917, 128009],
        [128011], [128255], [128004, 128005], [9906, 128008, 1917],
        b(0xE2, 0x82), b(0xE2, 0x82, 0xAC), b(0xE2, 0x82) + enc("A"), b(0xF0, 0x9F, 0xA6),
        b(0xF0, 0x9F, 0xA6, 0x99), b(0xF0, 0x9F, 0xA6) + b(0xF0, 0x9F, 0xA6, 0x99), b(0x80), b(0x80, 0x80),
        b(0xC0, 0xAF), b(0xED, 0xA0, 0x80), b(0xF4, 0x90, 0x80, 0x80), b(0xFF), b(0xFE, 0xFF),
        b(0xE0, 0x80), b(0xC3) + enc("x"), b(0x41, 0xC3), b(0xC3, 0xA9), b(0xE6, 0x97) + b(0xA5),
        b(0x00), b(0x0A, 0x0D, 0x09),
    ]
    # first tokens of multi-token characters, alone: emoji / CJK cut after each prefix
    for s in ("\U0001f999", "\U0001f600x", "\u00e9t\u00e9"):
        ids = enc(s)
        for i in range(1, len(ids)):
            cases.append(ids[:i])
    # vocabulary entries that are not valid UTF-8 on their own (seeded pick)
    rng = random.Random(7)
    invalid = []
    for tb, r in ranks.items():
        try:
            tb.decode("utf-8")
        except UnicodeDecodeError:
            invalid.append(r)
    invalid.sort()
    for r in rng.sample(invalid, 6):
        cases.append([r])
    cases.append(rng.sample(invalid, 5))
    # unique, keep order
    seen, uniq = set(), []
    for c in cases:
        k = tuple(c)
        if k not in seen:
            seen.add(k)
            uniq.append(list(c))
    return uniq, len(invalid)


def preview(texts, n=80):
    """Texts for a summary: at most n chars each (the long cases are 25k chars)."""
    return [t if len(t) <= n else t[:n] + f"...<{len(t)} chars>" for t in texts]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--wheel", default=DEFAULT_WHEEL)
    ap.add_argument("--gguf", action="store_true", help="write target/llama3-vocab.gguf and run llama-tokenize")
    ap.add_argument("--eos", type=int, default=128009,
                    help="tokenizer.ggml.eos_token_id for the GGUF (128009 <|eot_id|> as llama.cpp's "
                         "convert writes for the Instruct models; 128001 for base models)")
    ap.add_argument("--build-dir", default="target/llama.cpp/build-clang")
    args = ap.parse_args()
    os.chdir(ROOT)

    wheel = ensure_wheel(args.wheel)
    with open(wheel, "rb") as f:
        wheel_bytes = f.read()
    tok, chat, RawMessage, model_bytes = load_reference(wheel)
    import tiktoken

    model_path = os.path.join(FIX, "tokenizer.model")
    texts = all_encode_texts()

    # ---- encode
    cases = []
    for t in texts:
        ids = tok.encode(t, bos=False, eos=False)
        c = {"text": t, "ids": ids}
        raw = tok.model.encode(t, disallowed_special=())
        if raw != ids:
            c["tiktoken_unsplit_ids"] = raw
        assert tok.decode(ids) == t, repr(t)
        cases.append(c)

    # llama.cpp's own expected ids for its test strings (HF tokenizers output) vs ours
    lc_strs, lc_outs = llama_cpp_test_strings()
    lc_vs_ref = [s for s, o in zip(lc_strs, lc_outs) if tok.encode(s, bos=False, eos=False) != o]

    # ---- HF tokenizers cross-check
    hf_summary = None
    hf = hf_tokenizer(tok, model_path)
    if hf is not None:
        conv, hft = hf
        hf_diff = []
        for c in cases:
            hids = hft.encode(c["text"], add_special_tokens=False).ids
            if hids != c["ids"]:
                c["hf_ids"] = hids
                hf_diff.append(c["text"])
        _, hf_merges = conv.extract_vocab_merges_from_model(model_path)
        enc = bytes_to_unicode()
        s = lambda b: "".join(enc[x] for x in b)  # noqa: E731
        ours = [(s(l), s(r)) for l, r, _ in derive_merges(tok.model._mergeable_ranks)]
        import transformers
        import tokenizers
        hf_summary = {
            "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__},
            "how": "transformers.convert_slow_tokenizer.TikTokenConverter(vocab_file=tokenizer.model, "
                   "pattern=pat_str).converted() (no added tokens, so special-token text stays plain text); "
                   "encode(text, add_special_tokens=False).ids; 'hf_ids' in a case where they differ",
            "n_cases": len(cases), "n_agree": len(cases) - len(hf_diff), "differing_texts": preview(hf_diff),
            "merges_equal_to_script_derivation": hf_merges == ours,
        }

    # ---- llama.cpp
    old = {}
    enc_path = os.path.join(FIX, "encode_cases.json")
    if os.path.exists(enc_path):
        for c in json.load(open(enc_path, encoding="utf-8")):
            old[c["text"]] = c
    llama_cpp = None
    exe = os.path.join(args.build_dir, "bin", "llama-tokenize")
    if args.gguf:
        tokens, merges = make_gguf(tok, GGUF_OUT, args.eos)
        with open(GGUF_OUT, "rb") as f:
            gguf_sha = sha256(f.read())
        vocab_cmp = compare_with_llama_cpp_vocab(tokens, merges)
        n_agree, diff = 0, []
        for i, c in enumerate(cases):
            lids = run_llama_tokenize(exe, GGUF_OUT, c["text"])
            if lids != c["ids"]:
                c["llama_cpp_ids"] = lids
                diff.append(c["text"])
            else:
                n_agree += 1
            c["llama_cpp_agree"] = lids == c["ids"]
        llama_cpp = {
            "gguf": GGUF_OUT, "gguf_sha256": gguf_sha, "eos_token_id": args.eos,
            "n_tokens": len(tokens), "n_merges": len(merges),
            "merges": "transformers TikTokenConverter rule: for each token (rank order) every split "
                      "(left,right) with both halves in the ranks; sorted by rank of the merged token, "
                      "ties by (rank(left), rank(right)); strings are GPT-2 byte-to-unicode mapped",
            "command": " ".join(llama_tokenize_cmd(exe, GGUF_OUT, "<case.txt>", False, True)),
            "n_cases": len(cases), "n_agree": n_agree, "differing_texts": preview(diff),
            "vs_llama_cpp_ggml_vocab_llama_bpe": vocab_cmp,
        }
    else:
        for c in cases:
            o = old.get(c["text"])
            if o is not None and o.get("ids") == c["ids"] and "llama_cpp_agree" in o:
                c["llama_cpp_agree"] = o["llama_cpp_agree"]
                if "llama_cpp_ids" in o:
                    c["llama_cpp_ids"] = o["llama_cpp_ids"]

    # ---- decode
    id_lists, n_invalid_vocab = decode_id_lists(tok)
    dec = []
    for ids in id_lists:
        bs = tok.model.decode_bytes(ids)
        text = tok.decode(ids)
        assert text == bs.decode("utf-8", errors="replace")
        dec.append({"ids": ids, "text": text, "bytes_hex": bs.hex()})

    # ---- chat format
    chat_cases = []
    for name, dialog in DIALOGS:
        msgs = [RawMessage(role=m["role"], content=m["content"]) for m in dialog]
        ids = chat.encode_dialog_prompt(msgs).tokens
        msgs_s = [RawMessage(role=m["role"], content=m["content"].strip()) for m in dialog]
        ids_strip = chat.encode_dialog_prompt(msgs_s).tokens
        c = {"name": name, "dialog": dialog, "ids": ids, "text": tok.decode(ids)}
        c["ids_content_stripped"] = ids_strip
        c["content_strip_changes_ids"] = ids_strip != ids
        hf_text = render_hf_template(dialog)
        if hf_text is not None:
            c["hf_llama31_template_text"] = hf_text
            c["hf_llama31_template_ids"] = tok.model.encode(hf_text, allowed_special="all")
        lc_text = llama_cpp_llama3_template(dialog)
        c["llama_cpp_llama3_template_text"] = lc_text
        lc_ref = [tok.bos_id] + tok.model.encode(lc_text, allowed_special="all")
        c["llama_cpp_llama3_template_ids"] = lc_ref
        if args.gguf:
            lids = run_llama_tokenize(exe, GGUF_OUT, lc_text, parse_special=True, no_bos=False)
            c["llama_cpp_tokenize_agree"] = lids == lc_ref
            if lids != lc_ref:
                c["llama_cpp_tokenize_ids"] = lids
        else:
            o = None
            cp = os.path.join(FIX, "chat_format_cases.json")
            if os.path.exists(cp):
                o = {x["name"]: x for x in json.load(open(cp, encoding="utf-8"))}.get(name)
            if o and o.get("llama_cpp_llama3_template_ids") == lc_ref and "llama_cpp_tokenize_agree" in o:
                c["llama_cpp_tokenize_agree"] = o["llama_cpp_tokenize_agree"]
        chat_cases.append(c)

    # ---- info
    info = {
        "source": {
            "package": f"llama-models=={WHEEL_VERSION} (PyPI wheel)",
            "wheel_sha256": sha256(wheel_bytes),
            "member": WHEEL_MEMBER,
            "tokenizer_class": "llama_models.llama3.tokenizer.Tokenizer (imported from the wheel, not replicated)",
            "chat_format_class": "llama_models.llama3.chat_format.ChatFormat (imported from the wheel)",
            "tiktoken": tiktoken.__version__,
            "python": sys.version.split()[0],
        },
        "tokenizer_model_bytes": len(model_bytes),
        "tokenizer_model_md5": md5(model_bytes),
        "tokenizer_model_sha256": sha256(model_bytes),
        "tokenizer_model_format": "128000 lines '<base64 token bytes> <rank>', rank = line index 0..127999",
        "num_base_tokens": len(tok.model._mergeable_ranks),
        "n_words": tok.n_words,
        "pat_str": tok.pat_str,
        "bos_id": tok.bos_id, "eos_id": tok.eos_id, "eot_id": tok.eot_id, "eom_id": tok.eom_id,
        "pad_id": tok.pad_id, "python_tag_id": tok.python_tag_id, "stop_tokens": tok.stop_tokens,
        "special_tokens": tok.special_tokens,
        "encode_conventions": "ids = Tokenizer.encode(text, bos=False, eos=False): allowed_special=set(), "
                              "disallowed_special=() -> special-token text is encoded as plain text. "
                              "Texts are cut into chunks of 400000 chars and at runs of >25000 consecutive "
                              "whitespace / non-whitespace chars (str.isspace) before tiktoken; "
                              "'tiktoken_unsplit_ids' = tiktoken on the whole text where that differs.",
        "decode_conventions": "text = Tokenizer.decode(ids) = tiktoken Encoding.decode(ids) = "
                              "decode_bytes(ids).decode('utf-8', errors='replace'); special ids decode to "
                              "their names; bytes_hex = decode_bytes(ids).hex()",
        "n_encode_cases": len(cases), "n_decode_cases": len(dec), "n_chat_cases": len(chat_cases),
        "n_vocab_entries_not_valid_utf8": n_invalid_vocab,
        "llama_cpp_test_strings": {
            "file": os.path.join(LLAMA_CPP_SRC, "models", "ggml-vocab-llama-bpe.gguf.{inp,out}"),
            "n": len(lc_strs), "n_where_out_differs_from_reference": len(lc_vs_ref), "differing": lc_vs_ref,
        },
    }
    if hf_summary is not None:
        info["hf_tokenizers"] = hf_summary
    if llama_cpp is not None:
        info["llama_cpp"] = llama_cpp
    else:
        p = os.path.join(FIX, "info.json")
        if os.path.exists(p):
            prev = json.load(open(p, encoding="utf-8"))
            if "llama_cpp" in prev:
                info["llama_cpp"] = prev["llama_cpp"]

    def dump(name, obj):
        with open(os.path.join(FIX, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=1)
            f.write("\n")

    def dump_lines(name, items):
        """A JSON array with one case per line (UTF-8, not ASCII-escaped)."""
        with open(os.path.join(FIX, name), "w", encoding="utf-8") as f:
            f.write("[\n")
            for i, it in enumerate(items):
                f.write(json.dumps(it, ensure_ascii=False) + (",\n" if i + 1 < len(items) else "\n"))
            f.write("]\n")

    dump("info.json", info)
    dump_lines("encode_cases.json", cases)
    dump_lines("decode_cases.json", dec)
    dump_lines("chat_format_cases.json", chat_cases)
    print(f"encode {len(cases)}, decode {len(dec)}, chat {len(chat_cases)}", file=sys.stderr)
    if llama_cpp:
        print(f"llama.cpp agrees on {llama_cpp['n_agree']}/{llama_cpp['n_cases']}", file=sys.stderr)
    if hf_summary:
        print(f"HF tokenizers agrees on {hf_summary['n_agree']}/{hf_summary['n_cases']}", file=sys.stderr)


if __name__ == "__main__":
    main()
