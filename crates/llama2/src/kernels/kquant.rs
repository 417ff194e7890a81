//! Matrix kernels straight from K-quant weights (Q4_K, Q5_K, Q6_K) over activations
//! quantized to 8-bit blocks of 256 values (ggml's Q8_K), as llama.cpp's CPU backend
//! multiplies them.
//!
//! Per super-block of 256 values the product is exact integer arithmetic in eight lanes:
//! lane `k` takes the products of the unsigned quants with values `4k..4k + 4` of every
//! 32-value run (Q4_K/Q5_K: each run one sub-block with its scale; Q6_K: two 16-value
//! sub-blocks, lanes 0-3 and 4-7), times their integer scales; then, from the
//! activations' 16-value sums, Q6_K's offset of 32 comes off (lane `k`: sub-blocks `2k`,
//! `2k + 1`) and for Q4_K/Q5_K the minimums times the sums (lane `k`: sub-block `k`). Then in f32, lane by lane, one fused
//! multiply-add per super-block: `acc = fma(isum, d_w * d_a, acc)`, `accm = fma(msum,
//! dmin_w * d_a, accm)`; at the end `sum(acc) - sum(accm)` by a fixed tree. This is the
//! shape of llama.cpp's AVX2 `vec_dot_q4_K_q8_K` (no horizontal sum per super-block). The
//! weights are used in the file layout (no repacked copy: a mapped file stays mapped);
//! the SIMD kernels produce the scalar reference's integers and float steps, so every
//! path gives the same bits (tested). With AVX-512 a prompt's rows go two at a time
//! against four tokens ([`tile`], [`rows_wide`]): 512-bit products, `vpdpwssd` for the
//! scale multiply-adds, two tokens' float lanes per register.

use super::qdot::{hsum8, round_half_even};
use super::Isa;
use crate::dtype::DType;
use crate::quant::f16_at;

/// Values per K-quant super-block (and per 8-bit activation block here).
pub const QK_K: usize = 256;
/// Most activation rows one kernel call handles. A prompt's rows meet each weight row
/// [`tokens_per_call`] at a time (or [`tile`]'s rows and tokens together): the unpacked
/// quants and scales are shared by more tokens the more there are, until the
/// accumulators no longer fit the registers.
pub const MAX_TOKENS: usize = 8;

/// Whether the AVX-512 kernels take 512-bit products ([`rows_wide`]): on CPUs that run
/// them at full width, told apart by AVX-VNNI (Zen 5, Intel Sapphire Rapids and later;
/// Zen 4, which splits 512-bit products in two and measured slower with them, lacks it).
pub(super) fn wide(simd: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    if simd == Isa::Avx512Vnni {
        return std::arch::is_x86_feature_detected!("avxvnni");
    }
    let _ = simd;
    false
}

/// Activation rows per single-row kernel call that measured fastest: eight for the AVX2
/// build and the portable paths (Zen 3, 7B Q4_K_M prompt: 1.35x the speed of four,
/// sixteen slower again) and the 512-bit kernel (Zen 5), four for the 256-bit AVX-512
/// build (Zen 4). Whole tiles of rows take [`tile`]'s shape instead.
pub(super) fn tokens_per_call(simd: Isa, wide: bool) -> usize {
    #[cfg(target_arch = "x86_64")]
    if simd == Isa::Avx512Vnni && !wide {
        return 4;
    }
    let _ = (simd, wide);
    MAX_TOKENS
}

/// One block of 256 activations quantized to 8 bits (ggml's `block_q8_K`).
#[derive(Clone, Debug, PartialEq)]
pub struct Q8KBlock {
    /// Scale (f32, unlike the 32-value blocks).
    pub d: f32,
    /// Quantized values.
    pub qs: [i8; QK_K],
    /// Sums of each 16 consecutive values.
    pub bsums: [i16; QK_K / 16],
}

/// True for the types these kernels multiply.
pub fn supports(dtype: DType) -> bool {
    dtype.kernel() == crate::dtype::KernelFamily::KQuant
}

/// Quantizes `x` (a whole number of 256-value blocks) as ggml's
/// `quantize_row_q8_K_ref`: the value of largest magnitude maps to -127, values are
/// rounded half to even.
pub fn quantize_activations(x: &[f32], out: &mut Vec<Q8KBlock>) {
    out.clear();
    for chunk in x.chunks_exact(QK_K) {
        let (mut amax, mut max) = (0.0f32, 0.0f32);
        for &v in chunk {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let mut b = Q8KBlock {
            d: 0.0,
            qs: [0; QK_K],
            bsums: [0; QK_K / 16],
        };
        if amax != 0.0 {
            let iscale = -127.0 / max;
            for (q, &v) in b.qs.iter_mut().zip(chunk) {
                *q = (round_half_even(iscale * v) as i32).min(127) as i8;
            }
            for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
                *s = q.iter().map(|&v| v as i16).sum();
            }
            b.d = 1.0 / iscale;
        }
        out.push(b);
    }
}

/// The eight 6-bit scales and eight 6-bit minimums of a Q4_K/Q5_K super-block's 12
/// packed bytes (ggml's `get_scale_min_k4` for every sub-block at once, by its
/// word-wise unpacking).
#[inline(always)]
fn scales_mins(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let w = |i: usize| u32::from_le_bytes([packed[i], packed[i + 1], packed[i + 2], packed[i + 3]]);
    let (w0, w1, w2) = (w(0), w(4), w(8));
    let sc = [w0 & LOW6, (w2 & LOW4) | (((w0 >> 6) & LOW2) << 4)];
    let mn = [w1 & LOW6, ((w2 >> 4) & LOW4) | (((w1 >> 6) & LOW2) << 4)];
    let bytes = |v: [u32; 2]| {
        let mut o = [0u8; 8];
        o[..4].copy_from_slice(&v[0].to_le_bytes());
        o[4..].copy_from_slice(&v[1].to_le_bytes());
        o
    };
    (bytes(sc), bytes(mn))
}

/// Lanes of the per-super-block sums.
const LANES: usize = 8;

/// The final reduction of the lane accumulators, shared by every path.
#[inline(always)]
fn finish(acc: [f32; LANES], accm: [f32; LANES]) -> f32 {
    hsum8(acc) - hsum8(accm)
}

