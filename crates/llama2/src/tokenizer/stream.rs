//! Incremental detokenization for streaming generation.

use super::sentencepiece::{push_byte_run, utf8_head, Kind, Utf8Head};
use super::Tokenizer;
use crate::error::Result;

/// Turns token ids into text one id at a time, as they are generated.
///
/// The concatenation of every [`push`](Self::push) delta and the final
/// [`finish`](Self::finish) equals [`Tokenizer::decode`] of all pushed ids. A trailing run
/// of byte pieces that could still complete a UTF-8 character is held back, so a delta
/// never contains a U+FFFD that more bytes would have turned into a real character.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    /// Bytes of the current run of byte pieces (SentencePiece) or of all tokens (byte-level
    /// BPE) not yet turned into text.
    pending: Vec<u8>,
    /// Whether a non-control piece has been seen (it used up the leading-`▁` rule).
    started: bool,
}

impl StreamDecoder {
    /// A decoder at the start of a sequence.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one id and returns the text it completes (possibly empty).
    ///
    /// Fails with [`crate::error::Error::InvalidTokenId`] for an id outside the vocabulary;
    /// the decoder is then unchanged.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        let mut out = String::new();
        let tok = match tok {
            Tokenizer::SentencePiece(t) => t,
            Tokenizer::Bpe(t) => {
                // Byte-level BPE: every token is bytes; hold back an incomplete character.
                t.push_token_bytes(id, false, &mut self.pending)?;
                if t.replaces_like_python() {
                    self.drain_lossy(false, &mut out);
                } else {
                    self.drain(false, &mut out);
                }
                return Ok(out);
            }
        };
        match tok.kind(id)? {
            Kind::Byte(b) => {
                self.pending.push(b);
                self.started = true;
                self.drain(false, &mut out);
            }
            kind => {
                // Any other piece ends the byte run, as in `decode`.
                self.drain(true, &mut out);
                tok.push_piece_text(id, !self.started, false, &mut out);
                if kind != Kind::Control {
                    self.started = true;
                }
            }
        }
        Ok(out)
    }

    /// Returns the text held back (an unfinished byte run, as U+FFFD per byte).
    ///
    /// The decoder keeps its position in the sequence: pushing more ids afterwards
    /// continues the same text. Use a new decoder for a new sequence.
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        // The tokenizer is not needed to flush bytes; it is taken for API symmetry.
        let mut out = String::new();
        match tok {
            Tokenizer::Bpe(t) if t.replaces_like_python() => self.drain_lossy(true, &mut out),
            _ => self.drain(true, &mut out),
        }
        Ok(out)
    }

    /// [`drain`](Self::drain) with Python's replacement rule (tiktoken vocabularies):
    /// one U+FFFD per maximal invalid sequence, as `String::from_utf8_lossy` does; a
    /// trailing sequence that more bytes could complete stays pending.
    fn drain_lossy(&mut self, end_of_run: bool, out: &mut String) {
        let mut consumed = 0;
        let chunks: Vec<_> = self.pending.utf8_chunks().collect();
        let last = chunks.len().saturating_sub(1);
        for (k, c) in chunks.iter().enumerate() {
            out.push_str(c.valid());
            consumed += c.valid().len();
            let bad = c.invalid();
            if bad.is_empty() {
                continue;
            }
            if k == last && !end_of_run && matches!(utf8_head(bad), Utf8Head::Incomplete) {
                break;
            }
            out.push('\u{FFFD}');
            consumed += bad.len();
        }
        self.pending.drain(..consumed);
    }

    /// Moves the settled part of the pending bytes into `out`. With `end_of_run`, the run
    /// is over and everything is settled; otherwise an incomplete but possibly valid
    /// character at the end stays pending (at most 3 bytes).
    fn drain(&mut self, end_of_run: bool, out: &mut String) {
        if end_of_run {
            push_byte_run(&self.pending, out);
            self.pending.clear();
            return;
        }
        let mut i = 0;
        while let Some(rest) = self.pending.get(i..).filter(|r| !r.is_empty()) {
            match utf8_head(rest) {
                Utf8Head::Char(n) => {
                    push_byte_run(&rest[..n], out);
                    i += n;
                }
                Utf8Head::Invalid => {
                    out.push('\u{FFFD}');
                    i += 1;
                }
                Utf8Head::Incomplete => break,
            }
        }
        self.pending.drain(..i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tokenizer() -> Tokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tokenizer/tokenizer.model");
        Tokenizer::from_file(&path).expect("fixture tokenizer loads")
    }

    /// Pushes all ids, checking each delta, and returns the deltas (finish last).
    fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
        let mut d = StreamDecoder::new();
        let mut deltas = Vec::new();
        for &id in ids {
            deltas.push(d.push(tok, id).expect("valid id"));
        }
        deltas.push(d.finish(tok).expect("finish"));
        deltas
    }

    fn byte_ids(tok: &Tokenizer, s: &[u8]) -> Vec<u32> {
        s.iter()
            .map(|b| {
                tok.piece_to_id(&format!("<0x{b:02X}>"))
                    .expect("byte piece")
            })
            .collect()
    }

    #[test]
    fn emoji_is_held_until_complete() {
        let tok = tokenizer();
        let ids = byte_ids(&tok, "🦙".as_bytes());
        let deltas = stream(&tok, &ids);
        assert_eq!(deltas, vec!["", "", "", "🦙", ""]);
    }

    #[test]
    fn incomplete_run_flushes_as_replacement_chars() {
        let tok = tokenizer();
        let mut ids = byte_ids(&tok, &[0xf0, 0x9f]);
        let hello = tok.piece_to_id("▁Hello").expect("piece");
        ids.push(hello);
        let deltas = stream(&tok, &ids);
        assert_eq!(deltas, vec!["", "", "\u{FFFD}\u{FFFD} Hello", ""]);
        // An invalid byte is emitted at once; finish flushes a dangling prefix.
        let ids = byte_ids(&tok, &[0xff, 0xe4, 0xb8]);
        let deltas = stream(&tok, &ids);
        assert_eq!(deltas, vec!["\u{FFFD}", "", "", "\u{FFFD}\u{FFFD}"]);
    }

    #[test]
    fn invalid_id_is_an_error() {
        let tok = tokenizer();
        let mut d = StreamDecoder::new();
        assert!(d.push(&tok, 32000).is_err());
        assert!(tok.decode(&[32000]).is_err());
    }

    /// Random id sequences mixing text pieces, whitespace, control, `<unk>` and byte runs
    /// (valid emoji/CJK bytes, truncated and corrupted ones): concatenated deltas equal
    /// `decode`, and no delta holds a U+FFFD that `decode` does not have at that place.
    #[test]
    fn property_stream_matches_decode() {
        let tok = tokenizer();
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let samples = ["🦙", "你好", "é", "€", "𝄞", "a"];
        for _ in 0..2000 {
            let mut ids = Vec::new();
            let len = rnd() % 12;
            for _ in 0..len {
                match rnd() % 8 {
                    0 => ids.push((rnd() % 32000) as u32),
                    1 => ids.push([1, 2, 0, 29871, 259, 13][(rnd() % 6) as usize]),
                    2 => ids.push(3 + (rnd() % 256) as u32),
                    _ => {
                        let s = samples[(rnd() % samples.len() as u64) as usize].as_bytes();
                        let mut b = s.to_vec();
                        match rnd() % 4 {
                            0 => b.truncate((rnd() as usize) % b.len()),
                            1 => {
                                let i = (rnd() as usize) % b.len();
                                b[i] = rnd() as u8;
                            }
                            _ => {}
                        }
                        ids.extend(byte_ids(&tok, &b));
                    }
                }
            }
            let deltas = stream(&tok, &ids);
            let joined: String = deltas.concat();
            let expected = tok.decode(&ids).expect("decodes");
            assert_eq!(joined, expected, "ids {ids:?}");
            // Nothing emitted is ever revised: after each push, the text so far is a prefix
            // of the decode of that prefix of ids followed by any continuation, including
            // continuation bytes that would complete a held-back character (so a premature
            // U+FFFD would be caught here).
            let continuations: Vec<Vec<u32>> = vec![
                vec![],
                byte_ids(&tok, &[0x80; 3]),
                byte_ids(&tok, &[0x90; 3]),
                byte_ids(&tok, &[0xa0; 3]),
            ];
            let mut d = StreamDecoder::new();
            let mut emitted = String::new();
            for (k, &id) in ids.iter().enumerate() {
                emitted.push_str(&d.push(&tok, id).expect("push"));
                assert!(d.pending.len() <= 3);
                for c in &continuations {
                    let mut longer = ids[..=k].to_vec();
                    longer.extend_from_slice(c);
                    let full = tok.decode(&longer).expect("decodes");
                    assert!(
                        full.starts_with(&emitted),
                        "ids {longer:?}: emitted {emitted:?}, decode {full:?}"
                    );
                }
            }
        }
    }
}
