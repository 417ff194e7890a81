//! Fuzzes the GGUF reader with arbitrary file bytes: parsing, tensor access,
//! dequantization and the mapping to model weights must return errors or consistent
//! values, never panic, hang or run out of memory.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use llama2::checkpoint::gguf::{gguf_model_weights, GgufFile};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    for (key, _) in file.metadata() {
        assert!(file.get(key).is_some());
        let _ = file.get_u64(key);
        let _ = file.get_f32(key);
        let _ = file.get_str(key);
    }
    let _ = file.context_length();
    for info in file.tensor_infos() {
        if let Ok(t) = file.tensor(&info.name) {
            assert_eq!(Some(t.bytes().len()), t.dtype.row_bytes(t.numel()));
            // Bytes are bounded by the input, but a quantized type packs many values
            // per byte; skip absurd element counts of zero-sized tensors.
            if t.numel() <= 1 << 20 {
                let _ = t.to_f32_vec();
            }
        }
    }
    let _ = gguf_model_weights(&file, Path::new("fuzz.gguf"));
});
