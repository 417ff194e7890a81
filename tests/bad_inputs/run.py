#!/usr/bin/env python3
"""The bad-input suite: hostile model files, tokenizers, dialogs and numbers against the
`llama2` command line, each run under an address-space limit.

Every case is built here from tests/fixtures (edited GGUF metadata and tensor tables,
broken safetensors headers and configs, zip bombs and forged zip directories, pickle
payloads, oversized or endless inputs, out-of-range numbers) into a work folder. Each
case must end with the exit code the README documents (2 bad input or usage, 3 a model
or tokenizer that cannot be loaded), one `error:` line on standard error, no panic, no
signal, within its time limit and under the peak-memory bound. Python standard library
only.

Usage: python3 tests/bad_inputs/run.py [--bin target/debug/llama2] [--work DIR]
"""
import argparse
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
MODELS = FIX / "models"
GGUF = MODELS / "tiny-gqa" / "gguf" / "tiny-gqa-f32.gguf"
META = MODELS / "tiny-gqa" / "meta"
HF = MODELS / "tiny-gqa" / "hf"
SP_TOKENIZER = FIX / "tokenizer" / "tokenizer.model"
TIKTOKEN = MODELS / "tiny-llama3" / "meta" / "tokenizer.model"
HF_TOKENIZER_JSON = MODELS / "tiny-llama3" / "hf" / "tokenizer.json"

AS_LIMIT = 4 << 30  # address space of every case, as the attack runs had
RSS_BOUND_MB = 512  # peak resident memory allowed to any case
TIMEOUT_S = 60  # a case that runs longer hangs

USAGE, LOAD = 2, 3  # the README's exit codes


# ---------------------------------------------------------------- GGUF editing

GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


