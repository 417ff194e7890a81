//! Fuzzes Hugging Face `tokenizer.json` loading (with an optional
//! `tokenizer_config.json`: the input's part after the first NUL byte); when one loads,
//! encode/decode/streaming must agree on a string derived from the same data.

#![no_main]

use libfuzzer_sys::fuzz_target;
use llama2::tokenizer::{StreamDecoder, Tokenizer};

fuzz_target!(|data: &[u8]| {
    let (json, config) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let Ok(tok) = Tokenizer::from_hf_json_bytes(json, config) else {
        return;
    };
    let tail = &data[data.len().saturating_sub(256)..];
    let text = String::from_utf8_lossy(tail);
    for ids in [
        tok.encode(&text, true, true),
        tok.encode_with_special(&text, true),
    ] {
        assert!(ids.iter().all(|&id| (id as usize) < tok.n_words()));
        let decoded = tok.decode(&ids).expect("ids from encode are in range");
        let mut stream = StreamDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(&tok, id).expect("id in range"));
        }
        streamed.push_str(&stream.finish(&tok).expect("finish"));
        assert_eq!(streamed, decoded);
    }
});
