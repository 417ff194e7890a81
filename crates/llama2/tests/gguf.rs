//! GGUF support through the public API: the fixture files (metadata, tensor types and
//! shapes, values against the Meta checkpoint and the Q8_0 goldens), the mapping to
//! model weights, the writer, ggml quantization against reference vectors, and hostile
//! inputs (truncated, patched and randomly mutated files must give errors, not panics).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use llama2::checkpoint::gguf::{gguf_model_weights, load_gguf, GgufFile, GgufValue};
use llama2::checkpoint::gguf_write::GgufWriter;
use llama2::checkpoint::load_meta_checkpoint;
use llama2::error::Error;
use llama2::model::Transformer;
use llama2::quant::{dequantize, quantize};
use llama2::tensor::{DType, Storage};
use serde_json::Value;

/// (model, n_layers, dim, ffn hidden, n_heads, n_kv_heads)
const MODELS: [(&str, usize, usize, usize, usize, usize); 2] = [
    ("tiny-mha", 2, 32, 96, 4, 4),
    ("tiny-gqa", 3, 32, 128, 4, 2),
];

fn gguf_path(model: &str, kind: &str) -> PathBuf {
    common::model_dir(model)
        .join("gguf")
        .join(format!("{model}-{kind}.gguf"))
}

/// A fresh file path under the system temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        TempFile(
            std::env::temp_dir().join(format!("llama2-gguf-{tag}-{}-{n}.gguf", std::process::id())),
        )
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn checkpoint_err<T: std::fmt::Debug>(r: llama2::Result<T>) -> String {
    match r {
        Err(e @ Error::Checkpoint { .. }) => e.to_string(),
        other => panic!("expected a checkpoint error, got {other:?}"),
    }
}

const KEYS: [&str; 24] = [
    "general.architecture",
    "general.type",
    "general.name",
    "llama.block_count",
    "llama.context_length",
    "llama.embedding_length",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.freq_base",
    "llama.attention.layer_norm_rms_epsilon",
    "general.file_type",
    "llama.vocab_size",
    "llama.rope.dimension_count",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
];

