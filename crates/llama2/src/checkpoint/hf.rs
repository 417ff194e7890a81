//! Hugging Face model folders: `config.json` + `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), mapped to Meta names with the rotary q/k row
//! permutation undone, plus `generation_config.json` defaults.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::{Dtype as StDtype, SafeTensors};
use serde::Deserialize;
use serde_json::Value;

use super::ModelWeights;
use crate::config::{with_key_names, ModelArgs, RopeScaling};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{map_file, Storage, Tensor};

/// `config.json` of a Llama-architecture model (transformers 4.x and 5.x spellings).
#[derive(Clone, Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    vocab_size: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    /// transformers 4.x: top level (absent means 10000).
    #[serde(default)]
    rope_theta: Option<f64>,
    /// transformers 5.x: `{"rope_theta": .., "rope_type": "default"}`.
    #[serde(default)]
    rope_parameters: Option<Value>,
    /// transformers 4.x rope scaling (none, default or llama3).
    #[serde(default)]
    rope_scaling: Option<Value>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
}

fn default_eps() -> f64 {
    1e-6
}

/// Sampling defaults and special ids from `generation_config.json`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    /// Default temperature, if the model sets one.
    pub temperature: Option<f32>,
    /// Default top-p, if the model sets one.
    pub top_p: Option<f32>,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids (one or several).
    pub eos_token_ids: Vec<u32>,
}

/// A loaded Hugging Face folder.
#[derive(Clone, Debug)]
pub struct HfModel {
    /// Weights under Meta names and layout.
    pub weights: ModelWeights,
    /// `max_position_embeddings`.
    pub context_length: Option<usize>,
    /// `generation_config.json` (empty when absent).
    pub generation: GenerationDefaults,
    /// Element type the config declares (`dtype` / `torch_dtype`), for display.
    pub declared_dtype: Option<String>,
}

fn read_json(path: &Path) -> Result<Value> {
    let text = crate::files::read_json_text(path)?;
    serde_json::from_str(&text).map_err(|e| Error::checkpoint(path, format!("invalid JSON: {e}")))
}

/// Model arguments from a parsed `config.json`.
fn model_args(path: &Path, cfg: &HfConfig) -> Result<ModelArgs> {
    let bad = |m: String| Error::checkpoint(path, m);
    let is_llama = cfg.model_type.as_deref() == Some("llama")
        || cfg.architectures.iter().any(|a| a == "LlamaForCausalLM");
    if !is_llama {
        return Err(bad(format!(
            "architecture {:?} (model_type {:?}) is not supported: only Llama models are",
            cfg.architectures, cfg.model_type
        )));
    }
    if cfg.attention_bias || cfg.mlp_bias {
        return Err(bad("attention or MLP biases are not supported".into()));
    }
    let rope_type = |v: &Value| -> Result<Option<String>> {
        match v.get("rope_type").or_else(|| v.get("type")) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(bad(format!("rope_type {other} is not a string"))),
        }
    };
    let mut theta = cfg.rope_theta.unwrap_or(10000.0);
    let mut rope_scaling = None;
    // transformers 5.x puts theta and the scaling together in `rope_parameters`; 4.x
    // has `rope_theta` and `rope_scaling`.
    for p in [&cfg.rope_parameters, &cfg.rope_scaling]
        .into_iter()
        .flatten()
    {
        if p.is_null() {
            continue;
        }
        if let Some(t) = p.get("rope_theta") {
            theta = t
                .as_f64()
                .ok_or_else(|| bad(format!("rope_theta {t} is not a number")))?;
        }
        match rope_type(p)?.as_deref() {
            None | Some("default") => {}
            Some("llama3") => rope_scaling = Some(llama3_scaling(p).map_err(bad)?),
            Some(t) => return Err(bad(format!("rope type {t} is not supported"))),
        }
    }
    if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return Err(bad(
            "hidden_size must be a multiple of num_attention_heads".into()
        ));
    }
    let head_dim = cfg.hidden_size / cfg.num_attention_heads;
    if let Some(h) = cfg.head_dim.filter(|&h| h != head_dim) {
        return Err(bad(format!(
            "head_dim {h} differs from hidden_size / num_attention_heads = {head_dim}: not supported"
        )));
    }
    let args = ModelArgs {
        dim: cfg.hidden_size,
        n_layers: cfg.num_hidden_layers,
        n_heads: cfg.num_attention_heads,
        n_kv_heads: cfg.num_key_value_heads,
        vocab_size: i64::try_from(cfg.vocab_size)
            .map_err(|_| bad(format!("vocab_size {} is out of range", cfg.vocab_size)))?,
        multiple_of: 1,
        ffn_dim_multiplier: None,
        norm_eps: cfg.rms_norm_eps,
        rope_theta: theta,
        ffn_hidden_dim: Some(cfg.intermediate_size),
        rope_scaling,
        ..ModelArgs::default()
    };
    args.validate().map_err(|e| {
        let names = [
            ("dim", "hidden_size"),
            ("n_layers", "num_hidden_layers"),
            ("n_heads", "num_attention_heads"),
            ("n_kv_heads", "num_key_value_heads"),
            ("ffn_hidden_dim", "intermediate_size"),
            ("norm_eps", "rms_norm_eps"),
        ];
        bad(with_key_names(&e.to_string(), &names))
    })?;
    Ok(args)
}

