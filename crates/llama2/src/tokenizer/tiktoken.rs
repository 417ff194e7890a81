//! Meta's Llama 3 `tokenizer.model`: tiktoken's "mergeable ranks" file (one
//! `base64(token bytes) rank` line per token, ranks 0, 1, 2, ...), with the 256 special
//! tokens `llama_models`' `Tokenizer` appends after the last rank.
//!
//! The file becomes a [`BpeVocab`] (byte-to-unicode token texts, merges derived from the
//! ranks as Hugging Face's `TikTokenConverter` does, so the vocabulary converts to GGUF
//! unchanged) whose merges rank by the token they produce: tiktoken's rule (merge the
//! adjacent pair whose concatenation has the lowest rank, leftmost first), which is then
//! exact even where two different splits make the same token. The pre-tokenizer is
//! Llama 3's regex (`llama-bpe`).

use std::collections::HashMap;

use base64::Engine as _;

use super::bpe::{byte_to_char, BpeVocab};
use crate::error::{Error, Result};

/// The named special tokens of Llama 3.1+, in id order after the last rank
/// (`llama_models.llama3.tokenizer.Tokenizer`); reserved tokens fill up to 256.
pub const LLAMA3_SPECIAL_TOKENS: [&str; 12] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
];

/// Special tokens after the ranks (`num_reserved_special_tokens`).
const N_SPECIAL: usize = 256;

/// Largest token a rank line may describe (Llama 3's longest is 256 bytes).
const MAX_TOKEN_BYTES: usize = 1024;

fn tok_err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

/// True when `bytes` look like a tiktoken ranks file: the first line is
/// `<base64> <decimal>`.
pub(super) fn looks_like_tiktoken(bytes: &[u8]) -> bool {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
    let Some(space) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (b64, rank) = (&line[..space], line[space + 1..].trim_ascii_end());
    !b64.is_empty()
        && b64
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        && !rank.is_empty()
        && rank.iter().all(u8::is_ascii_digit)
}

/// The special token names `llama_models` gives ids `n_ranks + i`.
fn special_names() -> impl Iterator<Item = String> {
    LLAMA3_SPECIAL_TOKENS
        .iter()
        .map(|s| s.to_string())
        .chain((2..).map(|i| format!("<|reserved_special_token_{i}|>")))
        .take(N_SPECIAL)
}

