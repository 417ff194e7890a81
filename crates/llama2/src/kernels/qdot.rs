//! Dot products of quantized weight rows with activations quantized to 8-bit blocks,
//! computed as llama.cpp's CPU backend does: activations are quantized per 32-value
//! block exactly like its x86 `quantize_row_q8_0`/`q8_1` (scale `amax/127`, values
//! rounded half-to-even), products are summed as integers in eight lanes of four
//! values, and lanes are scaled and accumulated with fused multiply-adds before one
//! horizontal sum. Mirroring that arithmetic keeps greedy outputs aligned with
//! llama.cpp's on the same GGUF files.

use half::f16;

use crate::tensor::DType;

/// Values per 8-bit activation block.
pub const QK: usize = 32;

/// One block of 8-bit activations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q8Block {
    /// Scale, as the f16 ggml stores, widened.
    pub d: f32,
    /// `d * sum(qs)` as f16 (ggml's Q8_1 `s`), widened; unused for Q8_0 partners.
    pub s: f32,
    /// Quantized values.
    pub qs: [i8; QK],
}

/// True for weight types with an 8-bit-activation dot product here.
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::Q8_0 | DType::Q4_0 | DType::Q4_1)
}

/// Quantizes `x` (a whole number of 32-value blocks) into `out`.
pub fn quantize_activations(x: &[f32], out: &mut Vec<Q8Block>) {
    out.clear();
    for chunk in x.chunks_exact(QK) {
        let amax = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for (q, v) in qs.iter_mut().zip(chunk) {
            let r = round_half_even(v * id) as i32;
            *q = r as i8;
            sum += r;
        }
        let d16 = f16::from_f32(d);
        out.push(Q8Block {
            d: d16.to_f32(),
            s: f16::from_f32(d * sum as f32).to_f32(),
            qs,
        });
    }
}

/// Round half to even for |x| < 2^22 (here |x| <= 127), without a libm call: adding
/// and subtracting 1.5 * 2^23 leaves the nearest integer under IEEE round-to-nearest-even.
#[inline(always)]
fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

#[inline(always)]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Eight lane sums of four consecutive products each.
#[inline(always)]
fn lane_sums(w: &[i8; QK], a: &[i8; QK]) -> [i32; 8] {
    let mut lanes = [0i32; 8];
    for (j, lane) in lanes.iter_mut().enumerate() {
        for k in 4 * j..4 * j + 4 {
            *lane += w[k] as i32 * a[k] as i32;
        }
    }
    lanes
}

#[inline(always)]
fn hsum8(a: [f32; 8]) -> f32 {
    // _mm256 → two halves added, then pairs, then the last two (ggml's hsum_float_8).
    let r = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let (x, y) = (r[0] + r[2], r[1] + r[3]);
    x + y
}

#[inline(always)]
fn dot_generic(dtype: DType, row: &[u8], acts: &[Q8Block]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    let bb = dtype.block_bytes();
    for (blk, a) in row.chunks_exact(bb).zip(acts) {
        let mut w = [0i8; QK];
        let scale = match dtype {
            DType::Q8_0 => {
                for (o, &b) in w.iter_mut().zip(&blk[2..34]) {
                    *o = b as i8;
                }
                f16_at(blk, 0) * a.d
            }
            DType::Q4_0 => {
                for i in 0..16 {
                    w[i] = (blk[2 + i] & 0x0f) as i8 - 8;
                    w[i + 16] = (blk[2 + i] >> 4) as i8 - 8;
                }
                f16_at(blk, 0) * a.d
            }
            DType::Q4_1 => {
                for i in 0..16 {
                    w[i] = (blk[4 + i] & 0x0f) as i8;
                    w[i + 16] = (blk[4 + i] >> 4) as i8;
                }
                summs += f16_at(blk, 2) * a.s;
                f16_at(blk, 0) * a.d
            }
            _ => 0.0,
        };
        let lanes = lane_sums(&w, &a.qs);
        for (acc_j, l) in acc.iter_mut().zip(lanes) {
            *acc_j = scale.mul_add(l as f32, *acc_j);
        }
    }
    hsum8(acc) + summs
}

/// Most activation rows one [`dot_many`] call handles (weights are unpacked once for all).
pub const MAX_TOKENS: usize = 4;

