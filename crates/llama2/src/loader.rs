//! Opens any supported model path: detects the format (Meta checkpoint folder, Hugging
//! Face folder, GGUF file) from what is there, and loads weights, tokenizer, chat
//! template, context length and generation defaults.

use std::path::{Path, PathBuf};

use crate::checkpoint::gguf::{gguf_model_weights, GgufFile, GgufValue};
use crate::checkpoint::hf::{load_hf_folder, GenerationDefaults};
use crate::checkpoint::{load_meta_checkpoint, ModelWeights};
use crate::error::{Error, Result};
use crate::tokenizer::{BpeVocab, SentencePieceVocab, Tokenizer};

/// A checkpoint format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// `params.json` + `consolidated.NN.pth` (Meta's release).
    Meta,
    /// `config.json` + safetensors (Hugging Face).
    HuggingFace,
    /// A `.gguf` file (llama.cpp).
    Gguf,
}

impl ModelFormat {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            ModelFormat::Meta => "Meta checkpoint",
            ModelFormat::HuggingFace => "Hugging Face safetensors",
            ModelFormat::Gguf => "GGUF",
        }
    }
}

/// Everything needed to run a model, whatever format it came in.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    /// Where it came from.
    pub format: ModelFormat,
    /// The path that was opened.
    pub path: PathBuf,
    /// Weights under Meta names.
    pub weights: ModelWeights,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The Jinja chat template the model ships, if any.
    pub chat_template: Option<String>,
    /// The context length the model was trained for, if stated.
    pub context_length: Option<usize>,
    /// Sampling defaults and special ids the model states.
    pub generation: GenerationDefaults,
    /// The model's name, if stated.
    pub name: Option<String>,
}

/// Which format `path` holds.
pub fn detect(path: &Path) -> Result<ModelFormat> {
    if path.is_dir() {
        if path.join("params.json").is_file() {
            return Ok(ModelFormat::Meta);
        }
        if path.join("config.json").is_file() {
            return Ok(ModelFormat::HuggingFace);
        }
        return Err(Error::checkpoint(
            path,
            "not a model folder: expected params.json (Meta) or config.json (Hugging Face)",
        ));
    }
    if path.is_file() {
        let mut magic = [0u8; 4];
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        std::io::Read::read_exact(&mut f, &mut magic)
            .map_err(|_| Error::checkpoint(path, "file too short to be a model"))?;
        if &magic == b"GGUF" {
            return Ok(ModelFormat::Gguf);
        }
        return Err(Error::checkpoint(
            path,
            "not a GGUF file (no GGUF magic); other single-file formats are not supported",
        ));
    }
    Err(Error::checkpoint(path, "no such file or folder"))
}

/// Loads the model at `path`. `tokenizer` overrides where the tokenizer comes from
/// (required-ish for Meta folders, whose `tokenizer.model` sits beside the folder).
pub fn load_model(path: &Path, tokenizer: Option<&Path>) -> Result<LoadedModel> {
    match detect(path)? {
        ModelFormat::Meta => load_meta(path, tokenizer),
        ModelFormat::HuggingFace => load_hf(path, tokenizer),
        ModelFormat::Gguf => load_gguf(path, tokenizer),
    }
}

fn load_meta(dir: &Path, tokenizer: Option<&Path>) -> Result<LoadedModel> {
    let tok_path = match tokenizer {
        Some(t) => t.to_path_buf(),
        None => [dir.join("tokenizer.model"), dir.join("../tokenizer.model")]
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::checkpoint(
                    dir,
                    "no tokenizer.model in or beside the folder: pass --tokenizer",
                )
            })?,
    };
    let tokenizer = Tokenizer::from_file(&tok_path)?;
    let weights = load_meta_checkpoint(dir)?;
    Ok(LoadedModel {
        format: ModelFormat::Meta,
        path: dir.to_path_buf(),
        weights,
        tokenizer,
        chat_template: None,
        context_length: None,
        generation: GenerationDefaults::default(),
        name: dir.file_name().map(|n| n.to_string_lossy().into_owned()),
    })
}

