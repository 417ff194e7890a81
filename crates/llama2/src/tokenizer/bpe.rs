//! GPT-2 style byte-level BPE, as llama.cpp runs GGUF `tokenizer.ggml.model = "gpt2"`
//! vocabularies (`llm_tokenizer_bpe` in `llama-vocab.cpp`, `unicode_regex_split` in
//! `unicode.cpp`).
//!
//! Encoding: the text is partitioned at special-token texts (llama.cpp's
//! `tokenizer_st_partition`), each text fragment is split into words by the model's
//! pre-tokenizer (llama.cpp's hand-written splitters for the GPT-2, Llama 3 and Qwen2
//! regexes and its category-class regexes, with llama.cpp's own code point categories), each
//! word is byte-to-unicode mapped and merged by rank (lowest first, leftmost on ties).
//!
//! Decoding: byte-level unmapping of normal tokens (a character outside the byte map stands
//! for its own UTF-8), user-defined tokens as their text, control/unknown/unused tokens as
//! nothing (llama.cpp's `token_to_piece(special = false)`; `decode_with_special` renders
//! control and unknown tokens as their text). The byte stream is turned into text with
//! sentencepiece's rule (one U+FFFD per invalid byte), which [`super::StreamDecoder`]
//! reproduces incrementally. llama.cpp's `clean_spaces` post-processing of
//! `llama_detokenize` is not applied: decoded text is the concatenation of token pieces, as
//! llama.cpp prints during generation.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;

use super::sentencepiece::push_byte_run;
use super::unicode_data::{CATEGORY_RANGES, WHITESPACE};
use super::{partition, special_order, Fragment};
use crate::error::{Error, Result};

fn tok_err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

/// Vocabulary data as GGUF `tokenizer.ggml.model = "gpt2"` provides it.
#[derive(Debug, Clone, Default)]
pub struct BpeVocab {
    /// `tokenizer.ggml.tokens`: byte-to-unicode mapped token texts (`"Ġthe"`); special
    /// tokens as their literal text.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined,
    /// 5 unused, 6 byte). Empty means all normal.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`: `"left right"`, rank = index.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name (`"smollm"`, `"llama-bpe"`, ...);
    /// empty means llama.cpp's `"default"`.
    pub pre: String,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (default: true for the Llama 3 pre-tokenizers,
    /// false otherwise, as llama.cpp).
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token` (default false).
    pub add_eos: Option<bool>,
    /// The vocabulary comes from a tiktoken ranks file (Meta's Llama 3
    /// `tokenizer.model`), and follows Meta's `Tokenizer` rather than llama.cpp: a merge
    /// ranks by the token it makes (tiktoken's rule; equal ranks go leftmost first),
    /// text is cut before runs of over 25,000 whitespace or non-whitespace characters
    /// and into 400,000-character chunks, and invalid UTF-8 decodes as Python's
    /// `errors="replace"` (one U+FFFD per maximal invalid sequence). Not stored in GGUF.
    pub tiktoken: bool,
}

/// One step of a pre-tokenizer: llama.cpp's regexes, by what they match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Split {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
    Gpt2,
    /// `(?:'[sS]|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
    /// As `Llama3` with `\p{N}` (single digits) instead of `\p{N}{1,3}`.
    Qwen2,
    /// `\p{N}`: every number character on its own.
    Number,
    /// `\p{N}+`
    NumberRun,
    /// `[0-9][0-9][0-9]`
    AsciiDigitTriple,
    /// `[\p{P}\$\+<=>\^~\|]+`
    PunctRun,
}

/// Pre-tokenizer name → llama.cpp's split steps and its `ignore_merges` flag.
pub(super) fn pre_tokenizer(name: &str) -> Result<(Vec<Split>, bool)> {
    use Split::*;
    Ok(match name {
        "" | "default" => (vec![PunctRun, Gpt2, NumberRun, AsciiDigitTriple], false),
        "gpt2" | "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "jina-es" | "jina-de"
        | "jina-v2-es" | "jina-v2-de" | "roberta-bpe" | "exaone4" => (vec![Gpt2], false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            (vec![Number, Gpt2], false)
        }
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => (vec![Llama3], true),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" | "megrez" => (vec![Qwen2], false),
        other => {
            return Err(tok_err(format!(
                "unsupported BPE pre-tokenizer {other:?} (supported: default, gpt2/gpt-2, \
                 smollm, starcoder, llama-bpe/llama3, qwen2 and their llama.cpp aliases)"
            )))
        }
    })
}

/// What a vocabulary entry is (GGUF token type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

/// A GPT-2 byte-level BPE tokenizer (GGUF `tokenizer.ggml.model = "gpt2"`).
#[derive(Clone)]
pub struct BpeTokenizer {
    tokens: Vec<Box<str>>,
    kinds: Vec<Kind>,
    /// Token text → id (first occurrence).
    index: HashMap<Box<str>, u32>,
    /// Interned symbol texts beyond the vocabulary (merge halves/results not in it).
    extra_syms: HashMap<Box<str>, u32>,
    /// (left symbol, right symbol) → (rank, merged symbol).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Special tokens for partitioning, longest first: all (parse_special) ...
    specials_all: Vec<u32>,
    /// ... and the user-defined ones only (plain text).
    specials_user: Vec<u32>,
    splits: Vec<Split>,
    pre: String,
    ignore_merges: bool,
    bos_id: u32,
    eos_id: u32,
    unk_id: Option<u32>,
    pad_id: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    /// Meta's tiktoken rules (see [`BpeVocab::tiktoken`]).
    tiktoken: bool,
    /// The data it was built from (written back by the GGUF converter).
    source: Box<BpeVocab>,
}

impl fmt::Debug for BpeTokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BpeTokenizer")
            .field("n_words", &self.tokens.len())
            .field("n_merges", &self.merges.len())
            .field("pre", &self.pre)
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("unk_id", &self.unk_id)
            .field("pad_id", &self.pad_id)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .finish_non_exhaustive()
    }
}

