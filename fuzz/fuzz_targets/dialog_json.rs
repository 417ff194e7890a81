//! Fuzzes the dialog JSON a user hands to `llama2 chat --dialogs` (and the Python
//! package): parsing, the reference's role checks and the special-tag refusal, and the
//! prompt built by the Llama 2 and Llama 3 formats and by the Llama Guard formats.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use llama2::chat::{self, ChatTemplate, Dialog, Role};
use llama2::safety::GuardFormat;
use llama2::tokenizer::Tokenizer;

static LLAMA2: LazyLock<Tokenizer> = LazyLock::new(|| {
    Tokenizer::from_bytes(include_bytes!(
        "../../tests/fixtures/tokenizer/tokenizer.model"
    ))
    .expect("fixture tokenizer")
});
static LLAMA3: LazyLock<Tokenizer> = LazyLock::new(|| {
    Tokenizer::from_bytes(include_bytes!(
        "../../tests/fixtures/models/tiny-llama3/meta/tokenizer.model"
    ))
    .expect("fixture tokenizer")
});

fuzz_target!(|data: &[u8]| {
    let Ok(dialogs) = serde_json::from_slice::<Vec<Dialog>>(data) else {
        return;
    };
    for dialog in &dialogs {
        let valid = chat::validate(dialog).is_ok();
        for (template, tok) in [
            (ChatTemplate::Llama2, &*LLAMA2),
            (ChatTemplate::Llama3, &*LLAMA3),
        ] {
            if template.is_refused(dialog) {
                continue;
            }
            match template.encode(tok, dialog) {
                Ok(ids) => {
                    assert!(valid, "an invalid dialog was encoded");
                    assert!(ids.iter().all(|&id| (id as usize) < tok.n_words()));
                }
                Err(_) => {}
            }
        }
        let turns: Vec<(bool, &str)> = dialog
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| (m.role == Role::User, m.content.as_str()))
            .collect();
        for format in [GuardFormat::LlamaGuard1, GuardFormat::LlamaGuard3] {
            let prompt = format.render(&turns, &format.categories());
            assert!(turns
                .iter()
                .all(|(_, text)| prompt.contains(chat::python_strip(text))));
        }
    }
});
