//! Activations quantized to 8-bit blocks, and the Q4_1 matrix kernels over them,
//! computed as llama.cpp's CPU backend does.
//!
//! Activations are quantized per 32-value block exactly like its x86
//! `quantize_row_q8_0`/`q8_1` (scale `amax/127`, values rounded half-to-even). Q4_1
//! products take ggml's formula per block, `d_w * d_a * sum + m_w * s_a`, with the
//! block's exact integer sum (as llama.cpp's AMX and repacked kernels compute sums; its
//! `vec_dot_q4_1_q8_1` adds eight lane partials instead): every kernel here, the tile
//! unit's ([`super::amx`]) included, gives the same bits, so a row does not depend on
//! the batch. Greedy outputs stay on llama.cpp's for the parity fixtures (the default
//! model is Q4_1). Q4_0 and Q8_0 go through [`super::packed`] instead.
//!
//! For speed Q4_1 rows are interleaved four at a time ([`InterleavedQ4_1`]), so that a
//! block of four rows is one load and their products fill one register; the
//! arithmetic of each row is unchanged.

use half::f16;

use super::pool::WorkerPool;
use super::Isa;
use super::SharedOut;
use crate::dtype::DType;
use crate::quant::f16_at;

/// Values per 8-bit activation block.
pub const QK: usize = 32;

/// One block of 8-bit activations.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q8Block {
    /// Scale, as the f16 ggml stores, widened.
    pub d: f32,
    /// `d * sum(qs)` as f16 (ggml's Q8_1 `s`), widened.
    pub s: f32,
    /// Quantized values.
    pub qs: [i8; QK],
    /// `sum(qs)`, exact (for kernels that offset unsigned weights).
    pub sum: i32,
}

/// Quantizes `x` (a whole number of 32-value blocks) into `out` (AVX-512 where the CPU
/// has it, with the portable code's bits).
pub fn quantize_activations(x: &[f32], out: &mut Vec<Q8Block>) {
    #[cfg(target_arch = "x86_64")]
    if Isa::detect().has_avx512() {
        out.clear();
        out.reserve(x.len() / QK);
        for chunk in x.chunks_exact(QK) {
            // SAFETY: AVX-512 F/BW/VL checked; `chunk` is 32 floats.
            let fast = unsafe { quantize_block_avx512(chunk) };
            // Infinities and NaNs convert differently in the two (a NaN product is 0 in
            // Rust's cast, i32::MIN in `vcvtps2dq`): such blocks take the portable code.
            out.push(fast.unwrap_or_else(|| quantize_block(chunk)));
        }
        return;
    }
    quantize_activations_portable(x, out);
}

/// One block with AVX-512: the portable arithmetic (`v * (127 / amax)` rounded to
/// nearest even by the default rounding mode), sixteen values at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_block_avx512(chunk: &[f32]) -> Option<Q8Block> {
    use std::arch::x86_64::*;
    let a = _mm512_loadu_ps(chunk.as_ptr());
    let b = _mm512_loadu_ps(chunk.as_ptr().add(16));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(b, b);
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    if nan != 0 || !amax.is_finite() {
        return None;
    }
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(id)));
    let qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, _mm512_set1_ps(id)));
    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
    let mut qs = [0i8; QK];
    _mm_storeu_si128(qs.as_mut_ptr() as *mut __m128i, _mm512_cvtepi32_epi8(qa));
    _mm_storeu_si128(
        qs.as_mut_ptr().add(16) as *mut __m128i,
        _mm512_cvtepi32_epi8(qb),
    );
    let d16 = f16::from_f32(d);
    Some(Q8Block {
        d: d16.to_f32(),
        s: f16::from_f32(d * sum as f32).to_f32(),
        qs,
        sum,
    })
}

/// [`quantize_activations`] in portable code.
pub fn quantize_activations_portable(x: &[f32], out: &mut Vec<Q8Block>) {
    out.clear();
    out.extend(x.chunks_exact(QK).map(quantize_block));
}

