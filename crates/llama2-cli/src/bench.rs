//! `llama2 bench`: prompt-processing (`pp`) and generation (`tg`) speed in the style of
//! llama.cpp's `llama-bench`, on any model llama2 opens.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use llama2::Llama;
use serde_json::json;

/// Arguments of `llama2 bench`.
#[derive(Args)]
pub struct BenchArgs {
    /// Model (default: the default model).
    #[arg(short = 'm', long)]
    model: Option<PathBuf>,
    /// Tokenizer file when it is not beside the model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Prompt lengths to time (comma-separated; 0 to skip).
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    prompt: Vec<usize>,
    /// Generation lengths to time (comma-separated; 0 to skip).
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    generate: Vec<usize>,
    /// Thread counts (comma-separated; default: the physical cores).
    #[arg(short = 't', long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Repetitions of each test (after one warm-up run).
    #[arg(short = 'r', long, default_value_t = 5)]
    repetitions: usize,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Md)]
    output: Format,
}

#[derive(Clone, Copy, ValueEnum, PartialEq)]
enum Format {
    Md,
    Json,
}

/// The median of `v` (which keeps its order).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn stddev(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt()
}

/// Runs the benchmark and prints the table.
pub fn run(a: BenchArgs) -> Result<()> {
    if a.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    let path = match &a.model {
        Some(p) => p.clone(),
        None => llama2::default_model::path_or_fetch()?,
    };
    let threads = if a.threads.is_empty() {
        vec![llama2::kernels::default_threads()]
    } else {
        a.threads.clone()
    };
    let longest = a
        .prompt
        .iter()
        .chain(&a.generate)
        .copied()
        .max()
        .unwrap_or(1)
        + 1;
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    let name = path
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut rows = Vec::new();
    if a.output == Format::Md {
        println!("| model | size | threads | test | t/s (median) | ± sd | min | max |");
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    }
    for &t in &threads {
        let mut b = Llama::open(&path)
            .max_seq_len(longest)
            .max_batch_size(1)
            .threads(t);
        if let Some(tok) = &a.tokenizer {
            b = b.tokenizer(tok);
        }
        let llama = b.build()?;
        let tests = a
            .prompt
            .iter()
            .filter(|&&p| p > 0)
            .map(|&p| ("pp", p))
            .chain(a.generate.iter().filter(|&&n| n > 0).map(|&n| ("tg", n)));
        for (kind, n) in tests {
            let run = || match kind {
                "pp" => llama.bench_prefill(n),
                _ => llama.bench_decode(n),
            };
            run()?; // warm-up: page in the weights, size the allocations
            let mut speeds = Vec::with_capacity(a.repetitions);
            for _ in 0..a.repetitions {
                speeds.push(n as f64 / run()?.as_secs_f64());
            }
            let (sd, min, max) = (
                stddev(&speeds),
                speeds.iter().copied().fold(f64::INFINITY, f64::min),
                speeds.iter().copied().fold(0.0, f64::max),
            );
            let med = median(&speeds);
            let test = format!("{kind}{n}");
            if a.output == Format::Md {
                println!(
                    "| {name} | {:.2} MiB | {t} | {test} | {med:.2} | {sd:.2} | {min:.2} | {max:.2} |",
                    size as f64 / (1 << 20) as f64
                );
            }
            rows.push(json!({
                "model": path, "size_bytes": size, "threads": t, "test": test,
                "n_tokens": n, "repetitions": a.repetitions,
                // In the order the repetitions ran.
                "tokens_per_s": speeds,
                "median": med, "stddev": sd, "min": min, "max": max,
            }));
        }
    }
    if a.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}
