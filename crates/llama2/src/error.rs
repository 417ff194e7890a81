//! The library's error type: every fallible public call returns [`Result`].

use std::path::PathBuf;

/// Everything that can go wrong in the engine, typed so callers can react to each case.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or folder could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path that was being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A checkpoint file or folder is missing pieces, corrupt, or inconsistent.
    #[error("invalid checkpoint {}: {msg}", path.display())]
    Checkpoint {
        /// The file or folder at fault.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// `params.json` (or another model configuration) is invalid.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// The tokenizer model could not be parsed or is unsupported.
    #[error("invalid tokenizer model: {0}")]
    Tokenizer(String),
    /// A token id outside the vocabulary was given.
    #[error("token id {id} is out of range (the vocabulary has {n_words} pieces)")]
    InvalidTokenId {
        /// The offending id.
        id: u32,
        /// Vocabulary size.
        n_words: usize,
    },
    /// A tensor does not have the shape the model configuration requires.
    #[error("tensor {name}: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// Tensor name as in the checkpoint.
        name: String,
        /// Shape implied by the configuration.
        expected: Vec<usize>,
        /// Shape found in the file.
        found: Vec<usize>,
    },
    /// More prompts or dialogs than `max_batch_size` were given at once.
    #[error("batch of {got} prompts exceeds max_batch_size {max}")]
    BatchTooLarge {
        /// Number of prompts given.
        got: usize,
        /// The limit set at build time.
        max: usize,
    },
    /// A prompt has more tokens than `max_seq_len`.
    #[error("prompt {index} has {len} tokens, more than max_seq_len {max_seq_len}")]
    PromptTooLong {
        /// Index of the prompt in the batch.
        index: usize,
        /// Its length in tokens.
        len: usize,
        /// The limit set at build time.
        max_seq_len: usize,
    },
    /// A sampling or generation parameter is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A dialog breaks the chat format's role rules.
    #[error("{0}")]
    Dialog(#[from] crate::chat::dialog::DialogError),
    /// A safety classifier answered something that is neither `safe` nor `unsafe…`, or
    /// cannot be used as one.
    #[error("safety classifier: {0}")]
    Guard(String),
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for a [`Error::Checkpoint`] about `path`.
    pub(crate) fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// Shorthand for an [`Error::Io`] about `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
