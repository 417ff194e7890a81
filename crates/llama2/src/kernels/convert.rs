//! Conversion of stored weight rows to f32: f32, f16, bf16 little-endian bytes (exact:
//! every value is representable in f32) and ggml's quantized blocks (dequantized
//! exactly as ggml defines them, see [`super::quant`]); and the f32 <-> f16 conversions
//! of the KV cache.

use crate::tensor::DType;

/// Converts `out.len()` elements of `dtype` from `bytes` into `out`.
///
/// `bytes` must hold at least `dtype.row_bytes(out.len())` bytes (for quantized types
/// `out.len()` must be a whole number of blocks); alignment is not required.
pub fn to_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let n = out.len();
    match dtype {
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q4_K | DType::Q5_K | DType::Q6_K => {
            super::quant::dequantize(dtype, bytes, out)
        }
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes[..n * 4].chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::BF16 => {
            for (o, b) in out.iter_mut().zip(bytes[..n * 2].chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes[..n * 2].chunks_exact(2)) {
                *o = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
            }
        }
    }
}

/// f32 values rounded to IEEE half (nearest even), as bit patterns.
pub fn f32_to_f16(src: &[f32], dst: &mut [u16]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    dst.reinterpret_cast_mut::<half::f16>()
        .convert_from_f32_slice(src);
}

/// IEEE half bit patterns widened to f32 (exact).
pub fn f16_to_f32(src: &[u16], dst: &mut [f32]) {
    use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
    src.reinterpret_cast::<half::f16>()
        .convert_to_f32_slice(dst);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_are_exact() {
        let vals = [0.0f32, -1.5, 3.140625, 65504.0, -0.000061035156];
        let mut bf = Vec::new();
        let mut hf = Vec::new();
        let mut f = Vec::new();
        for v in vals {
            bf.extend_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
            hf.extend_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
            f.extend_from_slice(&v.to_le_bytes());
        }
        let mut out = [0.0f32; 5];
        to_f32(DType::F32, &f, &mut out);
        assert_eq!(out, vals);
        to_f32(DType::F16, &hf, &mut out);
        assert_eq!(out, vals);
        to_f32(DType::BF16, &bf, &mut out);
        let expect: Vec<f32> = vals
            .iter()
            .map(|v| half::bf16::from_f32(*v).to_f32())
            .collect();
        assert_eq!(out.to_vec(), expect);
        assert_eq!(out[1], -1.5);
    }
}