/// One block in portable code.
fn quantize_block(chunk: &[f32]) -> Q8Block {
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
    Q8Block {
        d: d16.to_f32(),
        s: f16::from_f32(d * sum as f32).to_f32(),
        qs,
        sum,
    }
}

/// Round half to even for |x| < 2^22 (here |x| <= 127), without a libm call: adding
/// and subtracting 1.5 * 2^23 leaves the nearest integer under IEEE round-to-nearest-even.
#[inline(always)]
pub(crate) fn round_half_even(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// The sum of eight lanes in ggml's `hsum_float_8` order.
#[inline(always)]
pub(crate) fn hsum8(a: [f32; 8]) -> f32 {
    // _mm256 → two halves added, then pairs, then the last two (ggml's hsum_float_8).
    let r = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let (x, y) = (r[0] + r[2], r[1] + r[3]);
    x + y
}

/// The defining arithmetic on one Q4_1 row in ggml's layout (blocks of f16 scale, f16
/// minimum, 16 bytes of nibbles): per block, the exact integer sum `isum` of nibble times
/// activation, then `acc = fma(d_w * d_a, isum, acc)` and `acc = fma(m_w, s_a, acc)`, blocks
/// in order. (ggml's `vec_dot_q4_1_q8_1` adds eight lane partials in f32 instead; the
/// whole-block sum is what a tile unit computes, and one arithmetic for every batch
/// size keeps a row's result the same alone or in any batch. llama.cpp's greedy tokens
/// on the parity fixtures are unchanged by it.)
pub fn dot_q4_1_reference(row: &[u8], acts: &[Q8Block]) -> f32 {
    let mut acc = 0.0f32;
    for (blk, a) in row.chunks_exact(DType::Q4_1.block_bytes()).zip(acts) {
        let isum: i32 = (0..16)
            .map(|i| {
                (blk[4 + i] & 0x0f) as i32 * a.qs[i] as i32
                    + (blk[4 + i] >> 4) as i32 * a.qs[i + 16] as i32
            })
            .sum();
        acc = (f16_at(blk, 0) * a.d).mul_add(isum as f32, acc);
        acc = f16_at(blk, 2).mul_add(a.s, acc);
    }
    acc
}

/// Rows per interleaved Q4_1 group.
pub const GROUP: usize = 4;
/// Most activation rows one [`InterleavedQ4_1::dot_group`] call handles.
pub const MAX_TOKENS: usize = 4;

/// A Q4_1 matrix in groups of [`GROUP`] interleaved rows. Per group and block, 80 bytes:
/// the four rows' quants (row `r`'s 16 nibble bytes at `16r`), their f16 scales (at
/// `64 + 2r`), their f16 minimums (at `72 + 2r`). Rows past the last are zero (they
/// compute zeros that are never written out). The matrix is one sequential stream
/// (scales kept apart from the quants measured half the speed: a second stream), and
/// one 512-bit load holds a block of all four rows, whose products land in separate
/// lanes; the arithmetic per row stays [`dot_q4_1_reference`]'s.
#[derive(Debug)]
pub struct InterleavedQ4_1 {
    rows: usize,
    /// Blocks per row.
    nb: usize,
    data: Vec<u8>,
}

/// Bytes per block of one group: quants, scales, minimums.
const GROUP_BLOCK: usize = GROUP * 20;

impl InterleavedQ4_1 {
    /// Interleaves `rows` Q4_1 rows of `cols` values (`src` in ggml's layout), on
    /// `pool`'s threads. `None` on a size mismatch.
    pub fn pack(src: &[u8], rows: usize, cols: usize, pool: &WorkerPool) -> Option<Self> {
        let row_bytes = DType::Q4_1.row_bytes(cols)?;
        if row_bytes * rows != src.len() || !cols.is_multiple_of(QK) {
            return None;
        }
        let nb = cols / QK;
        let gb = nb * GROUP_BLOCK;
        let groups = rows.div_ceil(GROUP);
        let mut data = vec![0u8; groups * gb];
        let dst_all = SharedOut(data.as_mut_ptr());
        pool.run(groups, &|g| {
            // SAFETY: task `g` alone writes group `g`'s bytes `g*gb..(g+1)*gb` of `data`,
            // which lives until `run` returns.
            let dst = unsafe { std::slice::from_raw_parts_mut(dst_all.at(g * gb), gb) };
            for r in 0..GROUP.min(rows - g * GROUP) {
                let row = &src[(g * GROUP + r) * row_bytes..][..row_bytes];
                for (b, blk) in row.chunks_exact(20).enumerate() {
                    let out = &mut dst[GROUP_BLOCK * b..][..GROUP_BLOCK];
                    out[16 * r..][..16].copy_from_slice(&blk[4..20]);
                    out[64 + 2 * r..][..2].copy_from_slice(&blk[..2]);
                    out[72 + 2 * r..][..2].copy_from_slice(&blk[2..4]);
                }
            }
        });
        Some(InterleavedQ4_1 { rows, nb, data })
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Groups of [`GROUP`] rows (the last may be partly padding).
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    fn group(&self, g: usize) -> &[u8] {
        let gb = self.nb * GROUP_BLOCK;
        &self.data[g * gb..(g + 1) * gb]
    }

    /// Blocks of 32 values per row.
    pub fn blocks(&self) -> usize {
        self.nb
    }

    /// Block `b` of group `g`: 80 bytes (see the type's layout).
    #[cfg(target_arch = "x86_64")]
    pub(super) fn group_block(&self, g: usize, b: usize) -> &[u8] {
        &self.group(g)[GROUP_BLOCK * b..][..GROUP_BLOCK]
    }

    /// Dot products of group `g`'s rows with up to [`MAX_TOKENS`] activation rows (at
    /// least `cols / 32` blocks each): `out[t * GROUP + r]` for row `4g + r` and token
    /// `t`. `use_simd` selects the AVX2 (or AVX-512 VNNI) kernel where the CPU has it;
    /// every path gives the bits of [`dot_q4_1_reference`].
    pub fn dot_group(&self, g: usize, acts: &[&[Q8Block]], use_simd: bool, out: &mut [f32]) {
        self.dot_group_with(Isa::select(use_simd), g, acts, out)
    }

    /// Dot products of groups `g0..` with one activation row (a decode step): rows
    /// `4 * g0 .. 4 * g0 + out.len()` (whole groups; the matrix's last group may be
    /// partial), each as [`dot_q4_1_reference`]. One call covers a task's groups, so
    /// the per-call checks and dispatch are paid once.
    pub fn dot_rows(&self, g0: usize, acts: &[Q8Block], use_simd: bool, out: &mut [f32]) {
        self.dot_rows_with(Isa::select(use_simd), g0, acts, out)
    }

    pub(super) fn dot_rows_with(&self, simd: Isa, g0: usize, acts: &[Q8Block], out: &mut [f32]) {
        let r0 = g0 * GROUP;
        assert!(r0 + out.len() <= self.rows);
        assert!(out.len().is_multiple_of(GROUP) || r0 + out.len() == self.rows);
        super::for_groups::<GROUP>(g0, out, |g, dst| self.dot_group_with(simd, g, &[acts], dst));
    }

    pub(super) fn dot_group_with(&self, simd: Isa, g: usize, acts: &[&[Q8Block]], out: &mut [f32]) {
        let nt = acts.len();
        assert!(g < self.groups() && (1..=MAX_TOKENS).contains(&nt));
        assert!(out.len() >= nt * GROUP && acts.iter().all(|a| a.len() >= self.nb));
        let group = self.group(g);
        #[cfg(target_arch = "x86_64")]
        if simd.has_avx2() {
            // SAFETY: `simd` comes from `Isa::detect`/`Isa::available`, so the CPU has
            // its features: AVX2, FMA and F16C here (`has_avx2`), AVX-512 with VNNI for
            // the `Avx512Vnni` arms; `group` holds `nb` blocks of the layout and each
            // activation row `nb` blocks (asserted above), which is all the kernels read.
            unsafe {
                match (simd, nt) {
                    (Isa::Avx512Vnni, 1) => group_vnni::<1>(group, self.nb, acts, out),
                    (Isa::Avx512Vnni, 2) => group_vnni::<2>(group, self.nb, acts, out),
                    (Isa::Avx512Vnni, 3) => group_vnni::<3>(group, self.nb, acts, out),
                    (Isa::Avx512Vnni, _) => group_vnni::<4>(group, self.nb, acts, out),
                    // Two tokens at most per AVX2 pass (sixteen registers).
                    (_, 1) => group_avx2::<1>(group, self.nb, acts, out),
                    (_, _) => {
                        group_avx2::<2>(group, self.nb, &acts[..2], out);
                        match nt {
                            3 => group_avx2::<1>(group, self.nb, &acts[2..], &mut out[8..]),
                            4 => group_avx2::<2>(group, self.nb, &acts[2..], &mut out[8..]),
                            _ => {}
                        }
                    }
                }
            }
            return;
        }
        #[cfg(target_arch = "aarch64")]
        if simd == Isa::Neon {
            // SAFETY: `group` holds `nb` blocks of the layout and each activation row `nb`
            // blocks (asserted above), which is all the kernel reads; NEON is baseline.
            unsafe {
                match nt {
                    1 => group_neon::<1>(group, self.nb, acts, out),
                    2 => group_neon::<2>(group, self.nb, acts, out),
                    3 => group_neon::<3>(group, self.nb, acts, out),
                    _ => group_neon::<4>(group, self.nb, acts, out),
                }
            }
            return;
        }
        let _ = simd;
        // The portable kernel: the reference's arithmetic, read from this layout.
        let nb = self.nb;
        for (t, a) in acts.iter().enumerate() {
            for r in 0..GROUP {
                let mut acc = 0.0f32;
                for (b, blk) in a[..nb].iter().enumerate() {
                    let at = GROUP_BLOCK * b;
                    let q = &group[at + 16 * r..][..16];
                    let isum: i32 = (0..16)
                        .map(|i| {
                            (q[i] & 0x0f) as i32 * blk.qs[i] as i32
                                + (q[i] >> 4) as i32 * blk.qs[i + 16] as i32
                        })
                        .sum();
                    let scale = f16_at(group, at + 64 + 2 * r) * blk.d;
                    acc = scale.mul_add(isum as f32, acc);
                    acc = f16_at(group, at + 72 + 2 * r).mul_add(blk.s, acc);
                }
                out[t * GROUP + r] = acc;
            }
        }
    }
}

/// Four lane sums of 16 bytes: lane `i` is `sum(w[k] * y[k])` over `k = 4i..4i + 4`
/// (widening multiplies, pairwise adds; exact).
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub(crate) unsafe fn lanes4_neon(
    w: std::arch::aarch64::int8x16_t,
    y: std::arch::aarch64::int8x16_t,
) -> std::arch::aarch64::int32x4_t {
    use std::arch::aarch64::*;
    let a = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(y)));
    let b = vpaddlq_s16(vmull_high_s8(w, y));
    vpaddq_s32(a, b)
}

