//! Model hyper-parameters: Meta's `params.json` (REFERENCE §1) and the derived shapes.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Largest model width accepted (Llama 3.1 405B has 16384): a bound on every buffer a
/// width sizes before any tensor is checked against the file.
pub const MAX_DIM: usize = 1 << 17;
/// Most transformer blocks accepted (405B has 126).
pub const MAX_LAYERS: usize = 4096;
/// Widest FFN accepted (405B: 53248).
pub const MAX_FFN_DIM: usize = 1 << 20;
/// Largest vocabulary accepted (Llama 3: 128256; the largest published are ~256k).
pub const MAX_VOCAB: usize = 1 << 24;

/// `params.json` as Meta ships it. Missing keys take the reference defaults; unknown
/// keys are ignored.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default)]
pub struct ModelArgs {
    /// Model width.
    pub dim: usize,
    /// Transformer blocks.
    pub n_layers: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads; `None` means `n_heads`.
    pub n_kv_heads: Option<usize>,
    /// Vocabulary size; -1 means "take it from the tokenizer".
    pub vocab_size: i64,
    /// FFN width rounding.
    pub multiple_of: usize,
    /// Optional FFN width factor.
    pub ffn_dim_multiplier: Option<f64>,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// Rotary base.
    pub rope_theta: f64,
    /// Explicit FFN width (Hugging Face and GGUF configs state it); when `None` it is
    /// computed from `dim`, `ffn_dim_multiplier` and `multiple_of` as Meta does.
    pub ffn_hidden_dim: Option<usize>,
    /// Meta's `use_scaled_rope` (Llama 3.1 and later): the `llama3` frequency scaling
    /// with the constants of Meta's reference (`apply_scaling`: factor 8, low/high
    /// frequency factors 1 and 4, original context 8192) unless the keys below state
    /// others. Turned into [`ModelArgs::rope_scaling`] on load. (Llama 3.2 1B/3B were
    /// trained with factor 32, which only their Hugging Face config states: a Meta
    /// folder of those models needs `"rope_scaling_factor": 32`.)
    pub use_scaled_rope: bool,
    /// The `llama3` scaling's factor with `use_scaled_rope` (Meta's code fixes it at 8;
    /// Llama 4's `params.json` states it as `rope_scaling_factor`).
    pub rope_scaling_factor: Option<f64>,
    /// The scaling's low frequency factor (default 1).
    pub rope_low_freq_factor: Option<f64>,
    /// The scaling's high frequency factor (default 4; Llama 4's `rope_high_freq_factor`).
    pub rope_high_freq_factor: Option<f64>,
    /// The context the scaling is relative to (default 8192).
    pub rope_original_max_position_embeddings: Option<f64>,
    /// How the rotary frequencies are rescaled for long contexts (Llama 3.1+); `None`
    /// for plain RoPE. Set from `use_scaled_rope`, Hugging Face `rope_scaling` or GGUF
    /// `rope_freqs.weight`.
    #[serde(skip)]
    pub rope_scaling: Option<RopeScaling>,
}

/// Rotary frequency scaling (Llama 3.1's `llama3` rope type).
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    /// The `llama3` rule: frequencies whose wavelength exceeds
    /// `original_context / low_freq_factor` are divided by `factor`, those below
    /// `original_context / high_freq_factor` are kept, and those between are blended.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Lower edge of the blend band (as a divisor of the original context).
        low_freq_factor: f64,
        /// Upper edge of the blend band.
        high_freq_factor: f64,
        /// Context length the model was first trained for.
        original_context: f64,
    },
    /// One divisor per frequency (`head_dim / 2` of them), as GGUF's `rope_freqs.weight`
    /// stores the same rule precomputed.
    Factors(Vec<f32>),
}

impl RopeScaling {
    /// Checks the numbers; `half` is `head_dim / 2`.
    fn validate(&self, half: usize) -> std::result::Result<(), String> {
        match self {
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => {
                let positive = |v: f64| v.is_finite() && v > 0.0;
                if !(positive(*factor)
                    && positive(*low_freq_factor)
                    && positive(*original_context)
                    && high_freq_factor.is_finite()
                    && high_freq_factor > low_freq_factor)
                {
                    return Err(format!(
                        "llama3 rope scaling needs positive factor, low_freq_factor < \
                         high_freq_factor and original context (got factor {factor}, \
                         low_freq_factor {low_freq_factor}, high_freq_factor \
                         {high_freq_factor}, original context {original_context})"
                    ));
                }
            }
            RopeScaling::Factors(f) => {
                if f.len() != half {
                    return Err(format!(
                        "rope frequency factors: {} values for {half} frequencies",
                        f.len()
                    ));
                }
                if let Some(v) = f.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                    return Err(format!("rope frequency factor {v} must be positive"));
                }
            }
        }
        Ok(())
    }

    /// Rescales `freqs` (f32, as the references compute them).
    fn apply(&self, freqs: &mut [f32]) {
        match self {
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => {
                let (factor, low, high, old) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                    *original_context as f32,
                );
                let low_freq_wavelen = old / low;
                let high_freq_wavelen = old / high;
                for f in freqs.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    let scaled = if wavelen > low_freq_wavelen {
                        *f / factor
                    } else {
                        *f
                    };
                    *f = if (high_freq_wavelen..=low_freq_wavelen).contains(&wavelen) {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
            RopeScaling::Factors(d) => {
                for (f, d) in freqs.iter_mut().zip(d) {
                    *f /= d;
                }
            }
        }
    }
}