#[test]
fn fixture_metadata_in_file_order() {
    let mut files = Vec::new();
    for (model, ..) in MODELS {
        files.push((gguf_path(model, "q8_0"), 7u32));
    }
    files.push((gguf_path("tiny-gqa", "f32"), 0));
    for (path, file_type) in files {
        let f = GgufFile::open(&path).unwrap();
        let model = path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .rsplit_once('-')
            .unwrap()
            .0;
        let (_, n_layers, dim, hidden, n_heads, n_kv) =
            MODELS.iter().find(|m| m.0 == model).copied().unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.data_offset() % 32, 0);
        let keys: Vec<&str> = f.metadata().iter().map(|(k, _)| k.as_str()).collect();
        let mut want = KEYS.to_vec();
        want.push("general.quantization_version");
        assert_eq!(keys, want, "{}", path.display());

        use GgufValue::*;
        let v = |k: &str| f.get(k).unwrap().clone();
        assert_eq!(v("general.architecture"), String("llama".into()));
        assert_eq!(v("general.type"), String("model".into()));
        assert_eq!(v("general.name"), String(model.into()));
        assert_eq!(v("llama.block_count"), U32(n_layers as u32));
        assert_eq!(v("llama.context_length"), U32(256));
        assert_eq!(v("llama.embedding_length"), U32(dim as u32));
        assert_eq!(v("llama.feed_forward_length"), U32(hidden as u32));
        assert_eq!(v("llama.attention.head_count"), U32(n_heads as u32));
        assert_eq!(v("llama.attention.head_count_kv"), U32(n_kv as u32));
        assert_eq!(v("llama.rope.freq_base"), F32(10000.0));
        assert_eq!(v("llama.attention.layer_norm_rms_epsilon"), F32(1e-5));
        assert_eq!(v("general.file_type"), U32(file_type));
        assert_eq!(v("llama.vocab_size"), U32(32000));
        assert_eq!(v("llama.rope.dimension_count"), U32((dim / n_heads) as u32));
        assert_eq!(v("tokenizer.ggml.model"), String("llama".into()));
        assert_eq!(v("tokenizer.ggml.pre"), String("default".into()));
        assert_eq!(v("tokenizer.ggml.bos_token_id"), U32(1));
        assert_eq!(v("tokenizer.ggml.eos_token_id"), U32(2));
        assert_eq!(v("tokenizer.ggml.unknown_token_id"), U32(0));
        assert_eq!(v("tokenizer.ggml.add_bos_token"), Bool(true));
        assert_eq!(v("tokenizer.ggml.add_eos_token"), Bool(false));
        assert_eq!(v("general.quantization_version"), U32(2));

        let tokens = f.get_array("tokenizer.ggml.tokens").unwrap().unwrap();
        let scores = f.get_array("tokenizer.ggml.scores").unwrap().unwrap();
        let types = f.get_array("tokenizer.ggml.token_type").unwrap().unwrap();
        assert_eq!(
            (tokens.len(), scores.len(), types.len()),
            (32000, 32000, 32000)
        );
        for (id, piece, score, ty) in [
            (0, "<unk>", 0.0, 2),
            (1, "<s>", 0.0, 3),
            (2, "</s>", 0.0, 3),
            (3, "<0x00>", 0.0, 6),
            (258, "<0xFF>", 0.0, 6),
            (29871, "▁", -1e9, 1),
            (31999, tokens[31999].as_str().unwrap(), -31740.0, 1),
        ] {
            assert_eq!(tokens[id].as_str(), Some(piece), "token {id}");
            assert_eq!(scores[id], F32(score), "score {id}");
            assert_eq!(types[id], I32(ty), "type {id}");
        }
        // Typed getters accept any integer type, reject other types.
        assert_eq!(
            f.get_u32("llama.block_count").unwrap(),
            Some(n_layers as u32)
        );
        assert_eq!(f.get_usize("llama.embedding_length").unwrap(), Some(dim));
        assert_eq!(f.get_i64("llama.context_length").unwrap(), Some(256));
        assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), Some(10000.0));
        assert_eq!(f.get_str("general.name").unwrap(), Some(model));
        assert_eq!(
            f.get_bool("tokenizer.ggml.add_bos_token").unwrap(),
            Some(true)
        );
        assert_eq!(f.get_u32("no.such.key").unwrap(), None);
        assert!(checkpoint_err(f.get_u32("general.name")).contains("general.name"));
        assert!(f.get_str("llama.block_count").is_err());
        assert!(f.get_f64("llama.block_count").is_err());
        assert_eq!(f.context_length().unwrap(), Some(256));
    }
}

/// Expected (name, PyTorch shape) of every tensor, in file order.
fn expected_tensors(
    n_layers: usize,
    dim: usize,
    hidden: usize,
    n_heads: usize,
    n_kv: usize,
) -> Vec<(String, Vec<usize>)> {
    let hd = dim / n_heads;
    let mut v = vec![("token_embd.weight".to_string(), vec![32000, dim])];
    for i in 0..n_layers {
        for (n, s) in [
            ("attn_norm", vec![dim]),
            ("attn_q", vec![n_heads * hd, dim]),
            ("attn_k", vec![n_kv * hd, dim]),
            ("attn_v", vec![n_kv * hd, dim]),
            ("attn_output", vec![dim, n_heads * hd]),
            ("ffn_norm", vec![dim]),
            ("ffn_gate", vec![hidden, dim]),
            ("ffn_up", vec![hidden, dim]),
            ("ffn_down", vec![dim, hidden]),
        ] {
            v.push((format!("blk.{i}.{n}.weight"), s));
        }
    }
    v.push(("output_norm.weight".into(), vec![dim]));
    v.push(("output.weight".into(), vec![32000, dim]));
    v
}

