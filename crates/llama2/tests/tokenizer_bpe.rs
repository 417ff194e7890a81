//! The tokenizer families beyond `tokenizer.model`: GGUF "llama" vocab arrays, Hugging Face
//! `tokenizer.json` (Llama 2 shape and GPT-2 byte-level shape), and GGUF "gpt2" byte-level
//! BPE checked against llama.cpp's ids for SmolLM2 (`tests/fixtures/parity/`).

mod common;

use std::path::PathBuf;

use common::{bpe_vocab, fixtures, read_json, smollm2, smollm2_vocab};
use llama2::error::Error;
use llama2::tokenizer::{
    BpeTokenizer, SentencePieceTokenizer, SentencePieceVocab, StreamDecoder, Tokenizer,
};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
struct EncodeCase {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct DecodeCase {
    ids: Vec<u32>,
    text: String,
}

#[derive(Deserialize)]
struct ParityFile {
    tokenizer_ggml_pre: String,
    add_special: bool,
    cases: Vec<ParityCase>,
}

#[derive(Deserialize)]
struct ParityCase {
    text: String,
    ids_parse_special: Vec<u32>,
    ids_plain: Vec<u32>,
}

fn parity() -> ParityFile {
    read_json(&fixtures().join("parity/smollm2_tokenize.json"))
}

fn spm_model() -> PathBuf {
    fixtures().join("tokenizer/tokenizer.model")
}

fn encode_cases() -> Vec<EncodeCase> {
    let mut v: Vec<EncodeCase> = read_json(&fixtures().join("tokenizer/encode_cases.json"));
    v.extend(read_json::<Vec<EncodeCase>>(
        &fixtures().join("tokenizer/llama_cpp_vectors.json"),
    ));
    v
}

/// Every encode (bos/eos on and off) and decode fixture case, for a tokenizer that must
/// behave exactly as `tokenizer.model`.
fn check_same_as_tokenizer_model(tok: &Tokenizer, what: &str) {
    let cases = encode_cases();
    assert_eq!(cases.len(), 316);
    let mut failures = Vec::new();
    for c in &cases {
        let got = tok.encode(&c.text, false, false);
        if got != c.ids {
            failures.push(format!("{:?}: expected {:?}, got {got:?}", c.text, c.ids));
        }
        let mut with = vec![1];
        with.extend_from_slice(&c.ids);
        with.push(2);
        assert_eq!(
            tok.encode(&c.text, true, true),
            with,
            "{what}: {:?}",
            c.text
        );
    }
    assert!(
        failures.is_empty(),
        "{what}: {} of {} encode cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    let decode: Vec<DecodeCase> = read_json(&fixtures().join("tokenizer/decode_cases.json"));
    assert_eq!(decode.len(), 122);
    for c in &decode {
        assert_eq!(
            tok.decode(&c.ids).expect("decodes"),
            c.text,
            "{what}: decode {:?}",
            c.ids
        );
    }
    assert_eq!(tok.n_words(), 32000);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.unk_id()), (1, 2, Some(0)));
    assert_eq!(tok.pad_id(), None);
    assert!(tok.add_bos() && !tok.add_eos());
    assert_eq!(tok.token_text(1), Some("<s>"));
    assert_eq!(tok.token_text(2), Some("</s>"));
    assert_eq!(tok.token_text(15043), None);
}

#[test]
fn gguf_llama_vocab_matches_tokenizer_model() {
    let sp = SentencePieceTokenizer::from_file(&spm_model()).expect("loads");
    let n = sp.n_words() as u32;
    let vocab = SentencePieceVocab {
        tokens: (0..n)
            .map(|i| sp.id_to_piece(i).unwrap().to_string())
            .collect(),
        scores: (0..n).map(|i| sp.score(i).unwrap()).collect(),
        token_types: (0..n).map(|i| sp.piece_type(i).unwrap()).collect(),
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        pad_id: None,
        add_bos: None,
        add_eos: None,
        add_space_prefix: None,
    };
    let tok = Tokenizer::from_gguf_llama(vocab).expect("GGUF-style vocab loads");
    check_same_as_tokenizer_model(&tok, "gguf llama vocab");
}