/// GPT-2's `bytes_to_unicode`: byte → the character that stands for it in token texts.
pub(super) fn byte_to_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
    if printable(b) {
        return char::from(b);
    }
    // The non-printable bytes, in order, map to U+0100, U+0101, ...
    let n = (0..b).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(0x100 + n).unwrap_or('\u{FFFD}')
}

/// Inverse of [`byte_to_char`]; `None` for characters outside the map.
fn char_to_byte(c: char) -> Option<u8> {
    static TABLE: std::sync::OnceLock<HashMap<char, u8>> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| (0..=255u8).map(|b| (byte_to_char(b), b)).collect());
    t.get(&c).copied()
}

// llama.cpp's code point category bits (`unicode_cpt_flags`).
const NUMBER: u16 = 0x02;
const LETTER: u16 = 0x04;
const PUNCTUATION: u16 = 0x20;
const WHITESPACE_FLAG: u16 = 0x100;
const CATEGORY_MASK: u16 = 0xff;

/// llama.cpp's `unicode_cpt_flags_from_cpt` (category bits | whitespace).
fn flags_of(c: char) -> u16 {
    let cp = u32::from(c);
    let i = CATEGORY_RANGES.partition_point(|&(start, _)| start <= cp);
    let cat = i
        .checked_sub(1)
        .and_then(|i| CATEGORY_RANGES.get(i))
        .map_or(0x01, |&(_, f)| u16::from(f));
    let ws = if WHITESPACE.binary_search(&cp).is_ok() {
        WHITESPACE_FLAG
    } else {
        0
    };
    cat | ws
}

/// The code points of one fragment with their flags; positions outside `[ini, end)` read
/// as llama.cpp's OUT_OF_RANGE (flags 0).
struct Cpts<'a> {
    cpts: &'a [char],
    flags: &'a [u16],
    ini: usize,
    end: usize,
}

const OUT_OF_RANGE: u32 = u32::MAX;

impl Cpts<'_> {
    fn cpt(&self, pos: usize) -> u32 {
        if (self.ini..self.end).contains(&pos) {
            u32::from(self.cpts[pos])
        } else {
            OUT_OF_RANGE
        }
    }
    fn flags(&self, pos: usize) -> u16 {
        if (self.ini..self.end).contains(&pos) {
            self.flags[pos]
        } else {
            0
        }
    }
}

fn is_letter(f: u16) -> bool {
    f & LETTER != 0
}
fn is_number(f: u16) -> bool {
    f & NUMBER != 0
}
fn is_ws(f: u16) -> bool {
    f & WHITESPACE_FLAG != 0
}

