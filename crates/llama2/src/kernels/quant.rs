//! ggml block quantization formats: dequantization (bit-exact with ggml) and the
//! reference quantizers used by the converter.

use crate::tensor::DType;

/// Dequantizes `out.len()` values (whole blocks) of a quantized `dtype` from `bytes`.
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let _ = (dtype, bytes, out);
    unimplemented!("filled in by the GGUF work")
}