impl Default for ModelArgs {
    fn default() -> Self {
        ModelArgs {
            dim: 4096,
            n_layers: 32,
            n_heads: 32,
            n_kv_heads: None,
            vocab_size: -1,
            multiple_of: 256,
            ffn_dim_multiplier: None,
            norm_eps: 1e-5,
            rope_theta: 10000.0,
            ffn_hidden_dim: None,
            use_scaled_rope: false,
            rope_scaling_factor: None,
            rope_low_freq_factor: None,
            rope_high_freq_factor: None,
            rope_original_max_position_embeddings: None,
            rope_scaling: None,
        }
    }
}

impl ModelArgs {
    /// Reads and validates `params.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::files::read_json_text(path)?;
        Self::from_json(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), config_msg(&e))))
    }

    /// Parses and validates the JSON text of `params.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let mut args: ModelArgs =
            serde_json::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        if args.use_scaled_rope {
            args.rope_scaling = Some(RopeScaling::Llama3 {
                factor: args.rope_scaling_factor.unwrap_or(8.0),
                low_freq_factor: args.rope_low_freq_factor.unwrap_or(1.0),
                high_freq_factor: args.rope_high_freq_factor.unwrap_or(4.0),
                original_context: args.rope_original_max_position_embeddings.unwrap_or(8192.0),
            });
        }
        args.validate()?;
        Ok(args)
    }

    /// Checks that the values describe a buildable model.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        for (field, value) in [
            ("dim", self.dim),
            ("n_layers", self.n_layers),
            ("n_heads", self.n_heads),
        ] {
            if value == 0 {
                return bad(format!("{field} must be positive"));
            }
        }
        if self.dim > MAX_DIM {
            return bad(format!("dim {} is over the limit of {MAX_DIM}", self.dim));
        }
        if self.n_layers > MAX_LAYERS {
            return bad(format!(
                "n_layers {} is over the limit of {MAX_LAYERS}",
                self.n_layers
            ));
        }
        if self.vocab_size > MAX_VOCAB as i64 {
            return bad(format!(
                "vocab_size {} is over the limit of {MAX_VOCAB}",
                self.vocab_size
            ));
        }
        if self.multiple_of > MAX_FFN_DIM {
            return bad(format!(
                "multiple_of {} is over the limit of {MAX_FFN_DIM}",
                self.multiple_of
            ));
        }
        if !self.dim.is_multiple_of(self.n_heads) {
            return bad(format!(
                "dim {} is not divisible by n_heads {}",
                self.dim, self.n_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim()
            ));
        }
        let kv = self.n_kv_heads();
        if kv == 0 || !self.n_heads.is_multiple_of(kv) {
            return bad(format!(
                "n_heads {} is not a multiple of n_kv_heads {kv}",
                self.n_heads
            ));
        }
        if self.multiple_of == 0 {
            return bad("multiple_of must be positive".into());
        }
        if self.ffn_hidden_dim == Some(0) {
            return bad("ffn_hidden_dim must be positive".into());
        }
        if self.vocab_size == 0 || self.vocab_size < -1 {
            return bad(format!("vocab_size {} is invalid", self.vocab_size));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad(format!("norm_eps {} must be positive", self.norm_eps));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope_theta {} must be positive", self.rope_theta));
        }
        if let Some(m) = self.ffn_dim_multiplier {
            if !(m.is_finite() && m > 0.0) {
                return bad(format!("ffn_dim_multiplier {m} must be positive"));
            }
        }
        if self.ffn_hidden_dim() == 0 {
            return bad("ffn_hidden_dim (the FFN width) must be positive".into());
        }
        if self.ffn_hidden_dim() > MAX_FFN_DIM {
            return bad(format!(
                "ffn_hidden_dim (the FFN width) {} is over the limit of {MAX_FFN_DIM}",
                self.ffn_hidden_dim()
            ));
        }
        if let Some(s) = &self.rope_scaling {
            s.validate(self.head_dim() / 2).map_err(Error::Config)?;
        }
        Ok(())
    }

    /// Checks the layer count against the tensors a file holds (9 per layer, plus the
    /// embedding and the final norm) before anything is sized by it: a file whose
    /// metadata claims 2^60 layers is an error here, not an allocation. `key` names
    /// where the count came from.
    pub fn check_layers(
        &self,
        tensors_in_file: usize,
        key: &str,
    ) -> std::result::Result<(), String> {
        let needed = self.n_layers.checked_mul(9).and_then(|n| n.checked_add(2));
        match needed {
            Some(n) if n <= tensors_in_file => Ok(()),
            _ => Err(format!(
                "{key} is {} but the file holds {tensors_in_file} tensors: {} layers need \
                 9 each",
                self.n_layers, self.n_layers
            )),
        }
    }

    /// The scaling as one divisor per rotary frequency (GGUF's `rope_freqs.weight`, as
    /// llama.cpp's converter writes it); `None` without scaling.
    pub fn rope_freq_factors(&self) -> Option<Vec<f32>> {
        match self.rope_scaling.as_ref()? {
            RopeScaling::Factors(f) => Some(f.clone()),
            RopeScaling::Llama3 { .. } => {
                let scaled = self.rope_frequencies();
                let plain = ModelArgs {
                    rope_scaling: None,
                    ..self.clone()
                }
                .rope_frequencies();
                Some(plain.iter().zip(&scaled).map(|(p, s)| p / s).collect())
            }
        }
    }

    /// The rotary frequencies `theta^(-2i/head_dim)` (f32, as the references compute
    /// them) after any [`RopeScaling`].
    pub fn rope_frequencies(&self) -> Vec<f32> {
        let head_dim = self.head_dim();
        let mut freqs: Vec<f32> = (0..head_dim / 2)
            .map(|i| 1.0 / (self.rope_theta as f32).powf((2 * i) as f32 / head_dim as f32))
            .collect();
        if let Some(s) = &self.rope_scaling {
            s.apply(&mut freqs);
        }
        freqs
    }

    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// FFN hidden width, computed as the reference does (saturating: values past the
    /// limits of [`ModelArgs::validate`] come out as huge widths, never as a panic).
    pub fn ffn_hidden_dim(&self) -> usize {
        if let Some(h) = self.ffn_hidden_dim {
            return h;
        }
        let mut h = self.dim.saturating_mul(8) / 3;
        if let Some(m) = self.ffn_dim_multiplier {
            h = (m * h as f64) as usize;
        }
        let m = self.multiple_of.max(1);
        m.saturating_mul(h.div_ceil(m))
    }
}