/// Is `c` one of the contraction letters after `'`: s t m d (one) or re ve ll (two)?
fn contraction_len(c: &Cpts, pos: usize, fold_case: bool) -> Option<usize> {
    let lower = |p: usize| {
        let x = c.cpt(p);
        if fold_case && x < 128 {
            u32::from((x as u8).to_ascii_lowercase())
        } else {
            x
        }
    };
    if c.cpt(pos) != u32::from('\'') || pos + 1 >= c.end {
        return None;
    }
    let n1 = lower(pos + 1);
    if [b's', b't', b'm', b'd'].iter().any(|&b| n1 == u32::from(b)) {
        return Some(2);
    }
    if pos + 2 < c.end {
        let n2 = lower(pos + 2);
        let pair = |a: u8, b: u8| n1 == u32::from(a) && n2 == u32::from(b);
        if pair(b'r', b'e') || pair(b'v', b'e') || pair(b'l', b'l') {
            return Some(3);
        }
    }
    None
}

/// `unicode_regex_split_custom_gpt2` on the fragment `[c.ini, c.end)`; pushes lengths.
fn split_gpt2(c: &Cpts, out: &mut Vec<usize>) {
    let mut prev_end = c.ini;
    let mut add = |end: usize, out: &mut Vec<usize>| -> usize {
        let len = end - prev_end;
        if len > 0 {
            out.push(len);
        }
        prev_end = end;
        len
    };
    let mut pos = c.ini;
    while pos < c.end {
        let cpt = c.cpt(pos);
        let flags = c.flags(pos);
        if let Some(n) = contraction_len(c, pos, false) {
            pos += add(pos + n, out);
            continue;
        }
        let space = cpt == u32::from(' ');
        let mut flags2 = if space { c.flags(pos + 1) } else { flags };
        if is_letter(flags2) {
            pos += usize::from(space);
            while is_letter(flags2) {
                pos += 1;
                flags2 = c.flags(pos);
            }
            add(pos, out);
            continue;
        }
        if is_number(flags2) {
            pos += usize::from(space);
            while is_number(flags2) {
                pos += 1;
                flags2 = c.flags(pos);
            }
            add(pos, out);
            continue;
        }
        let other = |f: u16| !(is_ws(f) || is_letter(f) || is_number(f)) && f != 0;
        if other(flags2) {
            pos += usize::from(space);
            while other(flags2) {
                pos += 1;
                flags2 = c.flags(pos);
            }
            add(pos, out);
            continue;
        }
        let mut n_ws = 0;
        while is_ws(c.flags(pos + n_ws)) {
            n_ws += 1;
        }
        if n_ws > 1 && c.cpt(pos + n_ws) != OUT_OF_RANGE {
            pos += n_ws - 1;
            add(pos, out);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            add(pos, out);
            continue;
        }
        pos += 1;
        add(pos, out);
    }
}

