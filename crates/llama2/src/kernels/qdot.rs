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
    /// `sum(qs)`, exact (for kernels that offset unsigned weights).
    pub sum: i32,
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
            sum,
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

/// Most activation rows one [`dot_tile`] call handles.
pub const MAX_TOKENS: usize = 4;
/// Most weight rows one [`dot_tile`] call handles.
pub const MAX_ROWS: usize = 4;

/// Weight formats of the integer kernels, as const-generic tags (so each format gets its
/// own loop with no per-block branching).
const Q8_0: u8 = 0;
const Q4_0: u8 = 1;
const Q4_1: u8 = 2;

/// AVX2 version of [`dot_generic`] for a tile of `R` weight rows by `T` activation rows:
/// `out[r * T + t] = dot(rows[r], acts[t])`. Each weight block is unpacked once for all
/// `T` tokens, each activation block loaded once for all `R` rows, and the `R * T`
/// accumulators are independent chains, which hides the latency of the multiply-adds
/// (one row alone is a serial chain of them). Per element it is the same arithmetic as
/// the portable path — llama.cpp's `mul_sum_i8_pairs_float` lane partition (`maddubs`
/// pairs, then `madd` pairs, so lane `j` holds values `4j..4j+3`), the same fused
/// multiply-adds in the same order and the same horizontal sum — so results are
/// bit-identical to it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<const F: u8, const R: usize, const T: usize>(
    rows: &[&[u8]],
    acts: &[&[Q8Block]],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let (bb, off) = match F {
        Q8_0 => (34, 2),
        Q4_0 => (18, 2),
        _ => (20, 4),
    };
    let rows: [&[u8]; R] = std::array::from_fn(|r| rows[r]);
    let acts: [&[Q8Block]; T] = std::array::from_fn(|t| acts[t]);
    let nb = rows[0].len() / bb;
    for r in rows {
        assert_eq!(r.len(), nb * bb, "weight rows of one tile differ in length");
    }
    for a in acts {
        assert!(a.len() >= nb, "activation row shorter than the weight row");
    }
    let half_to_f32 = |p: *const u8| {
        // SAFETY (caller): `p` points at two readable bytes.
        let bits = u16::from_le_bytes([*p, *p.add(1)]) as i32;
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
    };
    let low = _mm256_set1_epi8(0x0f);
    let eight = _mm256_set1_epi8(8);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut summs = [[0.0f32; T]; R];
    for b in 0..nb {
        let mut ys = [_mm256_setzero_si256(); T];
        for t in 0..T {
            // SAFETY: `b < nb <= acts[t].len()`, checked above; `qs` holds 32 bytes.
            ys[t] = _mm256_loadu_si256(acts[t].get_unchecked(b).qs.as_ptr() as *const __m256i);
        }
        for r in 0..R {
            // SAFETY: block `b` of row `r` spans bytes `b*bb..(b+1)*bb`, inside the row
            // (checked above); reads stay within it (32 bytes from offset 2 for Q8_0,
            // 16 bytes from offset 2/4 for Q4_0/Q4_1, f16 scales at offsets 0 and 2).
            let blk = rows[r].as_ptr().add(b * bb);
            let w = if F == Q8_0 {
                _mm256_loadu_si256(blk.add(off) as *const __m256i)
            } else {
                let tmp = _mm_loadu_si128(blk.add(off) as *const __m128i);
                let nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp), low);
                if F == Q4_0 {
                    _mm256_sub_epi8(nib, eight)
                } else {
                    nib
                }
            };
            let dw = half_to_f32(blk);
            let mw = if F == Q4_1 {
                half_to_f32(blk.add(2))
            } else {
                0.0
            };
            let ax = _mm256_sign_epi8(w, w);
            for t in 0..T {
                let a = acts[t].get_unchecked(b);
                let sy = _mm256_sign_epi8(ys[t], w);
                let lanes =
                    _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, _mm256_maddubs_epi16(ax, sy)));
                acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a.d), lanes, acc[r][t]);
                if F == Q4_1 {
                    summs[r][t] += mw * a.s;
                }
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][t]);
            out[r * T + t] = hsum8(lanes) + summs[r][t];
        }
    }
}

