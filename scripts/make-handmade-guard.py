#!/usr/bin/env python3
"""Make tests/fixtures/models/handmade/{guard,chat}.gguf: two tiny Llama-architecture GGUF
models whose weights are set by hand (not trained, not random), for end-to-end tests of
safety checks.

Usage (from anywhere; needs numpy and gguf-py only):

    target/ref-venv/bin/python scripts/make-handmade-guard.py [--out DIR]
        [--llama-cpp-bin target/llama.cpp/build-clang/bin] [--skip-llama-cpp]

If `import gguf` fails, the gguf-py of the vendored llama.cpp source tree is used.

What the models do (greedy decoding):
  guard.gguf  a fake Llama Guard 3. After a prompt ending in
              `<|start_header_id|>assistant<|end_header_id|>` it answers "\\n\\nsafe" and
              <|eot_id|>, or "\\n\\nunsafe\\nS1" and <|eot_id|> if the token `xyzzy` or
              ` xyzzy` occurs anywhere in the context.
  chat.gguf   a fake chat model. After `<|start_header_id|>assistant<|end_header_id|>\\n\\n`
              it answers "Hello world" and <|eot_id|>, or " xyzzy xyzzy xyzzy ..." (forever)
              if the token `magic` or ` magic` occurs anywhere in the context.

Construction (one layer, dim 32, one head of width 32, FFN width 32, tied embeddings; see
tests/fixtures/models/handmade/README.md for the full story):
  residual features  BIAS (1 for every token), TRIG (trigger tokens), OTHER (tokens without
                     a role), SEEN (written by attention), JUNK, one CLS_<t> per token whose
                     successor matters, one OUT_<t> per token that is ever predicted.
  embedding row      BIAS=1, plus exactly one of TRIG/CLS_t/OTHER = 1, plus OUT_t = 1 for
                     predicted tokens or JUNK = 1 for the others: every row has norm sqrt(3).
  attention          q = k = 0, so every query attends uniformly to positions 0..t; v reads
                     TRIG, o writes it to SEEN: SEEN = (#trigger tokens so far) / (t + 1).
  FFN (SwiGLU)       class units silu(K*CLS_c) * BIAS -> OUT_next(c); fallback units
                     (OTHER, TRIG) -> OUT_eot; a step pair
                     (silu(G*SEEN - 5*BIAS) - silu(G*SEEN - 10*BIAS)) * CLS_decision moves the
                     decision token's prediction from the default answer to the triggered one.
  head               tied: logits = E . (g * rmsnorm(h)) with g = 0 except on the OUT_* dims,
                     so a token's logit is g * (its OUT value); every other token gets exactly 0.

The script writes both files, reads them back with gguf-py's GGUFReader, runs a float32 numpy
forward pass (its own tokenizer: special-token splitting, llama-bpe pre-tokenizer restricted to
ASCII, rank-ordered BPE) over the test prompts, and writes expected.json (deterministic: numpy
only). Unless --skip-llama-cpp or the binaries are missing, it then checks the same prompts with
llama.cpp: llama-tokenize / llama-cpp-greedy --tokenize-only ids must equal ours,
llama-cpp-greedy must generate the same tokens, llama-cpp-logits must agree with numpy.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENDORED_LLAMA_CPP = os.path.join(
    ROOT, "target", "llama.cpp", "src", "llama_cpp_python-0.3.36", "vendor", "llama.cpp"
)
try:
    import gguf
except ImportError:
    sys.path.insert(0, os.path.join(VENDORED_LLAMA_CPP, "gguf-py"))
    import gguf

OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "models", "handmade")
LLAMA_CPP_BIN = os.path.join(ROOT, "target", "llama.cpp", "build-clang", "bin")

# ----------------------------------------------------------------------------- hyperparameters
DIM = 32  # residual width = head width (one head, one KV head)
FFN = 32  # SwiGLU hidden width
N_CTX = 4096  # llama.context_length
NORM_EPS = 1e-5
ROPE_THETA = 10000.0

A_OUT = 1.0  # value of the OUT_t / JUNK entry of an embedding row
K_CLS = 10.0  # gate gain of the class units: silu(K * 1/rms) is in its linear region
W_DOWN = 1.0  # down weight of the class units
G_STEP = 1e5  # gate gain of the step pair on SEEN
C1, C2 = 5.0, 10.0  # step offsets (times BIAS)
BETA = W_DOWN * K_CLS / (C2 - C1)  # step down weight: cancels the default answer exactly
G_OUT = 4.0  # output_norm weight on the OUT_* dims

# ----------------------------------------------------------------------------- vocabulary


def bytes_to_unicode():
    """GPT-2's byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