/// `unicode_regex_split_custom_llama3` (`max_digits` 3) and `_qwen2` (`max_digits` 1).
fn split_llama3(c: &Cpts, max_digits: usize, out: &mut Vec<usize>) {
    let mut prev_end = c.ini;
    let mut add = |end: usize, out: &mut Vec<usize>| -> usize {
        let len = end - prev_end;
        if len > 0 {
            out.push(len);
        }
        prev_end = end;
        len
    };
    let is_crlf = |x: u32| x == u32::from('\r') || x == u32::from('\n');
    let mut pos = c.ini;
    while pos < c.end {
        let cpt = c.cpt(pos);
        let flags = c.flags(pos);
        if let Some(n) = contraction_len(c, pos, true) {
            pos += add(pos + n, out);
            continue;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(is_crlf(cpt) || is_number(flags)) && (is_letter(flags) || is_letter(c.flags(pos + 1)))
        {
            pos += 1;
            while is_letter(c.flags(pos)) {
                pos += 1;
            }
            add(pos, out);
            continue;
        }
        // \p{N}{1,max}
        if is_number(flags) {
            let mut ini = pos;
            while is_number(c.flags(pos)) {
                pos += 1;
                if pos - ini >= max_digits {
                    add(pos, out);
                    ini = pos;
                }
            }
            add(pos, out);
            continue;
        }
        // <space>?[^\s\p{L}\p{N}]+[\r\n]*
        let space = cpt == u32::from(' ');
        let mut flags2 = if space { c.flags(pos + 1) } else { flags };
        let other = |f: u16| !(is_ws(f) || is_letter(f) || is_number(f));
        if other(flags2) && flags != 0 {
            pos += usize::from(space);
            while other(flags2) && flags2 != 0 {
                pos += 1;
                flags2 = c.flags(pos);
            }
            while is_crlf(c.cpt(pos)) {
                pos += 1;
            }
            add(pos, out);
            continue;
        }
        let mut n_ws = 0;
        let mut last_crlf_end = 0;
        while is_ws(c.flags(pos + n_ws)) {
            if is_crlf(c.cpt(pos + n_ws)) {
                last_crlf_end = pos + n_ws + 1;
            }
            n_ws += 1;
        }
        // \s*[\r\n]+
        if last_crlf_end > 0 {
            pos = last_crlf_end;
            add(pos, out);
            continue;
        }
        if n_ws > 1 && c.cpt(pos + n_ws) != OUT_OF_RANGE {
            pos += n_ws - 1;
            add(pos, out);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            add(pos, out);
            continue;
        }
        pos += 1;
        add(pos, out);
    }
}

/// llama.cpp runs these through `std::regex` on its "collapsed" text: ASCII as is, other
/// code points as one byte per category (whitespace first). This is that class test.
fn class_matches(split: Split, ch: char, flags: u16) -> bool {
    let cp = u32::from(ch);
    if cp < 128 {
        let b = cp as u8;
        return match split {
            Split::Number | Split::NumberRun | Split::AsciiDigitTriple => b.is_ascii_digit(),
            // !-#  %-*  ,-/  :-;  ?-@  [-]  _  {  }  plus $ + < = > ^ ~ |
            Split::PunctRun => matches!(
                b,
                b'!'..=b'#'
                    | b'%'..=b'*'
                    | b','..=b'/'
                    | b':'..=b';'
                    | b'?'..=b'@'
                    | b'['..=b']'
                    | b'_'
                    | b'{'
                    | b'}'
                    | b'$'
                    | b'+'
                    | b'<'..=b'>'
                    | b'^'
                    | b'~'
                    | b'|'
            ),
            _ => false,
        };
    }
    if is_ws(flags) {
        return false;
    }
    match split {
        Split::Number | Split::NumberRun => flags & CATEGORY_MASK == NUMBER,
        Split::PunctRun => flags & CATEGORY_MASK == PUNCTUATION,
        // `[0-9]` is run on the uncollapsed text: ASCII digits only.
        _ => false,
    }
}

/// `unicode_regex_split_stl` for the single-class patterns: matches and the gaps between
/// them become separate chunks.
fn split_class(split: Split, c: &Cpts, out: &mut Vec<usize>) {
    let m = |p: usize| class_matches(split, c.cpts[p], c.flags[p]);
    let mut gap_start = c.ini;
    let mut pos = c.ini;
    while pos < c.end {
        let len = match split {
            Split::Number => usize::from(m(pos)),
            Split::NumberRun | Split::PunctRun => {
                let mut e = pos;
                while e < c.end && m(e) {
                    e += 1;
                }
                e - pos
            }
            Split::AsciiDigitTriple if pos + 3 <= c.end && (pos..pos + 3).all(m) => 3,
            _ => 0,
        };
        if len == 0 {
            pos += 1;
            continue;
        }
        if pos > gap_start {
            out.push(pos - gap_start);
        }
        out.push(len);
        pos += len;
        gap_start = pos;
    }
    if c.end > gap_start {
        out.push(c.end - gap_start);
    }
}

/// `unicode_regex_split`: applies each split step to every chunk of the previous one and
/// returns the words (as code point ranges).
fn pre_split(cpts: &[char], flags: &[u16], splits: &[Split]) -> Vec<usize> {
    let mut offsets = vec![cpts.len()];
    for &split in splits {
        let mut next = Vec::with_capacity(offsets.len() * 2);
        let mut start = 0;
        for &len in &offsets {
            let c = Cpts {
                cpts,
                flags,
                ini: start,
                end: start + len,
            };
            match split {
                Split::Gpt2 => split_gpt2(&c, &mut next),
                Split::Llama3 => split_llama3(&c, 3, &mut next),
                Split::Qwen2 => split_llama3(&c, 1, &mut next),
                _ => split_class(split, &c, &mut next),
            }
            start += len;
        }
        offsets = next;
    }
    offsets
}

/// A symbol of the merge linked list: a byte range of the mapped word.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    /// Interned symbol id, `None` if the text is unknown (cannot merge).
    sym: Option<u32>,
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bigram {
    rank: u32,
    left: usize,
    right: usize,
    size: usize,
    merged: u32,
}

impl Ord for Bigram {
    // Max-heap: lowest rank first, then the leftmost pair (llama.cpp's comparator).
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl BpeTokenizer {
    /// Builds the tokenizer from GGUF-style vocabulary data.
    ///
    /// Fails with [`Error::Tokenizer`] on an unknown pre-tokenizer name, a malformed merge,
    /// ids outside the vocabulary, or a missing EOS id.
    pub fn from_vocab(v: BpeVocab) -> Result<BpeTokenizer> {
        let source = Box::new(v.clone());
        let n = v.tokens.len();
        if n == 0 {
            return Err(tok_err("the vocabulary is empty"));
        }
        if u32::try_from(n).is_err() {
            return Err(tok_err(format!("vocabulary of {n} tokens is too large")));
        }
        if !v.token_types.is_empty() && v.token_types.len() != n {
            return Err(tok_err(format!(
                "{} token types for {n} tokens",
                v.token_types.len()
            )));
        }
        let (splits, ignore_merges) = pre_tokenizer(&v.pre)?;
        let mut kinds = Vec::with_capacity(n);
        for i in 0..n {
            let t = v.token_types.get(i).copied().unwrap_or(1);
            kinds.push(match t {
                1 => Kind::Normal,
                2 => Kind::Unknown,
                3 => Kind::Control,
                4 => Kind::UserDefined,
                5 => Kind::Unused,
                6 => Kind::Byte,
                other => return Err(tok_err(format!("token {i} has unknown type {other}"))),
            });
        }
        let tokens: Vec<Box<str>> = v.tokens.into_iter().map(String::into_boxed_str).collect();
        let mut index = HashMap::with_capacity(n);
        for (id, t) in tokens.iter().enumerate() {
            index.entry(t.clone()).or_insert(id as u32);
        }
        let mut extra_syms: HashMap<Box<str>, u32> = HashMap::new();
        let mut intern = |s: &str| -> u32 {
            if let Some(&id) = index.get(s) {
                return id;
            }
            let next = (n + extra_syms.len()) as u32;
            *extra_syms.entry(s.into()).or_insert(next)
        };
        let mut merges = HashMap::with_capacity(v.merges.len());
        for (rank, m) in v.merges.iter().enumerate() {
            // llama.cpp splits at the first space after the first byte.
            let first = m.chars().next().map_or(0, char::len_utf8);
            let pos = m
                .get(first..)
                .and_then(|r| r.find(' '))
                .map(|p| p + first)
                .ok_or_else(|| tok_err(format!("merge {rank} {m:?} is not \"left right\"")))?;
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            let merged = format!("{a}{b}");
            let key = (intern(a), intern(b));
            let made = intern(&merged);
            let rank = if v.tiktoken { made } else { rank as u32 };
            let val = (rank, made);
            merges.entry(key).or_insert(val);
        }
        let in_range = |what: &str, id: Option<u32>| -> Result<Option<u32>> {
            match id {
                Some(i) if i as usize >= n => Err(tok_err(format!(
                    "{what} {i} is outside the vocabulary of {n} tokens"
                ))),
                other => Ok(other),
            }
        };
        let eos_id = in_range("eos_id", v.eos_id)?.ok_or_else(|| tok_err("no EOS token id"))?;
        let bos_id = in_range("bos_id", v.bos_id)?.unwrap_or(eos_id);
        let unk_id = in_range("unk_id", v.unk_id)?;
        let pad_id = in_range("pad_id", v.pad_id)?;
        let text = |id: u32| &*tokens[id as usize];
        let specials_all = special_order(
            (0..n as u32).filter(|&i| {
                matches!(
                    kinds[i as usize],
                    Kind::Control | Kind::UserDefined | Kind::Unknown
                )
            }),
            text,
        );
        let specials_user = special_order(
            (0..n as u32).filter(|&i| kinds[i as usize] == Kind::UserDefined),
            text,
        );
        Ok(BpeTokenizer {
            source,
            specials_all,
            specials_user,
            tokens,
            kinds,
            index,
            extra_syms,
            merges,
            splits,
            pre: v.pre,
            ignore_merges,
            bos_id,
            eos_id,
            unk_id,
            pad_id,
            add_bos: v.add_bos.unwrap_or(ignore_merges),
            add_eos: v.add_eos.unwrap_or(false),
            tiktoken: v.tiktoken,
        })
    }

    /// Whether invalid UTF-8 decodes as Python's `errors="replace"` (one U+FFFD per
    /// maximal invalid sequence: vocabularies from tiktoken files) rather than one per
    /// byte.
    pub(crate) fn replaces_like_python(&self) -> bool {
        self.tiktoken
    }

    /// Whether every byte of text is encoded into some token (each of the 256 byte
    /// symbols is in the vocabulary; llama.cpp drops bytes that are not).
    pub(crate) fn keeps_every_byte(&self) -> bool {
        (0..=255u8).all(|b| {
            self.index
                .contains_key(byte_to_char(b).to_string().as_str())
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn n_words(&self) -> usize {
        self.tokens.len()
    }

    /// The vocabulary data the tokenizer was built from.
    pub fn vocab(&self) -> &BpeVocab {
        &self.source
    }

    /// The pre-tokenizer name (`tokenizer.ggml.pre`).
    pub fn pre(&self) -> &str {
        &self.pre
    }

    /// Id of the BOS token (the EOS id when the vocabulary names none, as GPT-2).
    pub fn bos_id(&self) -> u32 {
        self.bos_id
    }

    /// Id of the EOS token.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Id of the unknown token, if any.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk_id
    }

    /// Id of the padding token, if any.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// Whether the model adds BOS by default.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether the model adds EOS by default.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    /// The stored text of token `id` (byte-level mapped), `None` if out of range.
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| &**t)
    }

    /// The id of a token's exact stored text, `None` if absent.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.index.get(piece).copied()
    }

    /// Whether `id` is a control token.
    pub fn is_control(&self, id: u32) -> bool {
        self.kinds.get(id as usize) == Some(&Kind::Control)
    }

    /// The text of a control, unknown or user-defined token; `None` for other ids.
    pub fn special_text(&self, id: u32) -> Option<&str> {
        let k = self.kinds.get(id as usize)?;
        matches!(k, Kind::Control | Kind::Unknown | Kind::UserDefined)
            .then(|| &*self.tokens[id as usize])
    }

    /// llama.cpp's `llama_tokenize(text, add_special, parse_special)`: with `add_special`
    /// the model's default BOS/EOS ([`add_bos`](Self::add_bos), [`add_eos`](Self::add_eos))
    /// are added; with `parse_special` control/unknown token texts become their ids
    /// (user-defined tokens always do).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        self.encode_ext(
            text,
            add_special && self.add_bos,
            add_special && self.add_eos,
            parse_special,
        )
    }

    /// Encoding with explicit BOS/EOS choices.
    pub(super) fn encode_ext(&self, text: &str, bos: bool, eos: bool, parse: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if bos {
            out.push(self.bos_id);
        }
        let list = if parse {
            &self.specials_all
        } else {
            &self.specials_user
        };
        let specials: Vec<(u32, &str)> = list
            .iter()
            .map(|&id| (id, &*self.tokens[id as usize]))
            .collect();
        for frag in partition(text, &specials) {
            match frag {
                Fragment::Text(t) if self.tiktoken => {
                    for piece in meta_slices(t) {
                        self.encode_text(piece, &mut out);
                    }
                }
                Fragment::Text(t) => self.encode_text(t, &mut out),
                Fragment::Token(id) => out.push(id),
            }
        }
        if eos {
            out.push(self.eos_id);
        }
        out
    }

    /// `llm_tokenizer_bpe_session::tokenize` on one text fragment.
    fn encode_text(&self, text: &str, out: &mut Vec<u32>) {
        let cpts: Vec<char> = text.chars().collect();
        let flags: Vec<u16> = cpts.iter().map(|&c| flags_of(c)).collect();
        let mut start = 0;
        let mut word = String::new();
        for len in pre_split(&cpts, &flags, &self.splits) {
            word.clear();
            let mut buf = [0u8; 4];
            for &c in &cpts[start..start + len] {
                for &b in c.encode_utf8(&mut buf).as_bytes() {
                    word.push(byte_to_char(b));
                }
            }
            start += len;
            self.encode_word(&word, out);
        }
    }

    fn sym_id(&self, s: &str) -> Option<u32> {
        self.index
            .get(s)
            .or_else(|| self.extra_syms.get(s))
            .copied()
    }

    /// Merges one byte-mapped word and appends its ids.
    fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if self.ignore_merges {
            if let Some(&id) = self.index.get(word) {
                out.push(id);
                return;
            }
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len() / 2);
        for (start, ch) in word.char_indices() {
            let len = ch.len_utf8();
            let i = symbols.len();
            symbols.push(Symbol {
                start,
                len,
                sym: self.sym_id(&word[start..start + len]),
                prev: i.checked_sub(1),
                next: None,
            });
            if let Some(p) = i.checked_sub(1) {
                symbols[p].next = Some(i);
            }
        }
        let mut queue = BinaryHeap::with_capacity(symbols.len());
        let push = |symbols: &[Symbol],
                    queue: &mut BinaryHeap<Bigram>,
                    l: Option<usize>,
                    r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let (a, b) = (symbols[l], symbols[r]);
            let (Some(sa), Some(sb)) = (a.sym, b.sym) else {
                return;
            };
            if let Some(&(rank, merged)) = self.merges.get(&(sa, sb)) {
                queue.push(Bigram {
                    rank,
                    left: l,
                    right: r,
                    size: a.len + b.len,
                    merged,
                });
            }
        };
        for i in 1..symbols.len() {
            push(&symbols, &mut queue, Some(i - 1), Some(i));
        }
        while let Some(bg) = queue.pop() {
            let (a, b) = (symbols[bg.left], symbols[bg.right]);
            // Stale: a side was merged away or grew since this entry was queued.
            if a.len == 0 || b.len == 0 || a.len + b.len != bg.size {
                continue;
            }
            symbols[bg.left].len = bg.size;
            symbols[bg.left].sym = Some(bg.merged);
            symbols[bg.left].next = b.next;
            if let Some(nn) = b.next {
                symbols[nn].prev = Some(bg.left);
            }
            symbols[bg.right].len = 0;
            let (prev, next) = (symbols[bg.left].prev, symbols[bg.left].next);
            push(&symbols, &mut queue, prev, Some(bg.left));
            push(&symbols, &mut queue, Some(bg.left), next);
        }
        let mut cur = Some(0);
        while let Some(i) = cur {
            let s = symbols[i];
            cur = s.next;
            let text = &word[s.start..s.start + s.len];
            match self.index.get(text) {
                Some(&id) => out.push(id),
                None => {
                    // llama.cpp: each byte of the mapped text as a one-byte token, if any.
                    for b in text.bytes() {
                        let one = [b];
                        if let Some(&id) = std::str::from_utf8(&one)
                            .ok()
                            .and_then(|t| self.index.get(t))
                        {
                            out.push(id);
                        }
                    }
                }
            }
        }
    }

    /// Appends the bytes token `id` stands for; `Err` for an id out of range.
    pub(super) fn push_token_bytes(&self, id: u32, special: bool, out: &mut Vec<u8>) -> Result<()> {
        let (Some(text), Some(&kind)) = (self.tokens.get(id as usize), self.kinds.get(id as usize))
        else {
            return Err(Error::InvalidTokenId {
                id,
                n_words: self.tokens.len(),
            });
        };
        match kind {
            Kind::Control | Kind::Unknown => {
                if special {
                    out.extend_from_slice(text.as_bytes());
                }
            }
            Kind::UserDefined => out.extend_from_slice(text.as_bytes()),
            Kind::Unused => {}
            Kind::Byte if parse_hex_byte(text).is_some() => {
                out.extend(parse_hex_byte(text));
            }
            Kind::Normal | Kind::Byte => {
                let mut buf = [0u8; 4];
                for c in text.chars() {
                    match char_to_byte(c) {
                        Some(b) => out.push(b),
                        None => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
                    }
                }
            }
        }
        Ok(())
    }

    fn decode_opts(&self, ids: &[u32], special: bool) -> Result<String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            self.push_token_bytes(id, special, &mut bytes)?;
        }
        if self.tiktoken {
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        let mut out = String::with_capacity(bytes.len());
        push_byte_run(&bytes, &mut out);
        Ok(out)
    }

    /// Decodes ids: normal tokens byte-level unmapped, user-defined tokens as their text,
    /// control/unknown/unused tokens as nothing; invalid UTF-8 as one U+FFFD per byte.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_opts(ids, false)
    }

    /// Like [`decode`](Self::decode), but control and unknown tokens render as their text.
    pub fn decode_with_special(&self, ids: &[u32]) -> Result<String> {
        self.decode_opts(ids, true)
    }
}

