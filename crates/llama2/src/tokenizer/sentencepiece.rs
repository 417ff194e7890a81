//! SentencePiece BPE encode/decode with the exact behaviour of Meta's `Tokenizer`
//! (which wraps `sentencepiece.SentencePieceProcessor`).
//!
//! Encoding follows sentencepiece's `normalizer.cc` (identity normalisation only) and
//! `bpe_model.cc`; decoding follows `SentencePieceProcessor::Decode`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::path::Path;

use super::proto::{self, piece_type};
use crate::error::{Error, Result};

/// U+2581 LOWER ONE EIGHTH BLOCK, sentencepiece's visible stand-in for a space.
pub(super) const SPACE_SYMBOL: &str = "\u{2581}";

/// What a vocabulary entry is, from `ModelProto.SentencePiece.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    /// A `<0xNN>` byte-fallback piece and its byte value.
    Byte(u8),
}

impl Kind {
    /// Pieces that text can be segmented into (sentencepiece's `pieces_` map).
    fn mergeable(self) -> bool {
        matches!(self, Kind::Normal | Kind::UserDefined | Kind::Unused)
    }
}

#[derive(Debug, Clone)]
struct Piece {
    text: Box<str>,
    score: f32,
    kind: Kind,
}

/// A Llama 2 SentencePiece tokenizer loaded from a `tokenizer.model` file.
///
/// Only BPE models without Unicode normalisation rules are supported, which covers
/// Llama 1/2 and most models derived from them.
#[derive(Clone)]
pub struct SentencePieceTokenizer {
    pieces: Vec<Piece>,
    /// Piece text → id of its first occurrence.
    index: HashMap<Box<str>, u32>,
    /// USER_DEFINED piece ids, longest text first (matched greedily before BPE).
    user_defined: Vec<u32>,
    /// Control, unknown and user-defined ids, longest text first (`encode_with_special`).
    specials: Vec<u32>,
    /// Byte value → id of its `<0xNN>` piece.
    byte_ids: Box<[Option<u32>; 256]>,
    unk_id: u32,
    bos_id: u32,
    eos_id: u32,
    pad_id: Option<u32>,
    unk_surface: String,
    byte_fallback: bool,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    add_bos: bool,
    add_eos: bool,
}

impl fmt::Debug for SentencePieceTokenizer {
    // The derived form would print all 32000 pieces; a summary is more useful.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentencePieceTokenizer")
            .field("n_words", &self.pieces.len())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("pad_id", &self.pad_id)
            .field("unk_id", &self.unk_id)
            .field("byte_fallback", &self.byte_fallback)
            .field("add_dummy_prefix", &self.add_dummy_prefix)
            .field("remove_extra_whitespaces", &self.remove_extra_whitespaces)
            .field("escape_whitespaces", &self.escape_whitespaces)
            .finish_non_exhaustive()
    }
}

fn tok_err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

/// Parses a byte piece's text, which sentencepiece always writes as `<0xNN>` (upper case).
fn parse_byte_piece(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'A'..=b'F')) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// How the UTF-8 bytes at the start of a run of byte pieces decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Utf8Head {
    /// A complete, valid character of this many bytes.
    Char(usize),
    /// The first byte cannot start a valid character with the bytes that follow it:
    /// sentencepiece emits U+FFFD for it and moves on by one byte.
    Invalid,
    /// A valid but incomplete prefix of a character (more bytes could complete it).
    Incomplete,
}

/// Classifies the start of `bytes` (non-empty) as sentencepiece's `IsValidDecodeUTF8` does:
/// overlong forms, surrogates and code points above U+10FFFF are invalid.
pub(super) fn utf8_head(bytes: &[u8]) -> Utf8Head {
    let need = match bytes.first() {
        Some(0x00..=0x7f) => 1,
        Some(0xc0..=0xdf) => 2,
        Some(0xe0..=0xef) => 3,
        Some(0xf0..=0xf7) => 4,
        _ => return Utf8Head::Invalid,
    };
    match bytes.get(..need) {
        Some(head) => match std::str::from_utf8(head) {
            Ok(_) => Utf8Head::Char(need),
            Err(_) => Utf8Head::Invalid,
        },
        // Too few bytes: `error_len() == None` means "could still become valid".
        None => match std::str::from_utf8(bytes) {
            Err(e) if e.error_len().is_none() => Utf8Head::Incomplete,
            _ => Utf8Head::Invalid,
        },
    }
}

