//! `llama2`: Llama 2 family inference on the CPU with the behaviour of Meta's reference
//! implementation (`Llama.build`, `text_completion`, `chat_completion`).
//!
//! Data flows one way: text → [`chat`] template → [`tokenizer`] → [`engine`]
//! (scheduler, sequences, KV slots) → [`model`] forward ([`kernels`]) → [`sampling`] →
//! streaming detokenizer → caller. [`llama`] is Meta's API on top of the engine.

pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod convert;
pub mod dtype;
pub mod engine;
pub mod error;
pub mod files;
pub mod kernels;
pub mod llama;
pub mod loader;
pub mod model;
pub mod quant;
pub mod safety;
pub mod sampling;
pub mod tensor;
pub mod tokenizer;

pub use chat::{ChatTemplate, Dialog, DialogError, Message, Role};
pub use config::{ModelArgs, RopeScaling};
pub use engine::{Engine, EngineConfig, FinishReason, Request, RequestHandle, SeqOptions};
pub use error::{Error, Result};
pub use kernels::Precision;
pub use llama::{
    ChatPrediction, CompletionPrediction, GenerationOptions, GenerationOutput, GenerationStats,
    Llama, LlamaBuilder, TemplateChoice,
};
pub use loader::{load_model, LoadedModel, ModelFormat};
pub use model::KvType;
pub use tokenizer::{StreamDecoder, Tokenizer};