/// The `llama3` rope scaling of a `rope_scaling` / `rope_parameters` object; every
/// number must be present (transformers requires them too).
fn llama3_scaling(p: &Value) -> std::result::Result<RopeScaling, String> {
    let num = |key: &str| {
        p.get(key)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("llama3 rope scaling: '{key}' is missing or not a number"))
    };
    Ok(RopeScaling::Llama3 {
        factor: num("factor")?,
        low_freq_factor: num("low_freq_factor")?,
        high_freq_factor: num("high_freq_factor")?,
        original_context: num("original_max_position_embeddings")?,
    })
}

fn generation_defaults(dir: &Path) -> Result<GenerationDefaults> {
    let path = dir.join("generation_config.json");
    if !path.is_file() {
        return Ok(GenerationDefaults::default());
    }
    let v = read_json(&path)?;
    let id = |v: &Value| v.as_u64().and_then(|x| u32::try_from(x).ok());
    let eos = match &v["eos_token_id"] {
        Value::Array(a) => a.iter().filter_map(id).collect(),
        other => id(other).into_iter().collect(),
    };
    Ok(GenerationDefaults {
        temperature: v["temperature"].as_f64().map(|t| t as f32),
        top_p: v["top_p"].as_f64().map(|t| t as f32),
        bos_token_id: id(&v["bos_token_id"]),
        eos_token_ids: eos,
    })
}

/// The safetensors files of `dir`: the index's shards, or `model.safetensors`.
fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let v = read_json(&index)?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| Error::checkpoint(&index, "no \"weight_map\" object in the index"))?;
        let mut files = BTreeSet::new();
        for f in map.values() {
            let name = f.as_str().filter(|n| !n.contains('/') && !n.contains('\\'));
            let name = name.ok_or_else(|| {
                Error::checkpoint(&index, format!("bad shard file name {f} in weight_map"))
            })?;
            files.insert(name.to_string());
        }
        let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(f)).collect();
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(Error::checkpoint(
                &index,
                format!("the index names {}, which is missing", missing.display()),
            ));
        }
        return Ok(paths);
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::checkpoint(
        dir,
        "no model.safetensors or model.safetensors.index.json in the folder",
    ))
}

