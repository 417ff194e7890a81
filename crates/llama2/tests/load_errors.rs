//! Loading a model with a tokenizer that does not belong to it is a typed error.

mod common;

use common::*;

/// Reads a protobuf varint at `*at`.
fn varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*at];
        *at += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    v
}

/// `tokenizer.model` with its last `drop` pieces (top-level field 1) removed.
fn tokenizer_without_last_pieces(drop: usize) -> Vec<u8> {
    let b = std::fs::read(tokenizer_path()).unwrap();
    let mut fields = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let start = at;
        let tag = varint(&b, &mut at);
        assert_eq!(
            tag & 7,
            2,
            "top-level fields of ModelProto are length-delimited"
        );
        let len = varint(&b, &mut at) as usize;
        at += len;
        fields.push((tag >> 3, start..at));
    }
    let pieces: Vec<usize> = (0..fields.len()).filter(|&i| fields[i].0 == 1).collect();
    let dropped = &pieces[pieces.len() - drop..];
    let mut out = Vec::new();
    for (i, (_, r)) in fields.iter().enumerate() {
        if !dropped.contains(&i) {
            out.extend_from_slice(&b[r.clone()]);
        }
    }
    out
}

#[test]
fn tokenizer_vocabulary_must_match_the_output_layer() {
    let bytes = tokenizer_without_last_pieces(3);
    let tok = llama2::Tokenizer::from_bytes(&bytes).unwrap();
    assert_eq!(tok.n_words(), 31997);
    let path = std::env::temp_dir().join(format!("llama2-small-tok-{}.model", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let err = llama2::Llama::build(model_dir("tiny-mha").join("meta"), &path, 64, 1).unwrap_err();
    std::fs::remove_file(&path).ok();
    assert!(matches!(err, llama2::Error::Checkpoint { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("31997") && msg.contains("32000"), "{msg}");
}

#[test]
fn build_limits_are_checked() {
    let dir = model_dir("tiny-mha").join("meta");
    for (seq, batch) in [(0, 1), (16, 0)] {
        let err = llama2::Llama::build(&dir, tokenizer_path(), seq, batch).unwrap_err();
        assert!(matches!(err, llama2::Error::InvalidArgument(_)), "{err:?}");
    }
    let err = llama2::Llama::builder(&dir, tokenizer_path())
        .threads(0)
        .build()
        .unwrap_err();
    assert!(matches!(err, llama2::Error::InvalidArgument(_)), "{err:?}");
}

#[test]
fn layer_counts_are_checked_against_the_tensors_before_anything_is_sized() {
    // params.json and config.json claiming a billion layers: an error naming the key,
    // in milliseconds, not gigabytes of names or blocks.
    let tmp = std::env::temp_dir().join(format!("llama2-layers-{}", std::process::id()));
    for (format, file, key) in [
        ("meta", "params.json", "n_layers"),
        ("hf", "config.json", "num_hidden_layers"),
    ] {
        let src = common::model_dir("tiny-gqa").join(format);
        let dst = tmp.join(format);
        std::fs::create_dir_all(&dst).unwrap();
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
        }
        let mut cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join(file)).unwrap()).unwrap();
        // Past the limit on any model (validated before the file is opened), and within
        // it but more than the file holds (checked against the tensor count).
        for (layers, says) in [(1_000_000_000u64, "limit of 4096"), (4000, "tensors")] {
            cfg[key] = serde_json::json!(layers);
            std::fs::write(dst.join(file), cfg.to_string()).unwrap();
            let err = llama2::load_model(&dst, Some(&common::tokenizer_path()))
                .err()
                .unwrap_or_else(|| panic!("{format}: loaded"))
                .to_string();
            assert!(
                err.contains(&layers.to_string()) && err.contains(says),
                "{format}: {err}"
            );
            if says == "tensors" {
                assert!(err.contains(key), "{format}: {err}");
            }
        }
    }
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn text_that_cannot_fit_is_refused_before_it_is_tokenized() {
    let llama = llama2::Llama::builder(
        common::model_dir("tiny-mha").join("meta"),
        common::tokenizer_path(),
    )
    .max_seq_len(64)
    .max_batch_size(1)
    .build()
    .unwrap();
    let huge = "a".repeat(10 << 20);
    // The error carries the fewest tokens the bytes could take, not a count from
    // tokenizing them: the text was refused on its length in bytes.
    let fewest = huge.len().div_ceil(
        llama
            .tokenizer()
            .max_token_bytes()
            .expect("Llama 2 keeps every byte"),
    );
    let dialog = vec![llama2::Message::new(llama2::Role::User, huge.clone())];
    let e = llama
        .chat_completion(&[dialog], &llama2::GenerationOptions::default())
        .unwrap_err();
    assert!(
        matches!(e, llama2::Error::PromptTooLong { len, .. } if len == fewest),
        "{e}"
    );
    let e = llama
        .text_completion(&[huge], &llama2::GenerationOptions::default())
        .unwrap_err();
    assert!(
        matches!(e, llama2::Error::PromptTooLong { len, .. } if len == fewest),
        "{e}"
    );
}