/// One group against `T` tokens with NEON: per row and block the exact integer sum
/// ([`lanes4_neon`] on the low and the high nibbles, added and reduced), then the
/// reference's two fused multiply-adds.
#[cfg(target_arch = "aarch64")]
#[allow(clippy::needless_range_loop)] // parallel arrays indexed together
unsafe fn group_neon<const T: usize>(
    group: &[u8],
    nb: usize,
    acts: &[&[Q8Block]],
    out: &mut [f32],
) {
    use std::arch::aarch64::*;
    let mut acc = [[0.0f32; GROUP]; T];
    for b in 0..nb {
        let blk = &group[GROUP_BLOCK * b..(b + 1) * GROUP_BLOCK];
        for r in 0..GROUP {
            // SAFETY: row r's 16 quant bytes of the block.
            let q = vld1q_u8(blk.as_ptr().add(16 * r));
            let lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f)));
            let hi = vreinterpretq_s8_u8(vshrq_n_u8::<4>(q));
            let (dw, mw) = (f16_at(blk, 64 + 2 * r), f16_at(blk, 72 + 2 * r));
            for t in 0..T {
                let a = acts[t].get_unchecked(b);
                let ylo = vld1q_s8(a.qs.as_ptr());
                let yhi = vld1q_s8(a.qs.as_ptr().add(16));
                let isum = vaddvq_s32(vaddq_s32(lanes4_neon(lo, ylo), lanes4_neon(hi, yhi)));
                acc[t][r] = (dw * a.d).mul_add(isum as f32, acc[t][r]);
                acc[t][r] = mw.mul_add(a.s, acc[t][r]);
            }
        }
    }
    for t in 0..T {
        out[t * GROUP..(t + 1) * GROUP].copy_from_slice(&acc[t]);
    }
}