#[test]
fn fixture_tensor_types_and_shapes() {
    for (model, n_layers, dim, hidden, n_heads, n_kv) in MODELS {
        let f = GgufFile::open(&gguf_path(model, "q8_0")).unwrap();
        let golden: Value = serde_json::from_str(
            &std::fs::read_to_string(common::model_dir(model).join("gguf/q8_0_golden.json"))
                .unwrap(),
        )
        .unwrap();
        let types = golden["tensor_types"].as_object().unwrap();
        let mut want = expected_tensors(n_layers, dim, hidden, n_heads, n_kv);
        let mut got: Vec<(String, Vec<usize>)> = f
            .tensor_infos()
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{model}");
        assert_eq!(types.len(), f.tensor_infos().len());
        for info in f.tensor_infos() {
            let t = f.tensor(&info.name).unwrap();
            let want_type = if info.shape.len() == 1 {
                DType::F32
            } else {
                DType::Q8_0
            };
            assert_eq!(t.dtype, want_type, "{}", info.name);
            assert_eq!(types[&info.name].as_str(), Some(info.type_name()));
            assert_eq!(t.shape, info.shape);
            assert_eq!(Some(t.bytes().len()), t.dtype.row_bytes(t.numel()));
            assert!(matches!(t.storage, Storage::Mapped { .. }), "zero-copy");
        }
    }
    let f = GgufFile::open(&gguf_path("tiny-gqa", "f32")).unwrap();
    assert!(f
        .tensor_infos()
        .iter()
        .all(|t| t.dtype() == Some(DType::F32)));
    assert!(checkpoint_err(f.tensor("nope")).contains("missing tensor 'nope'"));
}

#[test]
fn f32_gguf_equals_meta_checkpoint() {
    let meta = load_meta_checkpoint(&common::model_dir("tiny-gqa").join("meta")).unwrap();
    let path = gguf_path("tiny-gqa", "f32");
    let g = load_gguf(&path).unwrap();
    assert_eq!(g.vocab_size, 32000);
    assert_eq!(meta.vocab_size, 32000);
    let (a, b) = (&g.args, &meta.args);
    assert_eq!(
        (a.dim, a.n_layers, a.n_heads, a.n_kv_heads(), a.head_dim()),
        (b.dim, b.n_layers, b.n_heads, b.n_kv_heads(), b.head_dim())
    );
    assert_eq!(a.ffn_hidden_dim(), b.ffn_hidden_dim());
    assert_eq!(a.ffn_hidden_dim, Some(128));
    assert_eq!(a.norm_eps, 1e-5);
    assert_eq!(a.rope_theta, 10000.0);
    assert_eq!(a.vocab_size, 32000);
    let mut n = 0;
    for (name, mt) in &meta.tensors {
        if name == "rope.freqs" {
            continue;
        }
        let gt = g
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(gt.shape, mt.shape, "{name}");
        assert_eq!(gt.dtype, DType::F32);
        let (x, y) = (gt.to_f32_vec(), mt.to_f32_vec());
        assert!(
            x.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name} differs"
        );
        n += 1;
    }
    assert_eq!(n, g.tensors.len());
    assert_eq!(n, 3 + 3 * 9);
}

#[test]
fn q8_0_dequantization_matches_goldens() {
    for (model, ..) in MODELS {
        let f = GgufFile::open(&gguf_path(model, "q8_0")).unwrap();
        for (name, rows) in [
            ("blk.0.attn_q.weight", None),
            ("blk.0.ffn_down.weight", None),
            ("token_embd.weight", Some(64)),
        ] {
            let dir = common::model_dir(model).join("gguf");
            let (r, c, want) = common::read_npy(&dir.join(format!("q8_0_dequant_{name}.npy")));
            let t = f.tensor(name).unwrap();
            assert_eq!(t.shape[1], c);
            assert_eq!(rows.unwrap_or(t.shape[0]), r);
            let mut got = vec![0.0f32; r * c];
            dequantize(DType::Q8_0, t.bytes(), &mut got);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{model} {name} element {i}");
            }
            if rows.is_none() {
                assert_eq!(t.to_f32_vec(), want);
            }
        }
    }
}

#[test]
fn q8_0_model_weights_build_a_transformer() {
    for (model, n_layers, dim, hidden, n_heads, n_kv) in MODELS {
        let path = gguf_path(model, "q8_0");
        let f = GgufFile::open(&path).unwrap();
        let mut w = gguf_model_weights(&f, &path).unwrap();
        assert_eq!(w.vocab_size, 32000);
        assert_eq!(
            (
                w.args.dim,
                w.args.n_layers,
                w.args.n_heads,
                w.args.n_kv_heads()
            ),
            (dim, n_layers, n_heads, n_kv)
        );
        assert_eq!(w.args.ffn_hidden_dim(), hidden);
        assert_eq!(w.tensors.len(), 3 + 9 * n_layers);
        assert_eq!(w.tensors["layers.0.attention.wq.weight"].dtype, DType::Q8_0);
        assert_eq!(w.tensors["layers.0.ffn_norm.weight"].dtype, DType::F32);
        let args = w.args.clone();
        let t = Transformer::from_tensors(&args, w.vocab_size, &mut w.tensors).unwrap();
        assert_eq!(t.vocab_size(), 32000);
    }
}

