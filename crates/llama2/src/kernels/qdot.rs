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
//! For speed each Q4_1 row is stored split ([`SplitQ4_1`]): its quants, then its scales,
//! then its minimums, so that eight scales convert in one instruction instead of one
//! at a time; the arithmetic is unchanged.

use half::f16;

use super::pool::WorkerPool;
use super::IntSimd as Simd;
use super::SharedOut;
use crate::tensor::DType;

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

#[inline(always)]
fn hsum8(a: [f32; 8]) -> f32 {
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

/// A Q4_1 matrix with each row stored split: `16 * nb` bytes of nibbles (block by
/// block, as in the file), then the `nb` f16 scales, then the `nb` f16 minimums. Same
/// size as the file layout.
#[derive(Debug)]
pub struct SplitQ4_1 {
    rows: usize,
    /// Blocks per row.
    nb: usize,
    data: Vec<u8>,
}

/// Per-token activation scales, contiguous for vector loads: `d[b]` and `s[b]` of
/// every block `b` of one activation row.
#[derive(Clone, Debug, Default)]
pub struct ActScales {
    /// The blocks' `d`.
    pub d: Vec<f32>,
    /// The blocks' `s`.
    pub s: Vec<f32>,
}

impl ActScales {
    /// The scales of one quantized activation row.
    pub fn of(blocks: &[Q8Block]) -> ActScales {
        ActScales {
            d: blocks.iter().map(|b| b.d).collect(),
            s: blocks.iter().map(|b| b.s).collect(),
        }
    }
}

/// Most weight rows one [`SplitQ4_1::dot_tile`] call handles.
pub const MAX_ROWS: usize = 4;
/// Most activation rows one [`SplitQ4_1::dot_tile`] call handles.
pub const MAX_TOKENS: usize = 4;

impl SplitQ4_1 {
    /// Splits `rows` Q4_1 rows of `cols` values (`src` in ggml's layout), on `pool`'s
    /// threads. `None` on a size mismatch.
    pub fn pack(src: &[u8], rows: usize, cols: usize, pool: &WorkerPool) -> Option<SplitQ4_1> {
        let row_bytes = DType::Q4_1.row_bytes(cols)?;
        if row_bytes * rows != src.len() {
            return None;
        }
        let nb = cols / QK;
        let mut data = vec![0u8; src.len()];
        let dst_all = SharedOut(data.as_mut_ptr());
        pool.run(rows, &|r| {
            // SAFETY: task `r` alone writes row `r`'s bytes `r*row_bytes..(r+1)*row_bytes`
            // of `data`, which lives until `run` returns.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(dst_all.at(r * row_bytes), row_bytes) };
            let (qs, params) = dst.split_at_mut(16 * nb);
            let (ds, ms) = params.split_at_mut(2 * nb);
            for (b, blk) in src[r * row_bytes..(r + 1) * row_bytes]
                .chunks_exact(20)
                .enumerate()
            {
                ds[2 * b..2 * b + 2].copy_from_slice(&blk[..2]);
                ms[2 * b..2 * b + 2].copy_from_slice(&blk[2..4]);
                qs[16 * b..16 * b + 16].copy_from_slice(&blk[4..20]);
            }
        });
        Some(SplitQ4_1 { rows, nb, data })
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    fn row(&self, r: usize) -> &[u8] {
        let w = 20 * self.nb;
        &self.data[r * w..(r + 1) * w]
    }

    /// Dot products of rows `r0..r0 + nr` (`nr <= MAX_ROWS`) with up to [`MAX_TOKENS`]
    /// activation rows and their scales: `out[i * acts.len() + t]` for row `r0 + i`.
    /// `use_simd` selects the AVX2 (or AVX-512 VNNI) kernel where the CPU has it; every
    /// path gives the bits of [`dot_q4_1_reference`].
    pub fn dot_tile(
        &self,
        r0: usize,
        nr: usize,
        acts: &[&[Q8Block]],
        scales: &[&ActScales],
        use_simd: bool,
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        let simd = if use_simd { Simd::detect() } else { None };
        #[cfg(not(target_arch = "x86_64"))]
        let simd = None;
        let _ = use_simd;
        self.dot_tile_with(simd, r0, nr, acts, scales, out)
    }

    /// Dot products of rows `r0..r0 + out.len()` with one activation row (a decode
    /// step): `out[i]` for row `r0 + i`, each as [`dot_q4_1_reference`]. One call covers
    /// a task's rows, so the per-call checks are paid once.
    pub fn dot_rows(
        &self,
        r0: usize,
        acts: &[Q8Block],
        scales: &ActScales,
        use_simd: bool,
        out: &mut [f32],
    ) {
        assert!(r0 + out.len() <= self.rows && acts.len() >= self.nb);
        assert!(scales.d.len() >= self.nb && scales.s.len() >= self.nb);
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = use_simd.then(Simd::detect).flatten() {
            // SAFETY: `simd` is a kernel whose features `Simd::detect` found; the rows
            // exist and hold `nb` blocks, the activations and scales at least `nb`
            // (asserted above), which is all the kernel reads.
            unsafe {
                match simd {
                    Simd::Vnni => rows_vnni(self, r0, acts, scales, out),
                    Simd::Avx2 => rows_avx2(self, r0, acts, scales, out),
                }
            }
            return;
        }
        let _ = use_simd;
        for (i, o) in out.iter_mut().enumerate() {
            self.dot_tile_with(None, r0 + i, 1, &[acts], &[scales], std::slice::from_mut(o));
        }
    }

    fn dot_tile_with(
        &self,
        simd: Option<Simd>,
        r0: usize,
        nr: usize,
        acts: &[&[Q8Block]],
        scales: &[&ActScales],
        out: &mut [f32],
    ) {
        let nt = acts.len();
        assert!((1..=MAX_ROWS).contains(&nr) && r0 + nr <= self.rows);
        assert!((1..=MAX_TOKENS).contains(&nt) && scales.len() == nt && out.len() >= nr * nt);
        assert!(acts.iter().all(|a| a.len() >= self.nb));
        assert!(scales
            .iter()
            .all(|s| s.d.len() >= self.nb && s.s.len() >= self.nb));
        let rows: [&[u8]; MAX_ROWS] = std::array::from_fn(|i| self.row(r0 + i.min(nr - 1)));
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = simd {
            macro_rules! dispatch {
                ($f:ident; $(($r:literal, $t:literal)),*) => {
                    match (nr, nt) {
                        // SAFETY: `simd` is a kernel whose features `Simd::detect` found;
                        // the rows hold `nb` blocks and the activations and scales at least
                        // `nb` (asserted above), which is all the kernel reads.
                        $(($r, $t) => unsafe { $f::<$r, $t>(&rows, self.nb, acts, scales, out) },)*
                        _ => unreachable!("tile size checked above"),
                    }
                };
            }
            macro_rules! sizes {
                ($f:ident) => {
                    dispatch!($f; (1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3), (2, 4),
                        (3, 1), (3, 2), (3, 3), (3, 4), (4, 1), (4, 2), (4, 3), (4, 4))
                };
            }
            match simd {
                Simd::Vnni => sizes!(tile_vnni),
                Simd::Avx2 => sizes!(tile_avx2),
            }
            return;
        }
        let nb = self.nb;
        for (i, row) in rows[..nr].iter().enumerate() {
            for (t, a) in acts.iter().enumerate() {
                let mut acc = [0.0f32; 8];
                let mut summs = 0.0f32;
                for (b, blk) in a[..nb].iter().enumerate() {
                    let q = &row[16 * b..16 * b + 16];
                    summs += f16_at(row, 16 * nb + 2 * nb + 2 * b) * blk.s;
                    let scale = f16_at(row, 16 * nb + 2 * b) * blk.d;
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
                out[i * nt + t] = hsum8(acc) + summs;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(w: &SplitQ4_1, r0: usize, a: &[Q8Block], s: &ActScales, out: &mut [f32]) {
    rows::<false>(w, r0, a, s, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn rows_vnni(w: &SplitQ4_1, r0: usize, a: &[Q8Block], s: &ActScales, out: &mut [f32]) {
    rows::<true>(w, r0, a, s, out)
}

/// One token against consecutive rows, one row per tile (compiled into each wrapper
/// above with its instruction set).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn rows<const VNNI: bool>(
    w: &SplitQ4_1,
    r0: usize,
    acts: &[Q8Block],
    scales: &ActScales,
    out: &mut [f32],
) {
    for (i, o) in out.iter_mut().enumerate() {
        let row = w.row(r0 + i);
        let one = std::slice::from_mut(o);
        tile::<VNNI, 1, 1>(&[row; MAX_ROWS], w.nb, &[acts], &[scales], one);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<const R: usize, const T: usize>(
    rows: &[&[u8]; MAX_ROWS],
    nb: usize,
    acts: &[&[Q8Block]],
    scales: &[&ActScales],
    out: &mut [f32],
) {
    tile::<false, R, T>(rows, nb, acts, scales, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn tile_vnni<const R: usize, const T: usize>(
    rows: &[&[u8]; MAX_ROWS],
    nb: usize,
    acts: &[&[Q8Block]],
    scales: &[&ActScales],
    out: &mut [f32],
) {
    tile::<true, R, T>(rows, nb, acts, scales, out)
}

/// The SIMD tile of `R` split rows by `T` tokens. Per group of up to eight blocks, the
/// scale products `d_w * d_a` and minimum products `m_w * s_a` of every (row, token)
/// are formed eight at a time (`vcvtph2ps`, one multiply each: the same f32 products as
/// the reference) into small buffers; then per block the eight lane sums (`vpdpbusd`,
/// or `vpmaddubsw` + `vpmaddwd`: the nibbles are unsigned, so no sign trick) are
/// accumulated with one fused multiply-add and the minimum product added to a scalar
/// sum, in block order as the reference.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile<const VNNI: bool, const R: usize, const T: usize>(
    rows: &[&[u8]; MAX_ROWS],
    nb: usize,
    acts: &[&[Q8Block]],
    scales: &[&ActScales],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    let mut summs = [[0.0f32; T]; R];
    let mut sc = [[[0.0f32; 8]; T]; R];
    let mut ms = [[[0.0f32; 8]; T]; R];
    let mut b0 = 0;
    while b0 < nb {
        let n8 = 8.min(nb - b0);
        for r in 0..R {
            // The quants two groups ahead (hints: no fault even past the end).
            let ahead = rows[r].as_ptr().wrapping_add(16 * (b0 + 16));
            _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64) as *const i8);
            // Eight f16 scales and minimums of row `r` from block `b0` (fewer at the end
            // of the row, converted one by one so nothing past it is read).
            let (mut dw, mut mw) = ([0.0f32; 8], [0.0f32; 8]);
            if n8 == 8 {
                // SAFETY: blocks b0..b0+8 exist, so 16 bytes of scales (minimums) start
                // at 16nb + 2b0 (18nb + 2b0) inside the row of 20nb bytes.
                let p = rows[r].as_ptr();
                let d = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * nb + 2 * b0) as *const __m128i));
                let m = _mm256_cvtph_ps(_mm_loadu_si128(p.add(18 * nb + 2 * b0) as *const __m128i));
                _mm256_storeu_ps(dw.as_mut_ptr(), d);
                _mm256_storeu_ps(mw.as_mut_ptr(), m);
            } else {
                for k in 0..n8 {
                    dw[k] = f16_at(rows[r], 16 * nb + 2 * (b0 + k));
                    mw[k] = f16_at(rows[r], 18 * nb + 2 * (b0 + k));
                }
            }
            for t in 0..T {
                if n8 == 8 {
                    // SAFETY: blocks b0..b0+8 of the activation scales exist.
                    let ad = _mm256_loadu_ps(scales[t].d.as_ptr().add(b0));
                    let as_ = _mm256_loadu_ps(scales[t].s.as_ptr().add(b0));
                    let d = _mm256_loadu_ps(dw.as_ptr());
                    let m = _mm256_loadu_ps(mw.as_ptr());
                    _mm256_storeu_ps(sc[r][t].as_mut_ptr(), _mm256_mul_ps(d, ad));
                    _mm256_storeu_ps(ms[r][t].as_mut_ptr(), _mm256_mul_ps(m, as_));
                } else {
                    for k in 0..n8 {
                        sc[r][t][k] = dw[k] * scales[t].d.get_unchecked(b0 + k);
                        ms[r][t][k] = mw[k] * scales[t].s.get_unchecked(b0 + k);
                    }
                }
            }
        }
        for k in 0..n8 {
            let b = b0 + k;
            let ys: [__m256i; T] = std::array::from_fn(|t| {
                _mm256_loadu_si256(acts[t].get_unchecked(b).qs.as_ptr() as *const __m256i)
            });
            for r in 0..R {
                // SAFETY: block b's 16 nibble bytes lie at 16b..16b+16 of the row.
                let tmp = _mm_loadu_si128(rows[r].as_ptr().add(16 * b) as *const __m128i);
                let u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp), low);
                for t in 0..T {
                    let lanes = if VNNI {
                        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, ys[t])
                    } else {
                        _mm256_madd_epi16(ones, _mm256_maddubs_epi16(u, ys[t]))
                    };
                    let f = _mm256_cvtepi32_ps(lanes);
                    acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(sc[r][t][k]), f, acc[r][t]);
                    summs[r][t] += ms[r][t][k];
                }
            }
        }
        b0 += n8;
    }
    for r in 0..R {
        for t in 0..T {
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][t]);
            out[r * T + t] = hsum8(lanes) + summs[r][t];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant;

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

    /// Every tile shape and kernel gives, element for element, the bits of the reference
    /// on the file layout (rows of 37 blocks: four full groups of eight and a tail), and
    /// the reference is the exact dot up to the activation quantization error.
    #[test]
    fn split_q4_1_tiles_match_the_reference_bit_for_bit() {
        let (rows, cols) = (6, 32 * 37);
        let mut src = Vec::new();
        quant::quantize(DType::Q4_1, &values(rows * cols, 100), &mut src).unwrap();
        let pool = WorkerPool::new(2).unwrap();
        let split = SplitQ4_1::pack(&src, rows, cols, &pool).unwrap();
        assert!(SplitQ4_1::pack(&src[1..], rows, cols, &pool).is_none());
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
        let scales: Vec<ActScales> = acts.iter().map(|a| ActScales::of(a)).collect();
        let kernels = std::iter::once(None).chain(Simd::available().into_iter().map(Some));
        for simd in kernels {
            for nr in 1..=MAX_ROWS {
                for nt in 1..=MAX_TOKENS {
                    let a: Vec<&[Q8Block]> = acts[..nt].iter().map(Vec::as_slice).collect();
                    let sc: Vec<&ActScales> = scales[..nt].iter().collect();
                    let r0 = rows - nr;
                    let mut out = vec![f32::NAN; nr * nt];
                    split.dot_tile_with(simd, r0, nr, &a, &sc, &mut out);
                    for i in 0..nr * nt {
                        let row = &src[(r0 + i / nt) * row_bytes..][..row_bytes];
                        let want = dot_q4_1_reference(row, a[i % nt]);
                        assert_eq!(out[i].to_bits(), want.to_bits(), "{simd:?} {nr}x{nt} #{i}");
                    }
                }
            }
        }
        for simd in [false, true] {
            let mut out = vec![f32::NAN; rows - 1];
            split.dot_rows(1, &acts[0], &scales[0], simd, &mut out);
            for (i, v) in out.iter().enumerate() {
                let row = &src[(1 + i) * row_bytes..][..row_bytes];
                assert_eq!(v.to_bits(), dot_q4_1_reference(row, &acts[0]).to_bits());
            }
        }
        let mut w = vec![0.0; cols];
        quant::dequantize(DType::Q4_1, &src[..row_bytes], &mut w);
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