/// Parses a tiktoken ranks file into a Llama 3 vocabulary (ranks, then 256 special
/// tokens; BOS `<|begin_of_text|>`, EOS `<|end_of_text|>`, pad
/// `<|finetune_right_pad_id|>`).
///
/// Fails with [`Error::Tokenizer`] on a malformed line, ranks that are not `0..n` in
/// order, a duplicate token or a token longer than 1 KiB.
pub fn vocab_from_tiktoken(bytes: &[u8]) -> Result<BpeVocab> {
    let text = std::str::from_utf8(bytes).map_err(|_| tok_err("tiktoken file: not UTF-8 text"))?;
    let mut ranked: Vec<Vec<u8>> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = |what: &str| tok_err(format!("tiktoken file, line {}: {what}", i + 1));
        let (b64, rank) = line
            .split_once(' ')
            .ok_or_else(|| bad("expected '<base64> <rank>'"))?;
        let rank: usize = rank
            .trim()
            .parse()
            .map_err(|_| bad("rank is not a number"))?;
        if rank != ranked.len() {
            return Err(bad(&format!(
                "rank {rank} out of order (expected {})",
                ranked.len()
            )));
        }
        if b64.len() > MAX_TOKEN_BYTES * 4 / 3 + 4 {
            return Err(bad("token longer than 1 KiB"));
        }
        let token = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(&format!("bad base64: {e}")))?;
        if token.is_empty() {
            return Err(bad("empty token"));
        }
        ranked.push(token);
    }
    let n = ranked.len();
    if n < 256 {
        return Err(tok_err(format!(
            "tiktoken file has {n} ranks; a byte-level vocabulary needs at least 256"
        )));
    }
    let mut rank_of: HashMap<&[u8], u32> = HashMap::with_capacity(n);
    for (r, t) in ranked.iter().enumerate() {
        if rank_of.insert(t.as_slice(), r as u32).is_some() {
            return Err(tok_err(format!(
                "tiktoken file: token of rank {r} appears twice"
            )));
        }
    }
    // Byte-level BPE needs every byte as a token, or text would be silently dropped.
    if let Some(b) = (0..=255u8).find(|b| !rank_of.contains_key(&[*b][..])) {
        return Err(tok_err(format!(
            "tiktoken file: the byte 0x{b:02x} is not a token (every byte must be)"
        )));
    }
    let mapped = |b: &[u8]| b.iter().map(|&c| byte_to_char(c)).collect::<String>();
    // Every split of a token into two tokens is a merge of that token's rank; ordered by
    // (rank made, left rank, right rank) as transformers' `TikTokenConverter` writes them.
    let mut merges: Vec<(u32, u32, u32)> = Vec::new();
    for (r, t) in ranked.iter().enumerate() {
        for k in 1..t.len() {
            if let (Some(&a), Some(&b)) = (rank_of.get(&t[..k]), rank_of.get(&t[k..])) {
                merges.push((r as u32, a, b));
            }
        }
    }
    merges.sort_unstable();
    let merges = merges
        .into_iter()
        .map(|(_, a, b)| {
            format!(
                "{} {}",
                mapped(&ranked[a as usize]),
                mapped(&ranked[b as usize])
            )
        })
        .collect();
    let mut tokens: Vec<String> = ranked.iter().map(|t| mapped(t)).collect();
    let mut token_types = vec![1; n];
    tokens.extend(special_names());
    token_types.resize(tokens.len(), 3);
    let id = |name: &str| {
        LLAMA3_SPECIAL_TOKENS
            .iter()
            .position(|s| *s == name)
            .map(|i| (n + i) as u32)
    };
    Ok(BpeVocab {
        tokens,
        token_types,
        merges,
        pre: "llama-bpe".into(),
        bos_id: id("<|begin_of_text|>"),
        eos_id: id("<|end_of_text|>"),
        unk_id: None,
        pad_id: id("<|finetune_right_pad_id|>"),
        add_bos: Some(true),
        add_eos: Some(false),
        tiktoken: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ranks file of the 256 bytes then `merged` tokens.
    fn file(merged: &[&[u8]]) -> Vec<u8> {
        let mut out = String::new();
        let e = |t: &[u8]| base64::engine::general_purpose::STANDARD.encode(t);
        for b in 0..=255u8 {
            out += &format!("{} {b}\n", e(&[b]));
        }
        for (i, t) in merged.iter().enumerate() {
            out += &format!("{} {}\n", e(t), 256 + i);
        }
        out.into_bytes()
    }

    #[test]
    fn detects_parses_and_numbers_specials() {
        let f = file(&[b"ab", b"abc"]);
        assert!(looks_like_tiktoken(&f));
        assert!(!looks_like_tiktoken(b"{\"model\": 1}"));
        assert!(!looks_like_tiktoken(b"\x0a\x05hello"));
        let v = vocab_from_tiktoken(&f).unwrap();
        assert_eq!(v.tokens.len(), 258 + 256);
        assert_eq!(v.tokens[258], "<|begin_of_text|>");
        assert_eq!(v.tokens[258 + 9], "<|eot_id|>");
        assert_eq!(v.tokens[258 + 12], "<|reserved_special_token_2|>");
        assert_eq!(v.tokens.last().unwrap(), "<|reserved_special_token_245|>");
        assert_eq!(v.bos_id, Some(258));
        // "abc" splits as ab+c only ("a"+"bc": "bc" is no token).
        assert_eq!(v.merges, vec!["a b".to_string(), "ab c".to_string()]);
    }

    #[test]
    fn malformed_files_are_errors() {
        let mut shuffled = file(&[]);
        shuffled.extend(b"YWI= 300\n");
        // 256 ranks, but the byte 0xff is not one of them.
        let mut no_ff = String::new();
        for b in 0..=255u8 {
            let t: &[u8] = if b == 255 { b"ab" } else { &[b] };
            no_ff += &format!(
                "{} {b}\n",
                base64::engine::general_purpose::STANDARD.encode(t)
            );
        }
        assert!(vocab_from_tiktoken(no_ff.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("0xff"));
        for bad in [
            b"YQ== 0\nYg== 2\n".to_vec(),
            b"not base64! 0\n".to_vec(),
            b"YQ== x\n".to_vec(),
            shuffled,
            file(&[b"a"]),
            no_ff.into_bytes(),
        ] {
            assert!(vocab_from_tiktoken(&bad).is_err());
        }
    }
}