/// Exact integer lane sums `(isum, msum)` of one super-block of `dtype` against `a`:
/// the defining arithmetic, value by value.
fn block_sums_reference(dtype: DType, blk: &[u8], a: &Q8KBlock) -> ([i32; LANES], [i32; LANES]) {
    let y = |i: usize| a.qs[i] as i32;
    let (mut isum, mut msum) = ([0i32; LANES], [0i32; LANES]);
    match dtype {
        DType::Q6_K => {
            let (ql, qh, sc) = (&blk[..128], &blk[128..192], &blk[192..208]);
            for i in 0..QK_K {
                // Value i: half n, quarter k, position l (ggml's dequantize_row_q6_K).
                let (n, k, l) = (i / 128, (i % 128) / 32, i % 32);
                let low = ql[64 * n + 32 * (k % 2) + l];
                let nib = if k < 2 { low & 0xF } else { low >> 4 };
                let high = (qh[32 * n + l] >> (2 * k)) & 3;
                let u = (nib | (high << 4)) as i32;
                isum[(i % 32) / 4] += sc[i / 16] as i8 as i32 * u * y(i);
            }
            // The offset of 32: lane k takes sub-blocks 2k and 2k + 1.
            for (k, lane) in isum.iter_mut().enumerate() {
                let s = |j: usize| sc[j] as i8 as i32 * a.bsums[j] as i32;
                *lane -= 32 * (s(2 * k) + s(2 * k + 1));
            }
        }
        _ => {
            let q5 = dtype == DType::Q5_K;
            let (sc, mn) = scales_mins(&blk[4..16]);
            let qs = if q5 { &blk[48..176] } else { &blk[16..144] };
            for j in 0..8 {
                for l in 0..32 {
                    let byte = qs[32 * (j / 2) + l];
                    let mut q = (if j % 2 == 0 { byte & 0xF } else { byte >> 4 }) as i32;
                    if q5 && (blk[16 + l] >> j) & 1 != 0 {
                        q += 16;
                    }
                    isum[l / 4] += sc[j] as i32 * q * y(32 * j + l);
                }
                msum[j] = mn[j] as i32 * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
            }
        }
    }
    (isum, msum)
}

/// The scale products `(d_w * d_a, dmin_w * d_a)` of a super-block.
#[inline(always)]
fn block_scales(dtype: DType, blk: &[u8], a: &Q8KBlock) -> (f32, f32) {
    match dtype {
        DType::Q6_K => (f16_at(blk, 208) * a.d, 0.0),
        _ => (f16_at(blk, 0) * a.d, f16_at(blk, 2) * a.d),
    }
}

/// The defining arithmetic of a row of `dtype` (file layout) against quantized
/// activations: the module's per-super-block sums and float steps.
pub fn dot_reference(dtype: DType, row: &[u8], acts: &[Q8KBlock]) -> f32 {
    assert!(supports(dtype));
    let (mut acc, mut accm) = ([0.0f32; LANES], [0.0f32; LANES]);
    for (blk, a) in row.chunks_exact(dtype.block_bytes()).zip(acts) {
        let (isum, msum) = block_sums_reference(dtype, blk, a);
        let (d, dmin) = block_scales(dtype, blk, a);
        for k in 0..LANES {
            acc[k] = (isum[k] as f32).mul_add(d, acc[k]);
            accm[k] = (msum[k] as f32).mul_add(dmin, accm[k]);
        }
    }
    finish(acc, accm)
}

/// Dot products of one row of `dtype` (file layout, `acts[t].len()` super-blocks) with
/// up to [`MAX_TOKENS`] activation rows: `out[t]`. `use_simd` selects the SIMD kernel
/// (AVX2, AVX-512 or NEON) where the CPU has it; every path gives the bits of
/// [`dot_reference`].
pub fn dot_row(dtype: DType, row: &[u8], acts: &[&[Q8KBlock]], use_simd: bool, out: &mut [f32]) {
    let simd = Isa::select(use_simd);
    dot_row_with(simd, wide(simd), dtype, row, acts, out)
}

