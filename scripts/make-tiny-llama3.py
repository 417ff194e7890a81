#!/usr/bin/env python3
"""Make tests/fixtures/models/tiny-llama3: a tiny random Llama-3-style model in Meta, HF
and GGUF layouts, with transformers float32 reference logits.

Usage (from the repository root, Python with torch, transformers, tokenizers, tiktoken,
safetensors, numpy; gguf-py and convert_hf_to_gguf.py come from the vendored llama.cpp):

    target/ref-venv/bin/python scripts/make-tiny-llama3.py \
        [--llama3-tokenizer tests/fixtures/tokenizer/llama3/tokenizer.model] \
        [--llama-cpp target/llama.cpp] [--skip-llama-cpp]

--llama3-tokenizer is Meta's Llama 3 tiktoken file (md5 08292403f8b173e7524d7fba7bbbd2d3),
or the llama-models wheel holding it (`pip download --no-deps llama-models==0.3.0`,
llama_models/llama3/tokenizer.model). Everything is deterministic (fixed seed); a rerun
rewrites the same files (the .pth zip and the GGUF byte for byte).

Steps:
 1. vocabulary: the first 1000 ranks of the Llama 3 tiktoken file -> meta/tokenizer.model;
    special tokens at 1000..1255 as llama_models 0.3.0's Tokenizer assigns them.
 2. random weights (numpy PCG64, seed SEED), rounded to bfloat16; tied embeddings.
 3. meta/: params.json + consolidated.00.pth (bf16, Meta names, no output.weight).
 4. hf/: config.json (Llama 3.2 style), generation_config.json, model.safetensors (F32,
    q/k rows permuted as transformers' convert_llama_weights_to_hf), tokenizer.json,
    tokenizer_config.json (Llama 3 chat template), special_tokens_map.json.
 5. gguf/tiny-llama3-f32.gguf by llama.cpp's convert_hf_to_gguf.py (its pre-tokenizer hash
    check does not know the truncated vocabulary; it is patched to answer "llama-bpe").
 6. reference: transformers float32 logits at every position of 4 prompts
    (logits_<case>.npy), a float32 reimplementation of llama_models' Transformer on the
    Meta files (must agree to 1e-5), llama.cpp's logits on the GGUF (scripts/llama_cpp_logits.cpp)
    and llama.cpp's tokenization of the test texts; all written to golden.json.
"""
import argparse
import base64
import collections
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "models", "tiny-llama3")
LLAMA3_TOKENIZER_MD5 = "08292403f8b173e7524d7fba7bbbd2d3"
SEED = 20240723

N_BASE = 1000  # tiktoken ranks kept
CFG = {
    "dim": 128,
    "n_layers": 2,
    "n_heads": 4,
    "n_kv_heads": 2,
    "head_dim": 32,
    "ffn_hidden_dim": 256,
    "multiple_of": 256,
    "ffn_dim_multiplier": 0.75,  # 4*128 -> int(2*512/3) = 341 -> int(0.75*341) = 255 -> 256
    "norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_type": "llama3",
    },
    "vocab_size": N_BASE + 256,
    "tie_word_embeddings": True,
}
MAX_POS = 512  # factor * original_max_position_embeddings

# llama_models 0.3.0, llama3/tokenizer.py
PAT_STR = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"  # noqa: E501
SPECIAL_NAMES = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
SPECIAL_NAMES += [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(SPECIAL_NAMES))]

# Meta-Llama-3-8B-Instruct's chat template (matches llama_models' ChatFormat for plain
# text messages whose content has no leading/trailing whitespace).
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

PROMPTS = [
    ("text_0", "The capital of France is"),
    ("text_1", "I believe the meaning of life is"),
    ("text_2", 'def main():\n    print("hello")'),
]
CHAT_SHORT = [{"role": "user", "content": "Hi!"}]
CHAT_DIALOG = [
    {"role": "system", "content": "Always answer with Haiku"},
    {"role": "user", "content": "I am going to Paris, what should I see?"},
    {"role": "assistant", "content": "Eiffel Tower high"},
    {"role": "user", "content": "What is 2+2?"},
]
TOKENIZE_TEXTS = [
    "", "Hello world", " Hello world", "Hello  world\n\n", "The capital of France is",
    "I believe the meaning of life is", 'def main():\n    print("hello")',
    "Simply put, the theory of relativity states that ", "12345 3.14159 1,000,000",
    "I've been 'told he's there, 'RE you sure? We'Ve a'lL", "   leading and trailing   ",
    "tabs\tand\r\nnewlines\n\n\n", "caf\u00e9 na\u00efve \u00fcber", "\u6211\u60f3\u5728apple\u5de5\u4f5c",
    "\U0001f999 llamas \U0001f680", "<|begin_of_text|>not special<|eot_id|>",
]
GREEDY_STEPS = 8
META_TOL = float(os.environ.get("META_TOL", "1e-5"))


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_llama3_tokenizer(path):
    if path.endswith(".whl"):
        with zipfile.ZipFile(path) as z:
            data = z.read("llama_models/llama3/tokenizer.model")
    else:
        with open(path, "rb") as f:
            data = f.read()
    md5 = hashlib.md5(data).hexdigest()
    if md5 != LLAMA3_TOKENIZER_MD5:
        sys.exit(f"{path}: md5 {md5}, expected Llama 3 tokenizer.model {LLAMA3_TOKENIZER_MD5}")
    return data


