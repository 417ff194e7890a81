//! ggml block quantization formats: conversion of stored rows to f32 (floats exactly,
//! blocks dequantized bit-exact with ggml) and the reference quantizers used by the
//! converter.
//!
//! Every function here follows ggml's `ggml-quants.c` operation for operation, in f32
//! and in the same order (`dequantize_row_q8_0`, `dequantize_row_q4_K`, ...,
//! `quantize_row_q8_0_ref`, ...), so results are bit-identical to llama.cpp's reference
//! code and to the `gguf` Python package (checked against vectors it produced, see
//! `scripts/gen_quant_vectors.py`). Rust never contracts `a * b + c` into a fused
//! multiply-add, which matches ggml's portable (non-FMA) build.
//!
//! Block layouts (all little-endian, `f16` = IEEE binary16):
//!
//! | type | values | bytes | layout |
//! |---|---|---|---|
//! | Q8_0 | 32 | 34 | `d: f16`, `qs: [i8; 32]`; `x = q * d` |
//! | Q4_0 | 32 | 18 | `d: f16`, `qs: [u8; 16]` (low nibbles = values 0..16, high = 16..32); `x = (q - 8) * d` |
//! | Q4_1 | 32 | 20 | `d: f16`, `m: f16`, `qs: [u8; 16]`; `x = q * d + m` |
//! | Q4_K | 256 | 144 | `d, dmin: f16`, `scales: [u8; 12]` (8 × 6-bit scale/min), `qs: [u8; 128]` |
//! | Q5_K | 256 | 176 | as Q4_K plus `qh: [u8; 32]` (fifth bits) before `qs` |
//! | Q6_K | 256 | 210 | `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16` |

use half::f16;

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Values per Q8_0 / Q4_0 / Q4_1 block.
const QK: usize = 32;
/// Values per K-quant super-block.
const QK_K: usize = 256;

