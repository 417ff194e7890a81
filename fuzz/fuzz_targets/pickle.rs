//! Fuzzes the restricted unpickler with arbitrary `data.pkl` bytes: it must return an
//! error or a consistent list of tensors, never panic, hang or run out of memory.

#![no_main]

use libfuzzer_sys::fuzz_target;
use llama2::checkpoint::parse_state_dict;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = parse_state_dict(data) {
        for (_, t) in tensors {
            assert_eq!(t.shape.len(), t.stride.len());
        }
    }
});
