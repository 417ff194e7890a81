//! Throughput of the quantized matrix products (one thread unless told): a 7B-sized FFN
//! matrix, repeated over enough copies to stream from memory rather than cache.
//!
//! `cargo run --release -p llama2 --example kernel_speed [q4_0|q4_1|q8_0|q4_k|q5_k|q6_k] [tokens] [copies] [threads] [rows] [cols]`
//!
//! K-quant matrices are random bytes with small positive f16 scales (no quantizer for
//! them here); the timing does not depend on the values.
use std::sync::Arc;
use std::time::Instant;

use llama2::kernels::{matmul_with, Matrix, Precision, WorkerPool};
use llama2::quant;
use llama2::tensor::{DType, Storage, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dtype = match args.get(1).map(String::as_str) {
        Some("q4_1") => DType::Q4_1,
        Some("q8_0") => DType::Q8_0,
        Some("q4_k") => DType::Q4_K,
        Some("q5_k") => DType::Q5_K,
        Some("q6_k") => DType::Q6_K,
        _ => DType::Q4_0,
    };
    let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(1);
    let copies: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(8);
    let rows: usize = args.get(5).and_then(|v| v.parse().ok()).unwrap_or(11008);
    let cols: usize = args.get(6).and_then(|v| v.parse().ok()).unwrap_or(4096);
    let mut seed = 1u64;
    let vals: Vec<f32> = (0..rows * cols)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    let mut bytes = Vec::new();
    if matches!(dtype, DType::Q4_K | DType::Q5_K | DType::Q6_K) {
        let bb = dtype.block_bytes();
        bytes = vals
            .iter()
            .take(rows * cols / 256 * bb)
            .map(|v| (v.to_bits() >> 7) as u8)
            .collect();
        let scale = half::f16::from_f32(0.001).to_bits().to_le_bytes();
        for blk in bytes.chunks_exact_mut(bb) {
            let at = if dtype == DType::Q6_K { 208 } else { 0 };
            blk[at..at + 2].copy_from_slice(&scale);
            if dtype != DType::Q6_K {
                blk[2..4].copy_from_slice(&scale);
            }
        }
    } else {
        quant::quantize(dtype, &vals, &mut bytes).unwrap();
    }
    let mats: Vec<Matrix> = (0..copies)
        .map(|_| {
            Matrix::new(Tensor {
                dtype,
                shape: vec![rows, cols],
                storage: Storage::Owned(Arc::new(bytes.clone())),
            })
            .unwrap()
        })
        .collect();
    let x: Vec<f32> = vals[..n * cols].to_vec();
    let mut out = vec![0.0f32; n * rows];
    let threads: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(1);
    let pool = WorkerPool::new(threads).unwrap();
    {
        for _ in 0..2 {
            for m in &mats {
                matmul_with(&pool, m, &x, &mut out, Precision::Fast);
            }
        }
        let reps = 5;
        let t = Instant::now();
        for _ in 0..reps {
            for m in &mats {
                matmul_with(&pool, m, &x, &mut out, Precision::Fast);
            }
        }
        let s = t.elapsed().as_secs_f64();
        let gb = (reps * copies * bytes.len()) as f64 / 1e9;
        println!(
            "{dtype:?} n={n}: {:.2} GB/s of weights, {:.3} ms per matrix",
            gb / s,
            s * 1e3 / (reps * copies) as f64
        );
    }
}