/// One row against one token with NEON: the reference's eight integer lanes
/// (`lanes4_neon` per 16 bytes, times the sub-block scale), the offset or minimum lanes
/// from the activations' 16-value sums, then the reference's float steps lane by lane.
#[cfg(target_arch = "aarch64")]
#[allow(clippy::needless_range_loop)] // parallel arrays indexed together
unsafe fn row_neon(dtype: DType, row: &[u8], nb: usize, a: &[Q8KBlock]) -> f32 {
    use super::qdot::lanes4_neon;
    use std::arch::aarch64::*;
    let bb = dtype.block_bytes();
    let low4 = vdupq_n_u8(0x0f);
    let mut acc = [vdupq_n_f32(0.0); 2];
    let mut accm = [vdupq_n_f32(0.0); 2];
    for (b, a) in a[..nb].iter().enumerate() {
        let blk = &row[b * bb..(b + 1) * bb];
        let p = blk.as_ptr();
        let y = |at: usize| vld1q_s8(a.qs.as_ptr().add(at));
        let mut isum = [vdupq_n_s32(0); 2];
        let mut msum = [0i32; LANES];
        if dtype == DType::Q6_K {
            for n in 0..2 {
                for k in 0..4 {
                    for half in 0..2 {
                        // SAFETY (loads): inside the 210-byte super-block.
                        let low = vld1q_u8(p.add(64 * n + 32 * (k % 2) + 16 * half));
                        let nib = if k < 2 {
                            vandq_u8(low, low4)
                        } else {
                            vshrq_n_u8::<4>(low)
                        };
                        let h = vld1q_u8(p.add(128 + 32 * n + 16 * half));
                        let shift = vdupq_n_s8(-2 * k as i8);
                        let high = vandq_u8(vshlq_u8(h, shift), vdupq_n_u8(3));
                        let u = vreinterpretq_s8_u8(vorrq_u8(nib, vshlq_n_u8::<4>(high)));
                        let sc = blk[192 + 8 * n + 2 * k + half] as i8 as i32;
                        let l = lanes4_neon(u, y(128 * n + 32 * k + 16 * half));
                        isum[half] = vmlaq_n_s32(isum[half], l, sc);
                    }
                }
            }
            for (kk, m) in msum.iter_mut().enumerate() {
                let s = |j: usize| blk[192 + j] as i8 as i32 * a.bsums[j] as i32;
                // The offset of 32, subtracted from the lanes below.
                *m = 32 * (s(2 * kk) + s(2 * kk + 1));
            }
            let corr = [vld1q_s32(msum.as_ptr()), vld1q_s32(msum.as_ptr().add(4))];
            isum = [vsubq_s32(isum[0], corr[0]), vsubq_s32(isum[1], corr[1])];
            msum = [0; LANES];
        } else {
            let q5 = dtype == DType::Q5_K;
            let (sc, mn) = scales_mins(&blk[4..16]);
            let qs = if q5 { 48 } else { 16 };
            for j in 0..4 {
                for half in 0..2 {
                    let q = vld1q_u8(p.add(qs + 32 * j + 16 * half));
                    let mut lo = vandq_u8(q, low4);
                    let mut hi = vshrq_n_u8::<4>(q);
                    if q5 {
                        let h = vld1q_u8(p.add(16 + 16 * half));
                        let bit = |s: usize| {
                            let v = vshlq_u8(h, vdupq_n_s8(-(s as i8)));
                            vshlq_n_u8::<4>(vandq_u8(v, vdupq_n_u8(1)))
                        };
                        lo = vorrq_u8(lo, bit(2 * j));
                        hi = vorrq_u8(hi, bit(2 * j + 1));
                    }
                    let l = lanes4_neon(vreinterpretq_s8_u8(lo), y(64 * j + 16 * half));
                    let h = lanes4_neon(vreinterpretq_s8_u8(hi), y(64 * j + 32 + 16 * half));
                    isum[half] = vmlaq_n_s32(isum[half], l, sc[2 * j] as i32);
                    isum[half] = vmlaq_n_s32(isum[half], h, sc[2 * j + 1] as i32);
                }
            }
            for (k, m) in msum.iter_mut().enumerate() {
                *m = mn[k] as i32 * (a.bsums[2 * k] as i32 + a.bsums[2 * k + 1] as i32);
            }
        }
        let (d, dmin) = block_scales(dtype, blk, a);
        let ms = [vld1q_s32(msum.as_ptr()), vld1q_s32(msum.as_ptr().add(4))];
        for h in 0..2 {
            acc[h] = vfmaq_n_f32(acc[h], vcvtq_f32_s32(isum[h]), d);
            accm[h] = vfmaq_n_f32(accm[h], vcvtq_f32_s32(ms[h]), dmin);
        }
    }
    let (mut l, mut m) = ([0.0f32; LANES], [0.0f32; LANES]);
    vst1q_f32(l.as_mut_ptr(), acc[0]);
    vst1q_f32(l.as_mut_ptr().add(4), acc[1]);
    vst1q_f32(m.as_mut_ptr(), accm[0]);
    vst1q_f32(m.as_mut_ptr().add(4), accm[1]);
    finish(l, m)
}

/// [`dot_row`] with the kernel variant chosen by the caller (`wide`: the 512-bit
/// kernel, with [`Isa::Avx512Vnni`] only).
pub(super) fn dot_row_with(
    simd: Isa,
    wide: bool,
    dtype: DType,
    row: &[u8],
    acts: &[&[Q8KBlock]],
    out: &mut [f32],
) {
    let nt = acts.len();
    assert!(supports(dtype) && (1..=MAX_TOKENS).contains(&nt) && out.len() >= nt);
    let bb = dtype.block_bytes();
    assert!(row.len().is_multiple_of(bb));
    let nb = row.len() / bb;
    assert!(acts.iter().all(|a| a.len() >= nb));
    let _ = wide; // only the x86 kernels have two widths
    #[cfg(target_arch = "x86_64")]
    if simd.has_avx2() {
        let wide = wide && simd == Isa::Avx512Vnni;
        let cap = tokens_per_call(simd, wide);
        if nt > cap {
            dot_row_with(simd, wide, dtype, row, &acts[..cap], &mut out[..cap]);
            dot_row_with(simd, wide, dtype, row, &acts[cap..], &mut out[cap..]);
            return;
        }
        macro_rules! go {
            ($k:expr) => {
                // SAFETY: `simd` comes from `Isa::detect`/`Isa::available`, so the CPU
                // has its features: AVX2, FMA and F16C here (`has_avx2`), AVX-512 with
                // VNNI for the `Avx512Vnni` arms; the row holds `nb` whole super-blocks and
                // every activation row at least `nb` blocks (asserted above), which is
                // all the kernel reads.
                unsafe {
                    match (simd, wide, nt) {
                        (_, true, 1) => rows_wide::<{ $k }, 1, 1>([row], nb, acts, out),
                        (_, true, 2) => rows_wide::<{ $k }, 1, 2>([row], nb, acts, out),
                        (_, true, 3) => rows_wide::<{ $k }, 1, 3>([row], nb, acts, out),
                        (_, true, 4) => rows_wide::<{ $k }, 1, 4>([row], nb, acts, out),
                        (_, true, 5) => rows_wide::<{ $k }, 1, 5>([row], nb, acts, out),
                        (_, true, 6) => rows_wide::<{ $k }, 1, 6>([row], nb, acts, out),
                        (_, true, 7) => rows_wide::<{ $k }, 1, 7>([row], nb, acts, out),
                        (_, true, _) => rows_wide::<{ $k }, 1, 8>([row], nb, acts, out),
                        (Isa::Avx512Vnni, _, 1) => row_avx512::<{ $k }, 1>(row, nb, acts, out),
                        (Isa::Avx512Vnni, _, 2) => row_avx512::<{ $k }, 2>(row, nb, acts, out),
                        (Isa::Avx512Vnni, _, 3) => row_avx512::<{ $k }, 3>(row, nb, acts, out),
                        (Isa::Avx512Vnni, _, _) => row_avx512::<{ $k }, 4>(row, nb, acts, out),
                        (_, _, 1) => row_avx2::<{ $k }, 1>(row, nb, acts, out),
                        (_, _, 2) => row_avx2::<{ $k }, 2>(row, nb, acts, out),
                        (_, _, 3) => row_avx2::<{ $k }, 3>(row, nb, acts, out),
                        (_, _, 4) => row_avx2::<{ $k }, 4>(row, nb, acts, out),
                        (_, _, 5) => row_avx2::<{ $k }, 5>(row, nb, acts, out),
                        (_, _, 6) => row_avx2::<{ $k }, 6>(row, nb, acts, out),
                        (_, _, 7) => row_avx2::<{ $k }, 7>(row, nb, acts, out),
                        (_, _, _) => row_avx2::<{ $k }, 8>(row, nb, acts, out),
                    }
                }
            };
        }
        match dtype {
            DType::Q6_K => go!(Q6),
            DType::Q5_K => go!(Q5),
            _ => go!(Q4),
        }
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if simd == Isa::Neon {
        for (o, a) in out.iter_mut().zip(acts) {
            // SAFETY: the row holds `nb` whole super-blocks and the activation row at
            // least `nb` blocks (asserted above), which is all the kernel reads; NEON is
            // baseline.
            *o = unsafe { row_neon(dtype, row, nb, a) };
        }
        return;
    }
    let _ = simd;
    for (o, a) in out.iter_mut().zip(acts) {
        *o = dot_reference(dtype, row, a);
    }
}

/// Rows and tokens per call of [`dot_rows_with`]: with the 512-bit kernel ([`wide`]), two
/// rows share each activation load.
pub(super) fn tile(simd: Isa, wide: bool) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if wide && simd == Isa::Avx512Vnni {
        return (WIDE_ROWS, WIDE_TOKENS);
    }
    (1, tokens_per_call(simd, wide))
}