/// Appends the text of a finished run of byte pieces: one character wherever the bytes
/// form a complete valid one, otherwise U+FFFD for each offending byte.
pub(super) fn push_byte_run(bytes: &[u8], out: &mut String) {
    let mut i = 0;
    while let Some(rest) = bytes.get(i..).filter(|r| !r.is_empty()) {
        match utf8_head(rest) {
            Utf8Head::Char(n) => {
                // `utf8_head` has validated exactly these bytes.
                if let Some(s) = rest.get(..n).and_then(|h| std::str::from_utf8(h).ok()) {
                    out.push_str(s);
                }
                i += n;
            }
            Utf8Head::Invalid | Utf8Head::Incomplete => {
                out.push('\u{FFFD}');
                i += 1;
            }
        }
    }
}

/// One symbol of the BPE linked list: a byte range of the normalised text.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    /// Length in bytes; 0 once merged into its left neighbour.
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
    /// USER_DEFINED symbols are never merged further.
    frozen: bool,
}

/// The text a symbol covers in the normalised string `s`.
fn symbol_text<'s>(s: &'s str, sym: &Symbol) -> &'s str {
    s.get(sym.start..sym.start + sym.len).unwrap_or("")
}

/// A candidate merge of symbols `left` and `right` (adjacent when it was queued).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    /// Byte length of the merged piece; detects stale entries.
    size: usize,
}

impl Ord for Candidate {
    // Max-heap order: higher score first, then the leftmost pair (as bpe_model.cc).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// Vocabulary data as GGUF `tokenizer.ggml.model = "llama"` provides it (`tokenizer.ggml.*`
/// arrays and ids), to build a [`SentencePieceTokenizer`] without a `tokenizer.model`.
#[derive(Debug, Clone)]
pub struct SentencePieceVocab {
    /// `tokenizer.ggml.tokens`: piece texts, `▁` for spaces, `<0xNN>` for byte pieces.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: merge scores, one per token (higher merges first).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.token_type`, SentencePiece numbering: 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte. Empty means all normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.bos_token_id` (llama.cpp's default for SPM: 1).
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id` (default 2).
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id` (default 0).
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id` (default none).
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (default true).
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token` (default false).
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`: SentencePiece's `add_dummy_prefix` (default true).
    pub add_space_prefix: Option<bool>,
}

/// Everything [`SentencePieceTokenizer::assemble`] needs besides the pieces.
pub(super) struct SpOptions {
    pub unk_id: i64,
    pub bos_id: i64,
    pub eos_id: i64,
    pub pad_id: i64,
    pub unk_surface: String,
    pub byte_fallback: bool,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
    pub add_bos: bool,
    pub add_eos: bool,
}

/// sentencepiece's default `unk_surface`: U+2047 with a space each side.
pub(super) const DEFAULT_UNK_SURFACE: &str = " \u{2047} ";

impl SentencePieceTokenizer {
    /// Loads a SentencePiece `tokenizer.model` file.
    pub fn from_file(path: &Path) -> Result<SentencePieceTokenizer> {
        let bytes = crate::files::read_limited(path, super::MAX_TOKENIZER_FILE_BYTES)?;
        SentencePieceTokenizer::from_bytes(&bytes)
    }

    /// Parses a serialized SentencePiece `ModelProto`.
    ///
    /// Fails with [`Error::Tokenizer`] on malformed data and on models this engine does not
    /// support (non-BPE, Unicode normalisation rules, whitespace-as-suffix).
    pub fn from_bytes(bytes: &[u8]) -> Result<SentencePieceTokenizer> {
        let model = proto::parse_model(bytes)?;
        let ts = &model.trainer_spec;
        let ns = &model.normalizer_spec;

        if ts.model_type != proto::MODEL_TYPE_BPE {
            return Err(tok_err(format!(
                "model_type {} is not supported (only BPE = {})",
                ts.model_type,
                proto::MODEL_TYPE_BPE
            )));
        }
        if ts.treat_whitespace_as_suffix {
            return Err(tok_err("treat_whitespace_as_suffix is not supported"));
        }
        if ns.precompiled_charsmap_len > 0 {
            return Err(tok_err(format!(
                "normalizer {:?} has a precompiled_charsmap ({} bytes): Unicode \
                 normalisation is not supported, only identity normalisation",
                ns.name, ns.precompiled_charsmap_len
            )));
        }
        if model.denormalizer_charsmap_len > 0 {
            return Err(tok_err(
                "the model has a denormalizer precompiled_charsmap, which is not supported",
            ));
        }
        let opts = SpOptions {
            unk_id: i64::from(ts.unk_id),
            bos_id: i64::from(ts.bos_id),
            eos_id: i64::from(ts.eos_id),
            pad_id: i64::from(ts.pad_id),
            unk_surface: ts.unk_surface.clone(),
            byte_fallback: ts.byte_fallback,
            add_dummy_prefix: ns.add_dummy_prefix,
            remove_extra_whitespaces: ns.remove_extra_whitespaces,
            escape_whitespaces: ns.escape_whitespaces,
            add_bos: true,
            add_eos: false,
        };
        let raw = model
            .pieces
            .into_iter()
            .map(|p| (p.piece, p.score, p.kind))
            .collect();
        Self::assemble(raw, opts)
    }

    /// Builds the tokenizer from GGUF-style vocabulary arrays (`tokenizer.ggml.model =
    /// "llama"`), with llama.cpp's normalisation: spaces escaped as `▁`, an optional dummy
    /// prefix, no whitespace clean-up, byte fallback when `<0xNN>` pieces exist.
    ///
    /// On the pieces, scores and types of a `tokenizer.model` this gives the same ids as
    /// [`from_bytes`](Self::from_bytes) on that file.
    pub fn from_vocab(v: SentencePieceVocab) -> Result<SentencePieceTokenizer> {
        let n = v.tokens.len();
        if v.scores.len() != n {
            return Err(tok_err(format!("{} scores for {n} tokens", v.scores.len())));
        }
        if !v.token_types.is_empty() && v.token_types.len() != n {
            return Err(tok_err(format!(
                "{} token types for {n} tokens",
                v.token_types.len()
            )));
        }
        let types = v.token_types;
        let raw: Vec<(String, f32, i32)> = v
            .tokens
            .into_iter()
            .zip(v.scores)
            .enumerate()
            .map(|(i, (t, s))| (t, s, types.get(i).copied().unwrap_or(piece_type::NORMAL)))
            .collect();
        let byte_fallback = raw.iter().any(|r| r.2 == piece_type::BYTE);
        let id = |x: Option<u32>, default: i64| x.map_or(default, i64::from);
        let opts = SpOptions {
            unk_id: id(v.unk_id, 0),
            bos_id: id(v.bos_id, 1),
            eos_id: id(v.eos_id, 2),
            pad_id: id(v.pad_id, -1),
            unk_surface: DEFAULT_UNK_SURFACE.to_string(),
            byte_fallback,
            add_dummy_prefix: v.add_space_prefix.unwrap_or(true),
            remove_extra_whitespaces: false,
            escape_whitespaces: true,
            add_bos: v.add_bos.unwrap_or(true),
            add_eos: v.add_eos.unwrap_or(false),
        };
        Self::assemble(raw, opts)
    }

