//! Loading Meta's Llama 2 checkpoints (`params.json` + `consolidated.NN.pth`) in pure
//! Rust, without executing pickle.
//!
//! - [`pickle`]: a restricted unpickler that reads a `torch.save` state dict as data.
//! - [`pth`]: one `.pth` zip archive → named tensors (memory-mapped when stored).
//! - [`meta`]: a checkpoint folder → merged, shape-checked model tensors.

pub mod meta;
pub mod pickle;
pub mod pth;

pub use meta::{load_meta_checkpoint, shard_count, MetaCheckpoint};
pub use pickle::{parse_state_dict, PickleError, TensorRef};
pub use pth::load_pth;