/// Every tensor of one safetensors file, zero-copy.
fn load_safetensors(path: &Path, out: &mut HashMap<String, Tensor>) -> Result<()> {
    let map = map_file(path)?;
    let base = map.as_ptr() as usize;
    add_safetensors(path, &map, out, |data| Storage::Mapped {
        map: Arc::clone(&map),
        offset: data.as_ptr() as usize - base,
        len: data.len(),
    })
}

/// Parses safetensors `bytes` (the crate checks the header length, every offset and
/// every shape against the data) and adds its tensors to `out`; `storage` turns a
/// tensor's bytes (a slice of `bytes`) into its storage.
fn add_safetensors(
    path: &Path,
    bytes: &[u8],
    out: &mut HashMap<String, Tensor>,
    storage: impl Fn(&[u8]) -> Storage,
) -> Result<()> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::checkpoint(path, format!("invalid safetensors file: {e}")))?;
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            StDtype::F32 => DType::F32,
            StDtype::F16 => DType::F16,
            StDtype::BF16 => DType::BF16,
            other => {
                return Err(Error::checkpoint(
                    path,
                    format!("tensor '{name}' has dtype {other:?}; supported: F32, F16, BF16"),
                ))
            }
        };
        let tensor = Tensor {
            dtype,
            shape: view.shape().to_vec(),
            storage: storage(view.data()),
        };
        if out.insert(name.clone(), tensor).is_some() {
            return Err(Error::checkpoint(
                path,
                format!("tensor '{name}' appears twice"),
            ));
        }
    }
    Ok(())
}

/// Undoes Hugging Face's rotary permutation of q/k rows: HF row `h*hd + j*hd/2 + i`
/// holds Meta row `h*hd + 2*i + j`.
fn unpermute_rows(t: &Tensor, n_heads: usize) -> Tensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let hd = rows / n_heads;
    let rb = cols * t.dtype.size();
    let src = t.bytes();
    let mut dst = vec![0u8; src.len()];
    for h in 0..n_heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let meta = h * hd + 2 * i + j;
                let hf = h * hd + j * (hd / 2) + i;
                dst[meta * rb..(meta + 1) * rb].copy_from_slice(&src[hf * rb..(hf + 1) * rb]);
            }
        }
    }
    Tensor {
        dtype: t.dtype,
        shape: t.shape.clone(),
        storage: Storage::Owned(Arc::new(dst)),
    }
}

