//! Helpers shared by the integration tests: fixture paths, golden files, `.npy` reader.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use llama2::tokenizer::{BpeTokenizer, BpeVocab};
use serde::Deserialize;
use serde_json::Value;

/// `tests/fixtures` at the repository root.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn tokenizer_path() -> PathBuf {
    fixtures().join("tokenizer/tokenizer.model")
}

pub fn model_dir(model: &str) -> PathBuf {
    fixtures().join("models").join(model)
}

pub fn golden(model: &str) -> Value {
    let text = std::fs::read_to_string(model_dir(model).join("golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Reads a little-endian float32, C-order, 2-D `.npy` file: (rows, cols, data).
pub fn read_npy(path: &Path) -> (usize, usize, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{}", path.display());
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'fortran_order': False"));
    let shape = &header[header.find("'shape': (").unwrap() + 10..];
    let shape = &shape[..shape.find(')').unwrap()];
    let dims: Vec<usize> = shape
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert_eq!(data.len(), dims[0] * dims[1]);
    (dims[0], dims[1], data)
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Copies a folder (flat) into a fresh temporary folder and returns its path.
pub fn temp_copy(src: &Path, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!(
        "llama2-test-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> T {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// `tests/fixtures/tokenizer/smollm2_vocab.json` (written by scripts/make-smollm2-vocab-json.py).
#[derive(Deserialize)]
pub struct GgufBpeVocab {
    pub pre: String,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub unknown_token_id: Option<u32>,
    pub padding_token_id: Option<u32>,
    pub add_bos_token: Option<bool>,
    pub add_eos_token: Option<bool>,
    pub tokens: Vec<String>,
    pub token_type: Vec<i32>,
    pub merges: Vec<String>,
}

pub fn smollm2_vocab() -> GgufBpeVocab {
    read_json(&fixtures().join("tokenizer/smollm2_vocab.json"))
}

pub fn bpe_vocab(v: GgufBpeVocab) -> BpeVocab {
    BpeVocab {
        tokens: v.tokens,
        token_types: v.token_type,
        merges: v.merges,
        pre: v.pre,
        bos_id: v.bos_token_id,
        eos_id: v.eos_token_id,
        unk_id: v.unknown_token_id,
        pad_id: v.padding_token_id,
        add_bos: v.add_bos_token,
        add_eos: v.add_eos_token,
        tiktoken: false,
    }
}

pub fn smollm2() -> BpeTokenizer {
    BpeTokenizer::from_vocab(bpe_vocab(smollm2_vocab())).expect("SmolLM2 vocab loads")
}
