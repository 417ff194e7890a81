//! `llama2 bench`: prompt-processing (`pp`) and generation (`tg`) speed in the style of
//! llama.cpp's `llama-bench`, on any model llama2 opens.

use std::path::PathBuf;

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::{Args, ValueEnum};
use llama2::model::{KvPool, SeqChunk, Workspace};
use llama2::{sampling, Llama};
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
pub enum Format {
    Md,
    Json,
}

/// Fixed pseudo-random token ids (the same every run).
pub fn bench_tokens(n: usize, vocab: usize, salt: u64) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i * 2654435761 + 12345 + salt * 40503) % vocab as u64) as u32)
        .collect()
}

/// Times one prefill of `n` tokens from an empty cache (logits of the last position
/// only), as `llama-bench`'s `pp` test does.
fn time_prefill(llama: &Llama, n: usize) -> Result<Duration> {
    let tokens = bench_tokens(n, llama.model().vocab_size(), 0);
    let kv_type = llama.engine().config().kv_type;
    Ok(llama.engine().exclusive(move |model, pool| {
        let mut kv = KvPool::new(model.args(), 1, n, kv_type)?;
        let rope = model.rope_table(n);
        let chunk = SeqChunk {
            slot: 0,
            start_pos: 0,
            tokens: &tokens,
            all_logits: false,
        };
        let (mut ws, mut logits) = (Workspace::new(), Vec::new());
        let start = Instant::now();
        model.forward(pool, &mut kv, &rope, &[chunk], &mut ws, &mut logits)?;
        Ok::<_, llama2::Error>(start.elapsed())
    })??)
}

/// Times `n` single-token decode steps (greedy, never stopping at EOS) after a
/// one-token prompt, as `llama-bench`'s `tg` test does.
fn time_decode(llama: &Llama, n: usize) -> Result<Duration> {
    let kv_type = llama.engine().config().kv_type;
    let first = llama.tokenizer().bos_id();
    Ok(llama.engine().exclusive(move |model, pool| {
        let mut kv = KvPool::new(model.args(), 1, n + 1, kv_type)?;
        let rope = model.rope_table(n + 1);
        let (mut ws, mut logits) = (Workspace::new(), Vec::new());
        let mut tok = first;
        let start = Instant::now();
        for pos in 0..n {
            let t = [tok];
            let chunk = SeqChunk {
                slot: 0,
                start_pos: pos,
                tokens: &t,
                all_logits: false,
            };
            model.forward(pool, &mut kv, &rope, &[chunk], &mut ws, &mut logits)?;
            tok = sampling::argmax(&logits);
        }
        Ok::<_, llama2::Error>(start.elapsed())
    })??)
}

/// The median of `v` (which keeps its order).
pub fn median(v: &[f64]) -> f64 {
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

/// Most repetitions of one test (each keeps its speed for the statistics).
const MAX_REPETITIONS: usize = 10_000;

/// Runs the benchmark and prints the table.
pub fn run(a: BenchArgs) -> Result<()> {
    if !(1..=MAX_REPETITIONS).contains(&a.repetitions) {
        usage!("--repetitions must be in 1..={MAX_REPETITIONS}");
    }
    let path = match &a.model {
        Some(p) => p.clone(),
        None => llama2_default_model::path_or_fetch()?,
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
        .saturating_add(1);
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
                "pp" => time_prefill(&llama, n),
                _ => time_decode(&llama, n),
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
