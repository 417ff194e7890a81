//! Fuzzes Jinja chat templates as a model file ships them: any source compiles or is an
//! error, and a compiled one renders a fixed dialog to a prompt or an error, within the
//! evaluation fuel, never panicking or hanging.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use llama2::chat::{ChatTemplate, Message, Role};
use llama2::tokenizer::Tokenizer;

/// The Llama 3 vocabulary cut to 1000 ranks + its special tokens (tiny-llama3 fixture).
static TOKENIZER: LazyLock<Tokenizer> = LazyLock::new(|| {
    Tokenizer::from_bytes(include_bytes!(
        "../../tests/fixtures/models/tiny-llama3/meta/tokenizer.model"
    ))
    .expect("fixture tokenizer")
});

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let tok = &*TOKENIZER;
    let Ok(template) = ChatTemplate::jinja("fuzz", source, tok) else {
        return;
    };
    let dialog = [
        Message::new(Role::System, "Be brief."),
        Message::new(Role::User, "Write a list of three fruits."),
        Message::new(Role::Assistant, "Apple, pear, plum."),
        Message::new(Role::User, "And vegetables? {{ 7*7 }} {% raw %}"),
    ];
    if let Ok(ids) = template.encode(tok, &dialog) {
        assert!(ids.iter().all(|&id| (id as usize) < tok.n_words()));
    }
    let _ = template.stop_ids(tok);
    let _ = template.is_refused(&dialog);
});
