//! A minimal protobuf wire-format reader for sentencepiece's `ModelProto`.
//!
//! Only the fields the encoder and decoder need are extracted; everything else is skipped.
//! The input is untrusted: every length is checked against the bytes that remain before it
//! is used, nothing allocates more than the input holds, and malformed input is an error,
//! never a panic. Field numbers follow sentencepiece's `sentencepiece_model.proto`.

use crate::error::{Error, Result};

/// `ModelProto.SentencePiece.Type` values.
pub(crate) mod piece_type {
    /// An ordinary vocabulary piece.
    pub const NORMAL: i32 = 1;
    /// The unknown piece (`<unk>`).
    pub const UNKNOWN: i32 = 2;
    /// Control symbols such as `<s>` and `</s>`.
    pub const CONTROL: i32 = 3;
    /// Pieces that are always matched as a whole.
    pub const USER_DEFINED: i32 = 4;
    /// `<0xNN>` byte-fallback pieces.
    pub const BYTE: i32 = 6;
    /// Pieces kept in the vocabulary but never emitted by the encoder.
    pub const UNUSED: i32 = 5;
}

/// `TrainerSpec.ModelType::BPE`.
pub(crate) const MODEL_TYPE_BPE: i32 = 2;

/// One `ModelProto.SentencePiece` entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PieceProto {
    pub piece: String,
    pub score: f32,
    pub kind: i32,
}

/// The `TrainerSpec` fields that matter at inference time (proto2 defaults applied).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TrainerSpec {
    pub model_type: i32,
    pub treat_whitespace_as_suffix: bool,
    pub byte_fallback: bool,
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
    pub unk_surface: String,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        TrainerSpec {
            model_type: 1, // UNIGRAM
            treat_whitespace_as_suffix: false,
            byte_fallback: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            unk_surface: " \u{2047} ".to_string(),
        }
    }
}

/// The `NormalizerSpec` fields (proto2 defaults applied).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NormalizerSpec {
    pub name: String,
    pub precompiled_charsmap_len: usize,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        NormalizerSpec {
            name: String::new(),
            precompiled_charsmap_len: 0,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// The parts of a serialized `ModelProto` this engine uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ModelProto {
    pub pieces: Vec<PieceProto>,
    pub trainer_spec: TrainerSpec,
    pub normalizer_spec: NormalizerSpec,
    /// Length of `denormalizer_spec.precompiled_charsmap` (field 5), 0 when absent.
    pub denormalizer_charsmap_len: usize,
}

/// A decoded field value, borrowing length-delimited payloads from the input.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Value<'a> {
    Varint(u64),
    /// Skipped: no field this reader extracts is a 64-bit fixed value.
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

fn err(msg: impl Into<String>) -> Error {
    Error::Tokenizer(msg.into())
}

/// Cursor over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn read_varint(&mut self) -> Result<u64> {
        let mut value: u64 = 0;
        // A varint is at most 10 bytes (64 bits / 7 bits per byte, rounded up).
        for i in 0..10 {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| err("truncated varint"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(err(format!(
                "field of {n} bytes runs past the end of the data ({} bytes left)",
                self.remaining()
            )));
        }
        let start = self.pos;
        self.pos += n;
        self.buf
            .get(start..self.pos)
            .ok_or_else(|| err("internal bounds error"))
    }

    /// Reads the next `(field number, value)`, or `None` at the end of the message.
    fn next_field(&mut self) -> Result<Option<(u64, Value<'a>)>> {
        if self.remaining() == 0 {
            return Ok(None);
        }
        let tag = self.read_varint()?;
        let field = tag >> 3;
        if field == 0 {
            return Err(err("field number 0 is invalid"));
        }
        let value = match tag & 7 {
            0 => Value::Varint(self.read_varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = self.read_varint()?;
                // Compare as u64 first so a huge length cannot wrap on 32-bit targets.
                if len > self.remaining() as u64 {
                    return Err(err(format!(
                        "length-delimited field {field} of {len} bytes runs past the end \
                         of the data ({} bytes left)",
                        self.remaining()
                    )));
                }
                Value::Bytes(self.take(len as usize)?)
            }
            5 => {
                let b = self.take(4)?;
                let mut a = [0u8; 4];
                a.copy_from_slice(b);
                Value::Fixed32(u32::from_le_bytes(a))
            }
            w => {
                // 3/4 are deprecated groups, 6/7 do not exist; sentencepiece uses neither.
                return Err(err(format!("unsupported wire type {w} for field {field}")));
            }
        };
        Ok(Some((field, value)))
    }
}

fn wrong_type(msg: &str, field: u64) -> Error {
    err(format!("{msg} field {field} has the wrong wire type"))
}

fn as_varint(v: Value<'_>, msg: &str, field: u64) -> Result<u64> {
    match v {
        Value::Varint(x) => Ok(x),
        _ => Err(wrong_type(msg, field)),
    }
}