/// Rebuilds `src` with the writer, letting `edit` change metadata and tensors.
fn rewrite(
    src: &GgufFile,
    edit_kv: impl Fn(&str, &GgufValue) -> Option<GgufValue>,
    keep_tensor: impl Fn(&str) -> bool,
) -> Vec<u8> {
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        if let Some(v) = edit_kv(k, v) {
            w.add(k.clone(), v).unwrap();
        }
    }
    for info in src.tensor_infos() {
        if keep_tensor(&info.name) {
            w.add_tensor(info.name.clone(), &src.tensor(&info.name).unwrap())
                .unwrap();
        }
    }
    w.to_bytes().unwrap()
}

#[test]
fn writer_round_trip_reproduces_the_fixture() {
    for path in [gguf_path("tiny-mha", "q8_0"), gguf_path("tiny-gqa", "f32")] {
        let original = std::fs::read(&path).unwrap();
        let f = GgufFile::open(&path).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in f.metadata() {
            w.add(k.clone(), v.clone()).unwrap();
        }
        for info in f.tensor_infos() {
            let t = f.tensor(&info.name).unwrap();
            w.add_tensor(info.name.clone(), &t).unwrap();
        }
        let out = TempFile::new("roundtrip");
        w.write_file(&out.0).unwrap();
        let written = std::fs::read(&out.0).unwrap();
        // Same conventions as gguf-py (alignment 32, padding after each tensor): the
        // file comes back byte for byte.
        assert_eq!(written.len(), original.len(), "{}", path.display());
        assert!(written == original, "{} differs", path.display());
        let g = GgufFile::open(&out.0).unwrap();
        assert_eq!(g.metadata(), f.metadata());
        assert_eq!(g.tensor_infos().len(), f.tensor_infos().len());
    }
}

#[test]
fn tied_output_shares_the_embedding() {
    let src = GgufFile::open(&gguf_path("tiny-gqa", "q8_0")).unwrap();
    let bytes = rewrite(&src, |_, v| Some(v.clone()), |n| n != "output.weight");
    let out = TempFile::new("tied");
    std::fs::write(&out.0, bytes).unwrap();
    let f = GgufFile::open(&out.0).unwrap();
    let mut w = gguf_model_weights(&f, &out.0).unwrap();
    let (e, o) = (
        &w.tensors["tok_embeddings.weight"],
        &w.tensors["output.weight"],
    );
    match (&e.storage, &o.storage) {
        (
            Storage::Mapped {
                map: m1, offset: a, ..
            },
            Storage::Mapped {
                map: m2, offset: b, ..
            },
        ) => {
            assert!(std::sync::Arc::ptr_eq(m1, m2));
            assert_eq!(a, b);
        }
        _ => panic!("expected mapped storage"),
    }
    let args = w.args.clone();
    Transformer::from_tensors(&args, w.vocab_size, &mut w.tensors).unwrap();
}

