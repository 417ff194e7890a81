//! Writing any loaded model as a GGUF file (`llama2 convert`): llama.cpp's metadata keys
//! and tensor names, norms kept in F32, 2-D weights stored as F16, Q8_0 or Q4_0 with
//! ggml's reference quantizers, and the tokenizer and chat template carried along.

use std::path::Path;

use crate::checkpoint::gguf::GgufValue;
use crate::checkpoint::gguf_write::GgufWriter;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::loader::LoadedModel;
use crate::quant;
use crate::tensor::{Storage, Tensor};
use crate::tokenizer::Tokenizer;

/// Weight types the converter writes.
pub const TARGETS: [DType; 4] = [DType::F32, DType::F16, DType::Q8_0, DType::Q4_0];

/// ggml's `general.file_type` for a target type.
fn file_type(dtype: DType) -> u32 {
    match dtype {
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q8_0 => 7,
        _ => 0,
    }
}

/// Meta name → GGUF name.
fn gguf_name(meta: &str) -> Option<String> {
    Some(match meta {
        "tok_embeddings.weight" => "token_embd.weight".into(),
        "norm.weight" => "output_norm.weight".into(),
        "output.weight" => "output.weight".into(),
        _ => {
            let rest = meta.strip_prefix("layers.")?;
            let (i, leaf) = rest.split_once('.')?;
            let leaf = match leaf {
                "attention.wq.weight" => "attn_q.weight",
                "attention.wk.weight" => "attn_k.weight",
                "attention.wv.weight" => "attn_v.weight",
                "attention.wo.weight" => "attn_output.weight",
                "feed_forward.w1.weight" => "ffn_gate.weight",
                "feed_forward.w2.weight" => "ffn_down.weight",
                "feed_forward.w3.weight" => "ffn_up.weight",
                "attention_norm.weight" => "attn_norm.weight",
                "ffn_norm.weight" => "ffn_norm.weight",
                _ => return None,
            };
            format!("blk.{i}.{leaf}")
        }
    })
}

/// The bytes of `t` stored as `dtype` (values first widened to f32, exactly).
fn encode(t: &Tensor, dtype: DType) -> Result<Vec<u8>> {
    let values = t.to_f32_vec();
    let mut out = Vec::new();
    match dtype {
        DType::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes())),
        q => quant::quantize(q, &values, &mut out)?,
    }
    Ok(out)
}

fn strings(v: impl IntoIterator<Item = String>) -> GgufValue {
    GgufValue::Array(v.into_iter().map(GgufValue::String).collect())
}

fn add_tokenizer(w: &mut GgufWriter<'_>, tok: &Tokenizer) -> Result<()> {
    let n = tok.n_words() as u32;
    match tok {
        Tokenizer::SentencePiece(sp) => {
            w.add("tokenizer.ggml.model", GgufValue::String("llama".into()))?;
            w.add(
                "tokenizer.ggml.tokens",
                strings((0..n).map(|i| sp.id_to_piece(i).unwrap_or_default().to_string())),
            )?;
            w.add(
                "tokenizer.ggml.scores",
                GgufValue::Array(
                    (0..n)
                        .map(|i| GgufValue::F32(sp.score(i).unwrap_or(0.0)))
                        .collect(),
                ),
            )?;
            w.add(
                "tokenizer.ggml.token_type",
                GgufValue::Array(
                    (0..n)
                        .map(|i| GgufValue::I32(sp.piece_type(i).unwrap_or(1)))
                        .collect(),
                ),
            )?;
            w.add(
                "tokenizer.ggml.unknown_token_id",
                GgufValue::U32(sp.unk_id()),
            )?;
        }
        Tokenizer::Bpe(bpe) => {
            let v = bpe.vocab();
            w.add("tokenizer.ggml.model", GgufValue::String("gpt2".into()))?;
            w.add("tokenizer.ggml.pre", GgufValue::String(v.pre.clone()))?;
            w.add("tokenizer.ggml.tokens", strings(v.tokens.iter().cloned()))?;
            let types = if v.token_types.is_empty() {
                vec![1; v.tokens.len()]
            } else {
                v.token_types.clone()
            };
            w.add(
                "tokenizer.ggml.token_type",
                GgufValue::Array(types.into_iter().map(GgufValue::I32).collect()),
            )?;
            w.add("tokenizer.ggml.merges", strings(v.merges.iter().cloned()))?;
            if let Some(u) = v.unk_id {
                w.add("tokenizer.ggml.unknown_token_id", GgufValue::U32(u))?;
            }
        }
    }
    w.add("tokenizer.ggml.bos_token_id", GgufValue::U32(tok.bos_id()))?;
    w.add("tokenizer.ggml.eos_token_id", GgufValue::U32(tok.eos_id()))?;
    if let Some(p) = tok.pad_id() {
        w.add("tokenizer.ggml.padding_token_id", GgufValue::U32(p))?;
    }
    w.add(
        "tokenizer.ggml.add_bos_token",
        GgufValue::Bool(tok.add_bos()),
    )?;
    w.add(
        "tokenizer.ggml.add_eos_token",
        GgufValue::Bool(tok.add_eos()),
    )?;
    Ok(())
}

