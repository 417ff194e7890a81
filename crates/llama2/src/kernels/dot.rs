//! The f32 dot product every matrix product and attention score is built from.
//!
//! One generic, lane-structured definition (16 running sums, a fixed reduction tree,
//! a sequential tail) compiled several times with different target features. Vector
//! width changes speed, never the result: all paths are bit-identical.

use super::Isa;

/// Parallel accumulators per dot product.
const LANES: usize = 16;

#[inline(always)]
fn reduce(mut a: [f32; LANES]) -> f32 {
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            a[i] += a[i + width];
        }
        width /= 2;
    }
    a[0]
}

/// `R` dot products of consecutive rows of `w` (each `cols` long) with `x`.
#[inline(always)]
pub(crate) fn dot_rows_generic<const R: usize>(w: &[f32], cols: usize, x: &[f32], res: &mut [f32]) {
    dot_rows_strided_generic::<R>(w, cols, cols, x, res)
}

/// [`dot_rows_generic`] over rows `stride` apart (row `r` is `w[r*stride..r*stride+cols]`):
/// per row the same arithmetic, so the same bits.
#[inline(always)]
pub(crate) fn dot_rows_strided_generic<const R: usize>(
    w: &[f32],
    stride: usize,
    cols: usize,
    x: &[f32],
    res: &mut [f32],
) {
    let mut acc = [[0.0f32; LANES]; R];
    let body = cols - cols % LANES;
    assert!(w.len() >= (R - 1) * stride + cols && x.len() >= cols);
    for (c, xs) in x[..body].chunks_exact(LANES).enumerate() {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let ws = &w[r * stride + c * LANES..r * stride + (c + 1) * LANES];
            for j in 0..LANES {
                acc_r[j] += ws[j] * xs[j];
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let mut s = reduce(*acc_r);
        for i in body..cols {
            s += w[r * stride + i] * x[i];
        }
        res[r] = s;
    }
}

#[inline(always)]
fn dot_rows_any(w: &[f32], cols: usize, x: &[f32], res: &mut [f32]) {
    match res.len() {
        1 => dot_rows_generic::<1>(w, cols, x, res),
        2 => dot_rows_generic::<2>(w, cols, x, res),
        3 => dot_rows_generic::<3>(w, cols, x, res),
        4 => dot_rows_generic::<4>(w, cols, x, res),
        n => {
            for (r, out) in res.iter_mut().enumerate().take(n) {
                dot_rows_generic::<1>(&w[r * cols..], cols, x, std::slice::from_mut(out));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_rows_avx2(w: &[f32], cols: usize, x: &[f32], res: &mut [f32]) {
    dot_rows_any(w, cols, x, res)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_rows_avx512(w: &[f32], cols: usize, x: &[f32], res: &mut [f32]) {
    dot_rows_any(w, cols, x, res)
}

/// `res[r] = dot(w[r*cols..(r+1)*cols], x)` for `r < res.len()`.
pub(crate) fn dot_rows(isa: Isa, w: &[f32], cols: usize, x: &[f32], res: &mut [f32]) {
    assert!(res.len().checked_mul(cols).is_some_and(|n| w.len() >= n) && x.len() >= cols);
    match isa.runnable() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `runnable` keeps `Isa::Avx2` only where detection found AVX2.
        Isa::Avx2 => unsafe { dot_rows_avx2(w, cols, x, res) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `runnable` keeps `Isa::Avx512*` only where detection found AVX-512F.
        Isa::Avx512 | Isa::Avx512Vnni => unsafe { dot_rows_avx512(w, cols, x, res) },
        _ => dot_rows_any(w, cols, x, res),
    }
}

/// Dot product of two equally long slices with the given instruction set.
pub fn dot(isa: Isa, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut r = [0.0f32];
    dot_rows(isa, a, a.len(), b, &mut r);
    r[0]
}

/// The portable reference every SIMD path is tested against.
pub fn dot_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut r = [0.0f32];
    dot_rows_generic::<1>(a, a.len(), b, &mut r);
    r[0]
}
