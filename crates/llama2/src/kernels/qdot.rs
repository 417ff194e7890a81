//! Activations quantized to 8-bit blocks, and the Q4_1 matrix kernels over them,
//! computed as llama.cpp's CPU backend does.
//!
//! Activations are quantized per 32-value block exactly like its x86
//! `quantize_row_q8_0`/`q8_1` (scale `amax/127`, values rounded half-to-even). Q4_1
//! products follow its `vec_dot_q4_1_q8_1`: integer products summed in eight lanes of
//! four values, lanes scaled and accumulated with fused multiply-adds, one horizontal
//! sum, plus the minimums times the activation sums. Mirroring that arithmetic keeps
//! greedy outputs on llama.cpp's for the same GGUF files (the default model is Q4_1).
//! Q4_0 and Q8_0 go through [`super::packed`] instead.
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
            out.push(unsafe { quantize_block_avx512(chunk) });
        }
        return;
    }
    quantize_activations_portable(x, out);
}

/// One block with AVX-512: the portable arithmetic (`v * (127 / amax)` rounded to
/// nearest even by the default rounding mode), sixteen values at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_block_avx512(chunk: &[f32]) -> Q8Block {
    use std::arch::x86_64::*;
    let a = _mm512_loadu_ps(chunk.as_ptr());
    let b = _mm512_loadu_ps(chunk.as_ptr().add(16));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
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
    Q8Block {
        d: d16.to_f32(),
        s: f16::from_f32(d * sum as f32).to_f32(),
        qs,
        sum,
    }
}

/// [`quantize_activations`] in portable code.
pub fn quantize_activations_portable(x: &[f32], out: &mut Vec<Q8Block>) {
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

/// The defining arithmetic (llama.cpp's `vec_dot_q4_1_q8_1`) on one Q4_1 row in ggml's
/// layout (blocks of f16 scale, f16 minimum, 16 bytes of nibbles).
pub fn dot_q4_1_reference(row: &[u8], acts: &[Q8Block]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut summs = 0.0f32;
    for (blk, a) in row.chunks_exact(DType::Q4_1.block_bytes()).zip(acts) {
        let mut w = [0i32; QK];
        for i in 0..16 {
            w[i] = (blk[4 + i] & 0x0f) as i32;
            w[i + 16] = (blk[4 + i] >> 4) as i32;
        }
        summs += f16_at(blk, 2) * a.s;
        let scale = f16_at(blk, 0) * a.d;
        for (j, acc_j) in acc.iter_mut().enumerate() {
            let lane: i32 = (4 * j..4 * j + 4).map(|k| w[k] * a.qs[k] as i32).sum();
            *acc_j = scale.mul_add(lane as f32, *acc_j);
        }
    }
    hsum8(acc) + summs
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
        // The portable kernel: the reference's lane arithmetic, read from this layout.
        let nb = self.nb;
        for (t, a) in acts.iter().enumerate() {
            for r in 0..GROUP {
                let mut acc = [0.0f32; 8];
                let mut summs = 0.0f32;
                for (b, blk) in a[..nb].iter().enumerate() {
                    let at = GROUP_BLOCK * b;
                    let q = &group[at + 16 * r..][..16];
                    summs += f16_at(group, at + 72 + 2 * r) * blk.s;
                    let scale = f16_at(group, at + 64 + 2 * r) * blk.d;
                    for (j, acc_j) in acc.iter_mut().enumerate() {
                        let lane: i32 = (4 * j..4 * j + 4)
                            .map(|k| {
                                let u = if k < 16 { q[k] & 0x0f } else { q[k - 16] >> 4 };
                                u as i32 * blk.qs[k] as i32
                            })
                            .sum();
                        *acc_j = scale.mul_add(lane as f32, *acc_j);
                    }
                }
                out[t * GROUP + r] = hsum8(acc) + summs;
            }
        }
    }
}