#[test]
fn unsupported_models_are_named_in_errors() {
    let src = GgufFile::open(&gguf_path("tiny-mha", "q8_0")).unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            rewrite(
                &src,
                |k, v| {
                    Some(if k == "general.architecture" {
                        GgufValue::String("mamba".into())
                    } else {
                        v.clone()
                    })
                },
                |_| true,
            ),
            "architecture 'mamba' is not supported",
        ),
        (
            rewrite(
                &src,
                |k, v| {
                    Some(if k == "llama.rope.dimension_count" {
                        GgufValue::U32(4)
                    } else {
                        v.clone()
                    })
                },
                |_| true,
            ),
            "partial rotary embeddings are not supported",
        ),
        (
            rewrite(
                &src,
                |k, v| {
                    Some(if k == "llama.vocab_size" {
                        GgufValue::U32(32001)
                    } else {
                        v.clone()
                    })
                },
                |_| true,
            ),
            "llama.vocab_size is 32001",
        ),
        (
            rewrite(
                &src,
                |k, v| (k != "llama.embedding_length").then(|| v.clone()),
                |_| true,
            ),
            "'llama.embedding_length' is missing",
        ),
        (
            rewrite(
                &src,
                |k, v| {
                    Some(if k == "llama.block_count" {
                        GgufValue::String("two".into())
                    } else {
                        v.clone()
                    })
                },
                |_| true,
            ),
            "'llama.block_count' is string",
        ),
        (
            rewrite(
                &src,
                |k, v| {
                    Some(if k == "llama.block_count" {
                        GgufValue::U32(1)
                    } else {
                        v.clone()
                    })
                },
                |_| true,
            ),
            "belongs to layer 1",
        ),
        (
            // 2^60 layers: refused against the tensors in the file, nothing reserved.
            rewrite(
                &src,
                |k, v| {
                    Some(if k == "llama.block_count" {
                        GgufValue::U64(1 << 60)
                    } else {
                        v.clone()
                    })
                },
                |_| true,
            ),
            "llama.block_count is 1152921504606846976 but the file holds",
        ),
        (
            rewrite(&src, |_, v| Some(v.clone()), |n| n != "token_embd.weight"),
            "token_embd.weight",
        ),
    ];
    for (bytes, want) in cases {
        let f = GgufFile::from_bytes(bytes).unwrap();
        let msg = checkpoint_err(gguf_model_weights(&f, Path::new("x.gguf")));
        assert!(msg.contains(want), "{msg:?} lacks {want:?}");
    }
}

/// Byte offset of the `u32` type field of tensor `name` in a GGUF image.
fn type_field(bytes: &[u8], name: &str) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(name.as_bytes());
    let p = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap()
        + needle.len();
    let n_dims = u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize;
    p + 4 + 8 * n_dims
}

