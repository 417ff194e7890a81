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
    /// Cache depths: each test runs after this many tokens are already in the cache
    /// (filled untimed before every repetition), as llama-bench's `-d`.
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    depth: Vec<usize>,
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

/// One test: `n` prompt tokens in one prefill (`pp`) or `n` single-token decode steps
/// (`tg`), after `depth` tokens already in the cache.
#[derive(Clone, Copy)]
struct Test {
    decode: bool,
    n: usize,
    depth: usize,
}

impl Test {
    /// llama-bench's name for the test: `pp512`, `tg128 @ d4096`.
    fn name(&self) -> String {
        let kind = if self.decode { "tg" } else { "pp" };
        match self.depth {
            0 => format!("{kind}{}", self.n),
            d => format!("{kind}{} @ d{d}", self.n),
        }
    }

    /// Positions the test needs in the cache.
    fn positions(&self) -> usize {
        self.depth.saturating_add(self.n).saturating_add(1)
    }

    fn time(&self, llama: &Llama) -> Result<Duration> {
        if self.decode {
            time_decode(llama, self.n, self.depth)
        } else {
            time_prefill(llama, self.n, self.depth)
        }
    }
}

/// Fills positions `0..depth` of slot 0 (untimed: the cache a test starts from).
fn fill_depth(
    model: &llama2::model::Transformer,
    pool: &llama2::kernels::WorkerPool,
    kv: &mut KvPool,
    rope: &llama2::kernels::RopeTable,
    depth: usize,
) -> llama2::Result<()> {
    if depth == 0 {
        return Ok(());
    }
    let tokens = bench_tokens(depth, model.vocab_size(), 1);
    let chunk = SeqChunk {
        slot: 0,
        start_pos: 0,
        tokens: &tokens,
        all_logits: false,
    };
    let (mut ws, mut logits) = (Workspace::new(), Vec::new());
    model.forward(pool, kv, rope, &[chunk], &mut ws, &mut logits)
}

/// Times one prefill of `n` tokens after `depth` cached ones (logits of the last
/// position only), as `llama-bench`'s `pp` test does.
fn time_prefill(llama: &Llama, n: usize, depth: usize) -> Result<Duration> {
    let tokens = bench_tokens(n, llama.model().vocab_size(), 0);
    let kv_type = llama.engine().config().kv_type;
    Ok(llama.engine().exclusive(move |model, pool| {
        let mut kv = KvPool::new(model.args(), 1, depth + n, kv_type)?;
        let rope = model.rope_table(depth + n);
        fill_depth(model, pool, &mut kv, &rope, depth)?;
        let chunk = SeqChunk {
            slot: 0,
            start_pos: depth,
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
/// one-token prompt at position `depth`, as `llama-bench`'s `tg` test does.
fn time_decode(llama: &Llama, n: usize, depth: usize) -> Result<Duration> {
    let kv_type = llama.engine().config().kv_type;
    let first = llama.tokenizer().bos_id();
    Ok(llama.engine().exclusive(move |model, pool| {
        let mut kv = KvPool::new(model.args(), 1, depth + n + 1, kv_type)?;
        let rope = model.rope_table(depth + n + 1);
        fill_depth(model, pool, &mut kv, &rope, depth)?;
        let (mut ws, mut logits) = (Workspace::new(), Vec::new());
        let mut tok = first;
        let start = Instant::now();
        for pos in depth..depth + n {
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
    let tests: Vec<Test> = a
        .depth
        .iter()
        .flat_map(|&depth| {
            let pp = a.prompt.iter().filter(|&&n| n > 0).map(move |&n| Test {
                decode: false,
                n,
                depth,
            });
            let tg = a.generate.iter().filter(|&&n| n > 0).map(move |&n| Test {
                decode: true,
                n,
                depth,
            });
            pp.chain(tg)
        })
        .collect();
    // The builder refuses a context past its limit with a clear message.
    let longest = tests.iter().map(Test::positions).max().unwrap_or(1);
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
        for test in &tests {
            let n = test.n;
            let run = || test.time(&llama);
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
            let name_of_test = test.name();
            if a.output == Format::Md {
                println!(
                    "| {name} | {:.2} MiB | {t} | {name_of_test} | {med:.2} | {sd:.2} | {min:.2} | {max:.2} |",
                    size as f64 / (1 << 20) as f64
                );
            }
            rows.push(json!({
                "model": path, "size_bytes": size, "threads": t, "test": name_of_test,
                "n_tokens": n, "n_depth": test.depth, "repetitions": a.repetitions,
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