/// Dot products of a tile of up to [`MAX_ROWS`] weight rows (equal lengths) with up to
/// [`MAX_TOKENS`] rows of quantized activations: `out[r * acts.len() + t]` is
/// `dot(rows[r], acts[t])`. `use_simd` selects the AVX2+FMA kernel where the CPU has
/// it; results are bit-identical either way (`mul_add` is exactly rounded).
pub fn dot_tile(
    dtype: DType,
    rows: &[&[u8]],
    acts: &[&[Q8Block]],
    use_simd: bool,
    out: &mut [f32],
) {
    let (nr, nt) = (rows.len(), acts.len());
    assert!(supports(dtype) && (1..=MAX_ROWS).contains(&nr) && (1..=MAX_TOKENS).contains(&nt));
    assert!(out.len() >= nr * nt, "output too short for the tile");
    #[cfg(target_arch = "x86_64")]
    if use_simd && has_avx2_fma() {
        macro_rules! dispatch {
            ($f:expr; $(($r:literal, $t:literal)),*) => {
                match (nr, nt) {
                    // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
                    $(($r, $t) => unsafe { tile_avx2::<{ $f }, $r, $t>(rows, acts, out) },)*
                    _ => unreachable!("tile size checked above"),
                }
            };
        }
        macro_rules! sizes {
            ($f:expr) => {
                dispatch!($f; (1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3), (2, 4),
                    (3, 1), (3, 2), (3, 3), (3, 4), (4, 1), (4, 2), (4, 3), (4, 4))
            };
        }
        match dtype {
            DType::Q8_0 => sizes!(Q8_0),
            DType::Q4_0 => sizes!(Q4_0),
            _ => sizes!(Q4_1),
        }
        return;
    }
    let _ = use_simd;
    for (r, row) in rows.iter().enumerate() {
        for (t, a) in acts.iter().enumerate() {
            out[r * nt + t] = dot_generic(dtype, row, a);
        }
    }
}

/// The dot product of one quantized weight row with one row of quantized activations.
pub fn dot(dtype: DType, row: &[u8], acts: &[Q8Block], use_simd: bool) -> f32 {
    let mut out = [0.0f32];
    dot_tile(dtype, &[row], &[acts], use_simd, &mut out);
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
        assert_eq!(
            (blocks[0].d, blocks[0].qs, blocks[0].sum),
            (0.0, [0; 32], 0)
        );
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

    /// Every tile shape of the SIMD kernel gives, element for element, the bits of the
    /// portable one-row-one-token dot.
    #[test]
    fn simd_tiles_are_bit_identical_to_the_portable_dot() {
        for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            let cols = 32 * 37;
            let rows: Vec<Vec<u8>> = (0..MAX_ROWS as u64)
                .map(|r| {
                    let mut row = Vec::new();
                    quant::quantize(dtype, &values(cols, 100 + r), &mut row).unwrap();
                    row
                })
                .collect();
            let acts: Vec<Vec<Q8Block>> = (0..MAX_TOKENS as u64)
                .map(|t| {
                    let mut a = Vec::new();
                    quantize_activations(&values(cols, 200 + t), &mut a);
                    a
                })
                .collect();
            for nr in 1..=MAX_ROWS {
                for nt in 1..=MAX_TOKENS {
                    let r: Vec<&[u8]> = rows[..nr].iter().map(Vec::as_slice).collect();
                    let a: Vec<&[Q8Block]> = acts[..nt].iter().map(Vec::as_slice).collect();
                    let mut simd = vec![0.0f32; nr * nt];
                    dot_tile(dtype, &r, &a, true, &mut simd);
                    let mut portable = vec![0.0f32; nr * nt];
                    dot_tile(dtype, &r, &a, false, &mut portable);
                    for i in 0..nr * nt {
                        let want = dot_generic(dtype, r[i / nt], a[i % nt]);
                        assert_eq!(portable[i].to_bits(), want.to_bits());
                        assert_eq!(
                            simd[i].to_bits(),
                            want.to_bits(),
                            "{dtype:?} {nr}x{nt} #{i}"
                        );
                    }
                }
            }
        }
    }
}