#[cfg(target_arch = "x86_64")]
const WIDE_ROWS: usize = 2;
#[cfg(target_arch = "x86_64")]
const WIDE_TOKENS: usize = 4;

/// `rows.len() / row_bytes` rows (at most [`tile`]'s, consecutive, file layout) against
/// up to [`tile`]'s tokens: `out[r * acts.len() + t]`, each the bits of [`dot_reference`].
#[allow(clippy::too_many_arguments)]
pub(super) fn dot_rows_with(
    simd: Isa,
    wide: bool,
    dtype: DType,
    rows: &[u8],
    row_bytes: usize,
    acts: &[&[Q8KBlock]],
    out: &mut [f32],
) {
    assert!(row_bytes > 0 && rows.len().is_multiple_of(row_bytes));
    let (nr, nt) = (rows.len() / row_bytes, acts.len());
    let (max_r, max_t) = tile(simd, wide);
    assert!(nr <= max_r && nt <= max_t && out.len() >= nr * nt);
    #[cfg(target_arch = "x86_64")]
    if wide && simd == Isa::Avx512Vnni && nr == WIDE_ROWS && nt == WIDE_TOKENS {
        let bb = dtype.block_bytes();
        assert!(supports(dtype) && row_bytes.is_multiple_of(bb));
        let nb = row_bytes / bb;
        assert!(acts.iter().all(|a| a.len() >= nb));
        let two: [&[u8]; WIDE_ROWS] =
            std::array::from_fn(|r| &rows[r * row_bytes..(r + 1) * row_bytes]);
        let acts: [&[Q8KBlock]; WIDE_TOKENS] = std::array::from_fn(|t| acts[t]);
        // SAFETY: AVX-512 F/BW/VL with VNNI detected (`simd`); each row holds `nb`
        // super-blocks and each activation row at least `nb` blocks (asserted above).
        unsafe {
            match dtype {
                DType::Q6_K => rows_wide::<Q6, WIDE_ROWS, WIDE_TOKENS>(two, nb, &acts, out),
                DType::Q5_K => rows_wide::<Q5, WIDE_ROWS, WIDE_TOKENS>(two, nb, &acts, out),
                _ => rows_wide::<Q4, WIDE_ROWS, WIDE_TOKENS>(two, nb, &acts, out),
            }
        }
        return;
    }
    for (r, row) in rows.chunks_exact(row_bytes).enumerate() {
        dot_row_with(simd, wide, dtype, row, acts, &mut out[r * nt..(r + 1) * nt]);
    }
}

/// `vpshufb` masks: `SPREAD[e]` repeats 16-bit element `e` of a 128-bit lane over it.
#[cfg(target_arch = "x86_64")]
static SPREAD: [[u8; 32]; 8] = {
    let mut t = [[0u8; 32]; 8];
    let mut e = 0;
    while e < 8 {
        let mut i = 0;
        while i < 32 {
            t[e][i] = (2 * e + i % 2) as u8;
            i += 1;
        }
        e += 1;
    }
    t
};

/// `vpshufb` masks: `SPREAD_PAIR[k]` repeats 16-bit element `2k` over the low 128-bit
/// lane and `2k + 1` over the high one.
#[cfg(target_arch = "x86_64")]
static SPREAD_PAIR: [[u8; 32]; 4] = {
    let mut t = [[0u8; 32]; 4];
    let mut k = 0;
    while k < 4 {
        let mut i = 0;
        while i < 32 {
            t[k][i] = (4 * k + 2 * (i / 16) + i % 2) as u8;
            i += 1;
        }
        k += 1;
    }
    t
};

/// Super-blocks ahead of use that the x86 kernel asks the memory system for.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 2;

/// Kernel selectors (const generic: which type the AVX2 kernel decodes).
#[cfg(target_arch = "x86_64")]
const Q4: u8 = 0;
#[cfg(target_arch = "x86_64")]
const Q5: u8 = 1;
#[cfg(target_arch = "x86_64")]
const Q6: u8 = 2;

/// The type a kernel selector decodes.
#[cfg(target_arch = "x86_64")]
const fn kernel_dtype(k: u8) -> DType {
    match k {
        Q4 => DType::Q4_K,
        Q5 => DType::Q5_K,
        _ => DType::Q6_K,
    }
}