#[test]
fn patched_headers_are_errors() {
    let path = gguf_path("tiny-mha", "q8_0");
    let original = std::fs::read(&path).unwrap();
    let parse = |b: Vec<u8>| GgufFile::from_bytes(b);

    // Unsupported and unknown tensor types.
    let at = type_field(&original, "blk.0.attn_q.weight");
    assert_eq!(original[at..at + 4], 8u32.to_le_bytes());
    let mut b = original.clone();
    b[at..at + 4].copy_from_slice(&6u32.to_le_bytes());
    let f = parse(b).unwrap();
    let msg = checkpoint_err(f.tensor("blk.0.attn_q.weight"));
    assert!(
        msg.contains("tensor 'blk.0.attn_q.weight' has type Q5_0 (6), which llama2 does not support (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K)"),
        "{msg}"
    );
    assert!(checkpoint_err(gguf_model_weights(&f, &path)).contains("Q5_0 (6)"));
    let mut b = original.clone();
    b[at..at + 4].copy_from_slice(&77u32.to_le_bytes());
    assert!(checkpoint_err(parse(b)).contains("unknown ggml type 77"));

    // Version 1, big-endian, future versions, wrong magic.
    for (patch, at, want) in [
        (&1u32.to_le_bytes()[..], 4, "version 1 is not supported"),
        (&3u32.to_be_bytes()[..], 4, "big-endian"),
        (&4u32.to_le_bytes()[..], 4, "unsupported GGUF version 4"),
        (&b"GGML"[..], 0, "not a GGUF file"),
    ] {
        let mut b = original.clone();
        b[at..at + patch.len()].copy_from_slice(patch);
        let msg = checkpoint_err(parse(b));
        assert!(msg.contains(want), "{msg}");
    }

    // Tensor data beyond the end of the file, via the offset field.
    let off_at = type_field(&original, "output.weight") + 4;
    let mut b = original.clone();
    b[off_at..off_at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert!(checkpoint_err(parse(b)).contains("beyond the end of the file"));
    let mut b = original.clone();
    b[off_at..off_at + 8].copy_from_slice(&33u64.to_le_bytes());
    assert!(checkpoint_err(parse(b)).contains("not a multiple of the alignment"));
    // A row that is not whole blocks.
    let dim_at = type_field(&original, "blk.0.attn_q.weight") - 16;
    let mut b = original.clone();
    b[dim_at..dim_at + 8].copy_from_slice(&31u64.to_le_bytes());
    assert!(checkpoint_err(parse(b)).contains("whole number of 32-value blocks"));
    // Overflowing dimensions.
    let mut b = original.clone();
    b[dim_at..dim_at + 16].copy_from_slice(&[0xff; 16]);
    let _ = checkpoint_err(parse(b));

    // Invalid UTF-8 in a string value: the first token, "<unk>".
    let mut needle = 5u64.to_le_bytes().to_vec();
    needle.extend_from_slice(b"<unk>");
    let p = original
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    let mut b = original.clone();
    b[p + 9] = 0xff;
    assert!(checkpoint_err(parse(b)).contains("not valid UTF-8"));

    // An empty file on disk, and a missing one.
    let empty = TempFile::new("empty");
    std::fs::write(&empty.0, b"").unwrap();
    assert!(checkpoint_err(GgufFile::open(&empty.0)).contains("empty"));
    assert!(matches!(
        GgufFile::open(Path::new("/nonexistent/x.gguf")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn truncated_files_are_errors() {
    let path = gguf_path("tiny-mha", "q8_0");
    let original = std::fs::read(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    let data_end = f
        .tensor_infos()
        .iter()
        .map(|t| f.data_offset() + t.offset as usize + t.n_bytes().unwrap())
        .max()
        .unwrap();
    let header_end = f.data_offset();
    let mut lengths: Vec<usize> = (0..200).collect();
    lengths.extend((200..header_end).step_by(4099));
    lengths.extend(header_end - 40..header_end + 40);
    lengths.extend((header_end..data_end).step_by(99_991));
    lengths.extend(data_end - 3..data_end);
    let n = lengths.len();
    for len in lengths {
        let r = GgufFile::from_bytes(original[..len].to_vec());
        let msg = checkpoint_err(r);
        assert!(
            msg.contains("truncated") || msg.contains("beyond the end") || msg.contains("empty"),
            "length {len}: {msg}"
        );
    }
    assert!(n > 300);
    // The same through a real file.
    let tmp = TempFile::new("trunc");
    std::fs::write(&tmp.0, &original[..data_end - 1]).unwrap();
    assert!(checkpoint_err(GgufFile::open(&tmp.0)).contains("beyond the end of the file"));
    // Truncating only trailing padding keeps the file valid.
    assert!(GgufFile::from_bytes(original[..data_end].to_vec()).is_ok());
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Parses `bytes` and, when that works, exercises every accessor: none may panic.
fn exercise(bytes: Vec<u8>) -> bool {
    let Ok(f) = GgufFile::from_bytes(bytes) else {
        return false;
    };
    for info in f.tensor_infos() {
        if let Ok(t) = f.tensor(&info.name) {
            assert_eq!(Some(t.bytes().len()), t.dtype.row_bytes(t.numel()));
            if t.numel() <= 1 << 16 {
                let _ = t.to_f32_vec();
            }
        }
    }
    let _ = f.context_length();
    let _ = gguf_model_weights(&f, Path::new("fuzz.gguf"));
    true
}

#[test]
fn mutated_files_never_panic() {
    // A small file with every value type, nested arrays and every supported dtype.
    let mut w = GgufWriter::new();
    w.add("general.architecture", GgufValue::String("llama".into()))
        .unwrap();
    for (k, v) in [
        ("llama.embedding_length", GgufValue::U32(32)),
        ("llama.block_count", GgufValue::U64(1)),
        ("llama.attention.head_count", GgufValue::I32(4)),
        ("llama.feed_forward_length", GgufValue::U16(32)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-5),
        ),
        ("x.f64", GgufValue::F64(0.5)),
        ("x.i8", GgufValue::I8(-1)),
        ("x.i16", GgufValue::I16(-1)),
        ("x.i64", GgufValue::I64(-1)),
        ("x.u8", GgufValue::U8(1)),
        ("x.bool", GgufValue::Bool(true)),
        (
            "x.nested",
            GgufValue::Array(vec![
                GgufValue::Array(vec![GgufValue::String("ab".into())]),
                GgufValue::Array(vec![]),
            ]),
        ),
    ] {
        w.add(k, v).unwrap();
    }
    let dtypes = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::Q8_0,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
    ];
    let mut seed = 0x2545F4914F6CDD1Du64;
    for (i, d) in dtypes.iter().enumerate() {
        let shape = [2, 256];
        let n = d.row_bytes(512).unwrap();
        let bytes: Vec<u8> = (0..n).map(|_| xorshift(&mut seed) as u8).collect();
        w.add_tensor_bytes(format!("t{i}"), *d, &shape, bytes)
            .unwrap();
    }
    let small = w.to_bytes().unwrap();
    assert!(exercise(small.clone()));

    let big = std::fs::read(gguf_path("tiny-mha", "q8_0")).unwrap();
    let header_end = GgufFile::from_bytes(big.clone()).unwrap().data_offset();
    let tensor_infos_start = big
        .windows(17)
        .position(|w| w == b"token_embd.weight")
        .unwrap()
        - 8;

    let mut ok = 0;
    for iter in 0..600 {
        let (mut b, lo, hi) = if iter % 3 == 0 {
            // Mutations in the fixture's header: the first KB or the tensor infos.
            let (lo, hi) = if iter % 2 == 0 {
                (0, 1024)
            } else {
                (tensor_infos_start, header_end)
            };
            (big.clone(), lo, hi)
        } else {
            let len = small.len();
            (small.clone(), 0, len)
        };
        let n_mut = 1 + (xorshift(&mut seed) % 8) as usize;
        for _ in 0..n_mut {
            let at = lo + (xorshift(&mut seed) as usize) % (hi - lo);
            b[at] = match xorshift(&mut seed) % 4 {
                0 => 0,
                1 => 0xff,
                2 => b[at] ^ (1 << (xorshift(&mut seed) % 8)),
                _ => xorshift(&mut seed) as u8,
            };
        }
        if xorshift(&mut seed).is_multiple_of(8) {
            let cut = (xorshift(&mut seed) as usize) % b.len();
            b.truncate(cut);
        }
        ok += exercise(b) as usize;
    }
    // Most single-field mutations still parse or fail cleanly; some parse.
    assert!(ok > 0);
}

/// Bit patterns of a JSON array of u32.
fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn quant_reference_vectors() {
    let dir = common::fixtures().join("quant");
    for (name, dtype) in [
        ("Q8_0", DType::Q8_0),
        ("Q4_0", DType::Q4_0),
        ("Q4_1", DType::Q4_1),
        ("Q4_K", DType::Q4_K),
        ("Q5_K", DType::Q5_K),
        ("Q6_K", DType::Q6_K),
    ] {
        let q = std::fs::read(dir.join(format!("{name}.bin"))).unwrap();
        let meta: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(meta["type"], name);
        assert_eq!(
            meta["block_size"].as_u64().unwrap() as usize,
            dtype.block_size()
        );
        assert_eq!(
            meta["block_bytes"].as_u64().unwrap() as usize,
            dtype.block_bytes()
        );
        let n = meta["n_values"].as_u64().unwrap() as usize;
        assert_eq!(Some(q.len()), dtype.row_bytes(n));
        let want = u32s(&meta["dequant_f32_bits"]);
        let mut got = vec![0.0f32; n];
        dequantize(dtype, &q, &mut got);
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits(),
                *b,
                "{name} dequantize, value {i}: {a} vs {}",
                f32::from_bits(*b)
            );
        }
        // The kernel used by the model (via convert) agrees.
        let mut via_convert = vec![0.0f32; n];
        llama2::quant::to_f32(dtype, &q, &mut via_convert);
        assert_eq!(via_convert, got);
        if !meta["input_f32_bits"].is_null() {
            let x: Vec<f32> = u32s(&meta["input_f32_bits"])
                .into_iter()
                .map(f32::from_bits)
                .collect();
            let mut out = Vec::new();
            quantize(dtype, &x, &mut out).unwrap();
            assert_eq!(out.len(), q.len());
            for (i, (a, b)) in out.iter().zip(&q).enumerate() {
                assert_eq!(
                    a,
                    b,
                    "{name} quantize, byte {i} (block {})",
                    i / dtype.block_bytes()
                );
            }
        }
    }
}

#[test]
fn wrong_typed_context_length_is_an_error_naming_the_key() {
    let src = GgufFile::open(&gguf_path("tiny-gqa", "q8_0")).unwrap();
    let bytes = rewrite(
        &src,
        |k, v| {
            Some(if k == "llama.context_length" {
                GgufValue::String("4096".into())
            } else {
                v.clone()
            })
        },
        |_| true,
    );
    let path = std::env::temp_dir().join(format!("ctx-type-{}.gguf", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let Err(e) = llama2::load_model(&path, None) else {
        panic!("a string context_length was accepted");
    };
    std::fs::remove_file(&path).ok();
    assert!(e.to_string().contains("llama.context_length"), "{e}");
}