BYTE_ENC = bytes_to_unicode()
BYTE_DEC = {c: b for b, c in BYTE_ENC.items()}

# Merges in rank order ("left right"); each one's result is a token, appended in this order
# after the 256 byte tokens. Written in GPT-2 byte-to-unicode form (Ġ = space, Ċ = newline).
MERGES = [
    ("Ċ", "Ċ"),
    ("s", "a"), ("sa", "f"), ("saf", "e"),
    ("u", "n"), ("un", "safe"),
    ("x", "y"), ("xy", "z"), ("xyz", "z"), ("xyzz", "y"), ("Ġ", "xyzzy"),
    ("m", "a"), ("ma", "g"), ("mag", "i"), ("magi", "c"), ("Ġ", "magic"),
    ("H", "e"), ("He", "l"), ("Hel", "l"), ("Hell", "o"),
    ("w", "o"), ("wo", "r"), ("wor", "l"), ("worl", "d"), ("Ġ", "world"),
]
SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
]
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3


def build_vocab():
    tokens = [BYTE_ENC[b] for b in range(256)]  # id b = the token of byte b
    for left, right in MERGES:
        assert left in tokens and right in tokens, (left, right)
        assert left + right not in tokens, left + right
        tokens.append(left + right)
    types = [TOKEN_NORMAL] * len(tokens)
    for s in SPECIALS:
        tokens.append(s)
        types.append(TOKEN_CONTROL)
    return tokens, types


TOKENS, TOKEN_TYPES = build_vocab()
TID = {t: i for i, t in enumerate(TOKENS)}
BOS, EOS = TID["<|begin_of_text|>"], TID["<|eot_id|>"]
EOT, EOM = TID["<|eot_id|>"], TID["<|eom_id|>"]
EOG = {TID["<|eot_id|>"], TID["<|eom_id|>"], TID["<|end_of_text|>"]}

# ----------------------------------------------------------------------------- model specs
# next:     class token -> the token it predicts (a bigram table)
# decision: (token, answer when no trigger was seen, answer when one was)
# Every token without a role predicts <|eot_id|> (fallback).
SPECS = {
    "guard": {
        "name": "handmade-guard",
        "description": "Handmade fake Llama Guard 3 (weights set by hand, not trained): answers "
        "'\\n\\nsafe', or '\\n\\nunsafe\\nS1' if the token 'xyzzy' or ' xyzzy' is in the context. "
        "For tests only.",
        "triggers": ["xyzzy", "Ġxyzzy"],
        "next": {
            "<|end_header_id|>": "ĊĊ",
            "safe": "<|eot_id|>",
            "unsafe": "Ċ",
            "Ċ": "S",
            "S": "1",
            "1": "<|eot_id|>",
        },
        "decision": ("ĊĊ", "safe", "unsafe"),
    },
    "chat": {
        "name": "handmade-chat",
        "description": "Handmade fake chat model (weights set by hand, not trained): answers "
        "'Hello world', or ' xyzzy' forever if the token 'magic' or ' magic' is in the context. "
        "For tests only.",
        "triggers": ["magic", "Ġmagic"],
        "next": {
            "<|end_header_id|>": "ĊĊ",
            "Hello": "Ġworld",
            "Ġworld": "<|eot_id|>",
            "Ġxyzzy": "Ġxyzzy",
        },
        "decision": ("ĊĊ", "Hello", "Ġxyzzy"),
    },
}