/// proto `int32`/enum: the low 32 bits of the varint (negative values are sign-extended
/// to 10 bytes on the wire, so truncation recovers them).
fn as_i32(v: Value<'_>, msg: &str, field: u64) -> Result<i32> {
    Ok(as_varint(v, msg, field)? as u32 as i32)
}

fn as_bool(v: Value<'_>, msg: &str, field: u64) -> Result<bool> {
    Ok(as_varint(v, msg, field)? != 0)
}

fn as_bytes<'a>(v: Value<'a>, msg: &str, field: u64) -> Result<&'a [u8]> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => Err(wrong_type(msg, field)),
    }
}

fn as_string(v: Value<'_>, msg: &str, field: u64) -> Result<String> {
    let b = as_bytes(v, msg, field)?;
    std::str::from_utf8(b)
        .map(str::to_owned)
        .map_err(|_| err(format!("{msg} field {field} is not valid UTF-8")))
}

fn parse_piece(buf: &[u8]) -> Result<PieceProto> {
    const M: &str = "SentencePiece";
    let mut p = PieceProto {
        piece: String::new(),
        score: 0.0,
        kind: piece_type::NORMAL,
    };
    let mut r = Reader::new(buf);
    while let Some((field, v)) = r.next_field()? {
        match field {
            1 => p.piece = as_string(v, M, field)?,
            2 => match v {
                Value::Fixed32(bits) => p.score = f32::from_bits(bits),
                _ => return Err(wrong_type(M, field)),
            },
            3 => p.kind = as_i32(v, M, field)?,
            _ => {}
        }
    }
    Ok(p)
}

/// Merges the fields of one serialized `TrainerSpec` into `t` (protobuf merge semantics).
fn parse_trainer_spec(buf: &[u8], t: &mut TrainerSpec) -> Result<()> {
    const M: &str = "TrainerSpec";
    let mut r = Reader::new(buf);
    while let Some((field, v)) = r.next_field()? {
        match field {
            3 => t.model_type = as_i32(v, M, field)?,
            24 => t.treat_whitespace_as_suffix = as_bool(v, M, field)?,
            35 => t.byte_fallback = as_bool(v, M, field)?,
            40 => t.unk_id = as_i32(v, M, field)?,
            41 => t.bos_id = as_i32(v, M, field)?,
            42 => t.eos_id = as_i32(v, M, field)?,
            43 => t.pad_id = as_i32(v, M, field)?,
            44 => t.unk_surface = as_string(v, M, field)?,
            _ => {}
        }
    }
    Ok(())
}

/// Merges the fields of one serialized `NormalizerSpec` into `n`.
fn parse_normalizer_spec(buf: &[u8], n: &mut NormalizerSpec) -> Result<()> {
    const M: &str = "NormalizerSpec";
    let mut r = Reader::new(buf);
    while let Some((field, v)) = r.next_field()? {
        match field {
            1 => n.name = as_string(v, M, field)?,
            2 => n.precompiled_charsmap_len = as_bytes(v, M, field)?.len(),
            3 => n.add_dummy_prefix = as_bool(v, M, field)?,
            4 => n.remove_extra_whitespaces = as_bool(v, M, field)?,
            5 => n.escape_whitespaces = as_bool(v, M, field)?,
            _ => {}
        }
    }
    Ok(())
}