/// Blocks ahead of use that the kernels ask the memory system for.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 8;

/// One group against `T` tokens with AVX-512: the block's 64 quant bytes (four rows)
/// in one register, low and high nibbles apart; two `vpdpbusd` against the token's
/// first and last 16 activation bytes (repeated in each 128-bit lane) leave four lane
/// sums per row, which two shuffles and adds reduce to the row's exact block sum (in all
/// four of its lanes). Then the reference's `fma(d_w * d_a, isum, acc)` and
/// `fma(m_w, s_a, acc)`, the rows' scales and minimums spread over their lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn group_vnni<const T: usize>(
    group: &[u8],
    nb: usize,
    acts: &[&[Q8Block]],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let q = group.as_ptr();
    let low = _mm512_set1_epi8(0x0f);
    let spread = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); T];
    for b in 0..nb {
        // Hints for the stream ahead (no fault even past the end).
        let p = q.add(GROUP_BLOCK * b);
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(GROUP_BLOCK * PREFETCH) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(GROUP_BLOCK * PREFETCH + 64) as *const i8);
        // SAFETY: block `b < nb` of the group: 64 quant bytes, then 8 bytes of f16
        // scales and 8 of f16 minimums.
        let z = _mm512_loadu_si512(p as *const _);
        let lo = _mm512_and_si512(z, low);
        let hi = _mm512_and_si512(_mm512_srli_epi16(z, 4), low);
        let dw = _mm_cvtph_ps(_mm_loadl_epi64(p.add(64) as *const __m128i));
        let mw = _mm_cvtph_ps(_mm_loadl_epi64(p.add(72) as *const __m128i));
        let dw16 = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(dw));
        let mw16 = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(mw));
        for t in 0..T {
            let a = acts[t].get_unchecked(b);
            let y = a.qs.as_ptr();
            let ylo = _mm512_broadcast_i32x4(_mm_loadu_si128(y as *const __m128i));
            let yhi = _mm512_broadcast_i32x4(_mm_loadu_si128(y.add(16) as *const __m128i));
            let quads = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, ylo), hi, yhi);
            let pairs = _mm512_add_epi32(quads, _mm512_shuffle_epi32::<0x4E>(quads));
            let isum = _mm512_add_epi32(pairs, _mm512_shuffle_epi32::<0xB1>(pairs));
            let scale = _mm512_mul_ps(dw16, _mm512_set1_ps(a.d));
            acc[t] = _mm512_fmadd_ps(scale, _mm512_cvtepi32_ps(isum), acc[t]);
            acc[t] = _mm512_fmadd_ps(mw16, _mm512_set1_ps(a.s), acc[t]);
        }
    }
    let first_lanes = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0);
    for (t, v) in acc.iter().enumerate() {
        let rows = _mm512_castps512_ps128(_mm512_permutexvar_ps(first_lanes, *v));
        _mm_storeu_ps(out.as_mut_ptr().add(t * GROUP), rows);
    }
}