/// Q4_K/Q5_K quants of runs `2j` and `2j + 1` of the super-block at `p` as unsigned bytes
/// (the low and the high nibbles of 32 bytes; for Q5_K with their fifth bits from `qh`,
/// the block's 32 high-bit bytes).
///
/// # Safety
/// AVX2 must be available and `p` a whole super-block of the type.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn q45_runs<const K: u8>(
    p: *const u8,
    qh: std::arch::x86_64::__m256i,
    j: usize,
) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    let low4 = _mm256_set1_epi8(0x0f);
    let qs = if K == Q5 { 48 } else { 16 };
    let q = _mm256_loadu_si256(p.add(qs + 32 * j) as *const __m256i);
    let mut lo = _mm256_and_si256(q, low4);
    let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low4);
    if K == Q5 {
        let bit = |s: i32| {
            let v = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(s));
            _mm256_slli_epi16::<4>(_mm256_and_si256(v, _mm256_set1_epi8(0x01)))
        };
        lo = _mm256_or_si256(lo, bit(2 * j as i32));
        hi = _mm256_or_si256(hi, bit(2 * j as i32 + 1));
    }
    (lo, hi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn row_avx2<const K: u8, const T: usize>(
    row: &[u8],
    nb: usize,
    acts: &[&[Q8KBlock]],
    out: &mut [f32],
) {
    row_kernel::<K, T>(row, nb, acts, out)
}

/// [`row_kernel`] with AVX-512's 32 vector registers (no spills at four tokens; the
/// products on 512-bit registers measured slower on Zen 4, which splits them).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
unsafe fn row_avx512<const K: u8, const T: usize>(
    row: &[u8],
    nb: usize,
    acts: &[&[Q8KBlock]],
    out: &mut [f32],
) {
    row_kernel::<K, T>(row, nb, acts, out)
}

/// One row against `T` tokens (compiled into [`row_avx2`] and [`row_avx512`]). Per super-block the
/// quants are unpacked to unsigned bytes once and shared by the tokens: `vpmaddubsw`
/// pair sums (at most 2 * 63 * 127, no saturation), `vpmaddwd` by the sub-block scales,
/// 32-bit lane sums; Q6_K's offset of 32 and the minimums by `vpmaddwd` on the
/// activations' 16-value sums. Then the reference's float steps, lane by lane.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn row_kernel<const K: u8, const T: usize>(
    row: &[u8],
    nb: usize,
    acts: &[&[Q8KBlock]],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let dtype = kernel_dtype(K);
    let bb = dtype.block_bytes();
    let low4 = _mm256_set1_epi8(0x0f);
    let low2 = _mm256_set1_epi8(0x03);
    let mut acc = [_mm256_setzero_ps(); T];
    let mut accm = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let blk = &row[b * bb..(b + 1) * bb];
        let p = blk.as_ptr();
        // Every line of the super-block PREFETCH ahead (hints: no fault past the end).
        let ahead = p.wrapping_add(PREFETCH * bb);
        for line in 0..4 {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line) as *const i8);
        }
        let a: [&Q8KBlock; T] = std::array::from_fn(|t| acts[t].get_unchecked(b));
        let mut isum = [_mm256_setzero_si256(); T];
        let mut msum = [_mm256_setzero_si256(); T];
        // SAFETY (all loads below): offsets inside the super-block's `bb` bytes and
        // inside each activation block's 256 values.
        let load = |at: usize| _mm256_loadu_si256(p.add(at) as *const __m256i);
        let y =
            |t: usize, at: usize| _mm256_loadu_si256(a[t].qs.as_ptr().add(at) as *const __m256i);
        if K == Q6 {
            for n in 0..2 {
                // This half's eight scales as i16, in both 128-bit lanes.
                let scales = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_loadl_epi64(
                    p.add(192 + 8 * n) as *const __m128i,
                )));
                let (ql0, ql1) = (load(64 * n), load(64 * n + 32));
                let h = load(128 + 32 * n);
                let hi2 = |shift: i32| {
                    let v = _mm256_srl_epi16(h, _mm_cvtsi32_si128(shift));
                    _mm256_slli_epi16(_mm256_and_si256(v, low2), 4)
                };
                let u = [
                    _mm256_or_si256(_mm256_and_si256(ql0, low4), hi2(0)),
                    _mm256_or_si256(_mm256_and_si256(ql1, low4), hi2(2)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), low4), hi2(4)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4), hi2(6)),
                ];
                for (k, u) in u.iter().enumerate() {
                    // Scales 2k (values 0..16 of the run) and 2k + 1 (16..32).
                    let pick = _mm256_loadu_si256(SPREAD_PAIR[k].as_ptr() as *const __m256i);
                    let sc = _mm256_shuffle_epi8(scales, pick);
                    for (t, isum) in isum.iter_mut().enumerate() {
                        let prod = _mm256_maddubs_epi16(*u, y(t, 128 * n + 32 * k));
                        *isum = _mm256_add_epi32(*isum, _mm256_madd_epi16(prod, sc));
                    }
                }
            }
            let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(192) as *const __m128i));
            for (t, isum) in isum.iter_mut().enumerate() {
                let bs = _mm256_loadu_si256(a[t].bsums.as_ptr() as *const __m256i);
                let corr = _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5);
                *isum = _mm256_sub_epi32(*isum, corr);
            }
        } else {
            let (sc, mn) = scales_mins(&blk[4..16]);
            let scales = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64(
                sc.as_ptr() as *const __m128i,
            )));
            let spread = |e: usize| {
                let pick = _mm256_loadu_si256(SPREAD[e].as_ptr() as *const __m256i);
                _mm256_shuffle_epi8(scales, pick)
            };
            let qh = if K == Q5 {
                load(16)
            } else {
                _mm256_setzero_si256()
            };
            for j in 0..4 {
                let (lo, hi) = q45_runs::<K>(p, qh, j);
                let (sl, sh) = (spread(2 * j), spread(2 * j + 1));
                for (t, isum) in isum.iter_mut().enumerate() {
                    let pl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, y(t, 64 * j)), sl);
                    let ph = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, y(t, 64 * j + 32)), sh);
                    *isum = _mm256_add_epi32(*isum, _mm256_add_epi32(pl, ph));
                }
            }
            // Each minimum twice, against the pair of 16-value sums of its sub-block.
            let mn = _mm_loadl_epi64(mn.as_ptr() as *const __m128i);
            let mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn));
            for (t, msum) in msum.iter_mut().enumerate() {
                let bs = _mm256_loadu_si256(a[t].bsums.as_ptr() as *const __m256i);
                *msum = _mm256_madd_epi16(bs, mins);
            }
        }
        // The super-block's f16 scale (and minimum scale) at once; Q6_K's scale is its
        // last two bytes, so only those are read.
        let bits = if K == Q6 {
            (p.add(208) as *const u16).read_unaligned() as i32
        } else {
            (p as *const i32).read_unaligned()
        };
        let dw = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
        for t in 0..T {
            let ds = _mm_mul_ps(dw, _mm_set1_ps(a[t].d));
            let d = _mm256_broadcastss_ps(ds);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), d, acc[t]);
            if K != Q6 {
                let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(ds));
                accm[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum[t]), dmin, accm[t]);
            }
        }
    }
    for t in 0..T {
        let (mut l, mut m) = ([0.0f32; LANES], [0.0f32; LANES]);
        _mm256_storeu_ps(l.as_mut_ptr(), acc[t]);
        _mm256_storeu_ps(m.as_mut_ptr(), accm[t]);
        out[t] = finish(l, m);
    }
}

