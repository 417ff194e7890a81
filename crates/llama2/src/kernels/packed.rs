//! Q4_0 and Q8_0 weights repacked into groups of eight interleaved rows, and the integer
//! kernels over them.
//!
//! In the file layout each row's blocks lie one after another, so an 8-bit dot product
//! leaves a row's products spread over the lanes of a register and every block ends in
//! a horizontal reduction. Interleaved, one 32-byte load holds four bytes of each of
//! eight rows: `vpmaddubsw`/`vpdpbusd` then sums each row's products into its own lane,
//! and eight rows finish a block in a handful of instructions. This is the layout of
//! llama.cpp's repacked x86 path (`q4_0_8x8`), and the arithmetic is the same as
//! there: per row and block an exact integer sum `s`, then `acc = fma(s, d_w * d_a, acc)`
//! in f32, blocks in order.
//!
//! Layout, per group of eight rows and per 32-value block: the eight f16 scales (16
//! bytes), then chunks of 32 bytes where chunk `j` holds bytes `4j..4j+4` of each row's
//! quants, row `r` at offset `4r`. Q4_0 has 16 quant bytes per block (4 chunks; byte `i`
//! holds values `i` and `i + 16` in its low and high nibble), Q8_0 has 32 (8 chunks).
//! Rows past the last are zero (they compute zeros that are never written out).

use half::f16;
use rayon::prelude::*;

use super::qdot::{Q8Block, QK};
use crate::tensor::DType;

/// Rows per interleaved group.
pub const GROUP: usize = 8;
/// Most activation rows one kernel call handles.
pub const MAX_TOKENS: usize = 4;

/// True for the weight types stored interleaved for the integer kernels.
pub fn supports(dtype: DType) -> bool {
    matches!(dtype, DType::Q4_0 | DType::Q8_0)
}

/// Quant bytes per block of one row.
fn quant_bytes(dtype: DType) -> usize {
    if dtype == DType::Q4_0 {
        QK / 2
    } else {
        QK
    }
}

/// A Q4_0 or Q8_0 matrix `[rows, cols]` in the interleaved layout.
#[derive(Debug)]
pub struct PackedMatrix {
    dtype: DType,
    rows: usize,
    /// Blocks per row.
    nb: usize,
    data: Vec<u8>,
}

impl PackedMatrix {
    /// Bytes of one group's block: eight scales and eight rows of quants.
    fn block_bytes(dtype: DType) -> usize {
        GROUP * 2 + GROUP * quant_bytes(dtype)
    }