/// Parses a serialized sentencepiece `ModelProto`.
pub(crate) fn parse_model(buf: &[u8]) -> Result<ModelProto> {
    const M: &str = "ModelProto";
    let mut m = ModelProto::default();
    let mut r = Reader::new(buf);
    while let Some((field, v)) = r.next_field()? {
        match field {
            1 => {
                let b = as_bytes(v, M, field)?;
                let piece =
                    parse_piece(b).map_err(|e| err(format!("piece {}: {e}", m.pieces.len())))?;
                m.pieces.push(piece);
            }
            2 => parse_trainer_spec(as_bytes(v, M, field)?, &mut m.trainer_spec)?,
            3 => parse_normalizer_spec(as_bytes(v, M, field)?, &mut m.normalizer_spec)?,
            5 => {
                let mut d = NormalizerSpec::default();
                parse_normalizer_spec(as_bytes(v, M, field)?, &mut d)?;
                m.denormalizer_charsmap_len = d.precompiled_charsmap_len;
            }
            _ => {}
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn tag(field: u64, wire: u64, out: &mut Vec<u8>) {
        varint((field << 3) | wire, out);
    }

    fn bytes_field(field: u64, payload: &[u8], out: &mut Vec<u8>) {
        tag(field, 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    fn piece(text: &str, score: f32, kind: Option<i32>) -> Vec<u8> {
        let mut p = Vec::new();
        bytes_field(1, text.as_bytes(), &mut p);
        tag(2, 5, &mut p);
        p.extend_from_slice(&score.to_le_bytes());
        if let Some(k) = kind {
            tag(3, 0, &mut p);
            varint(k as u32 as u64, &mut p);
        }
        p
    }

    #[test]
    fn varint_edge_cases() {
        let mut r = Reader::new(&[0x00]);
        assert_eq!(r.read_varint().ok(), Some(0));
        let mut r = Reader::new(&[0xff, 0x01]);
        assert_eq!(r.read_varint().ok(), Some(255));
        // -1 as int32 is a 10-byte varint.
        let mut buf = Vec::new();
        varint(u64::MAX, &mut buf);
        assert_eq!(buf.len(), 10);
        let mut r = Reader::new(&buf);
        assert_eq!(r.read_varint().ok(), Some(u64::MAX));
        // Truncated and over-long varints are errors.
        assert!(Reader::new(&[0x80]).read_varint().is_err());
        assert!(Reader::new(&[0x80; 11]).read_varint().is_err());
        assert!(Reader::new(&[]).read_varint().is_err());
    }

    #[test]
    fn negative_int32_fields() {
        let mut t = Vec::new();
        tag(43, 0, &mut t);
        varint(-1i64 as u64, &mut t);
        tag(41, 0, &mut t);
        varint(7, &mut t);
        let mut m = Vec::new();
        bytes_field(2, &t, &mut m);
        let model = parse_model(&m).expect("parses");
        assert_eq!(model.trainer_spec.pad_id, -1);
        assert_eq!(model.trainer_spec.bos_id, 7);
        assert_eq!(model.trainer_spec.eos_id, 2);
    }

    #[test]
    fn pieces_defaults_and_unknown_fields() {
        let mut m = Vec::new();
        bytes_field(1, &piece("<unk>", 0.0, Some(2)), &mut m);
        bytes_field(1, &piece("▁a", -1.5, None), &mut m);
        // Unknown fields of every wire type are skipped.
        tag(9, 0, &mut m);
        varint(12345, &mut m);
        tag(10, 1, &mut m);
        m.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        tag(11, 5, &mut m);
        m.extend_from_slice(&[1, 2, 3, 4]);
        bytes_field(12, b"ignored", &mut m);
        let mut n = Vec::new();
        tag(4, 0, &mut n);
        varint(0, &mut n);
        bytes_field(3, &n, &mut m);
        let model = parse_model(&m).expect("parses");
        assert_eq!(model.pieces.len(), 2);
        assert_eq!(model.pieces[0].kind, piece_type::UNKNOWN);
        assert_eq!(model.pieces[1].piece, "▁a");
        assert_eq!(model.pieces[1].score, -1.5);
        assert_eq!(model.pieces[1].kind, piece_type::NORMAL);
        assert!(model.normalizer_spec.add_dummy_prefix);
        assert!(!model.normalizer_spec.remove_extra_whitespaces);
        assert!(model.normalizer_spec.escape_whitespaces);
        assert_eq!(model.trainer_spec.model_type, 1);
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error() {
        let mut m = Vec::new();
        bytes_field(1, &piece("hello", -3.0, None), &mut m);
        assert!(parse_model(&m).is_ok());
        for cut in 1..m.len() {
            assert!(parse_model(&m[..cut]).is_err(), "prefix {cut} accepted");
        }
        // Huge declared length.
        let mut huge = Vec::new();
        tag(1, 2, &mut huge);
        varint(u64::MAX, &mut huge);
        assert!(parse_model(&huge).is_err());
        // Field number 0, group wire types, wrong wire type for a known field.
        assert!(parse_model(&[0x00, 0x00]).is_err());
        assert!(parse_model(&[(1 << 3) | 3]).is_err());
        let mut wrong = Vec::new();
        tag(1, 0, &mut wrong);
        varint(5, &mut wrong);
        assert!(parse_model(&wrong).is_err());
        // Invalid UTF-8 in a piece.
        let mut bad = Vec::new();
        let mut p = Vec::new();
        bytes_field(1, &[0xff, 0xfe], &mut p);
        bytes_field(1, &p, &mut bad);
        assert!(parse_model(&bad).is_err());
        // Empty input is an empty (but syntactically valid) model.
        assert_eq!(parse_model(&[]).ok().map(|m| m.pieces.len()), Some(0));
    }

    #[test]
    fn repeated_submessages_merge() {
        let mut m = Vec::new();
        let mut t1 = Vec::new();
        tag(3, 0, &mut t1);
        varint(2, &mut t1);
        let mut t2 = Vec::new();
        tag(35, 0, &mut t2);
        varint(1, &mut t2);
        bytes_field(2, &t1, &mut m);
        bytes_field(2, &t2, &mut m);
        let model = parse_model(&m).expect("parses");
        assert_eq!(model.trainer_spec.model_type, MODEL_TYPE_BPE);
        assert!(model.trainer_spec.byte_fallback);
    }
}