#[test]
fn gguf_llama_vocab_errors_and_options() {
    let base = || SentencePieceVocab {
        tokens: ["<unk>", "<s>", "</s>", "\u{2581}a", "a", "\u{2581}"]
            .map(String::from)
            .to_vec(),
        scores: vec![0.0, 0.0, 0.0, -1.0, -2.0, -3.0],
        token_types: vec![2, 3, 3, 1, 1, 1],
        bos_id: None,
        eos_id: None,
        unk_id: None,
        pad_id: None,
        add_bos: None,
        add_eos: None,
        add_space_prefix: None,
    };
    let tok = SentencePieceTokenizer::from_vocab(base()).expect("loads");
    assert_eq!(tok.encode("a a", false, false), [3, 3]);
    let mut v = base();
    v.add_space_prefix = Some(false);
    let tok = SentencePieceTokenizer::from_vocab(v).expect("loads");
    assert_eq!(tok.encode("a a", false, false), [4, 3]);
    assert_eq!(tok.decode(&[4, 3]).expect("decode"), "a a");
    let reject = |v: SentencePieceVocab, needle: &str| match SentencePieceTokenizer::from_vocab(v) {
        Err(Error::Tokenizer(m)) => assert!(m.contains(needle), "{m}"),
        other => panic!("expected an error about {needle}, got {other:?}"),
    };
    let mut v = base();
    v.scores.pop();
    reject(v, "scores");
    let mut v = base();
    v.token_types[4] = 9;
    reject(v, "type");
    let mut v = base();
    v.eos_id = Some(99);
    reject(v, "eos_id");
    let mut v = base();
    v.token_types[0] = 1;
    reject(v, "UNKNOWN");
}

#[test]
fn hf_llama2_tokenizer_json_matches_tokenizer_model() {
    let path = fixtures().join("tokenizer/hf/tokenizer.json");
    let tok = Tokenizer::from_hf_json(&path).expect("tokenizer.json loads");
    assert!(tok.as_sentencepiece().is_some());
    check_same_as_tokenizer_model(&tok, "hf tokenizer.json");
    // from_file tells JSON from protobuf by content.
    let tok2 = Tokenizer::from_file(&path).expect("loads");
    assert_eq!(tok2.encode("Hello world", true, false), [1, 15043, 3186]);
}

#[test]
fn special_tokens_parse_only_with_special() {
    let tok = Tokenizer::from_file(&spm_model()).expect("loads");
    // Plain text: "<s>" is ordinary text (Meta).
    assert_eq!(tok.encode("<s>", false, false), [529, 29879, 29958]);
    // Parsed: the control token, and each text fragment gets its own dummy prefix
    // (llama.cpp's SPM `add_space_prefix` after a special token; HF's Prepend per fragment).
    let hello = tok.encode("Hello", false, false);
    let mut want = vec![1, 1];
    want.extend(&hello);
    want.push(2);
    want.extend(&hello);
    assert_eq!(tok.encode_with_special("<s>Hello</s>Hello", true), want);
    assert_eq!(
        tok.decode_with_special(&[1, 15043]).expect("decode"),
        "<s>Hello"
    );
}