    /// Repacks `rows` rows of `cols` values stored in ggml's layout (`src`, row-major).
    /// `None` for other types or a size mismatch.
    pub fn pack(dtype: DType, src: &[u8], rows: usize, cols: usize) -> Option<PackedMatrix> {
        if !supports(dtype)
            || !cols.is_multiple_of(QK)
            || dtype.row_bytes(cols)? * rows != src.len()
        {
            return None;
        }
        let nb = cols / QK;
        let (qb, bb) = (quant_bytes(dtype), dtype.block_bytes());
        let gb = Self::block_bytes(dtype);
        let row_bytes = nb * bb;
        let mut data = vec![0u8; rows.div_ceil(GROUP) * nb * gb];
        data.par_chunks_mut(nb * gb)
            .enumerate()
            .for_each(|(g, dst)| {
                for r in 0..GROUP.min(rows - g * GROUP) {
                    let row = &src[(g * GROUP + r) * row_bytes..][..row_bytes];
                    for (b, blk) in row.chunks_exact(bb).enumerate() {
                        let out = &mut dst[b * gb..(b + 1) * gb];
                        out[2 * r..2 * r + 2].copy_from_slice(&blk[..2]);
                        for (j, four) in blk[2..2 + qb].chunks_exact(4).enumerate() {
                            let at = 2 * GROUP + j * 4 * GROUP + 4 * r;
                            out[at..at + 4].copy_from_slice(four);
                        }
                    }
                }
            });
        Some(PackedMatrix {
            dtype,
            rows,
            nb,
            data,
        })
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Groups of [`GROUP`] rows (the last may be partly padding).
    pub fn groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    /// Dot products of group `g`'s eight rows with up to [`MAX_TOKENS`] activation rows
    /// (at least `cols / 32` blocks each): `out[t * GROUP + r]` for row `8g + r` and
    /// token `t`. `use_simd` selects the AVX2 (or AVX-512 VNNI) kernel where the CPU has
    /// it; every path gives the same bits as [`dot_reference`].
    pub fn dot_group(&self, g: usize, acts: &[&[Q8Block]], use_simd: bool, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        let simd = if use_simd { Simd::detect() } else { None };
        #[cfg(not(target_arch = "x86_64"))]
        let simd = None;
        let _ = use_simd;
        self.dot_group_with(simd, g, acts, out)
    }

    fn dot_group_with(&self, simd: Option<Simd>, g: usize, acts: &[&[Q8Block]], out: &mut [f32]) {
        let nt = acts.len();
        assert!(g < self.groups() && (1..=MAX_TOKENS).contains(&nt));
        assert!(out.len() >= nt * GROUP && acts.iter().all(|a| a.len() >= self.nb));
        let gb = Self::block_bytes(self.dtype);
        let blocks = &self.data[g * self.nb * gb..(g + 1) * self.nb * gb];
        #[cfg(target_arch = "x86_64")]
        if let Some(simd) = simd {
            macro_rules! go {
                ($f:ident, $fmt:expr) => {
                    match nt {
                        // SAFETY: `simd` is only ever a kernel whose features
                        // `Simd::detect`/`Simd::available` found; `blocks` holds `nb` group
                        // blocks and every activation row `nb` blocks (asserted above),
                        // which is all the kernel reads.
                        1 => unsafe { $f::<{ $fmt }, 1>(blocks, self.nb, acts, out) },
                        2 => unsafe { $f::<{ $fmt }, 2>(blocks, self.nb, acts, out) },
                        3 => unsafe { $f::<{ $fmt }, 3>(blocks, self.nb, acts, out) },
                        _ => unsafe { $f::<{ $fmt }, 4>(blocks, self.nb, acts, out) },
                    }
                };
            }
            match (simd, self.dtype) {
                (Simd::Vnni, DType::Q4_0) => go!(group_vnni, FMT_Q4_0),
                (Simd::Vnni, _) => go!(group_vnni, FMT_Q8_0),
                (Simd::Avx2, DType::Q4_0) => go!(group_avx2, FMT_Q4_0),
                (Simd::Avx2, _) => go!(group_avx2, FMT_Q8_0),
            }
            return;
        }
        self.dot_group_portable(blocks, acts, out);
    }

    /// The portable kernel: the same sums as [`dot_reference`], read from the packed
    /// layout.
    fn dot_group_portable(&self, blocks: &[u8], acts: &[&[Q8Block]], out: &mut [f32]) {
        let gb = Self::block_bytes(self.dtype);
        let qb = quant_bytes(self.dtype);
        for (t, a) in acts.iter().enumerate() {
            for r in 0..GROUP {
                let mut acc = 0.0f32;
                for (b, blk) in blocks.chunks_exact(gb).enumerate() {
                    let dw = f16::from_bits(u16::from_le_bytes([blk[2 * r], blk[2 * r + 1]]));
                    let q = |i: usize| blk[2 * GROUP + (i / 4) * 4 * GROUP + 4 * r + i % 4];
                    let y = &a[b].qs;
                    let sum: i32 = if self.dtype == DType::Q4_0 {
                        (0..qb)
                            .map(|i| {
                                ((q(i) & 0x0f) as i32 - 8) * y[i] as i32
                                    + ((q(i) >> 4) as i32 - 8) * y[i + 16] as i32
                            })
                            .sum()
                    } else {
                        (0..qb).map(|i| q(i) as i8 as i32 * y[i] as i32).sum()
                    };
                    acc = (sum as f32).mul_add(dw.to_f32() * a[b].d, acc);
                }
                out[t * GROUP + r] = acc;
            }
        }
    }
}

/// The defining arithmetic on one row in ggml's layout: per block the exact integer
/// dot product of weights and 8-bit activations, then `acc = fma(sum, d_w * d_a, acc)`.
pub fn dot_reference(dtype: DType, row: &[u8], acts: &[Q8Block]) -> f32 {
    assert!(supports(dtype));
    let mut acc = 0.0f32;
    for (blk, a) in row.chunks_exact(dtype.block_bytes()).zip(acts) {
        let dw = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
        let w = |i: usize| -> i32 {
            if dtype == DType::Q4_0 {
                let byte = blk[2 + i % 16];
                (if i < 16 { byte & 0x0f } else { byte >> 4 }) as i32 - 8
            } else {
                blk[2 + i] as i8 as i32
            }
        };
        let sum: i32 = (0..QK).map(|i| w(i) * a.qs[i] as i32).sum();
        acc = (sum as f32).mul_add(dw * a.d, acc);
    }
    acc
}

/// Blocks ahead of use that the kernels ask the memory system for.
const PREFETCH: usize = 4;

const FMT_Q4_0: u8 = 0;
const FMT_Q8_0: u8 = 1;

/// The SIMD kernels (none outside x86-64 yet: the portable kernel runs there).
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {}

#[cfg(not(target_arch = "x86_64"))]
impl Simd {
    fn available() -> Vec<Simd> {
        Vec::new()
    }
}

/// The x86 kernels.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {
    /// AVX2, FMA and F16C.
    Avx2,
    /// AVX2 plus AVX-512 VNNI on 256-bit registers (`vpdpbusd`).
    Vnni,
}

