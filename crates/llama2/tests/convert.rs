//! `llama2 convert`: GGUF files written from the Meta fixture load in llama2 and in
//! llama.cpp and give the same greedy tokens in both (llama.cpp's, recorded by
//! scripts/record-convert-parity.py on byte-identical files), and Q8_0 conversion
//! reproduces the gguf package's quantization of the same weights byte for byte.

mod common;

use common::*;
use llama2::checkpoint::gguf::GgufFile;
use llama2::convert::convert_to_gguf;
use llama2::tensor::DType;
use llama2::{load_model, GenerationOptions, Llama};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn temp_out(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("llama2-convert-{tag}-{}.gguf", std::process::id()))
}

fn dtype(t: &str) -> DType {
    match t {
        "f16" => DType::F16,
        "q8_0" => DType::Q8_0,
        "q4_0" => DType::Q4_0,
        other => panic!("{other}"),
    }
}

#[test]
fn converted_files_match_llama_cpp_greedy_tokens() {
    let r: Value = read_json(&fixtures().join("parity/convert_tiny_gqa.json"));
    let model = load_model(&model_dir("tiny-gqa").join("meta"), Some(&tokenizer_path())).unwrap();
    for c in r["cases"].as_array().unwrap() {
        let t = c["type"].as_str().unwrap();
        let out = temp_out(t);
        convert_to_gguf(&model, &out, dtype(t)).unwrap();
        let sha: String = Sha256::digest(std::fs::read(&out).unwrap())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            sha,
            c["sha256"].as_str().unwrap(),
            "{t}: not the file llama.cpp was run on"
        );
        let llama = Llama::open(&out).max_seq_len(64).build().unwrap();
        let prompt = llama
            .tokenizer()
            .encode(c["prompt"].as_str().unwrap(), true, false);
        assert_eq!(prompt, ids(&c["prompt_ids"]), "{t}: prompt ids");
        let want: Vec<u32> = c["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["token"].as_u64().unwrap() as u32)
            .collect();
        let opts = GenerationOptions {
            temperature: 0.0,
            max_gen_len: Some(want.len()),
            ..Default::default()
        };
        let got = llama
            .generate(std::slice::from_ref(&prompt), &opts)
            .unwrap()
            .remove(0)
            .tokens;
        let steps = c["steps"].as_array().unwrap();
        let gap = |i: usize| steps[i]["gap"].as_f64().unwrap();
        if t == "f16" {
            // Float weights: every one of llama.cpp's tokens.
            assert_eq!(got, want, "{t}: greedy tokens differ from llama.cpp's");
        } else {
            // 8-bit arithmetic on a random tiny model leaves near-ties (gaps down to
            // 0.002): (a) equal up to llama.cpp's first gap below 0.1, (b) teacher-forced
            // argmax equal wherever our own gap is at least 0.25.
            let k = (0..want.len())
                .find(|&i| gap(i) < 0.1)
                .unwrap_or(want.len());
            assert_eq!(got[..k], want[..k], "{t}: free-running");
            let mut seq = prompt.clone();
            seq.extend_from_slice(&want[..want.len() - 1]);
            let logits = llama.logits(&seq).unwrap();
            let v = llama.model().vocab_size();
            let mut clear = 0;
            for (i, &w) in want.iter().enumerate() {
                let row = &logits[(prompt.len() - 1 + i) * v..(prompt.len() + i) * v];
                let mut o: Vec<usize> = (0..v).collect();
                o.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
                if row[o[0]] - row[o[1]] >= 0.25 {
                    clear += 1;
                    assert_eq!(o[0] as u32, w, "{t} step {i}");
                }
            }
            assert!(clear >= 5, "{t}: only {clear} clear steps");
        }
        std::fs::remove_file(&out).ok();
    }
}

#[test]
fn q8_0_conversion_equals_the_reference_quantization() {
    // The fixture's Q8_0 GGUF was quantized by the gguf Python package from the same
    // weights; our converter must produce the same bytes for every 2-D tensor.
    for model in ["tiny-mha", "tiny-gqa"] {
        let m = load_model(&model_dir(model).join("meta"), Some(&tokenizer_path())).unwrap();
        let out = temp_out(&format!("{model}-q8"));
        convert_to_gguf(&m, &out, DType::Q8_0).unwrap();
        let ours = GgufFile::open(&out).unwrap();
        let theirs =
            GgufFile::open(&model_dir(model).join(format!("gguf/{model}-q8_0.gguf"))).unwrap();
        assert_eq!(ours.tensor_infos().len(), theirs.tensor_infos().len());
        for info in theirs.tensor_infos() {
            let a = ours.tensor(&info.name).unwrap();
            let b = theirs.tensor(&info.name).unwrap();
            assert_eq!(
                (a.dtype, &a.shape),
                (b.dtype, &b.shape),
                "{model} {}",
                info.name
            );
            assert!(
                a.bytes() == b.bytes(),
                "{model} {}: bytes differ",
                info.name
            );
        }
        std::fs::remove_file(&out).ok();
    }
}

#[test]
fn converter_rejects_unsupported_targets() {
    let m = load_model(&model_dir("tiny-mha").join("meta"), Some(&tokenizer_path())).unwrap();
    let e = convert_to_gguf(&m, &temp_out("bad"), DType::Q6_K).unwrap_err();
    assert!(matches!(e, llama2::Error::InvalidArgument(_)), "{e:?}");
}
