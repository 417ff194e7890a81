//! Safety: Llama Guard classifiers around chat (`SAFETY.md`). [`Guard`] loads any Llama
//! Guard model (1, 2, 3 8B, 3 1B), renders a conversation in the model's own prompt
//! format (the chat template the file carries, else the built-in [`GuardFormat`]), runs
//! it greedily and returns a [`Verdict`]: safe or unsafe, the violated categories, the
//! probability of `unsafe` at the first answer token, and the raw answer.
//!
//! The caller decides what a verdict means: the CLI and the server answer an unsafe
//! prompt with [`REFUSAL`] before the chat model sees it, and cut an answer that turns
//! unsafe.

mod chat;
mod format;
mod guard;

pub use chat::{
    guarded_chat, guarded_chat_batch, with_answer, Blocked, GuardedAnswer, Stage,
    CHECK_EVERY_TOKENS,
};
pub use format::{Category, GuardFormat};
pub use guard::{parse_answer, render_template, Guard, GuardOptions, GuardPrompt, Verdict};

/// What the user sees instead of a blocked prompt's or answer's text (llama-stack's
/// wording).
pub const REFUSAL: &str = "I can't answer that. Can I help with something else?";
