//! Fuzzes the two model configurations, Meta's `params.json` and Hugging Face's
//! `config.json`: any text gives validated arguments or an error, and validated
//! arguments never make the derived sizes panic or allocate without bound.

#![no_main]

use libfuzzer_sys::fuzz_target;
use llama2::checkpoint::hf::hf_weights_from_bytes;
use llama2::config::{ModelArgs, MAX_DIM, MAX_FFN_DIM};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(args) = ModelArgs::from_json(text) {
            check(&args);
        }
    }
    // Without tensors a config can only fail, but it is parsed and validated first.
    assert!(hf_weights_from_bytes(data, &[]).is_err());
});

fn check(args: &ModelArgs) {
    assert!(args.dim <= MAX_DIM && args.ffn_hidden_dim() <= MAX_FFN_DIM);
    assert_eq!(args.head_dim() * args.n_heads, args.dim);
    assert_eq!(args.rope_frequencies().len(), args.head_dim() / 2);
    if let Some(f) = args.rope_freq_factors() {
        assert_eq!(f.len(), args.head_dim() / 2);
    }
    let _ = args.check_layers(usize::MAX, "n_layers");
    assert!(args.check_layers(0, "n_layers").is_err());
}
