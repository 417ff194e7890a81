#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora under fuzz/corpus/<target>/ from tests/fixtures
(plus a few small files built here), so every parser starts from valid inputs.

Usage: python3 fuzz/make-seeds.py   (from the repository root or anywhere)
"""
import json
import struct
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
CORPUS = ROOT / "fuzz" / "corpus"


def put(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors):
    """A safetensors file from {name: (dtype, shape, bytes)}."""
    header, blobs, off = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def f32(n, v=0.25):
    return struct.pack(f"<{n}f", *([v] * n))


def bf16(n):
    return b"\x80\x3e" * n


# The safetensors target's config: dim 8, 2 heads (1 KV head), FFN 16, vocab 16, 1 layer.
shapes = {"model.embed_tokens.weight": [16, 8], "model.norm.weight": [8], "lm_head.weight": [16, 8]}
for n, s in [("self_attn.q_proj", [8, 8]), ("self_attn.k_proj", [4, 8]), ("self_attn.v_proj", [4, 8]),
             ("self_attn.o_proj", [8, 8]), ("mlp.gate_proj", [16, 8]), ("mlp.down_proj", [8, 16]),
             ("mlp.up_proj", [16, 8]), ("input_layernorm", [8]), ("post_attention_layernorm", [8])]:
    shapes[f"model.layers.0.{n}.weight"] = s
count = lambda s: s[0] * (s[1] if len(s) > 1 else 1)
put("safetensors", "f32", safetensors({k: ("F32", s, f32(count(s))) for k, s in shapes.items()}))
put("safetensors", "bf16", safetensors({k: ("BF16", s, bf16(count(s))) for k, s in shapes.items()}))
put("safetensors", "one-tensor", safetensors({"model.norm.weight": ("F16", [8], b"\0<" * 8)}))

for p in sorted(FIX.rglob("params.json")) + sorted(FIX.rglob("config.json")):
    put("model_config", f"{p.parent.parent.name}-{p.parent.name}-{p.name}", p.read_bytes())
put("model_config", "scaled", json.dumps({"dim": 64, "n_heads": 2, "n_layers": 1, "use_scaled_rope": True,
                                          "ffn_dim_multiplier": 1.3, "multiple_of": 32}))

def cut_tokenizer_json(path, keep_vocab, keep_added):
    """The tokenizer.json at `path` with its vocabulary cut to the first `keep_vocab`
    ids (merges among them only) and `keep_added` added tokens: a few kilobytes, so the
    fuzzer runs thousands of times a second."""
    j = json.loads(path.read_text())
    m = j["model"]
    m["vocab"] = {t: i for t, i in m["vocab"].items() if i < keep_vocab}
    merges = [x if isinstance(x, str) else " ".join(x) for x in m["merges"]]
    m["merges"] = [x for x in merges if x.replace(" ", "", 1) in m["vocab"]
                   and all(p in m["vocab"] for p in x.split(" ", 1))]
    added = j["added_tokens"][:keep_added]
    for k, t in enumerate(t for t in added if t["id"] >= keep_vocab):
        t["id"] = keep_vocab + k  # renumbered after the cut vocabulary
        m["vocab"][t["content"]] = t["id"]
    j["added_tokens"] = added
    return json.dumps(j, ensure_ascii=False)


put("tokenizer_json", "llama2-sentencepiece-style",
    cut_tokenizer_json(FIX / "tokenizer" / "hf" / "tokenizer.json", 400, 3))
put("tokenizer_json", "llama3-byte-level",
    cut_tokenizer_json(FIX / "models" / "tiny-llama3" / "hf" / "tokenizer.json", 300, 8)
    + "\0" + json.dumps({"add_bos_token": True, "bos_token": "<|begin_of_text|>"}))

put("tokenizer_model", "sentencepiece", (FIX / "tokenizer" / "tokenizer.model").read_bytes())
put("tokenizer_model", "tiktoken", (FIX / "models" / "tiny-llama3" / "meta" / "tokenizer.model").read_bytes())

for p in sorted((FIX / "guard" / "templates").glob("*.jinja")):
    put("chat_template", p.stem, p.read_bytes())
cfg = json.loads((FIX / "models" / "tiny-llama3" / "hf" / "tokenizer_config.json").read_text())
put("chat_template", "llama3", cfg["chat_template"])
put("chat_template", "chatml", "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}")

cases = json.loads((FIX / "tokenizer" / "chat_format_cases.json").read_text())
put("dialog_json", "reference-cases", json.dumps([c["dialog"] for c in cases]))
for i, c in enumerate(cases[:8]):
    put("dialog_json", f"case-{i}", json.dumps([c["dialog"]]))

for p in sorted(FIX.rglob("*.gguf")):
    if p.stat().st_size < (2 << 20):
        put("gguf", p.name, p.read_bytes())

for p in sorted(FIX.rglob("*.pth")):
    with zipfile.ZipFile(p) as z:
        for n in z.namelist():
            if n.endswith("data.pkl"):
                put("pickle", f"{p.parent.parent.name}-{p.parent.name}-{p.stem}.pkl", z.read(n))

def torch_save_zip(tensors, compress=False):
    """A torch.save-shaped zip (archive/data.pkl + archive/data/N) of small f32 tensors,
    pickled as torch does (OrderedDict, _rebuild_tensor_v2, persistent storage ids)
    with stand-in `torch` modules, since torch itself is not needed."""
    import collections
    import io
    import pickle
    import sys
    import types

    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise NotImplementedError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
    torch.FloatStorage, torch._utils = FloatStorage, utils
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})

    class Storage:
        def __init__(self, key, numel):
            self.key, self.numel = key, numel

    class Rebuild:
        def __init__(self, key, shape):
            self.storage = Storage(key, count(shape))
            self.shape = shape

        def __reduce__(self):
            stride = tuple(count(self.shape[i + 1:]) if i + 1 < len(self.shape) else 1
                           for i in range(len(self.shape)))
            return (_rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), stride, False,
                                         collections.OrderedDict()))

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", FloatStorage, obj.key, "cpu", obj.numel)
            return None

    try:
        state = collections.OrderedDict(
            (name, Rebuild(str(i), shape)) for i, (name, shape) in enumerate(tensors))
        buf = io.BytesIO()
        P(buf, protocol=2).dump(state)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", method) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")
        for i, (_, shape) in enumerate(tensors):
            z.writestr(f"archive/data/{i}", f32(count(shape)))
        z.writestr("archive/version", "3\n")
    return out.getvalue()


count = lambda s: 1 if not s else s[0] * count(s[1:])  # noqa: E731
small_state = [("tok_embeddings.weight", [16, 8]), ("norm.weight", [8]), ("output.weight", [16, 8]),
               ("layers.0.attention.wq.weight", [8, 8])]
put("pth", "stored", torch_save_zip(small_state))
put("pth", "deflated", torch_save_zip(small_state, compress=True))

print(f"seeds written under {CORPUS}: " + ", ".join(
    f"{d.name} {len(list(d.iterdir()))}" for d in sorted(CORPUS.iterdir())))