/// Reads the little-endian f16 at `b[i..i + 2]` as f32 (exact).
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Converts `out.len()` elements of `dtype` from `bytes` into `out`.
///
/// `bytes` must hold at least `dtype.row_bytes(out.len())` bytes (for quantized types
/// `out.len()` must be a whole number of blocks); alignment is not required.
pub fn to_f32(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    let n = out.len();
    match dtype {
        DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q4_K | DType::Q5_K | DType::Q6_K => {
            dequantize(dtype, bytes, out)
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

/// Dequantizes `out.len()` values of `dtype` from `bytes` into `out`.
///
/// For the quantized types `out.len()` must be a whole number of blocks; plain float
/// types (F32, F16, BF16) are converted exactly. Results are bit-identical to ggml's
/// `dequantize_row_*`.
///
/// # Panics
/// If `out.len()` is not a whole number of blocks or `bytes` is shorter than
/// `dtype.row_bytes(out.len())`. Callers (the checkpoint loaders) validate tensor sizes
/// before any row reaches this function.
pub fn dequantize(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    if !dtype.is_quantized() {
        return to_f32(dtype, bytes, out);
    }
    let need = dtype.row_bytes(out.len());
    assert!(
        need.is_some_and(|n| n <= bytes.len()),
        "dequantize {dtype:?}: {} values need whole blocks and {:?} bytes, got {}",
        out.len(),
        need,
        bytes.len()
    );
    let blocks = bytes.chunks_exact(dtype.block_bytes());
    let outs = out.chunks_exact_mut(dtype.block_size());
    match dtype {
        DType::Q8_0 => blocks.zip(outs).for_each(|(b, y)| dequant_q8_0(b, y)),
        DType::Q4_0 => blocks.zip(outs).for_each(|(b, y)| dequant_q4_0(b, y)),
        DType::Q4_1 => blocks.zip(outs).for_each(|(b, y)| dequant_q4_1(b, y)),
        DType::Q4_K => blocks.zip(outs).for_each(|(b, y)| dequant_q4_k(b, y)),
        DType::Q5_K => blocks.zip(outs).for_each(|(b, y)| dequant_q5_k(b, y)),
        DType::Q6_K => blocks.zip(outs).for_each(|(b, y)| dequant_q6_k(b, y)),
        DType::F32 | DType::F16 | DType::BF16 => unreachable!("handled above"),
    }
}

/// `dequantize_row_q8_0`, one block.
fn dequant_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in y.iter_mut().zip(&b[2..2 + QK]) {
        *o = (q as i8) as f32 * d;
    }
}

/// `dequantize_row_q4_0`, one block.
fn dequant_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = y.split_at_mut(QK / 2);
    for (j, &q) in b[2..2 + QK / 2].iter().enumerate() {
        let x0 = (q & 0x0F) as i32 - 8;
        let x1 = (q >> 4) as i32 - 8;
        lo[j] = x0 as f32 * d;
        hi[j] = x1 as f32 * d;
    }
}

/// `dequantize_row_q4_1`, one block.
fn dequant_q4_1(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let (lo, hi) = y.split_at_mut(QK / 2);
    for (j, &q) in b[4..4 + QK / 2].iter().enumerate() {
        let x0 = (q & 0x0F) as i32;
        let x1 = (q >> 4) as i32;
        lo[j] = x0 as f32 * d + m;
        hi[j] = x1 as f32 * d + m;
    }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and minimum of sub-block `j` (0..8).
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `dequantize_row_q4_K`, one super-block.
fn dequant_q4_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..16 + QK_K / 2];
    for (j, (q, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc, m) = scale_min_k4(2 * j, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        let (sc, m) = scale_min_k4(2 * j + 1, scales);
        let (d2, m2) = (d * sc as f32, min * m as f32);
        let (lo, hi) = y.split_at_mut(32);
        for l in 0..32 {
            lo[l] = d1 * (q[l] & 0xF) as f32 - m1;
            hi[l] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `dequantize_row_q5_K`, one super-block.
fn dequant_q5_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..16 + QK_K / 8];
    let qs = &b[48..48 + QK_K / 2];
    for (j, (ql, y)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc, m) = scale_min_k4(2 * j, scales);
        let (d1, m1) = (d * sc as f32, min * m as f32);
        let (sc, m) = scale_min_k4(2 * j + 1, scales);
        let (d2, m2) = (d * sc as f32, min * m as f32);
        let u1 = 1u8 << (2 * j);
        let u2 = 2u8 << (2 * j);
        let (lo, hi) = y.split_at_mut(32);
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            lo[l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
            hi[l] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

/// `dequantize_row_q6_K`, one super-block.
fn dequant_q6_k(b: &[u8], y: &mut [f32]) {
    let ql = &b[..QK_K / 2];
    let qh = &b[QK_K / 2..QK_K / 2 + QK_K / 4];
    let sc = &b[192..192 + QK_K / 16];
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &ql[64 * n..64 * n + 64];
        let qh = &qh[32 * n..32 * n + 32];
        let sc = &sc[8 * n..8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            let s = |k: usize| sc[k] as i8 as f32;
            y[l] = d * s(is) * q1 as f32;
            y[l + 32] = d * s(is + 2) * q2 as f32;
            y[l + 64] = d * s(is + 4) * q3 as f32;
            y[l + 96] = d * s(is + 6) * q4 as f32;
        }
    }
}

/// True for the types [`quantize`] can produce (Q8_0, Q4_0, Q4_1).
pub fn can_quantize(dtype: DType) -> bool {
    dtype.info().quantizable
}

/// Quantizes `values` to `dtype` with ggml's reference quantizer
/// (`quantize_row_q8_0_ref`, `quantize_row_q4_0_ref`, `quantize_row_q4_1_ref`),
/// appending `dtype.row_bytes(values.len())` bytes to `out`, byte-identical to ggml.
///
/// Errors (nothing appended) when `dtype` is not one of Q8_0, Q4_0, Q4_1 or
/// `values.len()` is not a multiple of 32.
pub fn quantize(dtype: DType, values: &[f32], out: &mut Vec<u8>) -> Result<()> {
    if !can_quantize(dtype) {
        return Err(Error::InvalidArgument(format!(
            "cannot quantize to {dtype:?} (supported: Q8_0, Q4_0, Q4_1)"
        )));
    }
    if !values.len().is_multiple_of(QK) {
        return Err(Error::InvalidArgument(format!(
            "{dtype:?} quantization needs a multiple of {QK} values, got {}",
            values.len()
        )));
    }
    out.reserve(values.len() / QK * dtype.block_bytes());
    for block in values.chunks_exact(QK) {
        match dtype {
            DType::Q8_0 => quant_q8_0(block, out),
            DType::Q4_0 => quant_q4_0(block, out),
            _ => quant_q4_1(block, out),
        }
    }
    Ok(())
}

/// Appends the little-endian f16 of `v` (round to nearest even, as ggml).
fn push_f16(out: &mut Vec<u8>, v: f32) {
    out.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

/// `quantize_row_q8_0_ref`, one block.
fn quant_q8_0(x: &[f32], out: &mut Vec<u8>) {
    let mut amax = 0.0f32;
    for &v in x {
        let a = v.abs();
        // ggml's MAX(a, b): (a > b ? a : b)
        amax = if amax > a { amax } else { a };
    }
    let d = amax / ((1 << 7) - 1) as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_f16(out, d);
    // roundf: halves away from zero, as f32::round.
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// `quantize_row_q4_0_ref`, one block.
fn quant_q4_0(x: &[f32], out: &mut Vec<u8>) {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_f16(out, d);
    for j in 0..QK / 2 {
        let x0 = x[j] * id;
        let x1 = x[QK / 2 + j] * id;
        // (int8_t) truncates toward zero, then MIN(15, ·).
        let xi0 = ((x0 + 8.5) as i8).min(15) as u8;
        let xi1 = ((x1 + 8.5) as i8).min(15) as u8;
        out.push(xi0 | (xi1 << 4));
    }
}

/// `quantize_row_q4_1_ref`, one block.
fn quant_q4_1(x: &[f32], out: &mut Vec<u8>) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    let d = (max - min) / ((1 << 4) - 1) as f32;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_f16(out, d);
    push_f16(out, min);
    for j in 0..QK / 2 {
        let x0 = (x[j] - min) * id;
        let x1 = (x[QK / 2 + j] - min) * id;
        let xi0 = ((x0 + 0.5) as i8).min(15) as u8;
        let xi1 = ((x1 + 0.5) as i8).min(15) as u8;
        out.push(xi0 | (xi1 << 4));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xorshift(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    #[test]
    fn q8_0_hand_computed() {
        let mut x = [0.0f32; 32];
        x[0] = 127.0; // d = 1, id = 1
        x[1] = -63.5; // halves round away from zero (roundf, not round-half-even)
        x[2] = 0.5;
        x[3] = 2.5;
        let mut b = Vec::new();
        quantize(DType::Q8_0, &x, &mut b).unwrap();
        assert_eq!(b.len(), 34);
        assert_eq!(
            u16::from_le_bytes([b[0], b[1]]),
            f16::from_f32(1.0).to_bits()
        );
        assert_eq!(b[2] as i8, 127);
        assert_eq!(b[3] as i8, -64);
        assert_eq!(b[4] as i8, 1);
        assert_eq!(b[5] as i8, 3);
        let mut y = [0.0f32; 32];
        dequantize(DType::Q8_0, &b, &mut y);
        assert_eq!(y[..4], [127.0, -64.0, 1.0, 3.0]);
        assert_eq!(y[5], 0.0);
    }

    #[test]
    fn zero_blocks_and_errors() {
        let mut b = Vec::new();
        for t in [DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            b.clear();
            quantize(t, &[0.0; 64], &mut b).unwrap();
            assert_eq!(b.len(), t.row_bytes(64).unwrap());
            let mut y = [1.0f32; 64];
            dequantize(t, &b, &mut y);
            assert!(y.iter().all(|v| *v == 0.0), "{t:?}");
        }
        assert!(quantize(DType::Q4_K, &[0.0; 256], &mut b).is_err());
        assert!(quantize(DType::Q8_0, &[0.0; 33], &mut b).is_err());
    }

    #[test]
    fn quantize_roundtrip_error_is_bounded() {
        let mut s = 0x9E3779B97F4A7C15u64;
        let x: Vec<f32> = (0..32 * 64)
            .map(|_| (xorshift(&mut s) >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
            .collect();
        for (t, steps) in [
            (DType::Q8_0, 127.0),
            (DType::Q4_0, 8.0),
            (DType::Q4_1, 15.0),
        ] {
            let mut b = Vec::new();
            quantize(t, &x, &mut b).unwrap();
            let mut y = vec![0.0f32; x.len()];
            dequantize(t, &b, &mut y);
            for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
                let amax = bx.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let range = if t == DType::Q4_1 { 2.0 * amax } else { amax };
                for (a, b) in bx.iter().zip(by) {
                    assert!((a - b).abs() <= range / steps * 1.01, "{t:?} {a} {b}");
                }
            }
        }
    }

    #[test]
    fn k_quant_scale_unpacking() {
        // Sub-blocks 0..4 use the low 6 bits of bytes 0..8; 4..8 combine nibbles of
        // bytes 8..12 with the top two bits of bytes 0..8.
        let q = [
            0xC1, 0x02, 0x03, 0x04, 0x45, 0x06, 0x07, 0x08, 0xA9, 0x0B, 0x0C, 0x0D,
        ];
        assert_eq!(scale_min_k4(0, &q), (1, 5));
        assert_eq!(scale_min_k4(4, &q), (0x9 | (3 << 4), 0xA | (1 << 4)));
        assert_eq!(scale_min_k4(7, &q), (0xD, 0));
    }

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
