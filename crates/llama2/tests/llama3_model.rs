//! The Llama 3 architecture (llama3-scaled RoPE, tied embeddings, GQA, tiktoken
//! vocabulary) against transformers' float32 forward: `tests/fixtures/models/tiny-llama3`
//! in Meta, Hugging Face and GGUF layouts (`scripts/make-tiny-llama3.py`).

mod common;

use common::*;
use llama2::chat::ChatTemplate;
use llama2::{Dialog, Llama};

const FORMATS: [&str; 3] = ["meta", "hf", "gguf"];

fn build(format: &str) -> Llama {
    let dir = model_dir("tiny-llama3");
    let b = match format {
        "meta" => Llama::open(dir.join("meta")).tokenizer(dir.join("meta/tokenizer.model")),
        "hf" => Llama::open(dir.join("hf")),
        _ => Llama::open(dir.join("gguf/tiny-llama3-f32.gguf")),
    };
    b.max_seq_len(128)
        .max_batch_size(1)
        .build()
        .unwrap_or_else(|e| panic!("tiny-llama3/{format}: {e}"))
}

#[test]
fn logits_at_every_position_match_transformers() {
    let g = golden("tiny-llama3");
    for format in FORMATS {
        let llama = build(format);
        let args = llama.model().args();
        assert!(args.rope_scaling.is_some(), "{format}: rope scaling read");
        let mut worst = 0.0f32;
        for c in g["cases"].as_array().unwrap() {
            let prompt = ids(&c["ids"]);
            let (rows, vocab, want) =
                read_npy(&model_dir("tiny-llama3").join(c["logits_file"].as_str().unwrap()));
            assert_eq!((rows, vocab), (prompt.len(), 1256));
            let got = llama.logits(&prompt).unwrap();
            let err = max_abs_diff(&got, &want);
            assert!(err < 1e-4, "{format} {}: max |Δlogit| {err}", c["name"]);
            worst = worst.max(err);
            if format == "gguf" {
                // llama.cpp on the same file (f32 KV cache, no flash attention).
                let file = format!("llama_cpp_{}", c["logits_file"].as_str().unwrap());
                let (_, _, cpp) = read_npy(&model_dir("tiny-llama3").join(file));
                let err = max_abs_diff(&got, &cpp);
                assert!(err < 1e-4, "gguf {} vs llama.cpp: {err}", c["name"]);
                eprintln!(
                    "tiny-llama3/gguf {}: max |logit - llama.cpp| = {err:.2e}",
                    c["name"]
                );
            }
            // The same ids from text, with this layout's tokenizer.
            if let Some(text) = c["text"].as_str() {
                assert_eq!(
                    llama.tokenizer().encode(text, true, false),
                    prompt,
                    "{format}"
                );
            }
        }
        eprintln!("tiny-llama3/{format}: max |logit - transformers| = {worst:.2e}");
    }
}

#[test]
fn chat_prompt_is_meta_s_llama3_format_in_every_layout() {
    let g = golden("tiny-llama3");
    let dialog: Dialog = serde_json::from_value(g["chat"]["dialog"].clone()).unwrap();
    let want = ids(&g["chat"]["prompt_ids"]);
    for format in FORMATS {
        let llama = build(format);
        // Meta's folder has no template: the built-in Llama 3 format; HF and GGUF carry
        // the Llama 3 Jinja template.
        if format == "meta" {
            assert_eq!(*llama.chat_template(), ChatTemplate::Llama3);
        }
        let got = llama
            .chat_template()
            .encode(llama.tokenizer(), &dialog)
            .unwrap();
        assert_eq!(got, want, "{format}");
        // The answer stops at <|eot_id|> whatever the layout.
        assert!(llama.chat_stop_ids().contains(&1009), "{format}");
    }
}

#[test]
fn scaled_rope_matters() {
    // Without the scaling the same weights give other logits: the fixture tests it.
    let dir = model_dir("tiny-llama3");
    let text = std::fs::read_to_string(dir.join("meta/params.json")).unwrap();
    let mut args = llama2::ModelArgs::from_json(&text).unwrap();
    let scaled = args.rope_frequencies();
    args.rope_scaling = None;
    let plain = args.rope_frequencies();
    assert_eq!(scaled.len(), 16);
    // Bands for head_dim 32, theta 500000, original context 64: 0-1 kept, 2 blended
    // (divided by 2.44226 as llama.cpp's rope_freqs says), 3.. divided by 8.
    assert_eq!(scaled[..2], plain[..2]);
    assert!((plain[2] / scaled[2] - 2.442_259_6).abs() < 1e-4);
    for i in 3..16 {
        assert!((plain[i] / scaled[i] - 8.0).abs() < 1e-4, "{i}");
    }
}

#[test]
fn converting_to_gguf_keeps_scaling_and_tied_embeddings() {
    let dir = model_dir("tiny-llama3");
    let loaded =
        llama2::load_model(&dir.join("meta"), Some(&dir.join("meta/tokenizer.model"))).unwrap();
    let out = std::env::temp_dir().join(format!("tiny-llama3-{}.gguf", std::process::id()));
    llama2::convert::convert_to_gguf(&loaded, &out, llama2::tensor::DType::F32).unwrap();
    let file = llama2::checkpoint::gguf::GgufFile::open(&out).unwrap();
    assert!(file.tensor_info("rope_freqs.weight").is_some());
    assert!(
        file.tensor_info("output.weight").is_none(),
        "tied: no output.weight"
    );
    let llama = Llama::open(&out)
        .max_seq_len(64)
        .max_batch_size(1)
        .build()
        .unwrap();
    let g = golden("tiny-llama3");
    let c = &g["cases"][0];
    let (_, _, want) = read_npy(&dir.join(c["logits_file"].as_str().unwrap()));
    let got = llama.logits(&ids(&c["ids"])).unwrap();
    assert!(max_abs_diff(&got, &want) < 1e-4);
    std::fs::remove_file(&out).ok();
}
