//! Hugging Face folders (config.json + safetensors) against the Meta-format fixtures
//! holding the same weights and against the reference goldens.

mod common;

use std::path::Path;

use common::*;
use llama2::checkpoint::hf::load_hf_folder;
use llama2::checkpoint::load_meta_checkpoint;
use llama2::model::Transformer;
use llama2::{Error, Llama, Tokenizer};
use serde_json::{json, Value};

fn llama_from_hf(dir: &Path) -> Llama {
    let hf = load_hf_folder(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut w = hf.weights;
    let model = Transformer::from_tensors(&w.args, w.vocab_size, &mut w.tensors).unwrap();
    let tok = Tokenizer::from_file(&dir.join("tokenizer.model")).unwrap();
    Llama::new(model, tok, 128, 1, None, 1).unwrap()
}

fn meta_llama(model: &str) -> Llama {
    Llama::build(model_dir(model).join("meta"), tokenizer_path(), 128, 1).unwrap()
}

#[test]
fn hf_folders_give_the_meta_logits() {
    for model in ["tiny-mha", "tiny-gqa"] {
        let g = golden(model);
        let hf = llama_from_hf(&model_dir(model).join("hf"));
        let meta = meta_llama(model);
        let (_, vocab, last) = read_npy(&model_dir(model).join("last_logits.npy"));
        for c in g["cases"].as_array().unwrap() {
            let p = ids(&c["prompt_ids"]);
            let a = hf.logits(&p).unwrap();
            let b = meta.logits(&p).unwrap();
            let err = max_abs_diff(&a, &b);
            assert!(err < 1e-4, "{model} {}: hf vs meta {err}", c["name"]);
            let row = c["last_logits_row"].as_u64().unwrap() as usize;
            let err = max_abs_diff(
                &a[(p.len() - 1) * vocab..],
                &last[row * vocab..(row + 1) * vocab],
            );
            assert!(err < 1e-4, "{model} {}: hf vs golden {err}", c["name"]);
        }
        // The un-permuted q/k rows are exactly Meta's.
        let hfw = load_hf_folder(&model_dir(model).join("hf"))
            .unwrap()
            .weights;
        let metaw = load_meta_checkpoint(&model_dir(model).join("meta")).unwrap();
        for name in [
            "layers.0.attention.wq.weight",
            "layers.1.attention.wk.weight",
        ] {
            assert_eq!(
                hfw.tensors[name].to_f32_vec(),
                metaw.tensors[name].to_f32_vec(),
                "{name}"
            );
        }
    }
}

#[test]
fn generation_config_is_read() {
    let hf = load_hf_folder(&model_dir("tiny-gqa").join("hf")).unwrap();
    assert_eq!(hf.generation.bos_token_id, Some(1));
    assert_eq!(hf.generation.eos_token_ids, vec![2]);
    assert_eq!(hf.generation.temperature, None);
    assert_eq!(hf.context_length, Some(256));
    assert_eq!(hf.declared_dtype.as_deref(), Some("bfloat16"));
}

/// A writable copy of a fixture's hf/ folder with its config edited.
fn with_config(model: &str, tag: &str, edit: impl Fn(&mut Value)) -> std::path::PathBuf {
    let dir = temp_copy(&model_dir(model).join("hf"), tag);
    let path = dir.join("config.json");
    let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    dir
}

#[test]
fn transformers_4_configs_load() {
    let p = ids(&golden("tiny-gqa")["cases"][0]["prompt_ids"]);
    let want = meta_llama("tiny-gqa").logits(&p).unwrap();
    // 4.x: rope_theta at top level and torch_dtype; or no rope_theta at all (10000).
    for (tag, theta) in [("v4-theta", Some(10000.0)), ("v4-none", None)] {
        let dir = with_config("tiny-gqa", tag, |c| {
            let o = c.as_object_mut().unwrap();
            o.remove("rope_parameters");
            let dtype = o.remove("dtype").unwrap();
            o.insert("torch_dtype".into(), dtype);
            o.insert("transformers_version".into(), json!("4.46.0"));
            if let Some(t) = theta {
                o.insert("rope_theta".into(), json!(t));
            }
        });
        let got = llama_from_hf(&dir).logits(&p).unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-4, "{tag}");
        let hf = load_hf_folder(&dir).unwrap();
        assert_eq!(hf.declared_dtype.as_deref(), Some("bfloat16"));
        std::fs::remove_dir_all(dir).ok();
    }
    // A different rope base must change the logits (the key is really read).
    let dir = with_config("tiny-gqa", "v5-theta", |c| {
        c["rope_parameters"]["rope_theta"] = json!(500000.0);
    });
    let got = llama_from_hf(&dir).logits(&p).unwrap();
    assert!(max_abs_diff(&got, &want) > 1e-3);
    std::fs::remove_dir_all(dir).ok();
}

/// Writes a safetensors file from (name, dtype, shape, bytes).
fn write_safetensors(path: &Path, tensors: &[(String, &str, Vec<usize>, Vec<u8>)]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0;
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes.len()]}),
        );
        offset += bytes.len();
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    for (_, _, _, bytes) in tensors {
        out.extend_from_slice(bytes);
    }
    std::fs::write(path, out).unwrap();
}