class Gguf:
    """A parsed GGUF file keeping the byte offset of every count and field, so cases can
    either patch a field in place or rebuild the file with edited metadata."""

    def __init__(self, data):
        self.data = data
        self.pos = 0
        assert self.take("<4s") == b"GGUF"
        self.version = self.take("<I")
        self.n_tensors_at = self.pos
        n_tensors = self.take("<Q")
        self.n_kv_at = self.pos
        n_kv = self.take("<Q")
        self.kvs = []  # dicts: key, type, value, at (of the value), len_at, count_at
        for _ in range(n_kv):
            kv = {"key_len_at": self.pos, "key": self.string()}
            kv["type"] = self.take("<I")
            kv["at"] = self.pos
            kv["value"] = self.value(kv["type"], kv)
            self.kvs.append(kv)
        self.tensors = []
        for _ in range(n_tensors):
            t = {"name_len_at": self.pos, "name": self.string(), "ndims_at": self.pos}
            nd = self.take("<I")
            t["dims_at"] = self.pos
            t["dims"] = [self.take("<Q") for _ in range(nd)]
            t["type_at"] = self.pos
            t["type"] = self.take("<I")
            t["offset_at"] = self.pos
            t["offset"] = self.take("<Q")
            self.tensors.append(t)
        self.header_end = self.pos
        align = self.get("general.alignment", 32)
        self.data_start = -(-self.header_end // align) * align

    def take(self, fmt):
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = self.data[self.pos:self.pos + n]
        self.pos += n
        return s.decode()

    def value(self, t, kv):
        if t == STRING:
            kv["len_at"] = self.pos
            return self.string()
        if t == ARRAY:
            et = self.take("<I")
            kv["count_at"] = self.pos
            n = self.take("<Q")
            kv["elem_type"] = et
            return [self.value(et, {}) for _ in range(n)]
        return self.take(GGUF_SCALARS[t])

    def get(self, key, default=None):
        return next((kv["value"] for kv in self.kvs if kv["key"] == key), default)

    def kv(self, key):
        return next(kv for kv in self.kvs if kv["key"] == key)

    def patch(self, at, fmt, value):
        out = bytearray(self.data)
        struct.pack_into(fmt, out, at, value)
        return bytes(out)

    def rebuild(self, set_kvs=(), drop=()):
        """The file with metadata replaced: set_kvs is [(key, type, value)]."""
        kvs = [(kv["key"], kv["type"], kv["value"], kv.get("elem_type")) for kv in self.kvs
               if kv["key"] not in drop and kv["key"] not in {k for k, _, _ in set_kvs}]
        kvs += [(k, t, v, STRING if t == ARRAY else None) for k, t, v in set_kvs]

        def enc_str(s):
            b = s.encode()
            return struct.pack("<Q", len(b)) + b

        def enc(t, v, et):
            if t == STRING:
                return enc_str(v)
            if t == ARRAY:
                return struct.pack("<IQ", et, len(v)) + b"".join(enc(et, x, None) for x in v)
            return struct.pack(GGUF_SCALARS[t], v)

        out = bytearray(b"GGUF" + struct.pack("<IQQ", self.version, len(self.tensors), len(kvs)))
        for k, t, v, et in kvs:
            out += enc_str(k) + struct.pack("<I", t) + enc(t, v, et)
        for t in self.tensors:
            out += enc_str(t["name"]) + struct.pack("<I", len(t["dims"]))
            out += b"".join(struct.pack("<Q", d) for d in t["dims"])
            out += struct.pack("<IQ", t["type"], t["offset"])
        align = 32
        out += b"\0" * (-len(out) % align)
        return bytes(out) + self.data[self.data_start:]


# ---------------------------------------------------------------- safetensors and zip

def read_safetensors(path):
    data = path.read_bytes()
    (n,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        tensors[name] = [info["dtype"], info["shape"], body[a:b]]
    return tensors


def write_safetensors(tensors, header_edit=None):
    header, blobs, off = {}, [], 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if header_edit:
        header_edit(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def zip_members(path):
    with zipfile.ZipFile(path) as z:
        return [(i, z.read(i.filename)) for i in z.infolist()]


def write_zip(path, members, replace=None):
    """Rewrites a .pth zip; replace maps a member-name suffix to new bytes or to a
    callable that writes the member's content into the open zip entry."""
    replace = replace or {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info, data in members:
            new = next((v for k, v in replace.items() if info.filename.endswith(k)), data)
            if callable(new):
                zi = zipfile.ZipInfo(info.filename)
                zi.compress_type = zipfile.ZIP_DEFLATED
                with z.open(zi, "w", force_zip64=True) as f:
                    new(f)
            else:
                z.writestr(info.filename, new)


def zip_central_entries(data):
    """(offset of the entry, name) for each central directory entry of a zip."""
    eocd = data.rindex(b"PK\x05\x06")
    (n,) = struct.unpack_from("<H", data, eocd + 10)
    (at,) = struct.unpack_from("<I", data, eocd + 16)
    out = []
    for _ in range(n):
        assert data[at:at + 4] == b"PK\x01\x02"
        nlen, xlen, clen = struct.unpack_from("<HHH", data, at + 28)
        out.append((at, data[at + 46:at + 46 + nlen].decode()))
        at += 46 + nlen + xlen + clen
    return out


# ---------------------------------------------------------------- the cases

class Suite:
    def __init__(self, work):
        self.work = work
        self.cases = []  # (class, name, argv, expected code, stdin path or None, says)

    def add(self, klass, name, argv, code, stdin=None, says=None):
        self.cases.append((klass, name, [str(a) for a in argv], code, stdin, says))

    def path(self, name):
        p = self.work / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def folder_copy(self, src, name):
        dst = self.work / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        return dst


def run_model(model, *extra):
    return ["complete", "--model", model, "--max-gen-len", 2, "--temperature", 0, *extra, "Hello"]


def gguf_cases(s):
    g = Gguf(GGUF.read_bytes())
    k = "gguf-metadata"

    def case(name, data, says=None):
        p = s.path(f"gguf/{name}.gguf")
        p.write_bytes(data)
        s.add(k, name, run_model(p), LOAD, says=says)

    bc = g.kv("llama.block_count")
    assert bc["type"] == 4  # u32, as llama.cpp writes it: larger counts are stored as u64
    for v in [2**60, 2**40]:
        case(f"block_count={v}", g.rebuild([("llama.block_count", 10, v)]), says="llama.block_count")
    for v in [10**9, 0]:
        case(f"block_count={v}", g.patch(bc["at"], "<I", v), says="llama.block_count")
    for key in ["llama.embedding_length", "llama.attention.head_count",
                "llama.attention.head_count_kv", "llama.feed_forward_length"]:
        kv = g.kv(key)
        for v in [0, 0xFFFFFFFF]:
            case(f"{key}={v}", g.patch(kv["at"], GGUF_SCALARS[kv["type"]], v))
    case("head_count_kv=3", g.patch(g.kv("llama.attention.head_count_kv")["at"], "<I", 3))
    case("context_length-as-string", g.rebuild([("llama.context_length", STRING, "4096")]),
         says="llama.context_length")
    case("block_count-as-f32", g.rebuild([("llama.block_count", 6, 2.0)]), says="block_count")
    case("block_count-missing", g.rebuild(drop={"llama.block_count"}), says="block_count")
    case("eps-as-string", g.rebuild([("llama.attention.layer_norm_rms_epsilon", STRING, "x")]))
    case("architecture-gpt2", g.rebuild([("general.architecture", STRING, "gpt2")]))
    for v in [0, 3, 2**40]:
        case(f"alignment={v}", g.rebuild([("general.alignment", 4 if v < 2**32 else 10, v)]))
    case("n_tensors=2^60", g.patch(g.n_tensors_at, "<Q", 2**60))
    case("n_kv=2^60", g.patch(g.n_kv_at, "<Q", 2**60))
    case("key-length=2^63", g.patch(g.kvs[0]["key_len_at"], "<Q", 2**63))
    case("string-length=2^62", g.patch(g.kv("general.architecture")["len_at"], "<Q", 2**62))
    toks = g.kv("tokenizer.ggml.tokens")
    case("tokens-count=2^60", g.patch(toks["count_at"], "<Q", 2**60))
    case("tokens-count+1", g.patch(toks["count_at"], "<Q", len(toks["value"]) + 1))
    case("scores-type-u64", g.patch(g.kv("tokenizer.ggml.scores")["at"], "<I", 10))
    case("vocab-cut-to-100", g.rebuild([("tokenizer.ggml.tokens", ARRAY, toks["value"][:100])]))
    t0 = g.tensors[0]
    case("tensor-name-length=2^62", g.patch(t0["name_len_at"], "<Q", 2**62))
    case("tensor-ndims=100", g.patch(t0["ndims_at"], "<I", 100))
    case("tensor-dim=2^62", g.patch(t0["dims_at"], "<Q", 2**62))
    big_dims = Gguf(g.patch(t0["dims_at"], "<Q", 2**40)).patch(t0["dims_at"] + 8, "<Q", 2**40)
    case("tensor-dims-product-overflow", big_dims)
    case("tensor-type=999", g.patch(t0["type_at"], "<I", 999))
    case("tensor-offset-past-end", g.patch(t0["offset_at"], "<Q", len(g.data)))
    case("tensor-offset=2^63", g.patch(t0["offset_at"], "<Q", 2**63))
    case("tensor-offset-unaligned", g.patch(t0["offset_at"], "<Q", t0["offset"] + 1))
    case("bad-magic", b"GGUX" + g.data[4:])
    case("version=99", g.patch(4, "<I", 99))
    for frac in [0.0, 0.001, 0.01, 0.05, 0.1, 0.3, 0.5, 0.9, 0.999]:
        n = int(len(g.data) * frac)
        case(f"truncated-at-{n}", g.data[:n])
    chat = lambda src: g.rebuild([("tokenizer.chat_template", STRING, src)])
    dialog = s.path("gguf/dialog.json")
    dialog.write_text(json.dumps([[{"role": "user", "content": "Write a list"}]]))
    for name, src in [("template-does-not-compile", "{% for %}"),
                      ("template-loops-forever", "{% for i in range(100000000) %}x{% endfor %}"),
                      ("template-writes-gigabytes",
                       "{% for i in range(100) %}{{ 'x' * 100000000 }}{% endfor %}"),
                      ("template-recursion",
                       "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
                      ("template-raises", "{{ raise_exception('no') }}")]:
        p = s.path(f"gguf/{name}.gguf")
        p.write_bytes(chat(src))
        code = LOAD if name == "template-does-not-compile" else USAGE
        s.add("chat-templates", name, ["chat", "--model", p, "--dialogs", dialog,
                                       "--max-gen-len", 2], code)


def pickle_bytes(*ops):
    return b"\x80\x02" + b"".join(ops)


def meta_cases(s):
    k = "meta-pth"
    members = zip_members(META / "consolidated.00.pth")
    params = json.loads((META / "params.json").read_text())

    def folder(name, params_edit=None, params_text=None, pth=None):
        d = s.work / "meta" / name
        d.mkdir(parents=True, exist_ok=True)
        text = params_text if params_text is not None else json.dumps({**params, **(params_edit or {})})
        (d / "params.json").write_text(text)
        if pth is None:
            shutil.copy(META / "consolidated.00.pth", d / "consolidated.00.pth")
        elif isinstance(pth, bytes):
            (d / "consolidated.00.pth").write_bytes(pth)
        else:
            pth(d / "consolidated.00.pth")
        return d

    def case(name, code=LOAD, says=None, **kw):
        d = folder(name, **kw)
        s.add(k, name, run_model(d, "--tokenizer", SP_TOKENIZER), code, says=says)

    for key, v in [("n_layers", 10**9), ("n_layers", 4000), ("dim", 2**40), ("dim", 0),
                   ("n_heads", 0), ("n_heads", 3), ("n_kv_heads", 0), ("vocab_size", 2**40),
                   ("vocab_size", 5), ("multiple_of", 0), ("ffn_dim_multiplier", 1e300),
                   ("norm_eps", -1), ("rope_theta", 0), ("dim", "wide"), ("n_layers", -1),
                   ("use_scaled_rope", "yes"), ("rope_scaling_factor", -8)]:
        extra = {"use_scaled_rope": True} if key == "rope_scaling_factor" else {}
        case(f"params-{key}={v}", params_edit={key: v, **extra})
    case("params-not-json", params_text="{dim: 8")
    case("params-20MB", params_text=" " * (20 << 20) + "{}", says="limit")
    case("params-list", params_text="[1, 2, 3]")
    data = (META / "consolidated.00.pth").read_bytes()
    for frac in [0.0, 0.01, 0.3, 0.6, 0.99]:
        n = int(len(data) * frac)
        case(f"pth-truncated-at-{n}", pth=data[:n])
    case("pth-garbage", pth=os.urandom(4096))

    # A record inflating to 2 GiB of zeros (deflated to ~2 MB).
    def bomb(f):
        zero = bytes(1 << 20)
        for _ in range(2048):
            f.write(zero)
    first_tensor = next(i.filename for i, _ in members if "/data/" in i.filename)
    # Loads (PyTorch would too: the tensor reads the record's first bytes), inflating only
    # what the tensor reads.
    case("pth-zip-bomb-2GiB", pth=lambda p: write_zip(p, members, {first_tensor: bomb}), code=0)

    # Central directory entries pointing at another record's local header.
    entries = zip_central_entries(data)
    tensors = [(at, n) for at, n in entries if "/data/" in n]
    forged = bytearray(data)
    (target_off,) = struct.unpack_from("<I", data, tensors[0][0] + 42)
    struct.pack_into("<I", forged, tensors[1][0] + 42, target_off)
    case("pth-central-dir-points-at-another-record", pth=bytes(forged))
    forged = bytearray(data)
    struct.pack_into("<I", forged, tensors[0][0] + 42, len(data) - 10)
    case("pth-central-dir-offset-past-end", pth=bytes(forged))
    forged = bytearray(data)
    struct.pack_into("<I", forged, tensors[0][0] + 20, 0xFFFFFFFF)  # compressed size
    case("pth-central-dir-size-4GiB", pth=bytes(forged))

    pkl = next(n for i, n in [(i, i.filename) for i, _ in members] if n.endswith("data.pkl"))
    marker = s.work / "meta" / "PAYLOAD-RAN"
    marker.unlink(missing_ok=True)
    payloads = {
        "pickle-os-system": b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.",
        "pickle-builtins-eval": pickle_bytes(b"cbuiltins\neval\n(X\x10\x00\x00\x00__import__('os')tR."),
        "pickle-stack-global-posix": pickle_bytes(
            b"X\x05\x00\x00\x00posixX\x06\x00\x00\x00system\x93X\x04\x00\x00\x00trueq\x00\x85R."),
        "pickle-deep-nesting": b"(" * (4 << 20) + b".",
        "pickle-memo-get-2^31": pickle_bytes(b"j\xff\xff\xff\x7f."),
        "pickle-unicode-length-4GiB": pickle_bytes(b"X\xff\xff\xff\xff" + b"a" * 16),
        "pickle-billion-laughs": pickle_bytes(
            b"]q\x00" + b"".join(b"(" + b"h%c" % i * 10 + b"lq%c" % (i + 1) for i in range(40)) + b"."),
        "pickle-empty": b"",
        "pickle-not-a-dict": pickle_bytes(b"K\x01."),
    }
    for name, body in payloads.items():
        case(name, pth=lambda p, body=body: write_zip(p, members, {pkl: body}))
    s.marker = marker


def hf_cases(s):
    k = "hf-safetensors"
    cfg = json.loads((HF / "config.json").read_text())
    tensors = read_safetensors(HF / "model.safetensors")

    def case(name, config=None, st=None, config_text=None, extra=None, says=None):
        d = s.folder_copy(HF, f"hf/{name}")
        if config is not None or config_text is not None:
            (d / "config.json").write_text(config_text if config_text is not None
                                           else json.dumps({**cfg, **config}))
        if st is not None:
            (d / "model.safetensors").write_bytes(st)
        for f, text in (extra or {}).items():
            (d / f).write_text(text)
        s.add(k, name, run_model(d), LOAD, says=says)

    for key, v in [("num_hidden_layers", 10**9), ("num_hidden_layers", 4000),
                   ("hidden_size", 2**40), ("hidden_size", 0), ("num_attention_heads", 0),
                   ("num_key_value_heads", 3), ("intermediate_size", 2**40),
                   ("vocab_size", 2**63), ("vocab_size", 7), ("hidden_size", "wide"),
                   ("rms_norm_eps", "x"), ("head_dim", 3),
                   ("rope_parameters", {"rope_type": "llama3", "factor": "x"}),
                   ("rope_parameters", {"rope_type": "yarn"}),
                   ("max_position_embeddings", -1)]:
        case(f"config-{key}={json.dumps(v)}", config={key: v})
    case("config-not-llama", config={"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    case("config-not-json", config_text="{")
    case("config-20MB", config_text=" " * (20 << 20) + "{}", says="limit")
    good = write_safetensors(tensors)
    n = struct.unpack_from("<Q", good)[0]
    case("st-header-length=2^63", st=struct.pack("<Q", 2**63) + good[8:])
    case("st-header-length-past-end", st=struct.pack("<Q", len(good)) + good[8:])
    case("st-header-not-json", st=good[:8] + b"{" * n + good[8 + n:])
    case("st-empty", st=b"")
    case("st-truncated", st=good[:len(good) // 2])
    emb = "model.embed_tokens.weight"
    case("st-offsets-past-end", st=write_safetensors(
        tensors, lambda h: h[emb].__setitem__("data_offsets", [0, 2**62])))
    case("st-shape-product-overflow", st=write_safetensors(
        tensors, lambda h: h[emb].__setitem__("shape", [2**32, 2**32, 2**32])))
    case("st-dtype-i64", st=write_safetensors(
        {**tensors, emb: ["I64", tensors[emb][1][:1] + [tensors[emb][1][1] // 2], tensors[emb][2]]}))
    case("st-embedding-scalar", st=write_safetensors({**tensors, emb: ["F32", [], b"\0" * 4]}))
    case("st-embedding-1d", st=write_safetensors(
        {**tensors, emb: ["F32", [len(tensors[emb][2]) // 4], tensors[emb][2]]}))
    wq = "model.layers.0.self_attn.q_proj.weight"
    case("st-q-proj-3d", st=write_safetensors(
        {**tensors, wq: ["F32", [1, *tensors[wq][1]], tensors[wq][2]]}))
    case("st-missing-tensor", st=write_safetensors({n: t for n, t in tensors.items() if n != wq}))
    case("index-escapes-folder", extra={"model.safetensors.index.json": json.dumps(
        {"weight_map": {emb: "../../../../etc/passwd"}})})
    case("index-not-json", extra={"model.safetensors.index.json": "["})


def tokenizer_cases(s):
    k = "tokenizers"

    def case(name, path, code=LOAD, says=None):
        s.add(k, name, ["tokenize", "--tokenizer", path, "Hello world"], code, says=says)
        s.add(k, name + " (with a model)", run_model(META, "--tokenizer", path), code, says=says)

    case("dev-zero", "/dev/zero", says="64 MiB")
    big = s.path("tok/sparse-100MB.model")
    with open(big, "wb") as f:
        f.truncate(100 << 20)
    case("sparse-100MB", big, says="64 MiB")
    case("missing", s.work / "tok" / "nope.model")
    case("a-directory", s.work)
    for name, data in [("garbage", os.urandom(10000)), ("empty", b""),
                       ("sp-truncated", SP_TOKENIZER.read_bytes()[:250000]),
                       ("sp-varint-overflow", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"),
                       ("sp-length-2^62", b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x40"),
                       ("tiktoken-bad-base64", b"!!!! 0\n"),
                       ("tiktoken-rank-2^40", TIKTOKEN.read_bytes() + b"YWJj 1099511627776\n"),
                       ("tiktoken-duplicate-rank", TIKTOKEN.read_bytes() + b"YWJjZA== 5\n"),
                       ("tiktoken-truncated", TIKTOKEN.read_bytes()[:5000]),
                       ("json-garbage", b"{" * 100000),
                       ("json-wrong-types", json.dumps({"model": {"type": "BPE", "vocab": [1, 2]}}).encode()),
                       ("json-cut", HF_TOKENIZER_JSON.read_bytes()[:60000])]:
        p = s.path(f"tok/{name}")
        p.write_bytes(data)
        case(name, p)


def dialog_cases(s):
    k = "dialogs"
    chat = ["chat", "--model", GGUF, "--max-gen-len", 2, "--temperature", 0]

    def case(name, data=None, path=None, code=USAGE, says=None):
        if path is None:
            path = s.path(f"dialogs/{name}.json")
            path.write_bytes(data if isinstance(data, bytes) else data.encode())
        s.add(k, name, [*chat, "--dialogs", path], code, says=says)

    case("dev-zero", path="/dev/zero", says="64 MiB")
    case("missing", path=s.work / "dialogs" / "nope.json")
    case("70MB", "[" + " " * (70 << 20) + "]", says="64 MiB")
    case("not-json", "[[{")
    case("deep-nesting", "[" * 100000 + "]" * 100000)
    case("wrong-role", json.dumps([[{"role": "wizard", "content": "hi"}]]))
    case("roles-out-of-order", json.dumps([[{"role": "assistant", "content": "hi"}]]))
    case("content-not-string", json.dumps([[{"role": "user", "content": 5}]]))
    case("not-utf8", b'[[{"role": "user", "content": "\xff\xfe"}]]')
    case("10MB-message", json.dumps([[{"role": "user", "content": "word " * (2 << 20)}]]),
         says="max_seq_len")
    case("4097-dialogs", json.dumps([[{"role": "user", "content": "hi"}]] * 4097))
    line = s.path("dialogs/stdin-2MB-line.txt")
    line.write_bytes(b"a" * (2 << 20) + b"\n")
    s.add(k, "stdin-line-2MB", ["chat", "--model", GGUF, "--max-gen-len", 2], USAGE,
          stdin=line, says="1 MiB")


def number_cases(s):
    k = "numbers"
    defaults = {"--max-gen-len": "2", "--temperature": "0"}
    for flag, values in [
        ("--max-seq-len", ["18446744073709551615", "4611686018427387904", "1000000000",
                           "1048577", "0", "-1"]),
        ("--max-batch-size", ["18446744073709551615", "1000000", "0"]),
        ("--max-gen-len", ["18446744073709551616", "-5"]),
        ("--threads", ["0", "1000000", "18446744073709551615"]),
        ("--temperature", ["-1", "nan", "inf", "-inf", "1e39"]),
        ("--top-p", ["0", "1.5", "nan", "-0.1", "inf"]),
        ("--seed", ["18446744073709551616", "-1"]),
    ]:
        for v in values:
            flags = {**defaults, flag: v}
            argv = ["complete", "--model", GGUF, *(f"{f}={x}" for f, x in flags.items()), "Hello"]
            s.add(k, f"complete {flag} {v}", argv, USAGE)
    # Logits / T overflows: the limit of the distribution, greedy, is sampled.
    s.add(k, "complete --temperature 1e-45", ["complete", "--model", GGUF, "--temperature=1e-45",
                                             "--max-gen-len=2", "Hello"], 0)
    for flag, v in [("-p", "1000000000"), ("-p", "18446744073709551615"), ("-n", "1000000000"),
                    ("-t", "1000000"), ("-t", "0"), ("-r", "1000000000000"), ("-p", "-1")]:
        s.add(k, f"bench {flag} {v}", ["bench", "-m", GGUF, flag, v, "-r", "1"]
              if flag != "-r" else ["bench", "-m", GGUF, "-p", "1", "-n", "1", "-r", v], USAGE)
    for flag, v in [("-npp", "1000000000"), ("-ntg", "1000000000"), ("-npl", "100000")]:
        s.add(k, f"batched-bench {flag} {v}", ["batched-bench", "-m", GGUF, flag, v], USAGE)
    s.add(k, "serve --port 70000", ["serve", "--model", GGUF, "--port", "70000"], USAGE)
    s.add(k, "tokenize --decode huge id", ["tokenize", "--tokenizer", SP_TOKENIZER, "--decode",
                                            "[4294967296]"], USAGE)
    s.add(k, "tokenize --decode id past vocab", ["tokenize", "--tokenizer", SP_TOKENIZER,
                                                  "--decode", "[32000]"], USAGE)


# ---------------------------------------------------------------- running

def limit_child():
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.setsid()


def run_case(binary, argv, stdin):
    env = {**os.environ, "RUST_BACKTRACE": "0"}
    start = time.monotonic()
    with open(stdin or os.devnull, "rb") as fin:
        p = subprocess.Popen([binary, *argv], stdin=fin, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, preexec_fn=limit_child, env=env)
        err = []
        reader = threading.Thread(target=lambda: err.append(p.stderr.read()))
        reader.start()
        timer = threading.Timer(TIMEOUT_S, lambda: os.killpg(p.pid, signal.SIGKILL))
        timer.start()
        _, status, usage = os.wait4(p.pid, 0)
        timer.cancel()
        reader.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, err[0].decode(errors="replace"), usage.ru_maxrss / 1024, time.monotonic() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=str(ROOT / "target" / "debug" / "llama2"))
    ap.add_argument("--work", default=str(ROOT / "target" / "bad-inputs"))
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--verbose", action="store_true", help="print every case's error line")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    s = Suite(work)
    s.marker = None
    for build in [number_cases, dialog_cases, tokenizer_cases, gguf_cases, meta_cases, hf_cases]:
        build(s)
    failures, per_class = [], {}
    for klass, name, argv, code, stdin, says in s.cases:
        if args.only not in name:
            continue
        rc, err, rss, secs = run_case(args.bin, argv, stdin)
        lines = [line for line in err.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("error:")]
        problems = []
        if rc < 0 or rc >= 128:
            problems.append(f"killed by signal {-rc if rc < 0 else rc - 128}")
        elif rc != code:
            problems.append(f"exit {rc}, want {code}")
        if "panicked" in err or "memory allocation of" in err:
            problems.append("panicked or aborted")
        if code == 0:
            if errors:
                problems.append("an error: line on success")
        elif len(errors) != 1 or not lines or lines[-1] != errors[0]:
            problems.append(f"{len(errors)} error: lines, last line {lines[-1:]!r}")
        if says and errors and says not in errors[0]:
            problems.append(f"error does not say {says!r}")
        if rss > RSS_BOUND_MB:
            problems.append(f"peak RSS {rss:.0f} MB over {RSS_BOUND_MB} MB")
        if secs >= TIMEOUT_S:
            problems.append(f"ran past {TIMEOUT_S} s")
        st = per_class.setdefault(klass, {"cases": 0, "failed": 0, "rss": 0.0, "secs": 0.0, "codes": {}})
        st["cases"] += 1
        st["failed"] += bool(problems)
        st["rss"] = max(st["rss"], rss)
        st["secs"] = max(st["secs"], secs)
        st["codes"][rc] = st["codes"].get(rc, 0) + 1
        if problems:
            failures.append(f"{klass} / {name}: {'; '.join(problems)}\n    {err.strip()[:600]}")
        elif args.verbose:
            said = errors[0][:200] if errors else "(no error)"
            print(f"ok {klass} / {name} ({rc}, {rss:.0f} MB, {secs:.2f} s): {said}")
    if s.marker is not None and s.marker.exists():
        failures.append("a pickle payload ran: " + str(s.marker))
    print(f"bad-input suite: {args.bin}, address space {AS_LIMIT >> 30} GiB, "
          f"RSS bound {RSS_BOUND_MB} MB, {TIMEOUT_S} s per case")
    print(f"{'class':<16} {'cases':>5} {'failed':>6} {'max RSS MB':>10} {'max s':>6}  exit codes")
    for klass, st in per_class.items():
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(st["codes"].items()))
        print(f"{klass:<16} {st['cases']:>5} {st['failed']:>6} {st['rss']:>10.0f} "
              f"{st['secs']:>6.2f}  {codes}")
    total = sum(st["cases"] for st in per_class.values())
    print(f"{'all':<16} {total:>5} {len(failures):>6} "
          f"{max((st['rss'] for st in per_class.values()), default=0):>10.0f}")
    for f in failures:
        print("FAIL", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