    /// Validates `(text, score, SentencePiece type)` entries and ids and builds the tables.
    pub(super) fn assemble(
        raw: Vec<(String, f32, i32)>,
        o: SpOptions,
    ) -> Result<SentencePieceTokenizer> {
        if raw.is_empty() {
            return Err(tok_err("the vocabulary is empty"));
        }
        let n = raw.len();
        if u32::try_from(n).is_err() {
            return Err(tok_err(format!("vocabulary of {n} pieces is too large")));
        }

        let mut pieces = Vec::with_capacity(n);
        let mut index = HashMap::with_capacity(n);
        let mut user_defined = Vec::new();
        let mut byte_ids = [None; 256];
        for (id, (text, score, kind)) in raw.into_iter().enumerate() {
            // `n` fits in u32 (checked above), so every id does.
            let id = id as u32;
            if text.is_empty() {
                return Err(tok_err(format!("piece {id} is empty")));
            }
            let kind = match kind {
                piece_type::NORMAL => Kind::Normal,
                piece_type::UNKNOWN => Kind::Unknown,
                piece_type::CONTROL => Kind::Control,
                piece_type::USER_DEFINED => Kind::UserDefined,
                piece_type::UNUSED => Kind::Unused,
                piece_type::BYTE => {
                    let b = parse_byte_piece(&text).ok_or_else(|| {
                        tok_err(format!(
                            "byte piece {id} is {text:?}, expected the form <0xNN>"
                        ))
                    })?;
                    let slot = &mut byte_ids[usize::from(b)];
                    if slot.is_none() {
                        *slot = Some(id);
                    }
                    Kind::Byte(b)
                }
                other => return Err(tok_err(format!("piece {id} has unknown type {other}"))),
            };
            if kind == Kind::UserDefined {
                user_defined.push(id);
            }
            let text: Box<str> = text.into_boxed_str();
            // Duplicates: the first occurrence wins for lookups.
            index.entry(text.clone()).or_insert(id);
            pieces.push(Piece { text, score, kind });
        }
        user_defined.sort_by_key(|&id| std::cmp::Reverse(pieces[id as usize].text.len()));
        // Texts parsed by `encode_with_special`, as llama.cpp's special-token cache.
        let specials = super::special_order(
            (0..n as u32).filter(|&id| {
                matches!(
                    pieces[id as usize].kind,
                    Kind::Control | Kind::Unknown | Kind::UserDefined
                )
            }),
            |id| &*pieces[id as usize].text,
        );

        let in_range = |what: &str, v: i64| -> Result<u32> {
            u32::try_from(v)
                .ok()
                .filter(|&v| (v as usize) < n)
                .ok_or_else(|| {
                    tok_err(format!(
                        "{what} {v} is outside the vocabulary of {n} pieces"
                    ))
                })
        };
        let unk_id = in_range("unk_id", o.unk_id)?;
        if pieces[unk_id as usize].kind != Kind::Unknown {
            return Err(tok_err(format!(
                "unk_id {unk_id} ({:?}) is not an UNKNOWN piece",
                pieces[unk_id as usize].text
            )));
        }
        let bos_id = in_range("bos_id", o.bos_id)?;
        let eos_id = in_range("eos_id", o.eos_id)?;
        let pad_id = if o.pad_id < 0 {
            None
        } else {
            Some(in_range("pad_id", o.pad_id)?)
        };

        Ok(SentencePieceTokenizer {
            pieces,
            index,
            user_defined,
            specials,
            byte_ids: Box::new(byte_ids),
            unk_id,
            bos_id,
            eos_id,
            pad_id,
            unk_surface: o.unk_surface,
            byte_fallback: o.byte_fallback,
            add_dummy_prefix: o.add_dummy_prefix,
            remove_extra_whitespaces: o.remove_extra_whitespaces,
            escape_whitespaces: o.escape_whitespaces,
            add_bos: o.add_bos,
            add_eos: o.add_eos,
        })
    }