/// `vpshufb` masks for [`rows_wide`]: `SPREAD_WIDE[m]` repeats, in 128-bit lane `L` of a
/// 512-bit register, 16-bit element `MAP[m][L]` of that lane.
#[cfg(target_arch = "x86_64")]
static SPREAD_WIDE: [[u8; 64]; 6] = {
    // Q4_K/Q5_K run pairs (2j, 2j + 1) for j = 0..4: lanes 0-1 element 2j, 2-3 element
    // 2j + 1. Q6_K quarter pairs: lanes L -> element L (scales 0-3 of the half) or 4 + L.
    const MAP: [[usize; 4]; 6] = [
        [0, 0, 1, 1],
        [2, 2, 3, 3],
        [4, 4, 5, 5],
        [6, 6, 7, 7],
        [0, 1, 2, 3],
        [4, 5, 6, 7],
    ];
    let mut t = [[0u8; 64]; 6];
    let mut m = 0;
    while m < 6 {
        let mut i = 0;
        while i < 64 {
            t[m][i] = (2 * MAP[m][i / 16] + i % 2) as u8;
            i += 1;
        }
        m += 1;
    }
    t
};

/// `R` rows against `T` tokens with 512-bit integer products (CPUs that run them at
/// full width): [`row_kernel`]'s unpacked quants, two 32-value runs per register against
/// 64 contiguous activation bytes, `vpmaddubsw` + `vpmaddwd` by the runs' scales; each
/// activation load serves the `R` rows. The two 256-bit halves of each sum are added
/// before the float steps, which leaves every lane the same integer (integer sums in any
/// order), so the bits are the other paths'. `out[r * T + t]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
#[allow(clippy::needless_range_loop)] // parallel arrays indexed together
unsafe fn rows_wide<const K: u8, const R: usize, const T: usize>(
    rows: [&[u8]; R],
    nb: usize,
    acts: &[&[Q8KBlock]],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let dtype = kernel_dtype(K);
    let bb = dtype.block_bytes();
    let low4 = _mm512_set1_epi8(0x0f);
    let low2 = _mm512_set1_epi8(0x03);
    // Float accumulators per row and pair of tokens: token 2i's eight lanes, then token
    // 2i + 1's (an odd count's last pair repeats its last token, never read).
    let pairs = T.div_ceil(2);
    let mut acc = [[_mm512_setzero_ps(); T]; R];
    let mut accm = [[_mm512_setzero_ps(); T]; R];
    let second = |i: usize| (2 * i + 1).min(T - 1);
    let halves =
        |x: f32, y: f32| _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(x), _mm512_set1_ps(y));
    let spread = |m: usize| _mm512_loadu_si512(SPREAD_WIDE[m].as_ptr() as *const _);
    let join = |lo: __m256i, hi: __m256i| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
    // SAFETY (every access below): the caller passes rows of `nb` super-blocks and
    // activation rows of at least `nb` blocks (`acts.len() >= T`, `out.len() >= R * T`);
    // each load is inside row `r`'s super-block `b` (`bb` bytes) or inside an activation
    // block's 256 values and 16 sums.
    for b in 0..nb {
        let p: [*const u8; R] = std::array::from_fn(|r| rows[r].as_ptr().add(b * bb));
        for pr in p {
            // Every line of the super-block PREFETCH ahead (hints: no fault past the end).
            let ahead = pr.wrapping_add(PREFETCH * bb);
            for line in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line) as *const i8);
            }
        }
        let a: [&Q8KBlock; T] = std::array::from_fn(|t| acts[t].get_unchecked(b));
        let mut wide = [[_mm512_setzero_si512(); T]; R];
        // Each row's f16 super-block scale (lane 0) and minimum scale (lane 1; Q6_K has
        // none: its scale is the block's last two bytes).
        let scales16: [__m128; R] = std::array::from_fn(|r| {
            let bits = if K == Q6 {
                (p[r].add(208) as *const u16).read_unaligned() as i32
            } else {
                (p[r] as *const i32).read_unaligned()
            };
            _mm_cvtph_ps(_mm_cvtsi32_si128(bits))
        });
        let y = |t: usize, at: usize| _mm512_loadu_si512(a[t].qs.as_ptr().add(at) as *const _);
        if K == Q6 {
            for n in 0..2 {
                // Per row: this half's eight scales as i16 in every 128-bit lane, and the
                // 64 ql bytes (low nibbles: quarters 0-1, high: 2-3) with their high bits.
                let mut u = [[_mm512_setzero_si512(); 2]; R];
                let mut scales = [_mm512_setzero_si512(); R];
                for r in 0..R {
                    scales[r] = _mm512_broadcast_i32x4(_mm_cvtepi8_epi16(_mm_loadl_epi64(
                        p[r].add(192 + 8 * n) as *const __m128i,
                    )));
                    let ql = _mm512_loadu_si512(p[r].add(64 * n) as *const _);
                    let h = _mm256_loadu_si256(p[r].add(128 + 32 * n) as *const __m256i);
                    let hw = join(h, h);
                    let hi2 = |shift: i32| {
                        let v = _mm512_srl_epi16(hw, _mm_cvtsi32_si128(shift));
                        _mm512_slli_epi16::<4>(_mm512_and_si512(v, low2))
                    };
                    // Quarters (0, 1): high bits at shifts 0 and 2; (2, 3): 4 and 6.
                    let hi01 = _mm512_mask_blend_epi64(0xF0, hi2(0), hi2(2));
                    let hi23 = _mm512_mask_blend_epi64(0xF0, hi2(4), hi2(6));
                    u[r][0] = _mm512_or_si512(_mm512_and_si512(ql, low4), hi01);
                    let high = _mm512_and_si512(_mm512_srli_epi16::<4>(ql), low4);
                    u[r][1] = _mm512_or_si512(high, hi23);
                }
                for m in 0..2 {
                    let pick = spread(4 + m);
                    let sc: [__m512i; R] =
                        std::array::from_fn(|r| _mm512_shuffle_epi8(scales[r], pick));
                    for t in 0..T {
                        let yt = y(t, 128 * n + 64 * m);
                        for r in 0..R {
                            let prod = _mm512_maddubs_epi16(u[r][m], yt);
                            wide[r][t] = _mm512_dpwssd_epi32(wide[r][t], prod, sc[r]);
                        }
                    }
                }
            }
        } else {
            let mut scales = [_mm512_setzero_si512(); R];
            let mut mins = [_mm256_setzero_si256(); R];
            for r in 0..R {
                let blk = std::slice::from_raw_parts(p[r], bb);
                let (sc, mn) = scales_mins(&blk[4..16]);
                scales[r] = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_loadl_epi64(
                    sc.as_ptr() as *const __m128i
                )));
                // Each minimum twice, against the pair of 16-value sums of its sub-block.
                let mn = _mm_loadl_epi64(mn.as_ptr() as *const __m128i);
                mins[r] = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mn, mn));
            }
            let qh: [__m256i; R] = std::array::from_fn(|r| {
                if K == Q5 {
                    _mm256_loadu_si256(p[r].add(16) as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                }
            });
            for j in 0..4 {
                let pick = spread(j);
                let mut u = [_mm512_setzero_si512(); R];
                let mut sc = [_mm512_setzero_si512(); R];
                for r in 0..R {
                    let (lo, hi) = q45_runs::<K>(p[r], qh[r], j);
                    u[r] = join(lo, hi);
                    sc[r] = _mm512_shuffle_epi8(scales[r], pick);
                }
                for t in 0..T {
                    let yt = y(t, 64 * j);
                    for r in 0..R {
                        let prod = _mm512_maddubs_epi16(u[r], yt);
                        wide[r][t] = _mm512_dpwssd_epi32(wide[r][t], prod, sc[r]);
                    }
                }
            }
            for i in 0..pairs {
                let (t0, t1) = (2 * i, second(i));
                let bs = join(
                    _mm256_loadu_si256(a[t0].bsums.as_ptr() as *const __m256i),
                    _mm256_loadu_si256(a[t1].bsums.as_ptr() as *const __m256i),
                );
                for r in 0..R {
                    let msum = _mm512_madd_epi16(bs, join(mins[r], mins[r]));
                    let dmin = _mm_cvtss_f32(_mm_movehdup_ps(scales16[r]));
                    let dmin = halves(dmin * a[t0].d, dmin * a[t1].d);
                    accm[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(msum), dmin, accm[r][i]);
                }
            }
        }
        for r in 0..R {
            // The super-block's f16 scale; Q6_K's is its last two bytes.
            let dw = _mm_cvtss_f32(scales16[r]);
            let sc16 = if K == Q6 {
                let s = _mm256_cvtepi8_epi16(_mm_loadu_si128(p[r].add(192) as *const __m128i));
                join(s, s)
            } else {
                _mm512_setzero_si512()
            };
            for i in 0..pairs {
                let (t0, t1) = (2 * i, second(i));
                let (w0, w1) = (wide[r][t0], wide[r][t1]);
                // [lanes of t0 | lanes of t1], each the sum of its two 256-bit halves.
                let mut isum = _mm512_add_epi32(
                    _mm512_shuffle_i64x2::<0x44>(w0, w1),
                    _mm512_shuffle_i64x2::<0xEE>(w0, w1),
                );
                if K == Q6 {
                    let bs = join(
                        _mm256_loadu_si256(a[t0].bsums.as_ptr() as *const __m256i),
                        _mm256_loadu_si256(a[t1].bsums.as_ptr() as *const __m256i),
                    );
                    let corr = _mm512_slli_epi32::<5>(_mm512_madd_epi16(sc16, bs));
                    isum = _mm512_sub_epi32(isum, corr);
                }
                let d = halves(dw * a[t0].d, dw * a[t1].d);
                acc[r][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), d, acc[r][i]);
            }
        }
    }
    for r in 0..R {
        for t in 0..T {
            let (mut l, mut m) = ([0.0f32; 2 * LANES], [0.0f32; 2 * LANES]);
            _mm512_storeu_ps(l.as_mut_ptr(), acc[r][t / 2]);
            _mm512_storeu_ps(m.as_mut_ptr(), accm[r][t / 2]);
            let h = LANES * (t % 2);
            let lanes =
                |v: &[f32; 2 * LANES]| -> [f32; LANES] { std::array::from_fn(|k| v[h + k]) };
            out[r * T + t] = finish(lanes(&l), lanes(&m));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_values as values;
    use half::f16;

    /// Every kernel variant this CPU runs: each instruction set, and with AVX-512 VNNI
    /// both the 256-bit and the 512-bit kernels (whichever [`wide`] picks here).
    fn variants() -> Vec<(Isa, bool)> {
        let mut v = Vec::new();
        for simd in Isa::available() {
            v.push((simd, false));
            #[cfg(target_arch = "x86_64")]
            if simd == Isa::Avx512Vnni {
                v.push((simd, true));
            }
        }
        v
    }

    /// Random but valid super-blocks of `dtype`: random quant and scale bytes, small
    /// positive f16 scales.
    fn random_row(dtype: DType, blocks: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        let mut next = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u8
        };
        let bb = dtype.block_bytes();
        let mut row: Vec<u8> = (0..blocks * bb).map(|_| next()).collect();
        for blk in row.chunks_exact_mut(bb) {
            let put = |blk: &mut [u8], at: usize, v: f32| {
                blk[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes())
            };
            let r = next() as f32 / 255.0;
            if dtype == DType::Q6_K {
                put(blk, 208, 0.001 + 0.01 * r);
            } else {
                put(blk, 0, 0.001 + 0.01 * r);
                put(blk, 2, 0.0005 + 0.005 * r);
            }
        }
        row
    }

    #[test]
    fn activation_quantization_follows_ggml() {
        let mut x = values(512, 7);
        x[3] = -9.0; // the largest magnitude: it maps to -127 (scale -127/max)
        let mut blocks = Vec::new();
        quantize_activations(&x, &mut blocks);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].qs[3], -127);
        assert_eq!(blocks[0].d, 1.0 / (-127.0 / -9.0f32));
        for (b, chunk) in blocks.iter().zip(x.chunks_exact(QK_K)) {
            for (q, v) in b.qs.iter().zip(chunk) {
                assert!((*q as f32 * b.d - v).abs() <= b.d.abs() * 0.5 + 1e-6);
            }
            for (s, q) in b.bsums.iter().zip(b.qs.chunks_exact(16)) {
                assert_eq!(*s as i32, q.iter().map(|&v| v as i32).sum::<i32>());
            }
        }
        quantize_activations(&[0.0; 256], &mut blocks);
        assert_eq!((blocks[0].d, blocks[0].qs), (0.0, [0; 256]));
    }

    #[test]
    fn scale_unpacking_matches_ggml() {
        let packed: Vec<u8> = (0..12u8)
            .map(|i| i.wrapping_mul(97).wrapping_add(0xC3))
            .collect();
        let (sc, mn) = scales_mins(&packed);
        for j in 0..8 {
            assert_eq!(
                (sc[j], mn[j]),
                crate::quant::scale_min_k4(j, &packed),
                "sub-block {j}"
            );
        }
    }

    /// Every kernel and token count gives the reference's bits, and the reference is the
    /// exact dot of the dequantized row (ggml's `dequantize_row_*`) with the quantized
    /// activations, up to f32 rounding.
    #[test]
    fn kernels_match_the_reference_bit_for_bit() {
        for dtype in [DType::Q4_K, DType::Q5_K, DType::Q6_K] {
            let nb = 3;
            let row = random_row(dtype, nb, dtype as u64 + 1);
            let acts: Vec<Vec<Q8KBlock>> = (0..MAX_TOKENS as u64)
                .map(|t| {
                    let mut a = Vec::new();
                    quantize_activations(&values(nb * QK_K, 40 + t), &mut a);
                    a
                })
                .collect();
            let mut w = vec![0.0f32; nb * QK_K];
            crate::quant::dequantize(dtype, &row, &mut w);
            for a in &acts {
                let exact: f64 = a
                    .iter()
                    .enumerate()
                    .flat_map(|(b, blk)| {
                        blk.qs
                            .iter()
                            .enumerate()
                            .map(move |(i, q)| (b * QK_K + i, *q as f64 * blk.d as f64))
                    })
                    .map(|(i, y)| w[i] as f64 * y)
                    .sum();
                let got = dot_reference(dtype, &row, a) as f64;
                let scale: f64 = w.iter().map(|v| v.abs() as f64).sum::<f64>() * 2.0;
                assert!(
                    (got - exact).abs() <= 1e-5 * scale,
                    "{dtype:?}: {got} vs {exact}"
                );
            }
            for (simd, wide) in variants() {
                for nt in 1..=MAX_TOKENS {
                    let a: Vec<&[Q8KBlock]> = acts[..nt].iter().map(Vec::as_slice).collect();
                    let mut out = vec![f32::NAN; nt];
                    dot_row_with(simd, wide, dtype, &row, &a, &mut out);
                    for t in 0..nt {
                        let want = dot_reference(dtype, &row, &acts[t]);
                        let what = format!("{dtype:?} {simd:?} wide {wide} {nt}");
                        assert_eq!(out[t].to_bits(), want.to_bits(), "{what}");
                    }
                }
            }
        }
    }

    /// A whole product through `matmul_with` (tasks of odd row ranges on two threads,
    /// token tiles with tails) gives every row and token the reference's bits.
    #[test]
    fn matmul_stitches_kquant_tiles_bit_for_bit() {
        use crate::kernels::{matmul_with, Matrix, Precision, WorkerPool};
        use crate::tensor::{Storage, Tensor};
        use std::sync::Arc;
        let pool = WorkerPool::new(2).unwrap();
        for dtype in [DType::Q4_K, DType::Q5_K, DType::Q6_K] {
            let (rows, nb) = (37, 2);
            let bytes: Vec<u8> = (0..rows)
                .flat_map(|r| random_row(dtype, nb, 100 + r as u64))
                .collect();
            let row_bytes = bytes.len() / rows;
            let w = Matrix::new(Tensor {
                dtype,
                shape: vec![rows, nb * QK_K],
                storage: Storage::Owned(Arc::new(bytes.clone())),
            })
            .unwrap();
            for n in [1, 5, 67] {
                let x = values(n * nb * QK_K, 300 + n as u64);
                let mut out = vec![f32::NAN; n * rows];
                matmul_with(&pool, &w, &x, &mut out, Precision::Fast);
                for t in 0..n {
                    let mut a = Vec::new();
                    quantize_activations(&x[t * nb * QK_K..(t + 1) * nb * QK_K], &mut a);
                    for r in 0..rows {
                        let want = dot_reference(dtype, &bytes[r * row_bytes..][..row_bytes], &a);
                        let got = out[t * rows + r];
                        assert_eq!(got.to_bits(), want.to_bits(), "{dtype:?} n {n} t {t} r {r}");
                    }
                }
            }
        }
    }

    /// The multi-row calls (two rows sharing each activation load on AVX-512) give each
    /// row and token the reference's bits, for every tile shape a caller may pass.
    #[test]
    fn row_tiles_match_the_reference_bit_for_bit() {
        for dtype in [DType::Q4_K, DType::Q5_K, DType::Q6_K] {
            let nb = 5;
            let bb = dtype.block_bytes() * nb;
            let rows: Vec<u8> = (0..2)
                .flat_map(|r| random_row(dtype, nb, 7 * dtype as u64 + r))
                .collect();
            let acts: Vec<Vec<Q8KBlock>> = (0..MAX_TOKENS as u64)
                .map(|t| {
                    let mut a = Vec::new();
                    quantize_activations(&values(nb * QK_K, 90 + t), &mut a);
                    a
                })
                .collect();
            for (simd, wide) in variants() {
                let (max_r, max_t) = tile(simd, wide);
                for nr in 1..=max_r {
                    for nt in 1..=max_t {
                        let a: Vec<&[Q8KBlock]> = acts[..nt].iter().map(Vec::as_slice).collect();
                        let mut out = vec![f32::NAN; nr * nt];
                        dot_rows_with(simd, wide, dtype, &rows[..nr * bb], bb, &a, &mut out);
                        for r in 0..nr {
                            for t in 0..nt {
                                let want =
                                    dot_reference(dtype, &rows[r * bb..(r + 1) * bb], &acts[t]);
                                assert_eq!(
                                    out[r * nt + t].to_bits(),
                                    want.to_bits(),
                                    "{dtype:?} {simd:?} wide {wide} rows {nr} tokens {nt}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