/// The reference's four lane sums of 16 bytes: lane `i` is `sum(w[k] * y[k])` over
/// `k = 4i..4i + 4` (widening multiplies, pairwise adds; exact).
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

/// One group against `T` tokens with NEON: per row and block the eight lane sums
/// ([`lanes4_neon`] on the low and the high nibbles), each lane accumulated with a fused
/// multiply-add by `d_w * d_a` and the minimum product added in order, as
/// [`dot_q4_1_reference`].
#[cfg(target_arch = "aarch64")]
#[allow(clippy::needless_range_loop)] // parallel arrays indexed together
unsafe fn group_neon<const T: usize>(
    group: &[u8],
    nb: usize,
    acts: &[&[Q8Block]],
    out: &mut [f32],
) {
    use std::arch::aarch64::*;
    let mut acc = [[[vdupq_n_f32(0.0); 2]; GROUP]; T];
    let mut summs = [[0.0f32; GROUP]; T];
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
                let scale = dw * a.d;
                let l = vcvtq_f32_s32(lanes4_neon(lo, ylo));
                let h = vcvtq_f32_s32(lanes4_neon(hi, yhi));
                acc[t][r][0] = vfmaq_n_f32(acc[t][r][0], l, scale);
                acc[t][r][1] = vfmaq_n_f32(acc[t][r][1], h, scale);
                summs[t][r] += mw * a.s;
            }
        }
    }
    for t in 0..T {
        for r in 0..GROUP {
            let mut lanes = [0.0f32; 8];
            vst1q_f32(lanes.as_mut_ptr(), acc[t][r][0]);
            vst1q_f32(lanes.as_mut_ptr().add(4), acc[t][r][1]);
            out[t * GROUP + r] = hsum8(lanes) + summs[t][r];
        }
    }
}

/// Blocks ahead of use that the kernels ask the memory system for.
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 8;