/// A [`ModelArgs::validate`] message with the `params.json` field names replaced by the
/// keys a file format calls them (`names`: field, key), so the error names what to fix.
pub fn with_key_names(msg: &str, names: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let key = names.iter().find(|(field, _)| *field == word.as_str());
        out.push_str(key.map_or(word.as_str(), |(_, key)| key));
        word.clear();
    };
    for c in msg.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn config_msg(e: &Error) -> String {
    match e {
        Error::Config(m) => m.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_hidden_width() {
        let a = ModelArgs::from_json("{}").unwrap();
        assert_eq!(a.dim, 4096);
        assert_eq!(a.ffn_hidden_dim(), 11008); // Llama 2 7B
        let a70 = ModelArgs::from_json(
            r#"{"dim": 8192, "n_layers": 80, "n_heads": 64, "n_kv_heads": 8,
                "multiple_of": 4096, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05,
                "vocab_size": -1, "some_future_key": true}"#,
        )
        .unwrap();
        assert_eq!(a70.ffn_hidden_dim(), 28672); // Llama 2 70B
        assert_eq!(a70.head_dim(), 128);
        let a13 = ModelArgs::from_json(r#"{"dim": 5120, "n_heads": 40, "n_layers": 40}"#).unwrap();
        assert_eq!(a13.ffn_hidden_dim(), 13824); // Llama 2 13B
    }

    #[test]
    fn messages_take_the_format_s_key_names() {
        let names = [("dim", "hidden_size"), ("n_heads", "num_attention_heads")];
        assert_eq!(
            with_key_names("dim 30 is not divisible by n_heads 4; dims", &names),
            "hidden_size 30 is not divisible by num_attention_heads 4; dims"
        );
        assert_eq!(
            with_key_names("dim, n_layers and n_heads", &names),
            "hidden_size, n_layers and num_attention_heads"
        );
    }

    #[test]
    fn invalid_configs_are_errors() {
        for bad in [
            r#"{"dim": 30, "n_heads": 4}"#,
            r#"{"n_heads": 32, "n_kv_heads": 5}"#,
            r#"{"dim": "wide"}"#,
            r#"[1, 2]"#,
            r#"{"norm_eps": -1}"#,
            "not json",
            // Sizes past the limits, before any file is looked at.
            r#"{"dim": 1073741824, "n_heads": 8}"#,
            r#"{"n_layers": 1000000000}"#,
            r#"{"vocab_size": 4294967296}"#,
            r#"{"ffn_dim_multiplier": 1e300}"#,
            r#"{"ffn_dim_multiplier": 1e-300}"#,
            r#"{"multiple_of": 18446744073709551615}"#,
            r#"{"dim": 18446744073709551615, "n_heads": 1}"#,
        ] {
            assert!(
                matches!(ModelArgs::from_json(bad), Err(Error::Config(_))),
                "{bad}"
            );
        }
    }
}