/// llama.cpp's `general.*`, `llama.*` and `tokenizer.*` keys.
#[allow(clippy::too_many_arguments)]
fn write_metadata(
    w: &mut GgufWriter<'_>,
    a: &crate::config::ModelArgs,
    vocab_size: usize,
    name: &str,
    context_length: usize,
    tokenizer: &Tokenizer,
    chat_template: Option<&str>,
    dtype: DType,
) -> Result<()> {
    let s = |x: &str| GgufValue::String(x.to_string());
    let u = |x: usize| GgufValue::U32(x as u32);
    w.add("general.architecture", s("llama"))?;
    w.add("general.type", s("model"))?;
    w.add("general.name", s(name))?;
    w.add("general.file_type", GgufValue::U32(file_type(dtype)))?;
    w.add("general.quantization_version", GgufValue::U32(2))?;
    w.add("llama.context_length", u(context_length))?;
    w.add("llama.embedding_length", u(a.dim))?;
    w.add("llama.block_count", u(a.n_layers))?;
    w.add("llama.feed_forward_length", u(a.ffn_hidden_dim()))?;
    w.add("llama.attention.head_count", u(a.n_heads))?;
    w.add("llama.attention.head_count_kv", u(a.n_kv_heads()))?;
    w.add("llama.rope.freq_base", GgufValue::F32(a.rope_theta as f32))?;
    w.add(
        "llama.attention.layer_norm_rms_epsilon",
        GgufValue::F32(a.norm_eps as f32),
    )?;
    w.add("llama.rope.dimension_count", u(a.head_dim()))?;
    w.add("llama.vocab_size", u(vocab_size))?;
    add_tokenizer(w, tokenizer)?;
    if let Some(t) = chat_template {
        w.add("tokenizer.chat_template", s(t))?;
    }
    Ok(())
}

/// Llama 3.1-style RoPE scaling as llama.cpp stores it: `rope_freqs.weight`, one F32
/// divisor per rotary frequency.
fn add_rope_factors(w: &mut GgufWriter<'_>, args: &crate::config::ModelArgs) -> Result<()> {
    if let Some(f) = args.rope_freq_factors() {
        let bytes = f.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.add_tensor_bytes("rope_freqs.weight", DType::F32, &[f.len()], bytes)?;
    }
    Ok(())
}

