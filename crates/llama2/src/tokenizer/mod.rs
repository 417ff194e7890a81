//! Tokenizers: text ↔ token ids for every model family the engine runs.
//!
//! [`Tokenizer`] is one type over two families:
//!
//! - [`SentencePieceTokenizer`]: Meta's SentencePiece BPE (Llama 1/2 and derivatives), from a
//!   `tokenizer.model` (a protobuf `ModelProto`, parsed by a small hand-written reader), from
//!   GGUF `tokenizer.ggml.model = "llama"` arrays ([`SentencePieceVocab`]), or from a
//!   Hugging Face `tokenizer.json` of the Llama 2 shape (BPE with `byte_fallback`). Encoding
//!   and decoding have the exact behaviour of Meta's `Tokenizer` (sentencepiece).
//! - [`BpeTokenizer`]: GPT-2 style byte-level BPE (Llama 3, SmolLM, Qwen2, ...), from GGUF
//!   `tokenizer.ggml.model = "gpt2"` arrays ([`BpeVocab`]) or a Hugging Face `tokenizer.json`
//!   with a `ByteLevel` pre-tokenizer. Encoding follows llama.cpp (`llama-vocab.cpp`,
//!   `unicode.cpp`) exactly, including its pre-tokenizer splitters.
//!
//! [`StreamDecoder`] turns generated ids into text deltas that never split a UTF-8
//! character, for both families.
//!
//! Special tokens: [`Tokenizer::encode`] treats all text as plain text (control tokens are
//! never produced from it: Meta's semantics, used for the Llama 2 chat format), while
//! [`Tokenizer::encode_with_special`] turns special-token texts (`"<|im_start|>"`, `"<s>"`)
//! into their ids, as llama.cpp's `llama_tokenize(parse_special = true)` does for rendered
//! Jinja chat templates. [`Tokenizer::decode`] renders control tokens as nothing (llama.cpp's
//! `token_to_piece(special = false)`, Meta's decode); [`Tokenizer::decode_with_special`]
//! renders them as their text.

mod bpe;
mod hf;
mod proto;
mod sentencepiece;
mod stream;
mod tiktoken;
mod unicode_data;

use std::path::Path;

pub use bpe::{BpeTokenizer, BpeVocab};
pub use sentencepiece::{SentencePieceTokenizer, SentencePieceVocab};
pub use stream::StreamDecoder;
pub use tiktoken::{vocab_from_tiktoken, LLAMA3_SPECIAL_TOKENS};

use crate::error::Result;

/// A tokenizer of either family; see the [module docs](self).
#[derive(Debug, Clone)]
pub enum Tokenizer {
    /// SentencePiece BPE (Llama 1/2).
    SentencePiece(SentencePieceTokenizer),
    /// GPT-2 style byte-level BPE (Llama 3, SmolLM, Qwen2, ...).
    Bpe(BpeTokenizer),
}

impl From<SentencePieceTokenizer> for Tokenizer {
    fn from(t: SentencePieceTokenizer) -> Self {
        Tokenizer::SentencePiece(t)
    }
}

