//! GGUF files run end to end through `Llama::open` (weights and tokenizer from the GGUF
//! metadata) against the Meta-format fixtures and the Q8_0 goldens.

mod common;

use common::*;
use llama2::{GenerationOptions, Llama, Precision};

fn gguf(model: &str, kind: &str) -> std::path::PathBuf {
    model_dir(model).join(format!("gguf/{model}-{kind}.gguf"))
}

fn greedy() -> GenerationOptions {
    GenerationOptions {
        temperature: 0.0,
        max_gen_len: Some(24),
        ..Default::default()
    }
}

#[test]
fn f32_gguf_matches_the_meta_checkpoint_and_the_goldens() {
    let model = "tiny-gqa";
    let g = golden(model);
    let llama = Llama::open(gguf(model, "f32"))
        .max_seq_len(128)
        .build()
        .unwrap();
    let meta = Llama::build(model_dir(model).join("meta"), tokenizer_path(), 128, 1).unwrap();
    let (_, vocab, last) = read_npy(&model_dir(model).join("last_logits.npy"));
    for c in g["cases"].as_array().unwrap() {
        let p = ids(&c["prompt_ids"]);
        let got = llama.logits(&p).unwrap();
        assert!(max_abs_diff(&got, &meta.logits(&p).unwrap()) < 1e-4);
        let row = c["last_logits_row"].as_u64().unwrap() as usize;
        let err = max_abs_diff(
            &got[(p.len() - 1) * vocab..],
            &last[row * vocab..(row + 1) * vocab],
        );
        assert!(err < 1e-4, "{}: {err}", c["name"]);
        if c["kind"] == "text_completion" {
            // The tokenizer rebuilt from GGUF metadata encodes the prompt identically.
            let out = llama
                .text_completion(&[c["prompt"].as_str().unwrap()], &greedy())
                .unwrap();
            assert_eq!(out[0].generation, c["completion_text"].as_str().unwrap());
        }
    }
}

#[test]
fn q8_0_gguf_matches_its_goldens_with_exact_arithmetic() {
    for model in ["tiny-mha", "tiny-gqa"] {
        let text = std::fs::read_to_string(model_dir(model).join("gguf/q8_0_golden.json")).unwrap();
        let g: serde_json::Value = serde_json::from_str(&text).unwrap();
        let llama = Llama::open(gguf(model, "q8_0"))
            .max_seq_len(128)
            .precision(Precision::Exact)
            .build()
            .unwrap();
        let (_, vocab, last) = read_npy(&model_dir(model).join("gguf/q8_0_last_logits.npy"));
        let mut worst = 0.0f32;
        for c in g["cases"].as_array().unwrap() {
            let p = ids(&c["prompt_ids"]);
            let got = llama.logits(&p).unwrap();
            let row = c["last_logits_row"].as_u64().unwrap() as usize;
            let err = max_abs_diff(
                &got[(p.len() - 1) * vocab..],
                &last[row * vocab..(row + 1) * vocab],
            );
            assert!(err < 1e-4, "{model} {}: {err}", c["name"]);
            worst = worst.max(err);
            let out = llama.generate(&[p], &greedy()).unwrap();
            assert_eq!(
                out[0].tokens,
                ids(&c["completion_ids"]),
                "{model} {}",
                c["name"]
            );
        }
        eprintln!("{model} Q8_0 (exact): max |logit error| {worst:.2e}");
    }
}

#[test]
fn fast_q8_0_arithmetic_stays_close_to_exact() {
    // 8-bit activations differ from the f32 reference by a bounded amount (the
    // fixtures README expects about 0.1-0.4 in logits).
    let model = "tiny-gqa";
    let g = golden(model);
    let fast = Llama::open(gguf(model, "q8_0"))
        .max_seq_len(128)
        .build()
        .unwrap();
    let exact = Llama::open(gguf(model, "q8_0"))
        .max_seq_len(128)
        .precision(Precision::Exact)
        .build()
        .unwrap();
    let p = ids(&g["cases"][0]["prompt_ids"]);
    let d = max_abs_diff(&fast.logits(&p).unwrap(), &exact.logits(&p).unwrap());
    assert!(d > 0.0 && d < 0.5, "{d}");
}

#[test]
fn gguf_version_2_files_load_like_version_3() {
    // v2 and v3 share the layout (64-bit counts); v3 only added big-endian files.
    let bytes = std::fs::read(gguf("tiny-mha", "q8_0")).unwrap();
    assert_eq!(&bytes[4..8], &3u32.to_le_bytes());
    let mut v2 = bytes.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    let a = llama2::checkpoint::gguf::GgufFile::from_bytes(bytes).unwrap();
    let b = llama2::checkpoint::gguf::GgufFile::from_bytes(v2).unwrap();
    assert_eq!(b.version(), 2);
    assert_eq!(a.metadata(), b.metadata());
    for info in a.tensor_infos() {
        assert_eq!(
            a.tensor(&info.name).unwrap().bytes(),
            b.tensor(&info.name).unwrap().bytes()
        );
    }
}
