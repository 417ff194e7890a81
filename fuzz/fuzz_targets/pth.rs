//! Fuzzes `torch.save` checkpoints as files: the zip layer (central directory against
//! local headers, stored and deflated records, overlaps, inflation limits), the pickle
//! and the tensor ranges must give tensors inside the file or an error, never a panic,
//! a hang or unbounded memory. The input is written to a temporary file because
//! checkpoints are memory-mapped.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use llama2::checkpoint::load_pth;

static PATH: LazyLock<std::path::PathBuf> =
    LazyLock::new(|| std::env::temp_dir().join(format!("llama2-fuzz-{}.pth", std::process::id())));

fuzz_target!(|data: &[u8]| {
    std::fs::write(&*PATH, data).expect("temporary file");
    if let Ok(tensors) = load_pth(&PATH) {
        for (_, t) in tensors {
            assert_eq!(Some(t.bytes().len()), t.dtype.row_bytes(t.numel()));
        }
    }
});