impl From<BpeTokenizer> for Tokenizer {
    fn from(t: BpeTokenizer) -> Self {
        Tokenizer::Bpe(t)
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.model` (SentencePiece for Llama 1/2, or Meta's Llama 3 tiktoken
    /// ranks file) or a Hugging Face `tokenizer.json`, told apart by content (JSON starts
    /// with `{`, a ranks file with `<base64> <rank>`). Files over 64 MiB are refused
    /// before they are read.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let bytes = read_limited(path)?;
        if looks_like_json(&bytes) {
            return hf::from_json_bytes(&bytes, path.parent());
        }
        Tokenizer::from_bytes(&bytes)
    }

    /// Parses a serialized SentencePiece `ModelProto`, a tiktoken ranks file, or a
    /// `tokenizer.json` document (in which case no sibling `tokenizer_config.json` is
    /// consulted).
    pub fn from_bytes(bytes: &[u8]) -> Result<Tokenizer> {
        if looks_like_json(bytes) {
            return hf::from_json_bytes(bytes, None);
        }
        if tiktoken::looks_like_tiktoken(bytes) {
            let vocab = vocab_from_tiktoken(bytes)?;
            return BpeTokenizer::from_vocab(vocab).map(Tokenizer::Bpe);
        }
        SentencePieceTokenizer::from_bytes(bytes).map(Tokenizer::SentencePiece)
    }

    /// Loads a Hugging Face `tokenizer.json`: the Llama 2 shape (model `BPE` with
    /// `byte_fallback`, `▁` normalisation) becomes a [`SentencePieceTokenizer`], the GPT-2
    /// byte-level shape a [`BpeTokenizer`]. A `tokenizer_config.json` next to it, if present,
    /// supplies `bos_token`/`eos_token`/`pad_token`/`add_bos_token`/`add_eos_token`.
    pub fn from_hf_json(path: &Path) -> Result<Tokenizer> {
        let bytes = read_limited(path)?;
        hf::from_json_bytes(&bytes, path.parent())
    }

    /// [`from_hf_json`](Self::from_hf_json) on the document's bytes, with an optional
    /// `tokenizer_config.json` document.
    pub fn from_hf_json_bytes(json: &[u8], config: Option<&[u8]>) -> Result<Tokenizer> {
        hf::from_json_parts(json, config)
    }

    /// Builds a SentencePiece tokenizer from GGUF `tokenizer.ggml.model = "llama"` data.
    pub fn from_gguf_llama(vocab: SentencePieceVocab) -> Result<Tokenizer> {
        SentencePieceTokenizer::from_vocab(vocab).map(Tokenizer::SentencePiece)
    }

    /// Builds a byte-level BPE tokenizer from GGUF `tokenizer.ggml.model = "gpt2"` data.
    pub fn from_gguf_gpt2(vocab: BpeVocab) -> Result<Tokenizer> {
        BpeTokenizer::from_vocab(vocab).map(Tokenizer::Bpe)
    }

    /// Encodes plain text, with `bos`/`eos` added on request. Special-token texts are
    /// ordinary text (only user-defined tokens are matched, as both reference tokenizers
    /// do). For SentencePiece this is exactly Meta's `Tokenizer.encode(text, bos, eos)`.
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Vec<u32> {
        match self {
            Tokenizer::SentencePiece(t) => t.encode(text, bos, eos),
            Tokenizer::Bpe(t) => t.encode_ext(text, bos, eos, false),
        }
    }

    /// Encodes text in which special-token texts stand for those tokens (rendered chat
    /// templates), with the BOS token first when `add_bos` (and no EOS). As llama.cpp's
    /// `llama_tokenize(text, add_special = add_bos, parse_special = true)` for models that
    /// do not add EOS.
    pub fn encode_with_special(&self, text: &str, add_bos: bool) -> Vec<u32> {
        match self {
            Tokenizer::SentencePiece(t) => t.encode_with_special(text, add_bos, false),
            Tokenizer::Bpe(t) => t.encode_ext(text, add_bos, false, true),
        }
    }

    /// Decodes ids to text; control and unknown-type tokens of a BPE vocabulary produce
    /// nothing, SentencePiece control tokens nothing and `<unk>` `" ⁇ "` (Meta). Invalid
    /// UTF-8 becomes one U+FFFD per offending byte (sentencepiece's rule). An id outside the
    /// vocabulary is [`Error::InvalidTokenId`].
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::SentencePiece(t) => t.decode(ids),
            Tokenizer::Bpe(t) => t.decode(ids),
        }
    }

    /// Like [`decode`](Self::decode), but control tokens render as their text.
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String> {
        match self {
            Tokenizer::SentencePiece(t) => t.decode_with_special(ids),
            Tokenizer::Bpe(t) => t.decode_with_special(ids),
        }
    }

    /// The vocabulary entry of `id` as stored (SentencePiece: `▁` for spaces; byte-level
    /// BPE: the byte-to-unicode mapped form, e.g. `"Ġhello"`), `None` if out of range.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        match self {
            Tokenizer::SentencePiece(t) => t.id_to_piece(id),
            Tokenizer::Bpe(t) => t.id_to_piece(id),
        }
    }

    /// The id of a vocabulary entry's exact stored text, `None` if absent.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        match self {
            Tokenizer::SentencePiece(t) => t.piece_to_id(piece),
            Tokenizer::Bpe(t) => t.piece_to_id(piece),
        }
    }

    /// The text of a special (control, unknown or user-defined) token, e.g. `"<s>"` or
    /// `"<|im_end|>"` (what a chat template writes for it); `None` for other ids.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        match self {
            Tokenizer::SentencePiece(t) => t.special_text(id),
            Tokenizer::Bpe(t) => t.special_text(id),
        }
    }

    /// Most bytes of text one token can stand for (the longest stored piece), so a text
    /// of more than `n * max_token_bytes()` bytes cannot fit in `n` tokens and need not
    /// be tokenized to know it. `None` when the tokenizer may drop text (whitespace
    /// collapsing, no byte fallback, missing byte symbols): then there is no such bound.
    pub fn max_token_bytes(&self) -> Option<usize> {
        let keeps = match self {
            Tokenizer::SentencePiece(t) => t.keeps_every_byte(),
            Tokenizer::Bpe(t) => t.keeps_every_byte(),
        };
        keeps.then(|| {
            (0..self.n_words() as u32)
                .filter_map(|id| self.id_to_piece(id))
                .map(str::len)
                .max()
                .unwrap_or(1)
                .max(1)
        })
    }

    /// Number of tokens in the vocabulary (Meta's `n_words`).
    pub fn n_words(&self) -> usize {
        match self {
            Tokenizer::SentencePiece(t) => t.n_words(),
            Tokenizer::Bpe(t) => t.n_words(),
        }
    }

    /// Id of the beginning-of-sequence token.
    pub fn bos_id(&self) -> u32 {
        match self {
            Tokenizer::SentencePiece(t) => t.bos_id(),
            Tokenizer::Bpe(t) => t.bos_id(),
        }
    }

    /// Id of the end-of-sequence token.
    pub fn eos_id(&self) -> u32 {
        match self {
            Tokenizer::SentencePiece(t) => t.eos_id(),
            Tokenizer::Bpe(t) => t.eos_id(),
        }
    }

    /// Id of the padding token, `None` when the model has none.
    pub fn pad_id(&self) -> Option<u32> {
        match self {
            Tokenizer::SentencePiece(t) => t.pad_id(),
            Tokenizer::Bpe(t) => t.pad_id(),
        }
    }

    /// Id of the unknown token, `None` when the model has none (byte-level BPE usually).
    pub fn unk_id(&self) -> Option<u32> {
        match self {
            Tokenizer::SentencePiece(t) => Some(t.unk_id()),
            Tokenizer::Bpe(t) => t.unk_id(),
        }
    }

    /// Whether the model adds the BOS token to prompts by default.
    pub fn add_bos(&self) -> bool {
        match self {
            Tokenizer::SentencePiece(t) => t.add_bos(),
            Tokenizer::Bpe(t) => t.add_bos(),
        }
    }

    /// Whether the model adds the EOS token to prompts by default.
    pub fn add_eos(&self) -> bool {
        match self {
            Tokenizer::SentencePiece(t) => t.add_eos(),
            Tokenizer::Bpe(t) => t.add_eos(),
        }
    }

    /// Whether `id` is a control token (decodes to nothing by default).
    pub fn is_control(&self, id: u32) -> bool {
        match self {
            Tokenizer::SentencePiece(t) => t.is_control(id),
            Tokenizer::Bpe(t) => t.is_control(id),
        }
    }

    /// SentencePiece merge score of `id`; `None` for BPE vocabularies and ids out of range.
    pub fn score(&self, id: u32) -> Option<f32> {
        match self {
            Tokenizer::SentencePiece(t) => t.score(id),
            Tokenizer::Bpe(_) => None,
        }
    }

    /// The byte a SentencePiece `<0xNN>` piece stands for; `None` otherwise.
    pub fn byte_value(&self, id: u32) -> Option<u8> {
        match self {
            Tokenizer::SentencePiece(t) => t.byte_value(id),
            Tokenizer::Bpe(_) => None,
        }
    }

    /// The SentencePiece tokenizer, if that is the family.
    pub fn as_sentencepiece(&self) -> Option<&SentencePieceTokenizer> {
        match self {
            Tokenizer::SentencePiece(t) => Some(t),
            Tokenizer::Bpe(_) => None,
        }
    }

    /// The byte-level BPE tokenizer, if that is the family.
    pub fn as_bpe(&self) -> Option<&BpeTokenizer> {
        match self {
            Tokenizer::SentencePiece(_) => None,
            Tokenizer::Bpe(t) => Some(t),
        }
    }
}

/// Largest tokenizer file read (Llama 3's `tokenizer.json` is 9 MB): a tokenizer path
/// may name anything, `/dev/zero` included.
pub const MAX_TOKENIZER_FILE_BYTES: u64 = 64 << 20;

/// Reads a tokenizer file of at most [`MAX_TOKENIZER_FILE_BYTES`].
fn read_limited(path: &Path) -> Result<Vec<u8>> {
    crate::files::read_limited(path, MAX_TOKENIZER_FILE_BYTES)
}

fn looks_like_json(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{')
}

/// A piece of input after special-token partitioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment<'a> {
    /// Text to run through the model's encoder.
    Text(&'a str),
    /// A special token matched in the text.
    Token(u32),
}

/// Orders special-token ids as llama.cpp's special-token cache: longest text first (ties by
/// id, for determinism), empty texts dropped.
pub(crate) fn special_order<'t>(
    ids: impl Iterator<Item = u32>,
    text: impl Fn(u32) -> &'t str,
) -> Vec<u32> {
    let mut v: Vec<u32> = ids.filter(|&id| !text(id).is_empty()).collect();
    v.sort_by_key(|&id| std::cmp::Reverse(text(id).len()));
    v
}

/// llama.cpp's `tokenizer_st_partition`: for each special token in turn (longest first),
/// every remaining text fragment is split at each occurrence of its text.
pub(crate) fn partition<'a>(text: &'a str, specials: &[(u32, &str)]) -> Vec<Fragment<'a>> {
    let mut frags = Vec::new();
    if text.is_empty() {
        return frags;
    }
    frags.push(Fragment::Text(text));
    for &(id, needle) in specials {
        if needle.is_empty()
            || !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(t) if t.contains(needle)))
        {
            continue;
        }
        let mut next = Vec::with_capacity(frags.len() + 2);
        for f in frags {
            match f {
                Fragment::Text(mut t) => {
                    while let Some(pos) = t.find(needle) {
                        let (left, rest) = t.split_at(pos);
                        if !left.is_empty() {
                            next.push(Fragment::Text(left));
                        }
                        next.push(Fragment::Token(id));
                        t = &rest[needle.len()..];
                    }
                    if !t.is_empty() {
                        next.push(Fragment::Text(t));
                    }
                }
                tok => next.push(tok),
            }
        }
        frags = next;
    }
    frags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_longest_token_first() {
        let specials = [(7, "bcd"), (5, "ab"), (9, "<x>")];
        assert_eq!(
            partition("abcd<x>ab", &specials),
            [
                Fragment::Text("a"),
                Fragment::Token(7),
                Fragment::Token(9),
                Fragment::Token(5)
            ]
        );
        assert_eq!(partition("", &specials), []);
        assert_eq!(partition("zz", &specials), [Fragment::Text("zz")]);
    }
}