#[cfg(target_arch = "x86_64")]
impl Simd {
    /// The fastest kernel this CPU runs.
    fn detect() -> Option<Simd> {
        use std::arch::is_x86_feature_detected as has;
        if !(has!("avx2") && has!("fma") && has!("f16c")) {
            None
        } else if has!("avx512vnni") && has!("avx512vl") {
            Some(Simd::Vnni)
        } else {
            Some(Simd::Avx2)
        }
    }

    /// Every kernel this CPU runs, slowest first.
    #[cfg(test)]
    fn available() -> Vec<Simd> {
        match Simd::detect() {
            None => Vec::new(),
            Some(Simd::Avx2) => vec![Simd::Avx2],
            Some(Simd::Vnni) => vec![Simd::Avx2, Simd::Vnni],
        }
    }
}

/// Broadcast of activation bytes `4j..4j+4` of one block.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn act4(a: &Q8Block, j: usize) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY (caller): j < 8, so the four bytes lie inside `qs`.
    _mm256_set1_epi32((a.qs.as_ptr().add(4 * j) as *const i32).read_unaligned())
}

/// AVX2 kernel for one group and `T` tokens. Integer sums: Q4_0 as `sum(u * y) -
/// 8 * sum(y)` with the unsigned nibbles `u` (the `vpmaddubsw` pair sums, at most
/// 2 * 15 * 127 each, add up in 16 bits without overflow over the 8 chunk halves);
/// Q8_0 with the sign trick (`|w| * sign(y, w)`) and 32-bit sums per chunk.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_avx2<const F: u8, const T: usize>(
    blocks: &[u8],
    nb: usize,
    acts: &[&[Q8Block]],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let dtype = if F == FMT_Q4_0 {
        DType::Q4_0
    } else {
        DType::Q8_0
    };
    let gb = PackedMatrix::block_bytes(dtype);
    let low = _mm256_set1_epi8(0x0f);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let p = blocks.as_ptr().add(b * gb);
        // Hint the stream a few blocks ahead (a hint: no fault even past the end).
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH * gb) as *const i8);
        let a: [&Q8Block; T] = std::array::from_fn(|t| acts[t].get_unchecked(b));
        let mut isum = [_mm256_setzero_si256(); T];
        if F == FMT_Q4_0 {
            let mut s16 = [_mm256_setzero_si256(); T];
            for j in 0..4 {
                let q = _mm256_loadu_si256(p.add(16 + 32 * j) as *const __m256i);
                let lo = _mm256_and_si256(q, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
                for t in 0..T {
                    s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(lo, act4(a[t], j)));
                    s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(hi, act4(a[t], j + 4)));
                }
            }
            for t in 0..T {
                let ysum = _mm256_set1_epi32(8 * a[t].sum);
                isum[t] = _mm256_sub_epi32(_mm256_madd_epi16(s16[t], ones), ysum);
            }
        } else {
            for j in 0..8 {
                let w = _mm256_loadu_si256(p.add(16 + 32 * j) as *const __m256i);
                let aw = _mm256_sign_epi8(w, w);
                for t in 0..T {
                    let sy = _mm256_sign_epi8(act4(a[t], j), w);
                    let pair = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sy), ones);
                    isum[t] = _mm256_add_epi32(isum[t], pair);
                }
            }
        }
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
        for t in 0..T {
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(a[t].d));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), scale, acc[t]);
        }
    }
    for (t, v) in acc.into_iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(t * GROUP), v);
    }
}

