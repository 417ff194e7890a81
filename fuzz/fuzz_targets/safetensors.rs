//! Fuzzes the safetensors reader and the Hugging Face mapping with arbitrary file bytes
//! under a fixed small `config.json`: parsing, the checks against the config and the
//! model build must return errors or a model, never panic, hang or run out of memory.

#![no_main]

use libfuzzer_sys::fuzz_target;
use llama2::checkpoint::hf::hf_weights_from_bytes;
use llama2::model::Transformer;

/// Small enough that a valid file is a few kilobytes (`fuzz/make-seeds.py` writes one).
const CONFIG: &str = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 8,
    "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
    "num_key_value_heads": 1, "vocab_size": 16, "rms_norm_eps": 1e-5}"#;

fuzz_target!(|data: &[u8]| {
    let Ok(mut weights) = hf_weights_from_bytes(CONFIG.as_bytes(), &[data]) else {
        return;
    };
    let _ = Transformer::from_tensors(&weights.args, weights.vocab_size, &mut weights.tensors);
});