#[test]
fn smollm2_matches_llama_cpp_ids() {
    let p = parity();
    assert_eq!(p.tokenizer_ggml_pre, "smollm");
    assert!(!p.add_special);
    let tok = smollm2();
    assert!(p.cases.len() >= 100, "only {} cases", p.cases.len());
    let mut failures = Vec::new();
    for c in &p.cases {
        let special = tok.encode(&c.text, false, true);
        let plain = tok.encode(&c.text, false, false);
        if special != c.ids_parse_special {
            failures.push(format!(
                "parse_special {:?}: llama.cpp {:?}, got {special:?}",
                c.text, c.ids_parse_special
            ));
        }
        if plain != c.ids_plain {
            failures.push(format!(
                "plain {:?}: llama.cpp {:?}, got {plain:?}",
                c.text, c.ids_plain
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases x 2 modes differ:\n{}",
        failures.len(),
        p.cases.len(),
        failures.join("\n")
    );
    eprintln!(
        "smollm2_tokenize.json: all {} cases x 2 modes match",
        p.cases.len()
    );
}

#[test]
fn smollm2_round_trips() {
    let tok: Tokenizer = smollm2().into();
    assert!(!tok.add_bos());
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (1, 2, Some(2)));
    assert_eq!(tok.token_text(2), Some("<|im_end|>"));
    assert!(tok.is_control(2) && !tok.is_control(19556));
    let mut texts: Vec<String> = parity().cases.into_iter().map(|c| c.text).collect();
    texts.extend(encode_cases().into_iter().map(|c| c.text));
    for s in &texts {
        let ids = tok.encode(s, false, false);
        assert_eq!(&tok.decode(&ids).expect("decode"), s, "plain round trip");
        let ids = tok.encode_with_special(s, false);
        assert_eq!(
            &tok.decode_with_special(&ids).expect("decode"),
            s,
            "special round trip"
        );
    }
    // Control tokens decode to nothing by default.
    let ids = tok.encode_with_special("<|im_start|>user\nhi<|im_end|>", false);
    assert_eq!(ids[0], 1);
    assert_eq!(tok.decode(&ids).expect("decode"), "user\nhi");
    assert!(matches!(
        tok.decode(&[49152]),
        Err(Error::InvalidTokenId { id: 49152, .. })
    ));
}

/// Random byte-level token sequences (tokens that hold partial UTF-8 characters, whole
/// words, control tokens): the streamed deltas concatenate to `decode`, and nothing
/// emitted is revised when more tokens follow.
#[test]
fn smollm2_stream_decoder_property() {
    let tok: Tokenizer = smollm2().into();
    // Tokens that hold single bytes of multi-byte characters, e.g. "ð" (0xF0) and "Ł" (0xA6).
    let mut partial: Vec<u32> = Vec::new();
    for b in 0x80..=0xffu8 {
        let c = char::from_u32(u32::from(b)).filter(|_| !(0x7f..=0xa0).contains(&b) && b != 0xad);
        let c = c.unwrap_or_else(|| {
            let printable = |x: u8| matches!(x, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
            let n = (0..b).filter(|&x| !printable(x)).count() as u32;
            char::from_u32(0x100 + n).expect("char")
        });
        partial.extend(tok.piece_to_id(&c.to_string()));
    }
    assert!(partial.len() > 100, "{} partial tokens", partial.len());
    let samples = ["🦙", "你好", "é", "€", " world", "\n", "<|im_end|>"];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..1500 {
        let mut ids = Vec::new();
        for _ in 0..rnd() % 12 {
            match rnd() % 4 {
                0 => ids.push((rnd() % tok.n_words() as u64) as u32),
                1 => ids.push(partial[(rnd() % partial.len() as u64) as usize]),
                _ => {
                    let s = samples[(rnd() % samples.len() as u64) as usize];
                    let enc = tok.encode_with_special(s, false);
                    let cut = if rnd() % 3 == 0 {
                        (rnd() as usize) % (enc.len() + 1)
                    } else {
                        enc.len()
                    };
                    ids.extend(&enc[..cut]);
                }
            }
        }
        let mut d = StreamDecoder::new();
        let mut emitted = String::new();
        for (k, &id) in ids.iter().enumerate() {
            emitted.push_str(&d.push(&tok, id).expect("push"));
            let full = tok.decode(&ids[..=k]).expect("decode");
            // Without the held-back tail, the text so far is a prefix of the full decode,
            // also after any continuation bytes.
            assert!(
                full.starts_with(&emitted)
                    || full.trim_end_matches('\u{FFFD}').starts_with(&emitted),
                "ids {ids:?}: emitted {emitted:?}, decode {full:?}"
            );
            for cont in [
                &partial[..1],
                &partial[partial.len() / 2..partial.len() / 2 + 1],
            ] {
                let mut longer = ids[..=k].to_vec();
                longer.extend_from_slice(cont);
                let full = tok.decode(&longer).expect("decode");
                assert!(
                    full.starts_with(&emitted),
                    "ids {longer:?}: emitted {emitted:?}, decode {full:?}"
                );
            }
        }
        emitted.push_str(&d.finish(&tok).expect("finish"));
        assert_eq!(emitted, tok.decode(&ids).expect("decode"), "ids {ids:?}");
    }
    // An emoji split over byte tokens is held until complete.
    let ids = tok.encode("🦙", false, false);
    assert!(ids.len() > 1, "{ids:?}");
    let mut d = StreamDecoder::new();
    let deltas: Vec<String> = ids
        .iter()
        .map(|&id| d.push(&tok, id).expect("push"))
        .collect();
    assert_eq!(deltas.concat(), "🦙");
    assert_eq!(deltas.last().map(String::as_str), Some("🦙"));
}

/// The SmolLM2 vocabulary as a Hugging Face byte-level `tokenizer.json` (SmolLM2's shape:
/// Digits + ByteLevel) loads as the same tokenizer as the GGUF data.
#[test]
fn hf_byte_level_json_matches_gguf_vocab() {
    let v = smollm2_vocab();
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, (t, &ty)) in v.tokens.iter().zip(&v.token_type).enumerate() {
        if ty == 3 {
            added.push(
                json!({"id": i, "content": t, "special": true, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false}),
            );
        }
        vocab.insert(t.clone(), json!(i));
    }
    let doc = |pre: Value| {
        json!({
            "version": "1.0",
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre,
            "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true},
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "byte_fallback": false,
                "ignore_merges": false, "vocab": vocab, "merges": v.merges},
        })
    };
    let smol = doc(json!({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]}));
    let config = br#"{"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>", "add_bos_token": false}"#;
    let bytes = serde_json::to_vec(&smol).expect("json");
    let tok = Tokenizer::from_hf_json_bytes(&bytes, Some(config)).expect("loads");
    let bpe = tok.as_bpe().expect("byte-level");
    assert_eq!(bpe.pre(), "smollm");
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (1, 2, Some(2)));
    let gguf = smollm2();
    for c in parity().cases {
        assert_eq!(
            bpe.encode(&c.text, false, true),
            gguf.encode(&c.text, false, true)
        );
        assert_eq!(
            bpe.encode(&c.text, false, false),
            gguf.encode(&c.text, false, false)
        );
    }
    // An unknown Split regex is an error that names it.
    let odd = doc(json!({"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\w+"}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}));
    let bytes = serde_json::to_vec(&odd).expect("json");
    match Tokenizer::from_hf_json_bytes(&bytes, None) {
        Err(Error::Tokenizer(m)) => assert!(m.contains("\\\\w+"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn unknown_pre_tokenizer_is_an_error_naming_it() {
    let mut v = bpe_vocab(smollm2_vocab());
    v.pre = "mystery-bpe".into();
    match BpeTokenizer::from_vocab(v) {
        Err(Error::Tokenizer(m)) => assert!(m.contains("mystery-bpe"), "{m}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let mut v = bpe_vocab(smollm2_vocab());
    v.merges.push("nospace".into());
    assert!(matches!(
        BpeTokenizer::from_vocab(v),
        Err(Error::Tokenizer(_))
    ));
    let mut v = bpe_vocab(smollm2_vocab());
    v.eos_id = Some(1 << 20);
    assert!(matches!(
        BpeTokenizer::from_vocab(v),
        Err(Error::Tokenizer(_))
    ));
}

#[test]
fn llama3_style_pre_tokenizer_on_the_smollm2_vocab() {
    // Same vocabulary, Llama 3 pre-tokenizer: digits in groups of three, whole-word lookup.
    let mut v = bpe_vocab(smollm2_vocab());
    v.pre = "llama-bpe".into();
    v.add_bos = None;
    let tok = BpeTokenizer::from_vocab(v).expect("loads");
    assert!(tok.add_bos(), "llama-bpe adds BOS by default");
    let ids = tok.encode("x 12345", true, false);
    assert_eq!(ids[0], 1);
    let d = Tokenizer::from(tok.clone());
    assert_eq!(d.decode(&ids).expect("decode"), "x 12345");
    // (The splitter itself is unit-tested in the library; this vocabulary has no
    // multi-digit tokens, so here only loading, BOS default and round trips are checked.)
    assert_eq!(
        d.decode(&tok.encode("IT'S", false, false)).expect("decode"),
        "IT'S"
    );
}