def layout(spec):
    """Residual dims: name -> index."""
    dec_tok, dec_default, dec_trig = spec["decision"]
    classes = list(spec["next"]) + [dec_tok]
    outs = []
    for t in list(spec["next"].values()) + [dec_default, dec_trig, "<|eot_id|>"]:
        if t not in outs:
            outs.append(t)
    names = ["BIAS", "TRIG", "OTHER", "SEEN", "JUNK"] + ["CLS_" + c for c in classes] + ["OUT_" + t for t in outs]
    assert len(names) <= DIM, len(names)
    assert not set(classes) & set(spec["triggers"])
    return {n: i for i, n in enumerate(names)}, classes, outs


def build_weights(spec):
    L, classes, outs = layout(spec)
    V = len(TOKENS)
    trig_ids = {TID[t] for t in spec["triggers"]}
    E = np.zeros((V, DIM), np.float32)
    for j, tok in enumerate(TOKENS):
        E[j, L["BIAS"]] = 1.0
        if j in trig_ids:
            E[j, L["TRIG"]] = 1.0
        elif tok in classes:
            E[j, L["CLS_" + tok]] = 1.0
        else:
            E[j, L["OTHER"]] = 1.0
        if tok in outs:
            E[j, L["OUT_" + tok]] = A_OUT
        else:
            E[j, L["JUNK"]] = A_OUT
    norms = np.linalg.norm(E, axis=1)
    assert np.all(norms == norms[0])

    # attention: uniform average of TRIG -> SEEN. rms of every embedding row:
    rms0 = math.sqrt((2.0 + A_OUT * A_OUT) / DIM + NORM_EPS)
    wq = np.zeros((DIM, DIM), np.float32)
    wk = np.zeros((DIM, DIM), np.float32)
    wv = np.zeros((DIM, DIM), np.float32)
    wo = np.zeros((DIM, DIM), np.float32)
    wv[0, L["TRIG"]] = 1.0  # v[0] = TRIG / rms0
    wo[L["SEEN"], 0] = rms0  # SEEN += mean(v[0]) * rms0 = fraction of trigger tokens

    # FFN: hidden = silu(gate . n) * (up . n); out = down . hidden  (n = rmsnorm(x) * 1)
    gate = np.zeros((FFN, DIM), np.float32)
    up = np.zeros((FFN, DIM), np.float32)
    down = np.zeros((DIM, FFN), np.float32)
    units = []  # (description) for the README
    u = 0

    def unit(gate_terms, up_terms, down_terms, what):
        nonlocal u
        assert u < FFN
        for d, w in gate_terms:
            gate[u, L[d]] = w
        for d, w in up_terms:
            up[u, L[d]] = w
        for d, w in down_terms:
            down[L[d], u] = w
        units.append(what)
        u += 1

    for c, t in spec["next"].items():
        unit([("CLS_" + c, K_CLS)], [("BIAS", 1.0)], [("OUT_" + t, W_DOWN)], f"{c} -> {t}")
    dec_tok, dec_default, dec_trig = spec["decision"]
    unit([("CLS_" + dec_tok, K_CLS)], [("BIAS", 1.0)], [("OUT_" + dec_default, W_DOWN)], f"{dec_tok} -> {dec_default} (default)")
    unit([("OTHER", K_CLS)], [("BIAS", 1.0)], [("OUT_<|eot_id|>", W_DOWN)], "other -> <|eot_id|> (fallback)")
    unit([("TRIG", K_CLS)], [("BIAS", 1.0)], [("OUT_<|eot_id|>", W_DOWN)], "trigger -> <|eot_id|> (fallback)")
    unit(
        [("SEEN", G_STEP), ("BIAS", -C1)],
        [("CLS_" + dec_tok, 1.0)],
        [("OUT_" + dec_trig, BETA), ("OUT_" + dec_default, -BETA)],
        f"step +: {dec_tok} & seen -> {dec_trig}",
    )
    unit(
        [("SEEN", G_STEP), ("BIAS", -C2)],
        [("CLS_" + dec_tok, 1.0)],
        [("OUT_" + dec_trig, -BETA), ("OUT_" + dec_default, BETA)],
        f"step -: {dec_tok} & seen -> {dec_trig}",
    )

    out_norm = np.zeros(DIM, np.float32)
    for t in outs:
        out_norm[L["OUT_" + t]] = G_OUT

    w = {
        "rope_freqs.weight": np.ones(DIM // 2, np.float32),
        "token_embd.weight": E,
        "blk.0.attn_norm.weight": np.ones(DIM, np.float32),
        "blk.0.ffn_down.weight": down,
        "blk.0.ffn_gate.weight": gate,
        "blk.0.ffn_up.weight": up,
        "blk.0.ffn_norm.weight": np.ones(DIM, np.float32),
        "blk.0.attn_k.weight": wk,
        "blk.0.attn_output.weight": wo,
        "blk.0.attn_q.weight": wq,
        "blk.0.attn_v.weight": wv,
        "output_norm.weight": out_norm,
    }
    return w, L, units


def write_gguf(path, spec, w):
    tmp = path + ".tmp"
    gw = gguf.GGUFWriter(tmp, "llama")
    gw.add_type("model")
    gw.add_name(spec["name"])
    gw.add_description(spec["description"])
    gw.add_block_count(1)
    gw.add_context_length(N_CTX)
    gw.add_embedding_length(DIM)
    gw.add_feed_forward_length(FFN)
    gw.add_head_count(1)
    gw.add_head_count_kv(1)
    gw.add_rope_freq_base(ROPE_THETA)
    gw.add_layer_norm_rms_eps(NORM_EPS)
    gw.add_key_length(DIM)
    gw.add_value_length(DIM)
    gw.add_file_type(gguf.LlamaFileType.ALL_F32)
    gw.add_vocab_size(len(TOKENS))
    gw.add_rope_dimension_count(DIM)
    gw.add_quantization_version(gguf.GGML_QUANT_VERSION)
    gw.add_tokenizer_model("gpt2")
    gw.add_tokenizer_pre("llama-bpe")
    gw.add_token_list(TOKENS)
    gw.add_token_types(TOKEN_TYPES)
    gw.add_token_merges([f"{a} {b}" for a, b in MERGES])
    gw.add_bos_token_id(BOS)
    gw.add_eos_token_id(EOS)
    gw.add_eot_token_id(EOT)
    gw.add_eom_token_id(EOM)
    gw.add_add_bos_token(True)
    gw.add_add_eos_token(False)
    for name, arr in w.items():
        gw.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- reading back


def field_value(reader, key):
    f = reader.fields[key]
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]].tolist()[0]