/// Loads a Hugging Face Llama folder.
pub fn load_hf_folder(dir: &Path) -> Result<HfModel> {
    let cfg_path = dir.join("config.json");
    if !cfg_path.is_file() {
        return Err(Error::checkpoint(dir, "no config.json in the folder"));
    }
    let raw = read_json(&cfg_path)?;
    // The configuration is validated before any shard is opened.
    let (cfg, args) = parse_config(&cfg_path, &raw)?;
    let mut hf = HashMap::new();
    for f in shard_files(dir)? {
        load_safetensors(&f, &mut hf)?;
    }
    let weights = assemble(&cfg_path, dir, &cfg, args, hf)?;
    let declared_dtype = raw
        .get("dtype")
        .or_else(|| raw.get("torch_dtype"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(HfModel {
        weights,
        context_length: cfg.max_position_embeddings,
        generation: generation_defaults(dir)?,
        declared_dtype,
    })
}

/// Builds a Hugging Face Llama model from memory: the text of `config.json` and the
/// bytes of its safetensors files, with every check [`load_hf_folder`] makes (the
/// tensors are copied out of `safetensors`). For callers that already hold the files,
/// tests and fuzzing.
pub fn hf_weights_from_bytes(config_json: &[u8], safetensors: &[&[u8]]) -> Result<ModelWeights> {
    let dir = Path::new("<memory>");
    let cfg_path = dir.join("config.json");
    let raw: Value = serde_json::from_slice(config_json)
        .map_err(|e| Error::checkpoint(&cfg_path, format!("invalid JSON: {e}")))?;
    let (cfg, args) = parse_config(&cfg_path, &raw)?;
    let mut hf = HashMap::new();
    for bytes in safetensors {
        add_safetensors(&dir.join("model.safetensors"), bytes, &mut hf, |data| {
            Storage::Owned(Arc::new(data.to_vec()))
        })?;
    }
    assemble(&cfg_path, dir, &cfg, args, hf)
}

/// The typed `config.json` and the validated model arguments it describes.
fn parse_config(cfg_path: &Path, raw: &Value) -> Result<(HfConfig, ModelArgs)> {
    let cfg: HfConfig = serde_json::from_value(raw.clone())
        .map_err(|e| Error::checkpoint(cfg_path, format!("invalid config: {e}")))?;
    let args = model_args(cfg_path, &cfg)?;
    Ok((cfg, args))
}

/// Checks the validated configuration against the tensors of the safetensors files and
/// renames them to Meta's names and layout.
fn assemble(
    cfg_path: &Path,
    dir: &Path,
    cfg: &HfConfig,
    args: ModelArgs,
    mut hf: HashMap<String, Tensor>,
) -> Result<ModelWeights> {
    args.check_layers(hf.len(), "num_hidden_layers")
        .map_err(|m| Error::checkpoint(cfg_path, m))?;
    let missing = |n: &str| Error::checkpoint(dir, format!("tensor '{n}' is missing"));
    let mut names: Vec<(String, String)> = vec![
        (
            "model.embed_tokens.weight".into(),
            "tok_embeddings.weight".into(),
        ),
        ("model.norm.weight".into(), "norm.weight".into()),
    ];
    for i in 0..args.n_layers {
        for (h, meta) in [
            ("self_attn.q_proj", "attention.wq"),
            ("self_attn.k_proj", "attention.wk"),
            ("self_attn.v_proj", "attention.wv"),
            ("self_attn.o_proj", "attention.wo"),
            ("mlp.gate_proj", "feed_forward.w1"),
            ("mlp.down_proj", "feed_forward.w2"),
            ("mlp.up_proj", "feed_forward.w3"),
            ("input_layernorm", "attention_norm"),
            ("post_attention_layernorm", "ffn_norm"),
        ] {
            names.push((
                format!("model.layers.{i}.{h}.weight"),
                format!("layers.{i}.{meta}.weight"),
            ));
        }
    }
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (hf_name, meta) in names {
        let t = hf.remove(&hf_name).ok_or_else(|| missing(&hf_name))?;
        tensors.insert(meta, t);
    }
    let n_kv = args.n_kv_heads();
    for i in 0..args.n_layers {
        for (w, heads) in [("wq", args.n_heads), ("wk", n_kv)] {
            let name = format!("layers.{i}.attention.{w}.weight");
            if let Some(t) = tensors.get(&name) {
                if t.shape.len() != 2 || t.shape[0] % (2 * heads) != 0 {
                    return Err(Error::Shape {
                        name,
                        expected: vec![heads * args.head_dim(), args.dim],
                        found: t.shape.clone(),
                    });
                }
                let fixed = unpermute_rows(t, heads);
                tensors.insert(name, fixed);
            }
        }
    }
    let output = match hf.remove("lm_head.weight") {
        Some(t) => t,
        // Tied: the embedding doubles as the output layer (shares the mapping).
        None if cfg.tie_word_embeddings => tensors["tok_embeddings.weight"].clone(),
        None => return Err(missing("lm_head.weight")),
    };
    tensors.insert("output.weight".into(), output);
    let embedding = &tensors["tok_embeddings.weight"].shape;
    if embedding.first() != Some(&cfg.vocab_size) {
        return Err(Error::Shape {
            name: "model.embed_tokens.weight".into(),
            expected: vec![cfg.vocab_size, args.dim],
            found: embedding.clone(),
        });
    }
    Ok(ModelWeights {
        args,
        tensors,
        vocab_size: cfg.vocab_size,
    })
}