def truncated_tiktoken(data):
    lines = data.decode("utf-8").splitlines()
    ranks = {}
    for i, line in enumerate(lines[:N_BASE]):
        tok, rank = line.split()
        assert int(rank) == i, (i, line)
        ranks[base64.b64decode(tok)] = i
    assert len(ranks) == N_BASE
    assert all(bytes([b]) in ranks for b in range(256)), "every single byte must be a token"
    # every multi-byte token is the merge of two lower-ranked tokens (BPE-consistent truncation)
    for b, r in ranks.items():
        if len(b) > 1:
            assert any(b[:i] in ranks and b[i:] in ranks and ranks[b[:i]] < r and ranks[b[i:]] < r
                       for i in range(1, len(b))), b
    text = "".join(line + "\n" for line in lines[:N_BASE])
    return text.encode("utf-8"), ranks


def ffn_hidden(dim, multiple_of, ffn_dim_multiplier):
    # llama_models llama3/model.py FeedForward(hidden_dim=4*dim, ...)
    h = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        h = int(ffn_dim_multiplier * h)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def rope_bands():
    """Base and llama3-scaled frequencies, and the band of each index (Python float64)."""
    rs = CFG["rope_scaling"]
    hd = CFG["head_dim"]
    old = rs["original_max_position_embeddings"]
    low_wl = old / rs["low_freq_factor"]
    high_wl = old / rs["high_freq_factor"]
    out = []
    for i in range(hd // 2):
        f = 1.0 / (CFG["rope_theta"] ** (2 * i / hd))
        wl = 2 * math.pi / f
        if wl < high_wl:
            band, nf = "unscaled", f
        elif wl > low_wl:
            band, nf = "scaled", f / rs["factor"]
        else:
            s = (old / wl - rs["low_freq_factor"]) / (rs["high_freq_factor"] - rs["low_freq_factor"])
            band, nf = "smoothed", (1 - s) * f / rs["factor"] + s * f
        out.append({"i": i, "freq": f, "wavelen": wl, "band": band, "scaled_freq": nf, "divisor": f / nf})
    return out


def make_weights(torch):
    rng = np.random.default_rng(SEED)
    d, hd, nh, nkv, hid, V = (CFG["dim"], CFG["head_dim"], CFG["n_heads"], CFG["n_kv_heads"],
                              CFG["ffn_hidden_dim"], CFG["vocab_size"])

    def normal(shape, std):
        x = rng.standard_normal(shape, dtype=np.float64) * std
        return torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16).contiguous()

    def norm_w(n):
        x = 1.0 + 0.2 * rng.standard_normal(n, dtype=np.float64)
        return torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16).contiguous()

    sd = collections.OrderedDict()
    sd["tok_embeddings.weight"] = normal((V, d), 0.2)
    for i in range(CFG["n_layers"]):
        p = f"layers.{i}."
        sd[p + "attention.wq.weight"] = normal((nh * hd, d), 1.5 / math.sqrt(d))
        sd[p + "attention.wk.weight"] = normal((nkv * hd, d), 1.5 / math.sqrt(d))
        sd[p + "attention.wv.weight"] = normal((nkv * hd, d), 1.0 / math.sqrt(d))
        sd[p + "attention.wo.weight"] = normal((d, nh * hd), 0.5 / math.sqrt(nh * hd))
        sd[p + "feed_forward.w1.weight"] = normal((hid, d), 1.0 / math.sqrt(d))
        sd[p + "feed_forward.w2.weight"] = normal((d, hid), 0.5 / math.sqrt(hid))
        sd[p + "feed_forward.w3.weight"] = normal((hid, d), 1.0 / math.sqrt(d))
        sd[p + "attention_norm.weight"] = norm_w(d)
        sd[p + "ffn_norm.weight"] = norm_w(d)
    sd["norm.weight"] = norm_w(d)
    return sd