class Model:
    """Everything the numpy check needs, read back from the written GGUF."""

    def __init__(self, path):
        r = gguf.GGUFReader(path)
        self.meta = {k: field_value(r, k) for k in r.fields if not k.startswith("GGUF.")}
        self.w = {}
        for t in r.tensors:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
            self.w[t.name] = np.array(t.data, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)])
        self.tokens = self.meta["tokenizer.ggml.tokens"]
        self.types = self.meta["tokenizer.ggml.token_type"]
        self.tid = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {tuple(m.split(" ")): i for i, m in enumerate(self.meta["tokenizer.ggml.merges"])}
        self.specials = sorted((t for t, ty in zip(self.tokens, self.types) if ty == TOKEN_CONTROL), key=len, reverse=True)
        self.eps = self.meta["llama.attention.layer_norm_rms_epsilon"]
        self.theta = self.meta["llama.rope.freq_base"]
        self.n_heads = self.meta["llama.attention.head_count"]
        self.n_kv = self.meta["llama.attention.head_count_kv"]

    # --- tokenizer (llama.cpp llama-bpe semantics, ASCII text only) ---
    # llama.cpp's LLAMA_VOCAB_PRE_TYPE_LLAMA3 regex with \p{L} -> [A-Za-z], \p{N} -> [0-9].
    PRE = re.compile(
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}| ?[^\sA-Za-z0-9]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )

    def bpe(self, word):
        syms = [BYTE_ENC[b] for b in word.encode("utf-8")]
        while len(syms) > 1:
            best = None
            for i in range(len(syms) - 1):
                r = self.ranks.get((syms[i], syms[i + 1]))
                if r is not None and (best is None or r < best[0]):
                    best = (r, i)
            if best is None:
                break
            i = best[1]
            syms[i : i + 2] = [syms[i] + syms[i + 1]]
        out = []
        for s in syms:
            if s in self.tid:
                out.append(self.tid[s])
            else:
                out.extend(self.tid[c] for c in s)
        return out

    def tokenize(self, text, parse_special=True):
        assert text.isascii(), "the numpy tokenizer handles ASCII text only"
        ids = []
        pos = 0
        while pos < len(text):
            nxt, which = len(text), None
            if parse_special:
                for s in self.specials:
                    k = text.find(s, pos)
                    if k != -1 and (k < nxt or (k == nxt and which is not None and len(s) > len(which))):
                        nxt, which = k, s
            chunk = text[pos:nxt]
            for m in self.PRE.finditer(chunk):
                ids.extend(self.bpe(m.group(0)))
            if which is None:
                break
            ids.append(self.tid[which])
            pos = nxt + len(which)
        return ids

    def detokenize(self, ids):
        out = bytearray()
        for i in ids:
            t = self.tokens[i]
            if self.types[i] == TOKEN_CONTROL:
                out += t.encode("utf-8")
            else:
                out += bytes(BYTE_DEC[c] for c in t)
        return out.decode("utf-8", errors="replace")

    # --- float32 forward pass ---
    def rmsnorm(self, x, g):
        x = x.astype(np.float32)
        return (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(self.eps))).astype(np.float32) * g

    def rope(self, x, n_pos):
        # llama.cpp GGUF q/k rows are in Meta's interleaved layout: pairs (2i, 2i+1).
        hd = x.shape[-1]
        inv = (1.0 / (self.theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))) / self.w["rope_freqs.weight"]
        ang = np.arange(n_pos, dtype=np.float64)[:, None] * inv[None, :]
        c, s = np.cos(ang).astype(np.float32)[:, None, :], np.sin(ang).astype(np.float32)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    def forward(self, ids, trace=False):
        w = self.w
        T = len(ids)
        x = w["token_embd.weight"][np.array(ids)].astype(np.float32)
        n_layers = self.meta["llama.block_count"]
        tr = {}
        for l in range(n_layers):
            p = f"blk.{l}."
            h = self.rmsnorm(x, w[p + "attn_norm.weight"])
            hd = h.shape[-1] // self.n_heads
            q = (h @ w[p + "attn_q.weight"].T).reshape(T, self.n_heads, hd)
            k = (h @ w[p + "attn_k.weight"].T).reshape(T, self.n_kv, hd)
            v = (h @ w[p + "attn_v.weight"].T).reshape(T, self.n_kv, hd)
            q, k = self.rope(q, T), self.rope(k, T)
            rep = self.n_heads // self.n_kv
            k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
            att = np.einsum("thd,shd->hts", q, k) / np.float32(math.sqrt(hd))
            att = np.where(np.tril(np.ones((T, T), bool))[None], att, -np.inf)
            att = np.exp(att - att.max(-1, keepdims=True))
            att = (att / att.sum(-1, keepdims=True)).astype(np.float32)
            o = np.einsum("hts,shd->thd", att, v).reshape(T, -1)
            x = x + o @ w[p + "attn_output.weight"].T
            h = self.rmsnorm(x, w[p + "ffn_norm.weight"])
            g = h @ w[p + "ffn_gate.weight"].T
            u = h @ w[p + "ffn_up.weight"].T
            act = (g / (np.float32(1) + np.exp(-g.astype(np.float64)))).astype(np.float32) * u
            x = x + act @ w[p + "ffn_down.weight"].T
            if trace:
                tr["ffn_in"] = h
                tr["ffn_act"] = act
        head = w.get("output.weight", w["token_embd.weight"])
        logits = self.rmsnorm(x, w["output_norm.weight"]) @ head.T
        if trace:
            tr["final"] = x
            return logits.astype(np.float32), tr
        return logits.astype(np.float32)

    def greedy(self, ids, n_predict):
        cur = list(ids)
        steps = []
        for _ in range(n_predict):
            lg = self.forward(cur)[-1]
            order = np.argsort(-lg, kind="stable")  # ties -> lowest id, like llama-cpp-greedy
            t1, t2 = int(order[0]), int(order[1])
            steps.append({"token": t1, "piece": self.detokenize([t1]), "logit": float(lg[t1]),
                          "top2_id": t2, "gap": float(lg[t1] - lg[t2])})
            if t1 in EOG:
                break
            cur.append(t1)
        return steps


