//! Fuzzes `Tokenizer::from_bytes` with arbitrary model files; when one loads, checks that
//! encode/decode/streaming agree on a string derived from the same data.

#![no_main]

use libfuzzer_sys::fuzz_target;
use llama2::tokenizer::{StreamDecoder, Tokenizer};

fuzz_target!(|data: &[u8]| {
    let Ok(tok) = Tokenizer::from_bytes(data) else {
        return;
    };
    // The tail of the input is as good a source of text as any (lossy keeps it UTF-8).
    let tail = &data[data.len().saturating_sub(256)..];
    let text = String::from_utf8_lossy(tail);
    let ids = tok.encode(&text, true, true);
    assert!(ids.iter().all(|&id| (id as usize) < tok.n_words()));
    let decoded = tok.decode(&ids).expect("ids from encode are in range");

    let mut stream = StreamDecoder::new();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(&stream.push(&tok, id).expect("id in range"));
    }
    streamed.push_str(&stream.finish(&tok).expect("finish"));
    assert_eq!(streamed, decoded);
});