/// AVX-512 VNNI kernel (256-bit `vpdpbusd`): the integer sums in one instruction per
/// chunk, starting from the offset correction: Q4_0 `sum(u * y) - 8 * sum(y)`, Q8_0
/// `sum((w + 128) * y) - 128 * sum(y)` (`w + 128` is `w ^ 0x80` as an unsigned byte).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
unsafe fn group_vnni<const F: u8, const T: usize>(
    blocks: &[u8],
    nb: usize,
    acts: &[&[Q8Block]],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let dtype = if F == FMT_Q4_0 {
        DType::Q4_0
    } else {
        DType::Q8_0
    };
    let gb = PackedMatrix::block_bytes(dtype);
    let low = _mm256_set1_epi8(0x0f);
    let flip = _mm256_set1_epi8(-128);
    let mut acc = [_mm256_setzero_ps(); T];
    for b in 0..nb {
        let p = blocks.as_ptr().add(b * gb);
        // Hint the stream a few blocks ahead (a hint: no fault even past the end).
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH * gb) as *const i8);
        let a: [&Q8Block; T] = std::array::from_fn(|t| acts[t].get_unchecked(b));
        let offset = if F == FMT_Q4_0 { 8 } else { 128 };
        let mut isum: [__m256i; T] = std::array::from_fn(|t| _mm256_set1_epi32(-offset * a[t].sum));
        if F == FMT_Q4_0 {
            for j in 0..4 {
                let q = _mm256_loadu_si256(p.add(16 + 32 * j) as *const __m256i);
                let lo = _mm256_and_si256(q, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), low);
                for t in 0..T {
                    isum[t] = _mm256_dpbusd_epi32(isum[t], lo, act4(a[t], j));
                    isum[t] = _mm256_dpbusd_epi32(isum[t], hi, act4(a[t], j + 4));
                }
            }
        } else {
            for j in 0..8 {
                let w = _mm256_loadu_si256(p.add(16 + 32 * j) as *const __m256i);
                let u = _mm256_xor_si256(w, flip);
                for t in 0..T {
                    isum[t] = _mm256_dpbusd_epi32(isum[t], u, act4(a[t], j));
                }
            }
        }
        let dw = _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i));
        for t in 0..T {
            let scale = _mm256_mul_ps(dw, _mm256_set1_ps(a[t].d));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[t]), scale, acc[t]);
        }
    }
    for (t, v) in acc.into_iter().enumerate() {
        _mm256_storeu_ps(out.as_mut_ptr().add(t * GROUP), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{qdot, quant};

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

    /// Every kernel and tile size gives the bits of the reference on the unpacked rows,
    /// including the zero padding rows of a partial last group; and the reference is
    /// the exact dot of dequantized weights and activations up to f32 rounding.
    #[test]
    fn packed_kernels_match_the_reference_bit_for_bit() {
        for dtype in [DType::Q4_0, DType::Q8_0] {
            let (rows, cols) = (21, 32 * 19);
            let mut src = Vec::new();
            quant::quantize(dtype, &values(rows * cols, 5), &mut src).unwrap();
            let packed = PackedMatrix::pack(dtype, &src, rows, cols).unwrap();
            assert_eq!(packed.groups(), 3);
            let row_bytes = dtype.row_bytes(cols).unwrap();
            let acts: Vec<Vec<Q8Block>> = (0..MAX_TOKENS as u64)
                .map(|t| {
                    let mut a = Vec::new();
                    qdot::quantize_activations(&values(cols, 50 + t), &mut a);
                    a
                })
                .collect();
            for nt in 1..=MAX_TOKENS {
                let a: Vec<&[Q8Block]> = acts[..nt].iter().map(Vec::as_slice).collect();
                for g in 0..packed.groups() {
                    let kernels =
                        std::iter::once(None).chain(Simd::available().into_iter().map(Some));
                    for simd in kernels {
                        let mut out = vec![f32::NAN; nt * GROUP];
                        packed.dot_group_with(simd, g, &a, &mut out);
                        for t in 0..nt {
                            for r in 0..GROUP {
                                let row = g * GROUP + r;
                                let want = if row < rows {
                                    dot_reference(dtype, &src[row * row_bytes..][..row_bytes], a[t])
                                } else {
                                    0.0
                                };
                                let got = out[t * GROUP + r];
                                assert_eq!(
                                    got.to_bits(),
                                    want.to_bits(),
                                    "{dtype:?} {simd:?} nt {nt} row {row} t {t}"
                                );
                            }
                        }
                    }
                }
            }
            // The reference against f64 arithmetic on the dequantized values.
            let mut w = vec![0.0f32; cols];
            quant::dequantize(dtype, &src[..row_bytes], &mut w);
            let exact: f64 = w
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    *v as f64 * acts[0][i / QK].qs[i % QK] as f64 * acts[0][i / QK].d as f64
                })
                .sum();
            let got = dot_reference(dtype, &src[..row_bytes], &acts[0]) as f64;
            assert!(
                (got - exact).abs() < 1e-4 * exact.abs().max(1.0),
                "{got} vs {exact}"
            );
        }
    }

    #[test]
    fn pack_rejects_mismatched_sizes() {
        assert!(PackedMatrix::pack(DType::Q4_0, &[0; 18], 1, 32).is_some());
        assert!(PackedMatrix::pack(DType::Q4_0, &[0; 17], 1, 32).is_none());
        assert!(PackedMatrix::pack(DType::Q4_1, &[0; 20], 1, 32).is_none());
        assert!(PackedMatrix::pack(DType::Q8_0, &[0; 34], 1, 33).is_none());
    }
}