/// AVX2 version of [`dot_generic`] for up to [`MAX_TOKENS`] activation rows at once: the
/// same lane partition (llama.cpp's `mul_sum_i8_pairs_float`: `maddubs` pairs, then
/// `madd` pairs, so lane `j` holds values `4j..4j+3`), the same fused multiply-adds
/// and horizontal sum, so each result is bit-identical to the portable path.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_many_avx2(dtype: DType, row: &[u8], acts: &[&[Q8Block]], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let bb = dtype.block_bytes();
    let half_to_f32 = |b: &[u8], at: usize| {
        let bits = u16::from_le_bytes([b[at], b[at + 1]]) as i32;
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
    };
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let nt = acts.len().min(MAX_TOKENS);
    let mut acc = [_mm256_setzero_ps(); MAX_TOKENS];
    let mut summs = [0.0f32; MAX_TOKENS];
    for (b, blk) in row.chunks_exact(bb).enumerate() {
        // SAFETY (loads): `blk` has `bb` bytes (34 for Q8_0: 32 read from offset 2;
        // 18/20 for Q4_0/Q4_1: 16 read from offset 2/4); each `qs` has 32 bytes.
        let w = match dtype {
            DType::Q8_0 => _mm256_loadu_si256(blk[2..].as_ptr() as *const __m256i),
            _ => {
                let off = if dtype == DType::Q4_1 { 4 } else { 2 };
                let tmp = _mm_loadu_si128(blk[off..].as_ptr() as *const __m128i);
                let nibbles = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp), low);
                if dtype == DType::Q4_0 {
                    _mm256_sub_epi8(nibbles, _mm256_set1_epi8(8))
                } else {
                    nibbles
                }
            }
        };
        let dw = half_to_f32(blk, 0);
        let mw = if dtype == DType::Q4_1 {
            half_to_f32(blk, 2)
        } else {
            0.0
        };
        let ax = _mm256_sign_epi8(w, w);
        for t in 0..nt {
            let a = &acts[t][b];
            let y = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
            let sy = _mm256_sign_epi8(y, w);
            let lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, _mm256_maddubs_epi16(ax, sy)));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a.d), lanes, acc[t]);
            if dtype == DType::Q4_1 {
                summs[t] += mw * a.s;
            }
        }
    }
    for t in 0..nt {
        let mut lanes = [0.0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc[t]);
        out[t] = hsum8(lanes) + summs[t];
    }
}

/// Dot products of one quantized weight row with up to [`MAX_TOKENS`] rows of quantized
/// activations (`out[t]` for `acts[t]`). `use_simd` selects the AVX2+FMA kernel where the
/// CPU has it; results are bit-identical either way (`mul_add` is exactly rounded).
pub fn dot_many(dtype: DType, row: &[u8], acts: &[&[Q8Block]], use_simd: bool, out: &mut [f32]) {
    debug_assert!(supports(dtype) && acts.len() <= MAX_TOKENS && out.len() >= acts.len());
    #[cfg(target_arch = "x86_64")]
    if use_simd && has_avx2_fma() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
        unsafe { dot_many_avx2(dtype, row, acts, out) };
        return;
    }
    let _ = use_simd;
    for (o, a) in out.iter_mut().zip(acts) {
        *o = dot_generic(dtype, row, a);
    }
}

/// [`dot_many`] for one activation row.
pub fn dot(dtype: DType, row: &[u8], acts: &[Q8Block], use_simd: bool) -> f32 {
    let mut out = [0.0f32];
    dot_many(dtype, row, &[acts], use_simd, &mut out);
    out[0]
}

#[cfg(target_arch = "x86_64")]
fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn activation_quantization_follows_ggml() {
        let x = values(64, 3);
        let mut blocks = Vec::new();
        quantize_activations(&x, &mut blocks);
        assert_eq!(blocks.len(), 2);
        for (b, chunk) in blocks.iter().zip(x.chunks_exact(QK)) {
            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(b.d, f16::from_f32(amax / 127.0).to_f32());
            assert!(b.qs.iter().any(|&q| q == 127 || q == -127));
            for (q, v) in b.qs.iter().zip(chunk) {
                assert!((*q as f32 - v * 127.0 / amax).abs() <= 0.5);
            }
        }
        // Zero blocks quantize to zeros with scale 0.
        quantize_activations(&[0.0; 32], &mut blocks);
        assert_eq!((blocks[0].d, blocks[0].qs), (0.0, [0; 32]));
        // Ties round to even, as _mm256_round_ps(_MM_ROUND_NEAREST) does.
        let mut x = vec![0.0f32; 32];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = 3.5;
        quantize_activations(&x, &mut blocks);
        assert_eq!(&blocks[0].qs[..3], &[127, 2, 4]);
    }

    /// The integer path approximates the exact f32 dot of dequantized weights with
    /// the unquantized activations to within the activation quantization error.
    #[test]
    fn quantized_dot_is_close_to_the_exact_dot_and_simd_is_identical() {
        for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            let w = values(256, 7);
            let x = values(256, 9);
            let mut row = Vec::new();
            quant::quantize(dtype, &w, &mut row).unwrap();
            let mut wd = vec![0.0; 256];
            quant::dequantize(dtype, &row, &mut wd);
            let exact: f64 = wd.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mut acts = Vec::new();
            quantize_activations(&x, &mut acts);
            let got = dot(dtype, &row, &acts, false);
            // Activation error per value is at most d/2 = amax/254.
            let bound: f64 = wd.iter().map(|v| v.abs() as f64).sum::<f64>() * 2.0 / 254.0 + 1e-3;
            assert!(
                (got as f64 - exact).abs() <= bound,
                "{dtype:?}: {got} vs {exact}"
            );
            assert_eq!(
                dot(dtype, &row, &acts, true).to_bits(),
                got.to_bits(),
                "{dtype:?}"
            );
        }
    }
}
