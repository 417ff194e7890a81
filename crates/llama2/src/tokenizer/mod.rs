//! The Llama 2 SentencePiece tokenizer.
//!
//! This module owns everything between text and token ids: reading `tokenizer.model`
//! (a protobuf `ModelProto`, parsed by a small hand-written reader), BPE encoding and
//! decoding with the exact behaviour of Meta's `Tokenizer` (sentencepiece), and
//! [`StreamDecoder`], which turns generated ids into text deltas that never split a
//! UTF-8 character.

mod proto;
mod sentencepiece;
mod stream;

pub use sentencepiece::Tokenizer;
pub use stream::StreamDecoder;