/// The fixture's tensors as (HF name, dtype string, shape, bytes).
fn fixture_tensors(model: &str) -> Vec<(String, &'static str, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(model_dir(model).join("hf/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut out = Vec::new();
    for (name, v) in header.as_object().unwrap() {
        if name == "__metadata__" {
            continue;
        }
        let dtype = match v["dtype"].as_str().unwrap() {
            "F32" => "F32",
            "BF16" => "BF16",
            other => panic!("{other}"),
        };
        let shape = v["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let o = v["data_offsets"].as_array().unwrap();
        let (a, b) = (
            o[0].as_u64().unwrap() as usize,
            o[1].as_u64().unwrap() as usize,
        );
        out.push((name.clone(), dtype, shape, data[a..b].to_vec()));
    }
    out
}

#[test]
fn sharded_safetensors_with_index_load() {
    let model = "tiny-mha";
    let dir = temp_copy(&model_dir(model).join("hf"), "sharded");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let tensors = fixture_tensors(model);
    let (a, b) = tensors.split_at(tensors.len() / 2);
    write_safetensors(&dir.join("model-00001-of-00002.safetensors"), a);
    write_safetensors(&dir.join("model-00002-of-00002.safetensors"), b);
    let mut map = serde_json::Map::new();
    for (t, file) in a.iter().map(|t| (t, 1)).chain(b.iter().map(|t| (t, 2))) {
        map.insert(
            t.0.clone(),
            json!(format!("model-0000{file}-of-00002.safetensors")),
        );
    }
    let index = json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let p = ids(&golden(model)["cases"][2]["prompt_ids"]);
    let got = llama_from_hf(&dir).logits(&p).unwrap();
    assert!(max_abs_diff(&got, &meta_llama(model).logits(&p).unwrap()) < 1e-4);

    // The index naming a missing shard is a clear error.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_hf_folder(&dir).unwrap_err();
    assert!(
        matches!(e, Error::Checkpoint { .. })
            && e.to_string().contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_hf_folders_are_clear_errors() {
    let model = "tiny-gqa";
    // No config.json.
    let dir = temp_copy(&model_dir(model).join("hf"), "noconfig");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    let e = load_hf_folder(&dir).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
    // Not a Llama.
    let dir = with_config(model, "gpt2", |c| {
        c["model_type"] = json!("gpt2");
        c["architectures"] = json!(["GPT2LMHeadModel"]);
    });
    let e = load_hf_folder(&dir).unwrap_err();
    assert!(e.to_string().contains("GPT2LMHeadModel"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
    // A config that disagrees with the weights.
    let dir = with_config(model, "layers", |c| c["num_hidden_layers"] = json!(5));
    let e = load_hf_folder(&dir).unwrap_err();
    assert!(e.to_string().contains("num_hidden_layers is 5"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
    // Truncated and corrupt safetensors.
    let bytes = std::fs::read(model_dir(model).join("hf/model.safetensors")).unwrap();
    let dir = temp_copy(&model_dir(model).join("hf"), "trunc");
    for len in [0, 4, 8, 100, 1000, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(dir.join("model.safetensors"), &bytes[..len]).unwrap();
        let e = load_hf_folder(&dir).unwrap_err();
        assert!(matches!(e, Error::Checkpoint { .. }), "{len}: {e:?}");
    }
    // An unsupported element type names itself.
    write_safetensors(
        &dir.join("model.safetensors"),
        &[(
            "model.embed_tokens.weight".into(),
            "I32",
            vec![1],
            vec![0; 4],
        )],
    );
    let e = load_hf_folder(&dir).unwrap_err();
    assert!(e.to_string().contains("I32"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Bytes of a safetensors file from (name, dtype, shape, bytes), via a temporary file.
fn safetensors_bytes(tag: &str, tensors: &[(String, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let path = std::env::temp_dir().join(format!("llama2-st-{tag}-{}", std::process::id()));
    write_safetensors(&path, tensors);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(path).ok();
    bytes
}

#[test]
fn in_memory_loading_checks_what_folders_check() {
    let model = "tiny-gqa";
    let config = std::fs::read(model_dir(model).join("hf/config.json")).unwrap();
    let tensors = fixture_tensors(model);
    // The same weights as the folder.
    let st = safetensors_bytes("ok", &tensors);
    let mem = llama2::checkpoint::hf::hf_weights_from_bytes(&config, &[&st]).unwrap();
    let dir = load_hf_folder(&model_dir(model).join("hf"))
        .unwrap()
        .weights;
    assert_eq!(mem.args, dir.args);
    for (name, t) in &dir.tensors {
        assert_eq!(mem.tensors[name].bytes(), t.bytes(), "{name}");
    }
    // An embedding of rank 0 or 1 (once an index panic) is a shape error.
    let embedding = "model.embed_tokens.weight";
    for shape in [vec![], vec![32000 * 32]] {
        let edited: Vec<_> = tensors
            .iter()
            .map(|(n, d, s, b)| {
                let element = b.len() / s.iter().product::<usize>();
                let bytes = if n == embedding && shape.is_empty() {
                    b[..element].to_vec()
                } else {
                    b.clone()
                };
                let s = if n == embedding {
                    shape.clone()
                } else {
                    s.clone()
                };
                (n.clone(), *d, s, bytes)
            })
            .collect();
        let st = safetensors_bytes("rank", &edited);
        let e = llama2::checkpoint::hf::hf_weights_from_bytes(&config, &[&st]).unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{shape:?}: {e}");
    }
}