def permute_to_hf(w, n):
    # transformers convert_llama_weights_to_hf.py: permute(w, n_heads, dim1, dim2)
    dim1, dim2 = w.shape
    return w.view(n, dim1 // n // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def hf_state_dict(sd):
    nh, nkv = CFG["n_heads"], CFG["n_kv_heads"]
    out = collections.OrderedDict()
    out["model.embed_tokens.weight"] = sd["tok_embeddings.weight"]
    for i in range(CFG["n_layers"]):
        m, p = f"model.layers.{i}.", f"layers.{i}."
        out[m + "self_attn.q_proj.weight"] = permute_to_hf(sd[p + "attention.wq.weight"], nh)
        out[m + "self_attn.k_proj.weight"] = permute_to_hf(sd[p + "attention.wk.weight"], nkv)
        out[m + "self_attn.v_proj.weight"] = sd[p + "attention.wv.weight"]
        out[m + "self_attn.o_proj.weight"] = sd[p + "attention.wo.weight"]
        out[m + "mlp.gate_proj.weight"] = sd[p + "feed_forward.w1.weight"]
        out[m + "mlp.down_proj.weight"] = sd[p + "feed_forward.w2.weight"]
        out[m + "mlp.up_proj.weight"] = sd[p + "feed_forward.w3.weight"]
        out[m + "input_layernorm.weight"] = sd[p + "attention_norm.weight"]
        out[m + "post_attention_layernorm.weight"] = sd[p + "ffn_norm.weight"]
    out["model.norm.weight"] = sd["norm.weight"]
    return out


def meta_reference_logits(torch, sd, params, ids, dtype=None):
    """float32 reimplementation of llama_models 0.3.0 llama3/model.py Transformer.forward
    (complex rotary on adjacent pairs, repeat_kv, causal mask, SiLU FFN), with apply_scaling's
    constants taken from params.json's rope_* keys (llama_models hardcodes 8, 1, 4, 8192)
    and the output projection tied to tok_embeddings."""
    F = torch.nn.functional
    dtype = dtype or torch.float32
    W = {k: v.to(dtype) for k, v in sd.items()}
    dim, nh = params["dim"], params["n_heads"]
    nkv = params.get("n_kv_heads", nh)
    hd = dim // nh
    eps = params["norm_eps"]

    def rmsnorm(x, w):
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)) * w

    # rotary tables in float32 as llama_models (and transformers, also for a float64 model)
    freqs = 1.0 / (params["rope_theta"] ** (torch.arange(0, hd, 2)[: (hd // 2)].float() / hd))
    if params.get("use_scaled_rope"):
        scale_factor = params.get("rope_scaling_factor", 8)
        low_freq_factor = params.get("rope_low_freq_factor", 1)
        high_freq_factor = params.get("rope_high_freq_factor", 4)
        old_context_len = params.get("rope_original_max_position_embeddings", 8192)
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * torch.pi / freqs
        new_freqs = torch.where(wavelen > low_freq_wavelen, freqs / scale_factor, freqs)
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        freqs = torch.where((wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen),
                            (1 - smooth) * new_freqs / scale_factor + smooth * new_freqs, new_freqs)
    T = len(ids)
    t = torch.arange(T, dtype=torch.float32)
    angles = torch.outer(t, freqs)
    if dtype == torch.float32:
        freqs_cis = torch.polar(torch.ones_like(angles), angles)  # complex64, as llama_models
    else:  # float64 check: the same float32 cos/sin transformers uses, widened
        freqs_cis = torch.complex(angles.cos().to(dtype), angles.sin().to(dtype))

    def rope(x):  # x [T, n, hd]
        xc = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
        return torch.view_as_real(xc * freqs_cis[:, None, :]).flatten(2)

    h = W["tok_embeddings.weight"][torch.tensor(ids)]
    mask = torch.triu(torch.full((T, T), float("-inf"), dtype=dtype), diagonal=1)
    for i in range(params["n_layers"]):
        p = f"layers.{i}."
        x = rmsnorm(h, W[p + "attention_norm.weight"])
        q = (x @ W[p + "attention.wq.weight"].T).view(T, nh, hd)
        k = (x @ W[p + "attention.wk.weight"].T).view(T, nkv, hd)
        v = (x @ W[p + "attention.wv.weight"].T).view(T, nkv, hd)
        q, k = rope(q), rope(k)
        rep = nh // nkv
        k = k[:, :, None, :].expand(T, nkv, rep, hd).reshape(T, nh, hd)
        v = v[:, :, None, :].expand(T, nkv, rep, hd).reshape(T, nh, hd)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        scores = q @ k.transpose(1, 2) / math.sqrt(hd) + mask
        scores = F.softmax(scores, dim=-1)
        o = (scores @ v).transpose(0, 1).reshape(T, nh * hd)
        h = h + o @ W[p + "attention.wo.weight"].T
        x = rmsnorm(h, W[p + "ffn_norm.weight"])
        ff = (F.silu(x @ W[p + "feed_forward.w1.weight"].T) * (x @ W[p + "feed_forward.w3.weight"].T))
        h = h + ff @ W[p + "feed_forward.w2.weight"].T
    h = rmsnorm(h, W["norm.weight"])
    return h @ W["tok_embeddings.weight"].T


def chat_ids(enc, special, dialog, add_generation_prompt=True):
    """llama_models 0.3.0 ChatFormat.encode_dialog_prompt for plain text messages."""
    def header(role):
        return ([special["<|start_header_id|>"]] + enc.encode(role, disallowed_special=())
                + [special["<|end_header_id|>"]] + enc.encode("\n\n", disallowed_special=()))
    ids = [special["<|begin_of_text|>"]]
    for m in dialog:
        ids += header(m["role"]) + enc.encode(m["content"], disallowed_special=()) + [special["<|eot_id|>"]]
    if add_generation_prompt:
        ids += header("assistant")
    return ids


def r6(x):
    return float(round(float(x), 6))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama3-tokenizer",
                    default=os.path.join(ROOT, "tests/fixtures/tokenizer/llama3/tokenizer.model"))
    ap.add_argument("--llama-cpp", default=os.path.join(ROOT, "target/llama.cpp"),
                    help="llama.cpp tree of scripts/build-llama-cpp.sh (src/ and build-clang/)")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    args = ap.parse_args()

    import torch
    import tiktoken
    import safetensors.torch
    from tokenizers import processors
    import transformers
    from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    torch.manual_seed(0)
    torch.set_num_threads(1)
    assert ffn_hidden(CFG["dim"], CFG["multiple_of"], CFG["ffn_dim_multiplier"]) == CFG["ffn_hidden_dim"]

    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    meta_dir, hf_dir, gguf_dir = (os.path.join(OUT, x) for x in ("meta", "hf", "gguf"))
    for d in (meta_dir, hf_dir, gguf_dir):
        os.makedirs(d)

    # ---- 1. vocabulary ----------------------------------------------------------------
    full = read_llama3_tokenizer(args.llama3_tokenizer)
    trunc_bytes, ranks = truncated_tiktoken(full)
    tok_model = os.path.join(meta_dir, "tokenizer.model")
    with open(tok_model, "wb") as f:
        f.write(trunc_bytes)
    special = {name: N_BASE + i for i, name in enumerate(SPECIAL_NAMES)}
    enc = tiktoken.Encoding(name="tiny-llama3", pat_str=PAT_STR, mergeable_ranks=ranks,
                            special_tokens=special)
    BOS, EOS, EOM, EOT = (special[s] for s in ("<|begin_of_text|>", "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"))
    assert (BOS, EOT) == (1000, 1009) and enc.n_vocab == CFG["vocab_size"]

    # ---- 2. weights ---------------------------------------------------------------------
    sd = make_weights(torch)

    # ---- 3. meta/ -----------------------------------------------------------------------
    rs = CFG["rope_scaling"]
    params = {
        "dim": CFG["dim"],
        "n_layers": CFG["n_layers"],
        "n_heads": CFG["n_heads"],
        "n_kv_heads": CFG["n_kv_heads"],
        "vocab_size": CFG["vocab_size"],
        "ffn_dim_multiplier": CFG["ffn_dim_multiplier"],
        "multiple_of": CFG["multiple_of"],
        "norm_eps": CFG["norm_eps"],
        "rope_theta": CFG["rope_theta"],
        "use_scaled_rope": True,
        # Not read by llama_models 0.3.0 (its llama3 apply_scaling hardcodes 8, 1, 4, 8192);
        # rope_scaling_factor / rope_high_freq_factor are llama_models' llama4 ModelArgs
        # names, the other two follow them. An engine should default to 8, 1, 4, 8192.
        "rope_scaling_factor": rs["factor"],
        "rope_low_freq_factor": rs["low_freq_factor"],
        "rope_high_freq_factor": rs["high_freq_factor"],
        "rope_original_max_position_embeddings": rs["original_max_position_embeddings"],
    }
    with open(os.path.join(meta_dir, "params.json"), "w") as f:
        json.dump(params, f)
    pth = os.path.join(meta_dir, "consolidated.00.pth")
    torch.save({k: v.clone() for k, v in sd.items()}, pth)
    meta_loaded = torch.load(pth, map_location="cpu", weights_only=True)
    assert list(meta_loaded) == list(sd) and all(torch.equal(meta_loaded[k], sd[k]) for k in sd)

    # ---- 4. hf/ -------------------------------------------------------------------------
    hf_sd = {k: v.float().contiguous() for k, v in hf_state_dict(sd).items()}
    safetensors.torch.save_file(hf_sd, os.path.join(hf_dir, "model.safetensors"), metadata={"format": "pt"})
    os.chmod(os.path.join(hf_dir, "model.safetensors"), 0o644)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": BOS,
        "eos_token_id": [EOS, EOM, EOT],
        "head_dim": CFG["head_dim"],
        "hidden_act": "silu",
        "hidden_size": CFG["dim"],
        "initializer_range": 0.02,
        "intermediate_size": CFG["ffn_hidden_dim"],
        "max_position_embeddings": MAX_POS,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": CFG["n_heads"],
        "num_hidden_layers": CFG["n_layers"],
        "num_key_value_heads": CFG["n_kv_heads"],
        "pretraining_tp": 1,
        "rms_norm_eps": CFG["norm_eps"],
        "rope_scaling": dict(rs),
        "rope_theta": CFG["rope_theta"],
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": CFG["vocab_size"],
    }
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(hf_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": BOS, "eos_token_id": [EOS, EOM, EOT]}, f, indent=2)
        f.write("\n")

    # tokenizer.json as transformers' Llama3Converter (convert_llama_weights_to_hf.py) makes it
    tmp_tok = os.path.join(ROOT, "target", "tmp", "tiny-llama3-tokenizer.model")
    os.makedirs(os.path.dirname(tmp_tok), exist_ok=True)
    with open(tmp_tok, "wb") as f:
        f.write(trunc_bytes)
    tk = TikTokenConverter(vocab_file=tmp_tok, pattern=PAT_STR, extra_special_tokens=SPECIAL_NAMES).converted()
    tk.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single="<|begin_of_text|> $A",
            pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", BOS)],
        ),
    ])
    assert tk.get_vocab_size(with_added_tokens=True) == CFG["vocab_size"]
    assert all(tk.token_to_id(s) == i for s, i in special.items())
    tk.save(os.path.join(hf_dir, "tokenizer.json"))
    tok_config = {
        "added_tokens_decoder": {
            str(i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for s, i in special.items()
        },
        "bos_token": "<|begin_of_text|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": True,
        "eos_token": "<|eot_id|>",
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": MAX_POS,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    with open(os.path.join(hf_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f, indent=2, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(hf_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": {"content": "<|begin_of_text|>", "lstrip": False, "normalized": False,
                                 "rstrip": False, "single_word": False},
                   "eos_token": {"content": "<|eot_id|>", "lstrip": False, "normalized": False,
                                 "rstrip": False, "single_word": False}}, f, indent=2)
        f.write("\n")

    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    tokenize_cases = []
    for text in TOKENIZE_TEXTS:
        ids = enc.encode(text, disallowed_special=())
        hf_ids = hf_tok.encode(text, add_special_tokens=False, split_special_tokens=True)
        assert hf_ids == ids, (text, ids, hf_ids)
        assert hf_tok.encode(text, split_special_tokens=True) == [BOS] + ids, text
        assert enc.decode(ids) == text
        tokenize_cases.append({"text": text, "ids": ids})
    # special tokens in text: tiktoken with allowed_special="all" vs HF default parsing
    sp_text = "<|begin_of_text|>not special<|eot_id|>"
    sp_ids = enc.encode(sp_text, allowed_special="all")
    assert hf_tok.encode(sp_text, add_special_tokens=False) == sp_ids
    chat_dialog_ids = chat_ids(enc, special, CHAT_DIALOG)
    chat_short_ids = chat_ids(enc, special, CHAT_SHORT)
    for dlg, ids in ((CHAT_DIALOG, chat_dialog_ids), (CHAT_SHORT, chat_short_ids)):
        hf_chat = hf_tok.apply_chat_template(dlg, add_generation_prompt=True, tokenize=True)
        if isinstance(hf_chat, dict) or hasattr(hf_chat, "keys"):
            hf_chat = hf_chat["input_ids"]
        assert list(hf_chat) == ids, (hf_chat, ids)
    chat_text = hf_tok.apply_chat_template(CHAT_DIALOG, add_generation_prompt=True, tokenize=False)
    assert enc.encode(chat_text, allowed_special="all") == chat_dialog_ids

    # ---- 5. gguf/ -----------------------------------------------------------------------
    llama_dir = os.path.join(args.llama_cpp, "src", "llama_cpp_python-0.3.36", "vendor", "llama.cpp")
    gguf_path = os.path.join(gguf_dir, "tiny-llama3-f32.gguf")
    convert = os.path.join(llama_dir, "convert_hf_to_gguf.py")
    conv_cmd = [sys.executable, convert, hf_dir, "--outtype", "f32", "--outfile", gguf_path,
                "--model-name", "tiny-llama3"]
    r = subprocess.run(conv_cmd, capture_output=True, text=True)
    convert_note = {"unpatched_returncode": r.returncode}
    if r.returncode != 0:
        tail = [l for l in r.stderr.splitlines() if "Error" in l or "chkhsh" in l]
        convert_note["unpatched_error"] = tail[-2:]
        # same script, with get_vocab_base_pre answering "llama-bpe" (Llama 3's pre-tokenizer)
        wrapper = (
            "import sys, runpy; sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[1] + '/gguf-py');"
            "import conversion.base as b; b.TextModel.get_vocab_base_pre = lambda self, tok: 'llama-bpe';"
            "sys.argv = [sys.argv[2]] + sys.argv[3:]; runpy.run_path(sys.argv[0], run_name='__main__')"
        )
        r = subprocess.run([sys.executable, "-c", wrapper, llama_dir, convert] + conv_cmd[2:],
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.stderr.write(r.stderr)
            sys.exit("convert_hf_to_gguf.py failed")
        convert_note["patched"] = "conversion.base.TextModel.get_vocab_base_pre -> 'llama-bpe'"
    sys.path.insert(0, os.path.join(llama_dir, "gguf-py"))
    import gguf
    reader = gguf.GGUFReader(gguf_path)
    gguf_tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in gguf_tensors and "rope_freqs.weight" in gguf_tensors
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in reader.tensors)
    rope_freqs_gguf = np.array(gguf_tensors["rope_freqs.weight"].data, dtype=np.float32)
    bands = rope_bands()
    assert np.allclose(rope_freqs_gguf, [b["divisor"] for b in bands], rtol=1e-6)
    gguf_q = np.array(gguf_tensors["blk.0.attn_q.weight"].data)
    assert np.array_equal(gguf_q, sd["layers.0.attention.wq.weight"].float().numpy()), "GGUF q must be Meta layout"

    def kv(name):
        f = reader.fields[name]
        v = f.contents()
        return v
    gguf_meta = {k: kv(k) for k in reader.fields
                 if not k.startswith("GGUF.") and k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                                            "tokenizer.ggml.merges", "tokenizer.chat_template")}

    # ---- 6. reference outputs -------------------------------------------------------------
    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    rp = model.config.rope_parameters
    assert rp["rope_type"] == "llama3" and rp["factor"] == rs["factor"] and \
        rp["original_max_position_embeddings"] == rs["original_max_position_embeddings"], rp
    config_v5 = json.loads(model.config.to_json_string())
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "tied"
    inv_freq = model.model.rotary_emb.inv_freq.double().numpy()
    assert np.allclose(inv_freq, [b["scaled_freq"] for b in bands], rtol=1e-6)

    model64 = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float64, attn_implementation="eager")
    model64.eval()

    cases = [(name, text, [BOS] + enc.encode(text, disallowed_special=())) for name, text in PROMPTS]
    cases.append(("chat_0", None, chat_short_ids))
    golden_cases = []
    max_meta = max_meta64 = max_f32_vs_f64 = 0.0
    max_cpp = max_cpp16 = 0.0
    cpp_tool = None
    if not args.skip_llama_cpp:
        build = os.path.join(args.llama_cpp, "build-clang", "bin")
        cpp_tool = os.path.join(build, "llama-cpp-logits")
        src = os.path.join(ROOT, "scripts", "llama_cpp_logits.cpp")
        if not os.path.exists(cpp_tool) or os.path.getmtime(src) > os.path.getmtime(cpp_tool):
            subprocess.run(["clang++-19", "-std=c++17", "-O2", f"-I{llama_dir}/include",
                            f"-I{llama_dir}/ggml/include", src, "-o", cpp_tool, f"-L{build}", "-lllama",
                            "-lggml", "-lggml-base", f"-Wl,-rpath,{os.path.abspath(build)}"], check=True)
    for name, text, ids in cases:
        assert 6 <= len(ids) <= 20, (name, len(ids))
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        meta_logits = meta_reference_logits(torch, meta_loaded, params, ids)
        d_meta = (meta_logits - logits).abs().max().item()
        assert d_meta < META_TOL, (name, d_meta)
        max_meta = max(max_meta, d_meta)
        with torch.no_grad():
            logits64 = model64(torch.tensor([ids])).logits[0]
        d_meta64 = (meta_reference_logits(torch, meta_loaded, params, ids, torch.float64) - logits64).abs().max().item()
        # (transformers keeps RMSNorm, softmax and rotary in float32 even in a float64 model)
        max_meta64 = max(max_meta64, d_meta64)
        d_f64 = (logits64 - logits.double()).abs().max().item()
        max_f32_vs_f64 = max(max_f32_vs_f64, d_f64)
        np.save(os.path.join(OUT, f"logits_{name}.npy"), logits.numpy().astype(np.float32))
        # greedy continuation (full recompute each step)
        cur = list(ids)
        steps = []
        for _ in range(GREEDY_STEPS):
            with torch.no_grad():
                last = model(torch.tensor([cur])).logits[0, -1].float()
            top = torch.topk(last, 2)
            steps.append({"token": int(top.indices[0]), "logit": r6(top.values[0]),
                          "top2_gap": r6(top.values[0] - top.values[1])})
            cur.append(int(top.indices[0]))
        c = {"name": name}
        if text is not None:
            c["text"] = text
        else:
            c["dialog"] = CHAT_SHORT
        c.update({
            "ids": ids,
            "n_tokens": len(ids),
            "logits_file": f"logits_{name}.npy",
            "argmax": [int(a) for a in logits.argmax(-1)],
            "last_logits_head": [r6(x) for x in logits[-1, :8]],
            "last_logits_max": r6(logits[-1].max()),
            "last_logits_std": r6(logits[-1].std()),
            "meta_reimpl_max_abs_diff": d_meta,
            "meta_reimpl_float64_max_abs_diff": d_meta64,
            "float32_vs_float64_max_abs_diff": d_f64,
            "greedy_ids": [s["token"] for s in steps],
            "greedy_steps": steps,
        })
        if cpp_tool:
            for kvt, fa in (("f32", "off"), ("f16", "auto")):
                raw = os.path.join(ROOT, "target", "tmp", f"tiny-llama3-{name}-{kvt}.f32")
                subprocess.run([cpp_tool, "-m", gguf_path, "--ids", ",".join(map(str, ids)), "--out", raw,
                                "--threads", "1", "--kv-type", kvt, "--flash-attn", fa],
                               check=True, capture_output=True)
                cpp = np.fromfile(raw, dtype=np.float32).reshape(len(ids), CFG["vocab_size"])
                d_cpp = float(np.abs(cpp - logits.numpy()).max())
                sfx = "" if kvt == "f32" else "_llama_cpp_defaults"
                c["llama_cpp_max_abs_diff" + sfx] = d_cpp
                c["llama_cpp_argmax_equal" + sfx] = bool((cpp.argmax(-1) == logits.numpy().argmax(-1)).all())
                if kvt == "f32":
                    max_cpp = max(max_cpp, d_cpp)
                    # llama.cpp's exact-settings logits: the Rust tests compare with them too.
                    np.save(os.path.join(OUT, f"llama_cpp_logits_{name}.npy"), cpp)
                else:
                    max_cpp16 = max(max_cpp16, d_cpp)
        golden_cases.append(c)

    # how much the llama3 rope scaling matters here: logits with plain rope (no scaling)
    p2 = dict(params, use_scaled_rope=False)
    no_scaling_diff = max(
        (meta_reference_logits(torch, meta_loaded, p2, ids)
         - torch.from_numpy(np.load(os.path.join(OUT, f"logits_{name}.npy")))).abs().max().item()
        for name, _, ids in cases)
    p3 = dict(params)
    for k in ("rope_scaling_factor", "rope_low_freq_factor", "rope_high_freq_factor",
              "rope_original_max_position_embeddings"):
        p3.pop(k)
    meta_defaults_diff = max(
        (meta_reference_logits(torch, meta_loaded, p3, ids)
         - torch.from_numpy(np.load(os.path.join(OUT, f"logits_{name}.npy")))).abs().max().item()
        for name, _, ids in cases)

    # llama.cpp's tokenizer on the GGUF
    cpp_tokenize = None
    if cpp_tool:
        greedy = os.path.join(os.path.dirname(cpp_tool), "llama-cpp-greedy")
        hexfile = os.path.join(ROOT, "target", "tmp", "tiny-llama3-texts.hex")
        with open(hexfile, "w") as f:
            for text in TOKENIZE_TEXTS:
                f.write(text.encode("utf-8").hex() + "\n")
        out = subprocess.run([greedy, "-m", gguf_path, "--tokenize-only", "--input-hex", hexfile],
                             check=True, capture_output=True, text=True).stdout.splitlines()
        res = [json.loads(line) for line in out]
        mism = [t["text"] for t, r_ in zip(tokenize_cases, res) if r_["ids_plain"] != t["ids"]]
        sp_ok = res[TOKENIZE_TEXTS.index(sp_text)]["ids_parse_special"] == sp_ids
        cpp_tokenize = {"plain_equal_tiktoken": not mism, "mismatches": mism,
                        "parse_special_equal_tiktoken_allowed_special": sp_ok}

    golden = {
        "model": "tiny-llama3",
        "made_by": "scripts/make-tiny-llama3.py",
        "versions": {"torch": torch.__version__.split("+")[0], "transformers": transformers.__version__,
                     "tiktoken": tiktoken.__version__ if hasattr(tiktoken, "__version__") else None,
                     "llama.cpp": "llama-cpp-python 0.3.36 vendored"},
        "seed": SEED,
        "config": dict(CFG, max_position_embeddings=MAX_POS),
        "rope": {
            "rule": "wavelen = 2*pi/freq; wavelen < old/high_freq_factor: unscaled; "
                    "wavelen > old/low_freq_factor: freq/factor; else smooth = (old/wavelen - low)/(high - low), "
                    "freq*((1-smooth)/factor + smooth)",
            "bands": {b: [x["i"] for x in bands if x["band"] == b] for b in ("unscaled", "smoothed", "scaled")},
            "base_freqs": [x["freq"] for x in bands],
            "scaled_freqs": [x["scaled_freq"] for x in bands],
            "gguf_rope_freqs": [float(x) for x in rope_freqs_gguf],
            "max_abs_logit_diff_without_scaling": no_scaling_diff,
            "max_abs_logit_diff_with_llama_models_defaults_8_1_4_8192": meta_defaults_diff,
        },
        "tokenizer": {
            "source": "Meta Llama 3 tokenizer.model (llama-models 0.3.0), ranks 0..999",
            "source_md5": LLAMA3_TOKENIZER_MD5,
            "tokenizer_model_md5": hashlib.md5(trunc_bytes).hexdigest(),
            "n_base": N_BASE, "n_words": CFG["vocab_size"],
            "pat_str": PAT_STR,
            "special_tokens": {s: i for s, i in special.items() if i < N_BASE + 12},
            "special_tokens_rest": "<|reserved_special_token_{2+k}|> = 1012 + k, k = 0..243",
            "bos_id": BOS, "eos_id": EOS, "eom_id": EOM, "eot_id": EOT,
            "pad_id": special["<|finetune_right_pad_id|>"], "python_tag_id": special["<|python_tag|>"],
            "stop_tokens": [EOS, EOM, EOT],
            "encode_cases": tokenize_cases,
            "encode_note": "ids = Tokenizer.encode(text, bos=False, eos=False): special-token text is plain text",
            "special_text_case": {"text": sp_text, "ids_allowed_special_all": sp_ids},
            "llama_cpp_tokenize": cpp_tokenize,
        },
        "chat": {
            "dialog": CHAT_DIALOG,
            "prompt_ids": chat_dialog_ids,
            "prompt_text": chat_text,
            "note": "llama_models ChatFormat.encode_dialog_prompt: <|begin_of_text|>, then per message "
                    "<|start_header_id|> role <|end_header_id|> '\\n\\n' content <|eot_id|>, then the assistant "
                    "header; equals HF apply_chat_template(add_generation_prompt=True) with tokenizer_config.json's template",
        },
        "compute_dtype": "float32",
        "checks": {
            "meta_reimpl_max_abs_diff": max_meta,
            "meta_reimpl_float64_max_abs_diff": max_meta64,
            "float32_vs_float64_max_abs_diff": max_f32_vs_f64,
            "llama_cpp_max_abs_diff": max_cpp if cpp_tool else None,
            "llama_cpp_max_abs_diff_llama_cpp_defaults": max_cpp16 if cpp_tool else None,
            "llama_cpp_tool": "scripts/llama_cpp_logits.cpp, 1 thread, CPU, one batch; F32 KV cache and flash "
                              "attention off (llama_cpp_max_abs_diff), llama.cpp's defaults F16 KV cache and "
                              "flash attention auto (..._llama_cpp_defaults)",
            "convert_hf_to_gguf": convert_note,
            "hf_tokenizer_equals_tiktoken": True,
            "hf_chat_template_equals_chat_format": True,
        },
        "hf_config_as_transformers_5_writes_it": config_v5,
        "gguf": {"file": "gguf/tiny-llama3-f32.gguf", "sha256": sha256(gguf_path), "metadata": gguf_meta,
                 "tensors": {t.name: [int(x) for x in t.shape] for t in reader.tensors}},
        "files_sha256": {os.path.relpath(os.path.join(dp, fn), OUT): sha256(os.path.join(dp, fn))
                         for dp, _, fns in os.walk(OUT) for fn in sorted(fns) if not fn.endswith(".npy")},
        "cases": golden_cases,
    }
    with open(os.path.join(OUT, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(json.dumps({"meta_reimpl_max_abs_diff": max_meta, "meta64": max_meta64, "f32_vs_f64": max_f32_vs_f64,
                      "llama_cpp_max_abs_diff": max_cpp, "llama_cpp_defaults": max_cpp16,
                      "no_scaling_diff": no_scaling_diff, "meta_defaults_diff": meta_defaults_diff,
                      "bands": golden["rope"]["bands"], "convert": convert_note,
                      "llama_cpp_tokenize": cpp_tokenize,
                      "last_logits_std": [c["last_logits_std"] for c in golden_cases],
                      "last_logits_max": [c["last_logits_max"] for c in golden_cases],
                      "min_gap": min(s["top2_gap"] for c in golden_cases for s in c["greedy_steps"])}, indent=1))


if __name__ == "__main__":
    main()