/// Writes a model with `args`' shapes and random weights as GGUF, for measuring speed
/// at real scale without real weights: 2-D weights are `dtype` blocks of random
/// quantized values with small random scales (float types: small random values), norms
/// are 1. Generated one tensor at a time, reproducibly from `seed`. With `tied`, no
/// `output.weight` is written (the embedding serves, as in Llama 3.2 1B).
pub fn write_random_gguf(
    args: &crate::config::ModelArgs,
    tokenizer: &Tokenizer,
    dtype: DType,
    out: &Path,
    seed: u64,
    tied: bool,
) -> Result<()> {
    use rand_chacha::ChaCha8Rng;
    use rand_core::{Rng, SeedableRng};
    if !TARGETS.contains(&dtype) {
        return Err(Error::InvalidArgument(format!("cannot write {dtype:?}")));
    }
    args.validate()?;
    let vocab = tokenizer.n_words();
    let mut w = GgufWriter::new();
    write_metadata(&mut w, args, vocab, "random", 4096, tokenizer, None, dtype)?;
    add_rope_factors(&mut w, args)?;
    let (dim, hd) = (args.dim, args.head_dim());
    let (q, kv, ff) = (
        args.n_heads * hd,
        args.n_kv_heads() * hd,
        args.ffn_hidden_dim(),
    );
    let mut shapes: Vec<(String, Vec<usize>)> =
        vec![("token_embd.weight".into(), vec![vocab, dim])];
    for i in 0..args.n_layers {
        let b = |x: &str| format!("blk.{i}.{x}");
        shapes.extend([
            (b("attn_norm.weight"), vec![dim]),
            (b("attn_q.weight"), vec![q, dim]),
            (b("attn_k.weight"), vec![kv, dim]),
            (b("attn_v.weight"), vec![kv, dim]),
            (b("attn_output.weight"), vec![dim, q]),
            (b("ffn_norm.weight"), vec![dim]),
            (b("ffn_gate.weight"), vec![ff, dim]),
            (b("ffn_down.weight"), vec![dim, ff]),
            (b("ffn_up.weight"), vec![ff, dim]),
        ]);
    }
    shapes.push(("output_norm.weight".into(), vec![dim]));
    if !tied {
        shapes.push(("output.weight".into(), vec![vocab, dim]));
    }
    for (k, (name, shape)) in shapes.into_iter().enumerate() {
        let is_norm = shape.len() == 1;
        let target = if is_norm { DType::F32 } else { dtype };
        let numel: usize = shape.iter().product();
        let n_bytes = target.row_bytes(numel).ok_or_else(|| {
            Error::InvalidArgument(format!("{name}: rows are not whole {dtype:?} blocks"))
        })?;
        w.add_tensor_lazy(name, target, &shape, move || {
            let mut rng =
                ChaCha8Rng::seed_from_u64(seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut bytes = vec![0u8; n_bytes];
            if is_norm {
                for c in bytes.chunks_exact_mut(4) {
                    c.copy_from_slice(&1.0f32.to_le_bytes());
                }
                return Ok(bytes);
            }
            rng.fill_bytes(&mut bytes);
            let bb = target.block_bytes();
            if target.is_quantized() {
                // Scales (first f16 of every block; Q4_1's minimum too) small and finite.
                for blk in bytes.chunks_exact_mut(bb) {
                    let d = half::f16::from_f32(0.002 + (blk[0] as f32) * 1e-5);
                    blk[..2].copy_from_slice(&d.to_bits().to_le_bytes());
                }
            } else {
                let vals: Vec<f32> = bytes
                    .chunks_exact(bb)
                    .map(|c| (c[0] as f32 - 127.5) * 1e-4)
                    .collect();
                return encode(
                    &Tensor {
                        dtype: DType::F32,
                        shape: vec![vals.len()],
                        storage: Storage::Owned(std::sync::Arc::new(
                            vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                        )),
                    },
                    target,
                );
            }
            Ok(bytes)
        })?;
    }
    w.write_file(out)
}

fn same_storage(a: &Tensor, b: &Tensor) -> bool {
    match (&a.storage, &b.storage) {
        (
            Storage::Mapped {
                map: m1,
                offset: o1,
                ..
            },
            Storage::Mapped {
                map: m2,
                offset: o2,
                ..
            },
        ) => std::sync::Arc::ptr_eq(m1, m2) && o1 == o2,
        (Storage::Owned(x), Storage::Owned(y)) => std::sync::Arc::ptr_eq(x, y),
        _ => false,
    }
}

/// Writes `model` to `out` as GGUF v3 with 2-D weights stored as `dtype` (one of
/// [`TARGETS`]). A weight whose rows are not whole 32-value blocks is stored as F16
/// instead, as llama.cpp's quantizer does. Tensors are converted one at a time.
pub fn convert_to_gguf(model: &LoadedModel, out: &Path, dtype: DType) -> Result<()> {
    if !TARGETS.contains(&dtype) {
        return Err(Error::InvalidArgument(format!(
            "cannot write {dtype:?}: choose f32, f16, q8_0 or q4_0"
        )));
    }
    let mut w = GgufWriter::new();
    write_metadata(
        &mut w,
        &model.weights.args,
        model.weights.vocab_size,
        model.name.as_deref().unwrap_or("llama"),
        model.context_length.unwrap_or(4096),
        &model.tokenizer,
        model.chat_template.as_deref(),
        dtype,
    )?;
    add_rope_factors(&mut w, &model.weights.args)?;

    let tensors = &model.weights.tensors;
    let mut names: Vec<&String> = tensors.keys().filter(|n| gguf_name(n).is_some()).collect();
    // llama.cpp's order: embedding, blocks in order, final norm, output.
    let rank = |n: &str| -> (usize, usize, String) {
        match n {
            "tok_embeddings.weight" => (0, 0, String::new()),
            "norm.weight" => (2, 0, String::new()),
            "output.weight" => (3, 0, String::new()),
            _ => {
                let i = n
                    .split('.')
                    .nth(1)
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0);
                (1, i, n.to_string())
            }
        }
    };
    names.sort_by_key(|n| rank(n));
    for name in names {
        let t = &tensors[name];
        if name == "output.weight" && same_storage(t, &tensors["tok_embeddings.weight"]) {
            continue; // tied: llama.cpp reuses the embedding when output.weight is absent
        }
        let target = match t.shape.as_slice() {
            [_] => DType::F32,
            [_, cols] if dtype.row_bytes(*cols).is_some() => dtype,
            [_, _] => DType::F16,
            other => {
                return Err(Error::Shape {
                    name: name.clone(),
                    expected: vec![],
                    found: other.to_vec(),
                })
            }
        };
        let gname = gguf_name(name).unwrap_or_default();
        w.add_tensor_lazy(gname, target, &t.shape.clone(), move || encode(t, target))?;
    }
    w.write_file(out)
}
