//! Model hyper-parameters: Meta's `params.json` (REFERENCE §1) and the derived shapes.

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

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
        }
    }
}

impl ModelArgs {
    /// Reads and validates `params.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), config_msg(&e))))
    }

    /// Parses and validates the JSON text of `params.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let args: ModelArgs =
            serde_json::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        args.validate()?;
        Ok(args)
    }

    /// Checks that the values describe a buildable model.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.dim == 0 || self.n_layers == 0 || self.n_heads == 0 {
            return bad("dim, n_layers and n_heads must be positive".into());
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
        if self.ffn_hidden_dim == Some(0) {
            return bad("ffn_hidden_dim must be positive".into());
        }
        if let Some(m) = self.ffn_dim_multiplier {
            if !(m.is_finite() && m > 0.0) {
                return bad(format!("ffn_dim_multiplier {m} must be positive"));
            }
        }
        Ok(())
    }

    /// Key/value heads (grouped-query attention when fewer than `n_heads`).
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads.unwrap_or(self.n_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    /// FFN hidden width, computed as the reference does.
    pub fn ffn_hidden_dim(&self) -> usize {
        if let Some(h) = self.ffn_hidden_dim {
            return h;
        }
        let mut h = 2 * (4 * self.dim) / 3;
        if let Some(m) = self.ffn_dim_multiplier {
            h = (m * h as f64) as usize;
        }
        self.multiple_of * h.div_ceil(self.multiple_of)
    }
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
    fn invalid_configs_are_errors() {
        for bad in [
            r#"{"dim": 30, "n_heads": 4}"#,
            r#"{"n_heads": 32, "n_kv_heads": 5}"#,
            r#"{"dim": "wide"}"#,
            r#"[1, 2]"#,
            r#"{"norm_eps": -1}"#,
            "not json",
        ] {
            assert!(
                matches!(ModelArgs::from_json(bad), Err(Error::Config(_))),
                "{bad}"
            );
        }
    }
}
