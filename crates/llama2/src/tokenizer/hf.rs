//! Hugging Face `tokenizer.json` loading for the two shapes Llama-family repositories use.
//!
//! - Llama 2 shape: model `BPE` with `byte_fallback: true`, spaces as `▁` (normalizer
//!   `Prepend("▁")` + `Replace(" ", "▁")`, or a `Metaspace` pre-tokenizer). Loaded as a
//!   [`SentencePieceTokenizer`]: piece scores are derived from merge ranks (a piece produced
//!   by merge rank `r` scores `-r`; multi-character pieces no merge produces score below all
//!   merges), `<0xNN>` pieces are byte pieces, `model.unk_token` is the unknown piece,
//!   special added tokens are control pieces and other added tokens user-defined.
//! - GPT-2 byte-level shape: `ByteLevel` pre-tokenizer (alone, or after `Split` with a regex
//!   and/or `Digits`). Loaded as a [`BpeTokenizer`] whose pre-tokenizer is the llama.cpp one
//!   for the regex found (GPT-2, Llama 3, Qwen2, SmolLM's digits + GPT-2); another regex is
//!   an error naming it. Added tokens with `special: true` are control tokens, others
//!   user-defined. A `NFC` normalizer is accepted and, as in llama.cpp, not applied.
//!
//! BOS/EOS come from a sibling `tokenizer_config.json` when given, else from the
//! post-processor's template (BOS) and well-known token names.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::bpe::{BpeTokenizer, BpeVocab};
use super::proto::piece_type;
use super::sentencepiece::{SentencePieceTokenizer, SpOptions, DEFAULT_UNK_SURFACE};
use super::Tokenizer;
use crate::error::{Error, Result};
use crate::files::MAX_JSON_FILE_BYTES;

fn tok_err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(format!("tokenizer.json: {}", msg.into()))
}

const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const GPT2_REGEX_NO_TAIL: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Reads `tokenizer.json` bytes and, from `dir`, an optional `tokenizer_config.json`.
pub(super) fn from_json_bytes(json: &[u8], dir: Option<&Path>) -> Result<Tokenizer> {
    let config = match dir.map(|d| d.join("tokenizer_config.json")) {
        Some(p) if p.is_file() => Some(crate::files::read_limited(&p, MAX_JSON_FILE_BYTES)?),
        _ => None,
    };
    from_json_parts(json, config.as_deref())
}

/// Special-token settings from `tokenizer_config.json`.
#[derive(Default)]
struct Config {
    bos: Option<String>,
    eos: Option<String>,
    pad: Option<String>,
    add_bos: Option<bool>,
    add_eos: Option<bool>,
}

fn token_name(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn parse_config(bytes: &[u8]) -> Result<Config> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::Tokenizer(format!("tokenizer_config.json: {e}")))?;
    Ok(Config {
        bos: token_name(v.get("bos_token")),
        eos: token_name(v.get("eos_token")),
        pad: token_name(v.get("pad_token")),
        add_bos: v.get("add_bos_token").and_then(Value::as_bool),
        add_eos: v.get("add_eos_token").and_then(Value::as_bool),
    })
}