/// Meta's `Tokenizer.encode` cutting (Llama 3): chunks of 400,000 characters, each cut
/// before a run of whitespace (Python's `str.isspace`) or non-whitespace grows past
/// 25,000 characters. The pieces are tokenized independently.
fn meta_slices(text: &str) -> Vec<&str> {
    const MAX_CHARS: usize = 400_000;
    const MAX_RUN: usize = 25_000;
    let is_space = |c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c);
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest
            .char_indices()
            .nth(MAX_CHARS)
            .map_or(rest.len(), |(i, _)| i);
        let (chunk, tail) = rest.split_at(end);
        rest = tail;
        let mut run = 0;
        let mut run_space = chunk.chars().next().is_some_and(is_space);
        let mut start = 0;
        for (i, c) in chunk.char_indices() {
            let space = is_space(c);
            if space != run_space {
                run = 1;
                run_space = space;
            } else {
                run += 1;
                if run > MAX_RUN {
                    out.push(&chunk[start..i]);
                    start = i;
                    run = 1;
                }
            }
        }
        out.push(&chunk[start..]);
    }
    out
}

/// `<0xNN>` → the byte (byte-type tokens of non-byte-level vocabularies).
fn parse_hex_byte(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str, pre: &str) -> Vec<String> {
        let (splits, _) = pre_tokenizer(pre).expect("known");
        let cpts: Vec<char> = text.chars().collect();
        let flags: Vec<u16> = cpts.iter().map(|&c| flags_of(c)).collect();
        let mut start = 0;
        pre_split(&cpts, &flags, &splits)
            .into_iter()
            .map(|len| {
                let w: String = cpts[start..start + len].iter().collect();
                start += len;
                w
            })
            .collect()
    }

    #[test]
    fn byte_map_round_trips() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(b'a'), 'a');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        assert_eq!(char_to_byte('€'), None);
    }

    #[test]
    fn flags_match_llama_cpp_categories() {
        assert!(is_letter(flags_of('a')) && is_letter(flags_of('東')) && is_letter(flags_of('é')));
        assert!(is_number(flags_of('7')) && is_number(flags_of('½')) && is_number(flags_of('٣')));
        assert!(is_ws(flags_of(' ')) && is_ws(flags_of('\u{3000}')) && is_ws(flags_of('\n')));
        assert!(!is_letter(flags_of('\u{0301}'))); // combining mark
        assert_eq!(flags_of('!') & CATEGORY_MASK, PUNCTUATION);
    }

    #[test]
    fn gpt2_and_smollm_splits() {
        assert_eq!(
            words("Hello world's  123 !!x\n\n  y", "gpt2"),
            ["Hello", " world", "'s", " ", " 123", " !!", "x", "\n\n ", " y"]
        );
        assert_eq!(words("a 123", "smollm"), ["a", " ", "1", "2", "3"]);
        assert_eq!(words("   ", "gpt2"), ["   "]);
    }

    #[test]
    fn llama3_and_qwen2_splits() {
        assert_eq!(
            words("Hello WORLD'S 12345 ?!\n\nok  x", "llama-bpe"),
            ["Hello", " WORLD", "'S", " ", "123", "45", " ?!\n\n", "ok", " ", " x"]
        );
        assert_eq!(words("x 123", "qwen2"), ["x", " ", "1", "2", "3"]);
    }

    #[test]
    fn default_pre_tokenizer_steps() {
        assert_eq!(
            words("1234567 a+b", "default"),
            ["123", "456", "7", " a", "+", "b"]
        );
    }

    #[test]
    fn unknown_pre_tokenizer_is_named() {
        match pre_tokenizer("nope") {
            Err(Error::Tokenizer(m)) => assert!(m.contains("\"nope\""), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