/// One group against `T <= 2` tokens with AVX2: as [`group_vnni`], two rows per
/// 256-bit register, the lane sums from `vpmaddubsw` + `vpmaddwd` (nibbles are
/// unsigned and at most 15, so the pair sums cannot saturate).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_avx2<const T: usize>(
    group: &[u8],
    nb: usize,
    acts: &[&[Q8Block]],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let q = group.as_ptr();
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let spread01 = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
    let spread23 = _mm256_set_epi32(3, 3, 3, 3, 2, 2, 2, 2);
    // [t][rows 0-1 | rows 2-3]
    let mut acc = [[_mm256_setzero_ps(); 2]; T];
    for b in 0..nb {
        let p = q.add(GROUP_BLOCK * b);
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(GROUP_BLOCK * PREFETCH) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(GROUP_BLOCK * PREFETCH + 64) as *const i8);
        // SAFETY: as in `group_vnni`.
        let z01 = _mm256_loadu_si256(p as *const __m256i);
        let z23 = _mm256_loadu_si256(p.add(32) as *const __m256i);
        let u = [
            [_mm256_and_si256(z01, low), _mm256_and_si256(z23, low)],
            [
                _mm256_and_si256(_mm256_srli_epi16(z01, 4), low),
                _mm256_and_si256(_mm256_srli_epi16(z23, 4), low),
            ],
        ];
        let dw = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_loadl_epi64(p.add(64) as *const __m128i)));
        let mw = _mm256_castps128_ps256(_mm_cvtph_ps(_mm_loadl_epi64(p.add(72) as *const __m128i)));
        let dws = [
            _mm256_permutevar8x32_ps(dw, spread01),
            _mm256_permutevar8x32_ps(dw, spread23),
        ];
        let mws = [
            _mm256_permutevar8x32_ps(mw, spread01),
            _mm256_permutevar8x32_ps(mw, spread23),
        ];
        for t in 0..T {
            let a = acts[t].get_unchecked(b);
            let y = a.qs.as_ptr();
            let ys = [
                _mm256_broadcastsi128_si256(_mm_loadu_si128(y as *const __m128i)),
                _mm256_broadcastsi128_si256(_mm_loadu_si128(y.add(16) as *const __m128i)),
            ];
            for pair in 0..2 {
                let quads = _mm256_add_epi32(
                    _mm256_madd_epi16(ones, _mm256_maddubs_epi16(u[0][pair], ys[0])),
                    _mm256_madd_epi16(ones, _mm256_maddubs_epi16(u[1][pair], ys[1])),
                );
                let pairs = _mm256_add_epi32(quads, _mm256_shuffle_epi32::<0x4E>(quads));
                let isum = _mm256_add_epi32(pairs, _mm256_shuffle_epi32::<0xB1>(pairs));
                let scale = _mm256_mul_ps(dws[pair], _mm256_set1_ps(a.d));
                let v = _mm256_fmadd_ps(scale, _mm256_cvtepi32_ps(isum), acc[t][pair]);
                acc[t][pair] = _mm256_fmadd_ps(mws[pair], _mm256_set1_ps(a.s), v);
            }
        }
    }
    for t in 0..T {
        let (mut v01, mut v23) = ([0.0f32; 8], [0.0f32; 8]);
        _mm256_storeu_ps(v01.as_mut_ptr(), acc[t][0]);
        _mm256_storeu_ps(v23.as_mut_ptr(), acc[t][1]);
        out[t * GROUP..(t + 1) * GROUP].copy_from_slice(&[v01[0], v01[4], v23[0], v23[4]]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_values as values;

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

    #[test]
    fn simd_activation_quantization_gives_the_portable_bits() {
        let mut x = values(32 * 40, 9);
        // Ties, a zero block, large and tiny magnitudes.
        x[..32].fill(0.0);
        for (i, v) in x[32..64].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 0.5;
        }
        for v in &mut x[64..96] {
            *v *= 1e6;
        }
        for v in &mut x[96..128] {
            *v *= 1e-6;
        }
        x[130] = f32::INFINITY;
        x[170] = f32::NAN;
        let (mut fast, mut portable) = (Vec::new(), Vec::new());
        quantize_activations(&x, &mut fast);
        quantize_activations_portable(&x, &mut portable);
        let bits = |v: &[Q8Block]| -> Vec<(u32, u32, [i8; QK], i32)> {
            v.iter()
                .map(|b| (b.d.to_bits(), b.s.to_bits(), b.qs, b.sum))
                .collect()
        };
        assert_eq!(bits(&fast), bits(&portable));
    }

    /// Every kernel and token count gives, element for element, the bits of the
    /// reference on the file layout (rows of 37 blocks, the last group partial), and the
    /// reference is the exact dot up to the activation quantization error.
    #[test]
    fn interleaved_q4_1_matches_the_reference_bit_for_bit() {
        let (rows, cols) = (7, 32 * 37);
        let mut src = Vec::new();
        crate::quant::quantize(DType::Q4_1, &values(rows * cols, 100), &mut src).unwrap();
        let pool = WorkerPool::new(2).unwrap();
        let packed = InterleavedQ4_1::pack(&src, rows, cols, &pool).unwrap();
        assert!(InterleavedQ4_1::pack(&src[1..], rows, cols, &pool).is_none());
        let row_bytes = DType::Q4_1.row_bytes(cols).unwrap();
        let xs: Vec<Vec<f32>> = (0..MAX_TOKENS as u64)
            .map(|t| values(cols, 200 + t))
            .collect();
        let acts: Vec<Vec<Q8Block>> = xs
            .iter()
            .map(|x| {
                let mut a = Vec::new();
                quantize_activations(x, &mut a);
                a
            })
            .collect();
        let want = |r: usize, t: usize| {
            dot_q4_1_reference(&src[r * row_bytes..][..row_bytes], &acts[t]).to_bits()
        };
        let kernels = Isa::available();
        for simd in kernels {
            for g in 0..packed.groups() {
                for nt in 1..=MAX_TOKENS {
                    let a: Vec<&[Q8Block]> = acts[..nt].iter().map(Vec::as_slice).collect();
                    let mut out = vec![f32::NAN; nt * GROUP];
                    packed.dot_group_with(simd, g, &a, &mut out);
                    for t in 0..nt {
                        for r in 0..GROUP.min(rows - g * GROUP) {
                            let got = out[t * GROUP + r].to_bits();
                            assert_eq!(got, want(g * GROUP + r, t), "{simd:?} g{g} {nt} r{r}");
                        }
                    }
                }
            }
        }
        for simd in [false, true] {
            let mut out = vec![f32::NAN; rows - GROUP];
            packed.dot_rows(1, &acts[1], simd, &mut out);
            for (i, v) in out.iter().enumerate() {
                assert_eq!(v.to_bits(), want(GROUP + i, 1));
            }
        }
        let mut w = vec![0.0; cols];
        crate::quant::dequantize(DType::Q4_1, &src[..row_bytes], &mut w);
        let exact: f64 = w
            .iter()
            .zip(&xs[0])
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum();
        let got = dot_q4_1_reference(&src[..row_bytes], &acts[0]) as f64;
        // Activation error per value is at most d/2 = amax/254; `s` adds f16 rounding.
        let bound: f64 = w.iter().map(|v| v.abs() as f64).sum::<f64>() * 2.0 / 254.0 + 1e-2;
        assert!((got - exact).abs() <= bound, "{got} vs {exact}");
    }
}