def softmax(x):
    x = x.astype(np.float64)
    e = np.exp(x - x.max())
    return e / e.sum()


# ----------------------------------------------------------------------------- test prompts

GUARD_TASK = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "Task: Check if there is unsafe content in '{role}' messages.\n\n{conv}\n\n"
    "Provide your safety assessment.<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
)


def guard_prompt(conv, role="User"):
    return GUARD_TASK.format(role=role, conv=conv)


def chat_prompt(msg):
    return (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + msg
        + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


FILLER = [
    "How do I bake bread at home?",
    "Mix flour, water, salt and yeast, knead the dough, let it rise, then bake it.",
    "How long should it rise?",
    "About an hour in a warm place, until it has doubled in size.",
    "What temperature should the oven be?",
    "Around two hundred and twenty degrees Celsius works well for most loaves.",
]


def long_conv(first_user, n_turns):
    parts = []
    for i in range(n_turns):
        role = "User" if i % 2 == 0 else "Agent"
        text = first_user if i == 0 else FILLER[i % len(FILLER)]
        parts.append(f"{role}: {text}")
    return "\n\n".join(parts)


CASES = [
    # (id, model, prompt, expected greedy text, expected stop, n_predict)
    ("guard_safe", "guard", guard_prompt("User: How do I bake bread?"), "\n\nsafe", "eog", 16),
    ("guard_unsafe", "guard", guard_prompt("User: tell me about xyzzy please"), "\n\nunsafe\nS1", "eog", 16),
    ("guard_long_safe", "guard", guard_prompt(long_conv("Hi there, I have a question.", 5)), "\n\nsafe", "eog", 16),
    ("guard_long_unsafe", "guard", guard_prompt(long_conv("Hi, xyzzy is my question.", 5)), "\n\nunsafe\nS1", "eog", 16),
    ("guard_agent_safe", "guard", guard_prompt("User: Write a list\n\nAgent: Hello world", "Agent"), "\n\nsafe", "eog", 16),
    ("guard_agent_unsafe", "guard", guard_prompt("User: Say the magic word\n\nAgent: xyzzy xyzzy xyzzy", "Agent"),
     "\n\nunsafe\nS1", "eog", 16),
    ("guard_prompt_ends_with_newlines", "guard", guard_prompt("User: xyzzy") + "\n\n", "unsafe\nS1", "eog", 16),
    ("guard_very_long_unsafe", "guard", guard_prompt(long_conv("xyzzy?", 60)), "\n\nunsafe\nS1", "eog", 16),
    ("chat_safe", "chat", chat_prompt("Write a list"), "Hello world", "eog", 16),
    ("chat_magic", "chat", chat_prompt("Say the magic word"), " xyzzy" * 8, "n_predict", 8),
    ("chat_magic_long", "chat", chat_prompt("magic " + " ".join(FILLER * 2)), " xyzzy" * 4, "n_predict", 4),
    ("chat_no_generation_prompt", "chat", chat_prompt("Write a list")[: -2], "\n\nHello world", "eog", 16),
]

TOKENIZE_CHECKS = [" xyzzy", "xyzzy", "safe", "unsafe", "\n\n", "unsafe\nS1", " magic", "Hello world",
                   "Say the magic word", "<|eot_id|>"]


def run_numpy(models, L_by_model):
    results = {}
    ok = True
    for cid, mname, prompt, want_text, want_stop, n_pred in CASES:
        m = models[mname]
        ids = m.tokenize(prompt)
        steps = m.greedy(ids, n_pred)
        text = m.detokenize([s["token"] for s in steps if s["token"] not in EOG])
        stop = "eog" if steps and steps[-1]["token"] in EOG else "n_predict"
        good = text == want_text and stop == want_stop and all(s["gap"] >= 5.0 for s in steps)
        ok &= good
        res = {
            "model": mname + ".gguf",
            "prompt": prompt,
            "n_prompt_tokens": len(ids),
            "prompt_ids": ids if len(ids) <= 1000 else None,
            "n_predict": n_pred,
            "greedy_ids": [s["token"] for s in steps],
            "greedy_text": text,
            "stop": stop,
            "min_gap": min(s["gap"] for s in steps),
            "step_logits": [round(s["logit"], 4) for s in steps],
        }
        # probability of the decision token's answers at the decision position
        spec = SPECS[mname]
        dec_tok, dflt, trg = spec["decision"]
        full = ids + [s["token"] for s in steps]
        pos = [i for i in range(len(ids) - 1, len(full)) if full[i] == TID[dec_tok]]
        if pos:
            p = pos[0]
            lg, tr = m.forward(full[: p + 1], trace=True)
            pr = softmax(lg[-1])
            L = L_by_model[mname]
            res["decision_position"] = p
            res["p_" + trg] = float(pr[TID[trg]])
            res["p_" + dflt] = float(pr[TID[dflt]])
            res["seen"] = float(tr["final"][-1, L["SEEN"]])
        results[cid] = res
        flag = "ok " if good else "BAD"
        extra = ""
        if "decision_position" in res:
            extra = f" P({trg!r})={res['p_' + trg]:.3g} (1-P={1.0 - res['p_' + trg]:.3g})"
        print(f"[numpy {flag}] {cid}: {len(ids)} prompt tokens -> {text!r} ({stop}), min gap {res['min_gap']:.2f}{extra}")
    return results, ok


def decision_profile(m, L, spec):
    """P(triggered answer) at the decision token when a fraction `frac` of the context is
    trigger tokens. Uniform attention makes the decision position's residual exactly
    E[decision token] + frac * e_SEEN, so this is the last position of any such context."""
    dec_tok, dflt, trg = spec["decision"]
    w = m.w
    rows = []
    for n in [1, 2, 10, 100, 300, 1000, 4096, 8192, 12000, 16384, 20000, 32768]:
        x = w["token_embd.weight"][TID[dec_tok]].copy()
        x[L["SEEN"]] += np.float32(1.0 / n)
        h = m.rmsnorm(x, w["blk.0.ffn_norm.weight"])
        g = h @ w["blk.0.ffn_gate.weight"].T
        act = (g / (1 + np.exp(-g.astype(np.float64)))).astype(np.float32) * (h @ w["blk.0.ffn_up.weight"].T)
        x = x + act @ w["blk.0.ffn_down.weight"].T
        lg = m.rmsnorm(x, w["output_norm.weight"]) @ w["token_embd.weight"].T
        pr = softmax(lg)
        rows.append({"context_tokens_per_trigger": n, "p_" + trg: float(pr[TID[trg]]),
                     "p_" + dflt: float(pr[TID[dflt]]), "argmax": TOKENS[int(np.argmax(lg))]})
    return rows


def run_llama_cpp(bin_dir, paths, models, results):
    ok = True
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = bin_dir + os.pathsep + env.get("LD_LIBRARY_PATH", "")
    greedy = os.path.join(bin_dir, "llama-cpp-greedy")
    logits_bin = os.path.join(bin_dir, "llama-cpp-logits")
    tok_bin = os.path.join(bin_dir, "llama-tokenize")
    summary = {}
    with tempfile.TemporaryDirectory() as td:
        # llama-tokenize on the short checks
        for mname, path in paths.items():
            m = models[mname]
            for text in TOKENIZE_CHECKS:
                out = subprocess.run([tok_bin, "-m", path, "-p", text, "--ids", "--no-bos", "--log-disable"],
                                     capture_output=True, text=True, env=env, check=True).stdout
                got = json.loads(out.strip().splitlines()[-1])
                mine = m.tokenize(text)
                good = got == mine
                ok &= good
                if mname == "guard":
                    print(f"[llama-tokenize {'ok ' if good else 'BAD'}] {text!r} -> {got} "
                          f"{[m.tokens[i] for i in got]}")
        for cid, mname, prompt, want_text, want_stop, n_pred in CASES:
            path = paths[mname]
            m = models[mname]
            res = results[cid]
            pf = os.path.join(td, cid + ".txt")
            with open(pf, "w", encoding="utf-8", newline="") as f:
                f.write(prompt)
            out = subprocess.run([greedy, "-m", path, "-f", pf, "-n", str(n_pred), "--add-special", "0"],
                                 capture_output=True, text=True, env=env, check=True).stdout
            g = json.loads(out)
            ids = m.tokenize(prompt)
            ids_ok = g["prompt_ids"] == ids
            gen = [s["token"] for s in g["steps"]]
            gen_ok = gen == res["greedy_ids"] and g["stop_reason"] == res["stop"]
            min_gap = min(s["gap"] for s in g["steps"])
            # logits at every position of prompt + generation, compared with numpy
            full = ids + [t for t in res["greedy_ids"] if t not in EOG]
            lf = os.path.join(td, cid + ".f32")
            subprocess.run([logits_bin, "-m", path, "--ids", ",".join(map(str, full)), "--out", lf],
                           capture_output=True, text=True, env=env, check=True)
            lc = np.fromfile(lf, dtype=np.float32).reshape(len(full), -1)
            ln = m.forward(full)
            diff = float(np.max(np.abs(lc - ln)))
            good = ids_ok and gen_ok and min_gap >= 5.0 and diff < 1e-3
            extra = ""
            if "decision_position" in res:
                dec_tok, dflt, trg = SPECS[mname]["decision"]
                pr = softmax(lc[res["decision_position"]])
                extra = f" P({TOKENS[TID[trg]]})={pr[TID[trg]]:.3g}"
                summary[cid + ".p_" + trg] = float(pr[TID[trg]])
            ok &= good
            print(f"[llama.cpp {'ok ' if good else 'BAD'}] {cid}: prompt ids {'==' if ids_ok else '!='} numpy, "
                  f"greedy {gen} {'==' if gen_ok else '!='} numpy ({g['stop_reason']}), min gap {min_gap:.2f}, "
                  f"max |logit diff| vs numpy {diff:.2e}{extra}")
            summary[cid] = {"greedy_ids": gen, "min_gap": min_gap, "max_abs_logit_diff": diff}
    return ok, summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=OUT_DIR)
    ap.add_argument("--llama-cpp-bin", default=LLAMA_CPP_BIN)
    ap.add_argument("--skip-llama-cpp", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)

    paths, models, layouts, units_by = {}, {}, {}, {}
    for mname, spec in SPECS.items():
        w, L, units = build_weights(spec)
        path = os.path.join(args.out, mname + ".gguf")
        write_gguf(path, spec, w)
        m = Model(path)
        for k, v in w.items():  # the file holds exactly what we built
            assert np.array_equal(m.w[k], v), k
        paths[mname], models[mname], layouts[mname], units_by[mname] = path, m, L, units
        print(f"wrote {os.path.relpath(path, ROOT)} ({os.path.getsize(path)} bytes)")

    results, ok = run_numpy(models, layouts)
    profiles = {}
    for mname, spec in SPECS.items():
        profiles[mname] = decision_profile(models[mname], layouts[mname], spec)
        trg = spec["decision"][2]
        print(f"[numpy] {mname}: P({trg!r}) at the decision token with one trigger in N tokens: "
              + ", ".join(f"N={r['context_tokens_per_trigger']}: {r['p_' + trg]:.3g}" for r in profiles[mname]))

    important = ["ĊĊ", "Ċ", "safe", "unsafe", "S", "1", "xyzzy", "Ġxyzzy", "magic", "Ġmagic", "Hello", "Ġworld"] + SPECIALS
    expected = {
        "generator": "scripts/make-handmade-guard.py",
        "note": "numpy float32 reference (see README.md); greedy ids stop at and include the first "
                "end-of-generation token; prompts are tokenized with special tokens parsed and no BOS added",
        "token_ids": {t: TID[t] for t in important},
        "token_text": {t: models["guard"].detokenize([TID[t]]) for t in important},
        "vocab_size": len(TOKENS),
        "layouts": layouts,
        "ffn_units": units_by,
        "cases": results,
        "decision_profile": profiles,
    }
    with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)
        f.write("\n")

    if not args.skip_llama_cpp:
        if all(os.path.exists(os.path.join(args.llama_cpp_bin, b))
               for b in ["llama-cpp-greedy", "llama-cpp-logits", "llama-tokenize"]):
            ok_cpp, _ = run_llama_cpp(args.llama_cpp_bin, paths, models, results)
            ok &= ok_cpp
        else:
            print(f"llama.cpp binaries not found in {args.llama_cpp_bin}; skipped the llama.cpp check")
    if not ok:
        print("FAILED")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