    /// Whether the model adds `<s>` by default (`tokenizer.ggml.add_bos_token`; true for
    /// `tokenizer.model`, as Meta's code always passes `bos=True` for prompts).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether the model adds `</s>` by default (false unless the GGUF says so).
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// The text of a control, unknown or user-defined piece (e.g. `"<s>"`), `None` for
    /// other pieces and ids out of range.
    pub fn special_text(&self, id: u32) -> Option<&str> {
        let p = self.pieces.get(id as usize)?;
        matches!(p.kind, Kind::Control | Kind::Unknown | Kind::UserDefined).then_some(&*p.text)
    }

    /// Encodes text in which special-token texts (control, unknown and user-defined pieces,
    /// e.g. `"<s>"`) stand for those tokens, as llama.cpp's `llama_tokenize(parse_special =
    /// true)`: the text is split at special-token occurrences (longest token first) and each
    /// text fragment is encoded like [`encode`](Self::encode) (with its own dummy prefix).
    pub fn encode_with_special(&self, text: &str, add_bos: bool, add_eos: bool) -> Vec<u32> {
        let mut ids = Vec::new();
        if add_bos {
            ids.push(self.bos_id);
        }
        let specials: Vec<(u32, &str)> = self
            .specials
            .iter()
            .map(|&id| (id, &*self.pieces[id as usize].text))
            .collect();
        for frag in super::partition(text, &specials) {
            match frag {
                super::Fragment::Text(t) => {
                    let normalized = self.normalize(t);
                    self.encode_normalized(&normalized, &mut ids);
                }
                super::Fragment::Token(id) => ids.push(id),
            }
        }
        if add_eos {
            ids.push(self.eos_id);
        }
        ids
    }

    /// Whether every byte of text is encoded into some token (byte fallback on, no
    /// whitespace collapsing): then a token stands for at most its piece's bytes.
    pub(crate) fn keeps_every_byte(&self) -> bool {
        self.byte_fallback && !self.remove_extra_whitespaces
    }

    /// Number of pieces in the vocabulary (Meta's `n_words`).
    pub fn n_words(&self) -> usize {
        self.pieces.len()
    }

    /// Id of the beginning-of-sequence token `<s>`.
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Id of the end-of-sequence token `</s>`.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Id of the padding token, `None` when the model has none (`pad_id` -1, as Llama 2).
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Id of the unknown token `<unk>`.
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// The text of piece `id` (with `▁` for spaces), `None` if out of range.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| &*p.text)
    }