/// `tokenizer.json` (and optional `tokenizer_config.json`) documents → a tokenizer.
pub(super) fn from_json_parts(json: &[u8], config: Option<&[u8]>) -> Result<Tokenizer> {
    let root: Value = serde_json::from_slice(json).map_err(|e| tok_err(e.to_string()))?;
    let cfg = config.map(parse_config).transpose()?.unwrap_or_default();
    let model = root.get("model").ok_or_else(|| tok_err("no \"model\""))?;
    let mtype = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
    if mtype != "BPE" {
        return Err(tok_err(format!(
            "model type {mtype:?} is not supported (only BPE)"
        )));
    }
    let (tokens, special) = vocab_tokens(&root, model)?;
    let merges = merge_list(model)?;
    let byte_fallback = model
        .get("byte_fallback")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let id_of = |name: &str| tokens.iter().position(|t| t == name).map(|i| i as u32);
    let ids = |name: Option<String>| -> Result<Option<u32>> {
        match name {
            None => Ok(None),
            Some(n) => id_of(&n)
                .map(Some)
                .ok_or_else(|| tok_err(format!("special token {n:?} is not in the vocabulary"))),
        }
    };
    let template_bos = template_bos(&root);
    let bos = ids(cfg.bos.clone())?.or(template_bos);
    let add_bos = cfg.add_bos.or_else(|| Some(template_bos.is_some()));
    let unk = model
        .get("unk_token")
        .and_then(Value::as_str)
        .and_then(&id_of);
    let pad = ids(cfg.pad.clone())?;

    if byte_fallback || is_metaspace(&root) {
        let add_dummy_prefix = sp_shape(&root)?;
        let bos = bos.or_else(|| id_of("<s>"));
        let eos = ids(cfg.eos.clone())?.or_else(|| id_of("</s>"));
        let unk = unk.or_else(|| id_of("<unk>"));
        let raw = sp_pieces(&tokens, &special, &merges, unk)?;
        let missing = |what: &str| tok_err(format!("cannot determine the {what} token"));
        let opts = SpOptions {
            unk_id: i64::from(unk.ok_or_else(|| missing("unknown"))?),
            bos_id: i64::from(bos.ok_or_else(|| missing("BOS"))?),
            eos_id: i64::from(eos.ok_or_else(|| missing("EOS"))?),
            pad_id: pad.map_or(-1, i64::from),
            unk_surface: DEFAULT_UNK_SURFACE.to_string(),
            byte_fallback,
            add_dummy_prefix,
            remove_extra_whitespaces: false,
            escape_whitespaces: true,
            add_bos: cfg.add_bos.unwrap_or(true),
            add_eos: cfg.add_eos.unwrap_or(false),
        };
        return SentencePieceTokenizer::assemble(raw, opts).map(Tokenizer::SentencePiece);
    }

    let pre = bpe_pre_name(&root)?;
    let eos = ids(cfg.eos.clone())?.or_else(|| {
        ["<|endoftext|>", "<|end_of_text|>", "</s>", "<|im_end|>"]
            .iter()
            .find_map(|n| id_of(n))
    });
    let token_types = special
        .iter()
        .map(|s| match s {
            Some(true) => piece_type::CONTROL,
            Some(false) => piece_type::USER_DEFINED,
            None => piece_type::NORMAL,
        })
        .collect();
    let vocab = BpeVocab {
        tokens,
        token_types,
        merges: merges
            .into_iter()
            .map(|(a, b)| format!("{a} {b}"))
            .collect(),
        pre: pre.to_string(),
        bos_id: bos,
        eos_id: eos,
        unk_id: unk,
        pad_id: pad,
        add_bos,
        add_eos: cfg.add_eos,
        tiktoken: false,
    };
    BpeTokenizer::from_vocab(vocab).map(Tokenizer::Bpe)
}

/// Tokens by id (vocab + added tokens) and, per id, `Some(special)` for added tokens.
type VocabTokens = (Vec<String>, Vec<Option<bool>>);

fn vocab_tokens(root: &Value, model: &Value) -> Result<VocabTokens> {
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| tok_err("model.vocab is not an object"))?;
    let mut by_id: HashMap<u32, (String, Option<bool>)> = HashMap::with_capacity(vocab.len());
    for (text, id) in vocab {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| tok_err(format!("vocab id of {text:?} is not a u32")))?;
        by_id.insert(id, (text.clone(), None));
    }
    for t in root
        .get("added_tokens")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let id = t
            .get("id")
            .and_then(Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| tok_err("added token without a u32 id"))?;
        let content = t
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| tok_err(format!("added token {id} has no content")))?;
        let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
        by_id.insert(id, (content.to_string(), Some(special)));
    }
    let n = by_id.len();
    let mut tokens = Vec::with_capacity(n);
    let mut special = Vec::with_capacity(n);
    for id in 0..n as u32 {
        let (t, s) = by_id
            .remove(&id)
            .ok_or_else(|| tok_err(format!("token ids are not contiguous: {id} is missing")))?;
        tokens.push(t);
        special.push(s);
    }
    Ok((tokens, special))
}