/// `chat_template` of `tokenizer_config.json`: a string, or a list of named templates
/// of which "default" is used.
fn hf_chat_template(dir: &Path) -> Result<Option<String>> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = crate::files::read_json_text(&path)?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&path, format!("invalid JSON: {e}")))?;
    Ok(match &v["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    })
}

fn load_hf(dir: &Path, tokenizer: Option<&Path>) -> Result<LoadedModel> {
    let tokenizer = match tokenizer {
        Some(t) => Tokenizer::from_file(t)?,
        None if dir.join("tokenizer.model").is_file() => {
            Tokenizer::from_file(&dir.join("tokenizer.model"))?
        }
        None if dir.join("tokenizer.json").is_file() => {
            Tokenizer::from_hf_json(&dir.join("tokenizer.json"))?
        }
        None => {
            return Err(Error::checkpoint(
                dir,
                "no tokenizer.model or tokenizer.json in the folder",
            ))
        }
    };
    let hf = load_hf_folder(dir)?;
    Ok(LoadedModel {
        format: ModelFormat::HuggingFace,
        path: dir.to_path_buf(),
        weights: hf.weights,
        tokenizer,
        chat_template: hf_chat_template(dir)?,
        context_length: hf.context_length,
        generation: hf.generation,
        name: dir.file_name().map(|n| n.to_string_lossy().into_owned()),
    })
}

fn load_gguf(path: &Path, tokenizer: Option<&Path>) -> Result<LoadedModel> {
    let file = GgufFile::open(path)?;
    let weights = gguf_model_weights(&file, path)?;
    let tokenizer = match tokenizer {
        Some(t) => Tokenizer::from_file(t)?,
        None => tokenizer_from_gguf(&file)?,
    };
    let mut generation = GenerationDefaults::default();
    // llama.cpp ends generation at any end-of-generation token, not only EOS.
    for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
        if let Some(id) = file.get_u32(key)? {
            generation.eos_token_ids.push(id);
        }
    }
    Ok(LoadedModel {
        format: ModelFormat::Gguf,
        path: path.to_path_buf(),
        weights,
        tokenizer,
        chat_template: file.get_str("tokenizer.chat_template")?.map(str::to_string),
        context_length: file.context_length()?,
        generation,
        name: file.get_str("general.name")?.map(str::to_string),
    })
}

/// A string array of GGUF metadata.
fn gguf_strings(file: &GgufFile, key: &str) -> Result<Option<Vec<String>>> {
    let Some(a) = file.get_array(key)? else {
        return Ok(None);
    };
    a.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::checkpoint(file.path(), format!("{key} holds a non-string")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// A numeric array of GGUF metadata, converted with `f`.
fn gguf_numbers<T>(
    file: &GgufFile,
    key: &str,
    f: impl Fn(&GgufValue) -> Option<T>,
) -> Result<Option<Vec<T>>> {
    let Some(a) = file.get_array(key)? else {
        return Ok(None);
    };
    a.iter()
        .map(|v| {
            f(v).ok_or_else(|| Error::checkpoint(file.path(), format!("{key} holds a bad value")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let missing = |k: &str| Error::checkpoint(file.path(), format!("no {k} in the GGUF metadata"));
    let model = file
        .get_str("tokenizer.ggml.model")?
        .ok_or_else(|| missing("tokenizer.ggml.model"))?;
    let tokens = gguf_strings(file, "tokenizer.ggml.tokens")?
        .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
    let n = tokens.len();
    let token_types = gguf_numbers(file, "tokenizer.ggml.token_type", |v| {
        v.as_i64().and_then(|x| i32::try_from(x).ok())
    })?
    .unwrap_or_else(|| vec![1; n]);
    let id = |k: &str| file.get_u32(k);
    match model {
        "llama" => Tokenizer::from_gguf_llama(SentencePieceVocab {
            scores: gguf_numbers(file, "tokenizer.ggml.scores", |v| {
                v.as_f64().map(|x| x as f32)
            })?
            .unwrap_or_else(|| vec![0.0; n]),
            tokens,
            token_types,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: file.get_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: file.get_bool("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: file.get_bool("tokenizer.ggml.add_space_prefix")?,
        }),
        "gpt2" => Tokenizer::from_gguf_gpt2(BpeVocab {
            merges: gguf_strings(file, "tokenizer.ggml.merges")?
                .ok_or_else(|| missing("tokenizer.ggml.merges"))?,
            pre: file
                .get_str("tokenizer.ggml.pre")?
                .unwrap_or("default")
                .to_string(),
            tokens,
            token_types,
            bos_id: id("tokenizer.ggml.bos_token_id")?,
            eos_id: id("tokenizer.ggml.eos_token_id")?,
            unk_id: id("tokenizer.ggml.unknown_token_id")?,
            pad_id: id("tokenizer.ggml.padding_token_id")?,
            add_bos: file.get_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: file.get_bool("tokenizer.ggml.add_eos_token")?,
            tiktoken: false,
        }),
        other => Err(Error::Tokenizer(format!(
            "GGUF tokenizer model '{other}' is not supported (supported: llama, gpt2)"
        ))),
    }
}