    /// The id of a piece's exact text (first occurrence), `None` if not in the vocabulary.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.index.get(piece).copied()
    }

    /// The BPE merge score of piece `id`, `None` if out of range.
    pub fn score(&self, id: u32) -> Option<f32> {
        self.pieces.get(id as usize).map(|p| p.score)
    }

    /// The byte a `<0xNN>` byte-fallback piece stands for; `None` for other pieces.
    pub fn byte_value(&self, id: u32) -> Option<u8> {
        match self.pieces.get(id as usize)?.kind {
            Kind::Byte(b) => Some(b),
            _ => None,
        }
    }

    /// The SentencePiece type of piece `id` (1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte; GGUF `tokenizer.ggml.token_type` numbering), `None` if out of range.
    pub fn piece_type(&self, id: u32) -> Option<i32> {
        Some(match self.pieces.get(id as usize)?.kind {
            Kind::Normal => piece_type::NORMAL,
            Kind::Unknown => piece_type::UNKNOWN,
            Kind::Control => piece_type::CONTROL,
            Kind::UserDefined => piece_type::USER_DEFINED,
            Kind::Unused => piece_type::UNUSED,
            Kind::Byte(_) => piece_type::BYTE,
        })
    }

    /// Whether `id` is a control token (`<s>`, `</s>`), which decodes to nothing.
    pub fn is_control(&self, id: u32) -> bool {
        matches!(self.pieces.get(id as usize), Some(p) if p.kind == Kind::Control)
    }

    /// Encodes `text` exactly as Meta's `Tokenizer.encode(text, bos, eos)`: SentencePiece
    /// BPE, optionally with `<s>` prepended and `</s>` appended. Control tokens are never
    /// produced from the text itself (`"<s>"` is ordinary text).
    pub fn encode(&self, text: &str, bos: bool, eos: bool) -> Vec<u32> {
        let normalized = self.normalize(text);
        let mut ids = Vec::with_capacity(normalized.len() / 3 + 2);
        if bos {
            ids.push(self.bos_id);
        }
        self.encode_normalized(&normalized, &mut ids);
        if eos {
            ids.push(self.eos_id);
        }
        ids
    }

    /// sentencepiece's `Normalizer::Normalize` without a charsmap: optional whitespace
    /// clean-up, the dummy-prefix `▁`, and spaces escaped as `▁`.
    fn normalize(&self, text: &str) -> String {
        let ws = if self.escape_whitespaces {
            SPACE_SYMBOL
        } else {
            " "
        };
        let rew = self.remove_extra_whitespaces;
        let input = if rew {
            text.trim_start_matches(' ')
        } else {
            text
        };
        let mut out = String::with_capacity(input.len() * 3 / 2 + 3);
        if input.is_empty() {
            return out;
        }
        if self.add_dummy_prefix {
            out.push_str(ws);
        }
        let mut prev_space = rew;
        for c in input.chars() {
            if c == ' ' {
                // A space right after a space is dropped when cleaning up whitespace.
                if !prev_space {
                    out.push_str(ws);
                }
                prev_space = rew;
            } else {
                out.push(c);
                prev_space = false;
            }
        }
        if rew {
            while let Some(rest) = out.strip_suffix(ws) {
                out.truncate(rest.len());
            }
        }
        out
    }

    /// Id of a segmentable piece (NORMAL, USER_DEFINED, UNUSED), as BPE sees the vocabulary.
    fn mergeable_id(&self, piece: &str) -> Option<u32> {
        let &id = self.index.get(piece)?;
        let p = self.pieces.get(id as usize)?;
        p.kind.mergeable().then_some(id)
    }

    /// Byte length of the longest USER_DEFINED piece that `s` starts with.
    fn match_user_defined(&self, s: &str) -> Option<usize> {
        self.user_defined.iter().find_map(|&id| {
            let t = &*self.pieces.get(id as usize)?.text;
            s.starts_with(t).then_some(t.len())
        })
    }

    /// bpe_model.cc `Model::Encode` + the byte-fallback / unknown handling of
    /// `SentencePieceProcessor::Encode`, appending ids to `out`.
    fn encode_normalized(&self, s: &str, out: &mut Vec<u32>) {
        if s.is_empty() {
            return;
        }
        // Split into characters (USER_DEFINED pieces kept whole).
        let mut symbols: Vec<Symbol> = Vec::with_capacity(s.len());
        let mut pos = 0;
        while let Some(rest) = s.get(pos..).filter(|r| !r.is_empty()) {
            let (len, frozen) = match self.match_user_defined(rest) {
                Some(len) => (len, true),
                None => (rest.chars().next().map_or(1, char::len_utf8), false),
            };
            let i = symbols.len();
            symbols.push(Symbol {
                start: pos,
                len,
                prev: i.checked_sub(1),
                next: None,
                frozen,
            });
            if let Some(p) = i.checked_sub(1) {
                symbols[p].next = Some(i);
            }
            pos += len;
        }

        let mut agenda: BinaryHeap<Candidate> = BinaryHeap::with_capacity(symbols.len());
        // Merged text of an UNUSED piece → the two halves it was built from (for re-splitting).
        let mut rev_merge: HashMap<&str, (&str, &str)> = HashMap::new();

        for i in 1..symbols.len() {
            self.try_add(
                s,
                &symbols,
                &mut agenda,
                &mut rev_merge,
                Some(i - 1),
                Some(i),
            );
        }

        while let Some(top) = agenda.pop() {
            let (l, r) = (top.left, top.right);
            let (a, b) = (symbols[l], symbols[r]);
            // Stale: one side was merged away or grew since this entry was queued.
            if a.len == 0 || b.len == 0 || a.len + b.len != top.size {
                continue;
            }
            symbols[l].len = top.size;
            symbols[l].next = b.next;
            if let Some(nn) = b.next {
                symbols[nn].prev = Some(l);
            }
            symbols[r].len = 0;
            let prev = symbols[l].prev;
            let next = symbols[l].next;
            self.try_add(s, &symbols, &mut agenda, &mut rev_merge, prev, Some(l));
            self.try_add(s, &symbols, &mut agenda, &mut rev_merge, Some(l), next);
        }

        let mut prev_is_unk = false;
        let mut stack: Vec<&str> = Vec::new();
        let mut cur = Some(0);
        while let Some(i) = cur {
            cur = symbols[i].next;
            stack.push(symbol_text(s, &symbols[i]));
            // Re-split UNUSED pieces into the halves they were merged from (resegment).
            while let Some(w) = stack.pop() {
                let id = self.mergeable_id(w);
                if let Some(id) = id {
                    if self.pieces[id as usize].kind == Kind::Unused {
                        if let Some(&(x, y)) = rev_merge.get(w) {
                            stack.push(y);
                            stack.push(x);
                            continue;
                        }
                    }
                }
                match id {
                    Some(id) => {
                        out.push(id);
                        prev_is_unk = false;
                    }
                    None if self.byte_fallback => {
                        out.extend(
                            w.bytes()
                                .map(|b| self.byte_ids[usize::from(b)].unwrap_or(self.unk_id)),
                        );
                        prev_is_unk = false;
                    }
                    None => {
                        // Without byte fallback, a run of unknown symbols is one `<unk>`.
                        if !prev_is_unk {
                            out.push(self.unk_id);
                        }
                        prev_is_unk = true;
                    }
                }
            }
        }
    }

    /// bpe_model.cc `MaybeAddNewSymbolPair`: queues the merge of `left` and `right` if
    /// their concatenation is a segmentable piece.
    fn try_add<'s>(
        &self,
        s: &'s str,
        symbols: &[Symbol],
        agenda: &mut BinaryHeap<Candidate>,
        rev_merge: &mut HashMap<&'s str, (&'s str, &'s str)>,
        left: Option<usize>,
        right: Option<usize>,
    ) {
        let (Some(l), Some(r)) = (left, right) else {
            return;
        };
        let (Some(&a), Some(&b)) = (symbols.get(l), symbols.get(r)) else {
            return;
        };
        if a.frozen || b.frozen {
            return;
        }
        let Some(merged) = s.get(a.start..a.start + a.len + b.len) else {
            return;
        };
        let Some(id) = self.mergeable_id(merged) else {
            return;
        };
        let piece = &self.pieces[id as usize];
        agenda.push(Candidate {
            // `+ 0.0` turns -0.0 into 0.0 so the two tie, as they do in C++.
            score: piece.score + 0.0,
            left: l,
            right: r,
            size: merged.len(),
        });
        if piece.kind == Kind::Unused {
            rev_merge.insert(merged, (symbol_text(s, &a), symbol_text(s, &b)));
        }
    }

    /// The kind of piece `id`, or [`Error::InvalidTokenId`].
    pub(super) fn kind(&self, id: u32) -> Result<Kind> {
        self.pieces
            .get(id as usize)
            .map(|p| p.kind)
            .ok_or(Error::InvalidTokenId {
                id,
                n_words: self.pieces.len(),
            })
    }

    /// Appends the text of a non-byte piece. `first` says no non-control piece came before
    /// it, in which case one leading `▁` is dropped (the dummy prefix added by encode).
    /// With `render_control`, control pieces append their text instead of nothing.
    pub(super) fn push_piece_text(
        &self,
        id: u32,
        first: bool,
        render_control: bool,
        out: &mut String,
    ) {
        let Some(p) = self.pieces.get(id as usize) else {
            return;
        };
        match p.kind {
            Kind::Control => {
                if render_control {
                    out.push_str(&p.text);
                }
            }
            Kind::Unknown => out.push_str(&self.unk_surface),
            Kind::Byte(b) => push_byte_run(&[b], out),
            Kind::Normal | Kind::UserDefined | Kind::Unused => {
                let mut t: &str = &p.text;
                if first && (self.add_dummy_prefix || self.remove_extra_whitespaces) {
                    t = t.strip_prefix(SPACE_SYMBOL).unwrap_or(t);
                }
                for (k, part) in t.split(SPACE_SYMBOL).enumerate() {
                    if k > 0 {
                        out.push(' ');
                    }
                    out.push_str(part);
                }
            }
        }
    }

    /// Decodes ids exactly as Meta's `Tokenizer.decode` (SentencePiece `DecodeIds`).
    ///
    /// Control tokens produce nothing, `<unk>` produces `" ⁇ "`, `▁` becomes a space except
    /// for one leading `▁` of the first non-control piece, and runs of byte pieces are
    /// decoded as UTF-8 with one U+FFFD per invalid byte. An id `>= n_words` is
    /// [`Error::InvalidTokenId`].
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_opts(ids, false)
    }

    /// Like [`decode`](Self::decode), but control pieces render as their text (`"<s>"`).
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String> {
        self.decode_opts(ids, true)
    }

    fn decode_opts(&self, ids: &[u32], render_control: bool) -> Result<String> {
        let mut out = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let mut first = true;
        for &id in ids {
            match self.kind(id)? {
                Kind::Byte(b) => {
                    bytes.push(b);
                    first = false;
                }
                kind => {
                    push_byte_run(&bytes, &mut out);
                    bytes.clear();
                    self.push_piece_text(id, first, render_control, &mut out);
                    if kind != Kind::Control {
                        first = false;
                    }
                }
            }
        }
        push_byte_run(&bytes, &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_heads() {
        assert_eq!(utf8_head(b"a"), Utf8Head::Char(1));
        assert_eq!(utf8_head("é!".as_bytes()), Utf8Head::Char(2));
        assert_eq!(utf8_head("🦙".as_bytes()), Utf8Head::Char(4));
        assert_eq!(utf8_head(&[0xf0, 0x9f]), Utf8Head::Incomplete);
        assert_eq!(utf8_head(&[0xc0, 0x80]), Utf8Head::Invalid); // overlong
        assert_eq!(utf8_head(&[0xe0, 0x80]), Utf8Head::Invalid); // overlong prefix
        assert_eq!(utf8_head(&[0xed, 0xa0, 0x80]), Utf8Head::Invalid); // surrogate
        assert_eq!(utf8_head(&[0xf4, 0x90, 0x80, 0x80]), Utf8Head::Invalid); // > U+10FFFF
        assert_eq!(utf8_head(&[0x80]), Utf8Head::Invalid);
        assert_eq!(utf8_head(&[0xff]), Utf8Head::Invalid);
    }

    #[test]
    fn byte_runs() {
        let mut s = String::new();
        push_byte_run(&[0xf0, 0x9f, 0xa6, 0x99, b'x'], &mut s);
        assert_eq!(s, "🦙x");
        s.clear();
        // Each byte of an incomplete sequence is its own U+FFFD.
        push_byte_run(&[0xf0, 0x9f, 0xa6], &mut s);
        assert_eq!(s, "\u{FFFD}\u{FFFD}\u{FFFD}");
        s.clear();
        push_byte_run(&[0xe2, 0x28, 0xa1], &mut s);
        assert_eq!(s, "\u{FFFD}(\u{FFFD}");
        s.clear();
        // A literal U+FFFD encoded in bytes is a valid character.
        push_byte_run("\u{FFFD}".as_bytes(), &mut s);
        assert_eq!(s, "\u{FFFD}");
    }

    #[test]
    fn byte_piece_names() {
        assert_eq!(parse_byte_piece("<0x0A>"), Some(10));
        assert_eq!(parse_byte_piece("<0xFF>"), Some(255));
        assert_eq!(parse_byte_piece("<0xff>"), None);
        assert_eq!(parse_byte_piece("<0x1>"), None);
        assert_eq!(parse_byte_piece("<0x+1>"), None);
    }

    /// Serializes a small BPE model: `(piece, score, type)` entries plus options.
    fn toy_model(pieces: &[(&str, f32, i32)], byte_fallback: bool, rew: bool) -> Vec<u8> {
        fn varint(mut v: u64, out: &mut Vec<u8>) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        fn field(n: u64, payload: &[u8], out: &mut Vec<u8>) {
            varint((n << 3) | 2, out);
            varint(payload.len() as u64, out);
            out.extend_from_slice(payload);
        }
        let mut m = Vec::new();
        for &(text, score, kind) in pieces {
            let mut p = Vec::new();
            field(1, text.as_bytes(), &mut p);
            p.push((2 << 3) | 5);
            p.extend_from_slice(&score.to_le_bytes());
            p.push(3 << 3);
            varint(kind as u64, &mut p);
            field(1, &p, &mut m);
        }
        let mut t = vec![3 << 3, 2]; // model_type BPE
        varint(35 << 3, &mut t);
        varint(u64::from(byte_fallback), &mut t);
        field(2, &t, &mut m);
        field(3, &[4 << 3, u8::from(rew)], &mut m);
        m
    }

    fn toy(byte_fallback: bool, rew: bool) -> SentencePieceTokenizer {
        use piece_type::*;
        let pieces = [
            ("<unk>", 0.0, UNKNOWN),
            ("<s>", 0.0, CONTROL),
            ("</s>", 0.0, CONTROL),
            ("\u{2581}", -1.0, NORMAL),
            ("a", -2.0, NORMAL),
            ("b", -3.0, NORMAL),
            ("\u{2581}a", -0.5, NORMAL),
            ("ab", -0.1, NORMAL),
            ("<sep>", 0.0, USER_DEFINED),
            ("ba", 0.0, UNUSED),
            ("<0x78>", 0.0, BYTE),
        ];
        SentencePieceTokenizer::from_bytes(&toy_model(&pieces, byte_fallback, rew))
            .expect("toy model")
    }

    #[test]
    fn toy_bpe_merges_user_defined_and_unused() {
        let tok = toy(false, false);
        // Highest score first: "ab" (-0.1) beats "▁a" (-0.5).
        assert_eq!(tok.encode("ab", false, false), [3, 7]);
        // USER_DEFINED pieces are matched whole and never merged.
        assert_eq!(tok.encode("a<sep>b", false, false), [6, 8, 5]);
        // "ba" is UNUSED: merged (score 0.0) and then split back into its halves.
        assert_eq!(tok.encode("bab", false, false), [3, 5, 4, 5]);
        // Without byte fallback a run of unknown characters is a single <unk>.
        assert_eq!(tok.encode("xyz a", true, true), [1, 3, 0, 6, 2]);
        assert_eq!(tok.decode(&[3, 0, 6]).expect("decode"), " \u{2047}  a");
    }

    #[test]
    fn toy_byte_fallback_and_whitespace_cleanup() {
        let tok = toy(true, false);
        // "x" has a byte piece; "y" does not and falls back to <unk> per byte.
        assert_eq!(tok.encode("xy", false, false), [3, 10, 0]);
        assert_eq!(tok.decode(&[3, 10, 0]).expect("decode"), "x \u{2047} ");
        let tok = toy(false, true);
        // remove_extra_whitespaces: strip both ends, collapse runs.
        assert_eq!(tok.encode("  a   b  ", false, false), [6, 3, 5]);
        assert_eq!(tok.encode("   ", false, false), Vec::<u32>::new());
        assert_eq!(tok.decode(&[6, 3, 5]).expect("decode"), "a b");
    }

    #[test]
    fn unsupported_models_are_rejected() {
        use piece_type::*;
        let base = [
            ("<unk>", 0.0, UNKNOWN),
            ("<s>", 0.0, CONTROL),
            ("</s>", 0.0, CONTROL),
        ];
        assert!(SentencePieceTokenizer::from_bytes(&toy_model(&base, true, false)).is_ok());
        let reject = |bytes: Vec<u8>, needle: &str| match SentencePieceTokenizer::from_bytes(&bytes)
        {
            Err(Error::Tokenizer(msg)) => assert!(msg.contains(needle), "{msg}"),
            other => panic!("expected a tokenizer error about {needle}, got {other:?}"),
        };
        // Appended fields merge into the earlier sub-messages (protobuf semantics).
        let with = |extra: &[u8]| {
            let mut b = toy_model(&base, true, false);
            b.extend_from_slice(extra);
            b
        };
        reject(with(&[0x12, 0x02, 0x18, 0x01]), "model_type");
        reject(
            with(&[0x1a, 0x03, 0x12, 0x01, 0x00]),
            "precompiled_charsmap",
        );
        reject(with(&[0x12, 0x03, 0xc8, 0x02, 0x09]), "bos_id");
        reject(with(&[0x12, 0x03, 0xd0, 0x02, 0x09]), "eos_id");
        reject(with(&[0x12, 0x03, 0xc0, 0x02, 0x01]), "unk_id");
        reject(
            with(&[0x12, 0x03, 0xc0, 0x01, 0x01]),
            "treat_whitespace_as_suffix",
        );
        reject(toy_model(&[], true, false), "empty");
        reject(
            toy_model(
                &[("<unk>", 0.0, UNKNOWN), ("<0x1>", 0.0, BYTE)],
                true,
                false,
            ),
            "<0xNN>",
        );
        reject(
            toy_model(&[("<unk>", 0.0, UNKNOWN), ("x", 0.0, 9)], true, false),
            "type",
        );
    }
}