/// `model.merges` as pairs; both the `"a b"` and the `["a", "b"]` forms.
fn merge_list(model: &Value) -> Result<Vec<(String, String)>> {
    let Some(list) = model.get("merges").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let bad = || tok_err(format!("merge {i} is malformed: {m}"));
            match m {
                Value::String(s) => {
                    let first = s.chars().next().map_or(0, char::len_utf8);
                    let pos = s.get(first..).and_then(|r| r.find(' ')).ok_or_else(bad)? + first;
                    Ok((s[..pos].to_string(), s[pos + 1..].to_string()))
                }
                Value::Array(a) if a.len() == 2 => {
                    let part = |k: usize| a[k].as_str().map(str::to_string).ok_or_else(bad);
                    Ok((part(0)?, part(1)?))
                }
                _ => Err(bad()),
            }
        })
        .collect()
}

/// The first `SpecialToken` of a `TemplateProcessing` post-processor's `single` template.
fn template_bos(root: &Value) -> Option<u32> {
    let pp = root.get("post_processor")?;
    let procs: Vec<&Value> = match pp.get("type")?.as_str()? {
        "Sequence" => pp.get("processors")?.as_array()?.iter().collect(),
        _ => vec![pp],
    };
    let tp = procs
        .into_iter()
        .find(|p| p.get("type").and_then(Value::as_str) == Some("TemplateProcessing"))?;
    let first = tp.get("single")?.as_array()?.first()?;
    let name = first.get("SpecialToken")?.get("id")?.as_str()?;
    let st = tp.get("special_tokens")?.get(name)?;
    st.get("ids")?
        .as_array()?
        .first()?
        .as_u64()
        .map(|i| i as u32)
}

fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A component and, for `Sequence`, its members (`key` = "normalizers"/"pretokenizers").
fn flatten<'v>(v: Option<&'v Value>, key: &str) -> Vec<&'v Value> {
    match v {
        None | Some(Value::Null) => Vec::new(),
        Some(v) if type_of(v) == "Sequence" => v
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        Some(v) => vec![v],
    }
}

fn is_metaspace(root: &Value) -> bool {
    flatten(root.get("pre_tokenizer"), "pretokenizers")
        .iter()
        .any(|p| type_of(p) == "Metaspace")
}

/// Checks the Llama 2 `▁` normalisation and returns whether a dummy `▁` is prepended.
fn sp_shape(root: &Value) -> Result<bool> {
    let mut prepend = false;
    let mut escape = false;
    for n in flatten(root.get("normalizer"), "normalizers") {
        match type_of(n) {
            "Prepend" if n.get("prepend").and_then(Value::as_str) == Some("\u{2581}") => {
                prepend = true;
            }
            "Replace"
                if n.get("pattern")
                    .and_then(|p| p.get("String"))
                    .and_then(Value::as_str)
                    == Some(" ")
                    && n.get("content").and_then(Value::as_str) == Some("\u{2581}") =>
            {
                escape = true;
            }
            other => return Err(tok_err(format!("unsupported normalizer {other:?}"))),
        }
    }
    for p in flatten(root.get("pre_tokenizer"), "pretokenizers") {
        match type_of(p) {
            "Metaspace" => {
                escape = true;
                let scheme = p.get("prepend_scheme").and_then(Value::as_str);
                let legacy = p.get("add_prefix_space").and_then(Value::as_bool);
                prepend |= matches!(scheme, Some("always" | "first")) || legacy == Some(true);
                if p.get("split").and_then(Value::as_bool) == Some(true) {
                    return Err(tok_err(
                        "a Metaspace pre-tokenizer with split: true is not supported",
                    ));
                }
            }
            other => return Err(tok_err(format!("unsupported pre-tokenizer {other:?}"))),
        }
    }
    if !escape {
        return Err(tok_err(
            "a byte-fallback BPE model needs spaces replaced by \u{2581} (Replace or Metaspace)",
        ));
    }
    Ok(prepend)
}

