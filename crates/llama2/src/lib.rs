//! `llama2`: Llama 2 family inference on the CPU with the behaviour of Meta's reference
//! implementation (`Llama.build`, `text_completion`, `chat_completion`).
//!
//! Data flows one way: text → [`chat`] template → [`tokenizer`] → [`generation`]
//! (batch slots, KV cache) → [`model`] forward ([`kernels`]) → [`sampling`] →
//! streaming detokenizer → caller.

pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod default_model;
pub mod error;
pub mod generation;
pub mod kernels;
pub mod loader;
pub mod model;
pub mod sampling;
pub mod tensor;
pub mod tokenizer;

pub use chat::{ChatTemplate, Dialog, DialogError, Message, Role};
pub use config::ModelArgs;
pub use error::{Error, Result};
pub use generation::{
    ChatPrediction, CompletionPrediction, GenerationOptions, GenerationOutput, GenerationStats,
    Llama, LlamaBuilder, TemplateChoice,
};
pub use kernels::Precision;
pub use loader::{load_model, LoadedModel, ModelFormat};
pub use tokenizer::{StreamDecoder, Tokenizer};
