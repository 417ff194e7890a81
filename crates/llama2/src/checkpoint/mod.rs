//! Loading Meta's Llama 2 checkpoints (`params.json` + `consolidated.NN.pth`) in pure
//! Rust, without executing pickle.
//!
//! - [`pickle`]: a restricted unpickler that reads a `torch.save` state dict as data.
//! - [`pth`]: one `.pth` zip archive → named tensors (memory-mapped when stored).
//! - [`meta`]: a checkpoint folder → merged, shape-checked model tensors.
//! - [`hf`]: a Hugging Face folder (config.json + safetensors) → the same tensors.

pub mod gguf;
pub mod gguf_write;
pub mod hf;
pub mod meta;
pub mod pickle;
pub mod pth;

pub use meta::{load_meta_checkpoint, shard_count};
pub use pickle::{parse_state_dict, PickleError, TensorRef};
pub use pth::load_pth;

use std::collections::HashMap;

use crate::config::ModelArgs;
use crate::tensor::Tensor;

/// Every tensor of a full (unsharded) model, whatever file format it came from, named
/// and laid out as in Meta's checkpoints (rotary pairs adjacent in `wq`/`wk` rows).
#[derive(Clone, Debug)]
pub struct ModelWeights {
    /// The hyper-parameters.
    pub args: ModelArgs,
    /// Tensors by Meta name (`tok_embeddings.weight`, `layers.0.attention.wq.weight`, …),
    /// in their stored dtype: memory-mapped where the file allows, owned otherwise.
    pub tensors: HashMap<String, Tensor>,
    /// Rows of the embedding and output layers.
    pub vocab_size: usize,
}