/// One group against `T` tokens with AVX-512: the block's 64 quant bytes (four rows)
/// in one register, low and high nibbles apart; `vpdpbusd` against the token's first
/// (last) 16 activation bytes repeated in each 128-bit lane gives lanes 0-3 (4-7) of
/// the reference's eight lane sums, for all four rows at once. The four rows' scale
/// products `d_w * d_a` (each the reference's f32 product) are spread over their lanes
/// and accumulated with one fused multiply-add per half, block after block; the
/// minimum products `m_w * s_a` are summed per row in a 128-bit register, in order.
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
    let mut acc_lo = [_mm512_setzero_ps(); T];
    let mut acc_hi = [_mm512_setzero_ps(); T];
    let mut summs = [_mm_setzero_ps(); T];
    for b in 0..nb {
        // Hints for the stream ahead (no fault even past the end).
        let p = q.add(GROUP_BLOCK * b);
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(GROUP_BLOCK * PREFETCH) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(GROUP_BLOCK * PREFETCH + 64) as *const i8);
        // SAFETY: block `b < nb` of the group: 64 quant bytes at 64b, 8 bytes of scales
        // at 64nb + 8b and of minimums at 72nb + 8b.
        let z = _mm512_loadu_si512(p as *const _);
        let lo = _mm512_and_si512(z, low);
        let hi = _mm512_and_si512(_mm512_srli_epi16(z, 4), low);
        let dw = _mm_cvtph_ps(_mm_loadl_epi64(p.add(64) as *const __m128i));
        let mw = _mm_cvtph_ps(_mm_loadl_epi64(p.add(72) as *const __m128i));
        for t in 0..T {
            let a = acts[t].get_unchecked(b);
            let y = a.qs.as_ptr();
            let ylo = _mm512_broadcast_i32x4(_mm_loadu_si128(y as *const __m128i));
            let yhi = _mm512_broadcast_i32x4(_mm_loadu_si128(y.add(16) as *const __m128i));
            let plo = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, lo, ylo));
            let phi = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, hi, yhi));
            let s4 = _mm_mul_ps(dw, _mm_set1_ps(a.d));
            let s16 = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(s4));
            acc_lo[t] = _mm512_fmadd_ps(s16, plo, acc_lo[t]);
            acc_hi[t] = _mm512_fmadd_ps(s16, phi, acc_hi[t]);
            summs[t] = _mm_add_ps(summs[t], _mm_mul_ps(mw, _mm_set1_ps(a.s)));
        }
    }
    for t in 0..T {
        let (mut lo, mut hi, mut m) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 4]);
        _mm512_storeu_ps(lo.as_mut_ptr(), acc_lo[t]);
        _mm512_storeu_ps(hi.as_mut_ptr(), acc_hi[t]);
        _mm_storeu_ps(m.as_mut_ptr(), summs[t]);
        finish(&lo, &hi, &m, &mut out[t * GROUP..(t + 1) * GROUP]);
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
    // [t][half][rows 0-1 | rows 2-3]
    let mut acc = [[[_mm256_setzero_ps(); 2]; 2]; T];
    let mut summs = [_mm_setzero_ps(); T];
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
        let dw = _mm_cvtph_ps(_mm_loadl_epi64(p.add(64) as *const __m128i));
        let mw = _mm_cvtph_ps(_mm_loadl_epi64(p.add(72) as *const __m128i));
        for t in 0..T {
            let a = acts[t].get_unchecked(b);
            let y = a.qs.as_ptr();
            let ys = [
                _mm256_broadcastsi128_si256(_mm_loadu_si128(y as *const __m128i)),
                _mm256_broadcastsi128_si256(_mm_loadu_si128(y.add(16) as *const __m128i)),
            ];
            let s4 = _mm256_castps128_ps256(_mm_mul_ps(dw, _mm_set1_ps(a.d)));
            let s = [
                _mm256_permutevar8x32_ps(s4, spread01),
                _mm256_permutevar8x32_ps(s4, spread23),
            ];
            for half in 0..2 {
                for pair in 0..2 {
                    let lanes =
                        _mm256_madd_epi16(ones, _mm256_maddubs_epi16(u[half][pair], ys[half]));
                    acc[t][half][pair] =
                        _mm256_fmadd_ps(s[pair], _mm256_cvtepi32_ps(lanes), acc[t][half][pair]);
                }
            }
            summs[t] = _mm_add_ps(summs[t], _mm_mul_ps(mw, _mm_set1_ps(a.s)));
        }
    }
    for t in 0..T {
        let (mut lo, mut hi, mut m) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 4]);
        _mm256_storeu_ps(lo.as_mut_ptr(), acc[t][0][0]);
        _mm256_storeu_ps(lo.as_mut_ptr().add(8), acc[t][0][1]);
        _mm256_storeu_ps(hi.as_mut_ptr(), acc[t][1][0]);
        _mm256_storeu_ps(hi.as_mut_ptr().add(8), acc[t][1][1]);
        _mm_storeu_ps(m.as_mut_ptr(), summs[t]);
        finish(&lo, &hi, &m, &mut out[t * GROUP..(t + 1) * GROUP]);
    }
}

/// Row `r`'s result from the kernels' accumulators: its eight lanes are `lo[4r..4r+4]`
/// then `hi[4r..4r+4]`, reduced as the reference does, plus its minimum sum.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn finish(lo: &[f32; 16], hi: &[f32; 16], summs: &[f32; 4], out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        let lanes = std::array::from_fn(|j| {
            if j < 4 {
                lo[4 * r + j]
            } else {
                hi[4 * r + j - 4]
            }
        });
        *o = hsum8(lanes) + summs[r];
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
        let (mut fast, mut portable) = (Vec::new(), Vec::new());
        quantize_activations(&x, &mut fast);
        quantize_activations_portable(&x, &mut portable);
        assert_eq!(fast, portable);
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
