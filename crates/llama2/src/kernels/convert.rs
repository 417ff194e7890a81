//! The f32 <-> f16 conversions of the KV cache (stored weights are converted by
//! [`crate::quant::to_f32`]).

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