/// Vocabulary → `(text, score, type)` pieces for [`SentencePieceTokenizer::assemble`].
fn sp_pieces(
    tokens: &[String],
    special: &[Option<bool>],
    merges: &[(String, String)],
    unk: Option<u32>,
) -> Result<Vec<(String, f32, i32)>> {
    let mut rank: HashMap<String, usize> = HashMap::with_capacity(merges.len());
    for (r, (a, b)) in merges.iter().enumerate() {
        rank.entry(format!("{a}{b}")).or_insert(r);
    }
    let below_all = -(merges.len() as f32) - 1.0;
    Ok(tokens
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let kind = if Some(id as u32) == unk {
                piece_type::UNKNOWN
            } else if let Some(s) = special[id] {
                if s {
                    piece_type::CONTROL
                } else {
                    piece_type::USER_DEFINED
                }
            } else if is_byte_piece(t) {
                piece_type::BYTE
            } else {
                piece_type::NORMAL
            };
            let score = match (kind, rank.get(t)) {
                (piece_type::NORMAL, Some(&r)) => -(r as f32),
                (piece_type::NORMAL, None) if t.chars().nth(1).is_some() => below_all,
                _ => 0.0,
            };
            (t.clone(), score, kind)
        })
        .collect())
}

fn is_byte_piece(t: &str) -> bool {
    t.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && t[3..5]
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F'))
}

/// The llama.cpp pre-tokenizer name equivalent to a byte-level `pre_tokenizer`.
fn bpe_pre_name(root: &Value) -> Result<&'static str> {
    for n in flatten(root.get("normalizer"), "normalizers") {
        if type_of(n) != "NFC" {
            return Err(tok_err(format!(
                "unsupported normalizer {:?} for a byte-level BPE model",
                type_of(n)
            )));
        }
    }
    let mut digits = false;
    let mut regex: Option<String> = None;
    let mut byte_level = false;
    for p in flatten(root.get("pre_tokenizer"), "pretokenizers") {
        match type_of(p) {
            "Digits" if p.get("individual_digits").and_then(Value::as_bool) == Some(true) => {
                digits = true;
            }
            "Split" => {
                let r = p
                    .get("pattern")
                    .and_then(|x| x.get("Regex"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| tok_err("Split pre-tokenizer without a Regex pattern"))?;
                regex = Some(r.to_string());
            }
            "ByteLevel" => {
                byte_level = true;
                if p.get("add_prefix_space").and_then(Value::as_bool) == Some(true) {
                    return Err(tok_err("ByteLevel add_prefix_space: true is not supported"));
                }
                if p.get("use_regex").and_then(Value::as_bool).unwrap_or(true) {
                    if regex.is_some() {
                        return Err(tok_err("both a Split regex and ByteLevel use_regex"));
                    }
                    regex = Some(GPT2_REGEX.to_string());
                }
            }
            other => return Err(tok_err(format!("unsupported pre-tokenizer {other:?}"))),
        }
    }
    if !byte_level {
        return Err(tok_err(
            "neither the Llama 2 (byte_fallback) nor the GPT-2 byte-level (ByteLevel) shape",
        ));
    }
    let regex = regex.ok_or_else(|| tok_err("no pre-tokenizer regex"))?;
    match (digits, regex.as_str()) {
        (false, GPT2_REGEX | GPT2_REGEX_NO_TAIL) => Ok("gpt2"),
        (true, GPT2_REGEX | GPT2_REGEX_NO_TAIL) => Ok("smollm"),
        (false, LLAMA3_REGEX) => Ok("llama-bpe"),
        (false, QWEN2_REGEX) => Ok("qwen2"),
        (d, r) => Err(tok_err(format!(
            "pre-tokenizer regex {r:?}{} is not one of the known llama.cpp patterns",
            if d { " after Digits" } else { "" }
        ))),
    }
}
