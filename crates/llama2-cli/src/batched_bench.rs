//! `llama2 batched-bench`: batched decoding speed in the shape of llama.cpp's
//! `llama-batched-bench`: for each prompt length PP, generation length TG and batch size
//! B, B sequences are prefilled with PP tokens each, then decoded TG steps together (B
//! tokens per step, logits for all of them); the table has the same columns.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use llama2::model::{KvPool, SeqChunk, Workspace};
use llama2::{sampling, Llama};
use serde_json::json;

use crate::bench::{bench_tokens, median, Format};

/// Tokens per forward pass while prefilling (llama.cpp's default micro-batch).
const PREFILL_TOKENS: usize = 512;

/// Arguments of `llama2 batched-bench`.
#[derive(Args)]
pub struct BatchedBenchArgs {
    /// Model (default: the default model).
    #[arg(short = 'm', long)]
    model: Option<PathBuf>,
    /// Tokenizer file when it is not beside the model.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Prompt tokens per sequence (comma-separated).
    #[arg(long = "npp", value_delimiter = ',', default_value = "128")]
    npp: Vec<usize>,
    /// Generated tokens per sequence (comma-separated).
    #[arg(long = "ntg", value_delimiter = ',', default_value = "64")]
    ntg: Vec<usize>,
    /// Sequences decoded together (comma-separated).
    #[arg(long = "npl", value_delimiter = ',', default_value = "1,4,8")]
    npl: Vec<usize>,
    /// Worker threads (default: the physical cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// KV cache type (default: f16 for quantized models, f32 otherwise).
    #[arg(long, value_enum)]
    kv_type: Option<crate::KvTypeArg>,
    /// Runs of each case after one warm-up run; the median run is reported.
    #[arg(short = 'r', long, default_value_t = 1)]
    repetitions: usize,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Md)]
    output: Format,
}

/// Seconds of the prefill and of the decode steps of one case.
fn run_case(llama: &Llama, pp: usize, tg: usize, b: usize) -> Result<(f64, f64)> {
    let kv_type = llama.engine().config().kv_type;
    let vocab = llama.model().vocab_size();
    let prompts: Vec<Vec<u32>> = (0..b).map(|s| bench_tokens(pp, vocab, s as u64)).collect();
    Ok(llama.engine().exclusive(move |model, pool| {
        let ctx = pp + tg;
        let mut kv = KvPool::new(model.args(), b, ctx, kv_type)?;
        let rope = model.rope_table(ctx);
        let (mut ws, mut logits) = (Workspace::new(), Vec::new());
        // Prefill: the B prompts in passes of up to PREFILL_TOKENS tokens.
        let start = Instant::now();
        let mut pieces: Vec<(usize, usize, usize)> = Vec::new(); // (seq, from, to)
        let mut flush = |pieces: &mut Vec<(usize, usize, usize)>| -> llama2::Result<()> {
            if pieces.is_empty() {
                return Ok(());
            }
            let chunks: Vec<SeqChunk<'_>> = pieces
                .iter()
                .map(|&(s, from, to)| SeqChunk {
                    slot: s,
                    start_pos: from,
                    tokens: &prompts[s][from..to],
                    all_logits: false,
                })
                .collect();
            pieces.clear();
            model.forward(pool, &mut kv, &rope, &chunks, &mut ws, &mut logits)
        };
        let mut room = PREFILL_TOKENS;
        for s in 0..b {
            let mut from = 0;
            while from < pp {
                let to = (from + room).min(pp);
                pieces.push((s, from, to));
                room -= to - from;
                from = to;
                if room == 0 {
                    flush(&mut pieces)?;
                    room = PREFILL_TOKENS;
                }
            }
        }
        flush(&mut pieces)?;
        let t_pp = start.elapsed().as_secs_f64();
        // Decode: B tokens per step, each sequence's greedy next token.
        let mut next: Vec<u32> = vec![llama2_first(vocab); b];
        let start = Instant::now();
        for step in 0..tg {
            let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let chunks: Vec<SeqChunk<'_>> = toks
                .iter()
                .enumerate()
                .map(|(s, t)| SeqChunk {
                    slot: s,
                    start_pos: pp + step,
                    tokens: t,
                    all_logits: false,
                })
                .collect();
            model.forward(pool, &mut kv, &rope, &chunks, &mut ws, &mut logits)?;
            for (s, row) in logits.chunks_exact(vocab).enumerate() {
                next[s] = sampling::argmax(row);
            }
        }
        Ok::<_, llama2::Error>((t_pp, start.elapsed().as_secs_f64()))
    })??)
}

/// The first generated step's input token (any valid id: speed does not depend on it).
fn llama2_first(vocab: usize) -> u32 {
    (vocab / 2) as u32
}

/// Runs the benchmark and prints the table.
pub fn run(a: BatchedBenchArgs) -> Result<()> {
    if a.repetitions == 0 {
        usage!("--repetitions must be at least 1");
    }
    if [&a.npp, &a.ntg, &a.npl].iter().any(|v| v.contains(&0)) {
        usage!("-npp, -ntg and -npl values must be at least 1");
    }
    let path = match &a.model {
        Some(p) => p.clone(),
        None => llama2_default_model::path_or_fetch()?,
    };
    let max_b = a.npl.iter().copied().max().unwrap_or(1);
    let max_ctx = a.npp.iter().max().unwrap_or(&1) + a.ntg.iter().max().unwrap_or(&1);
    let mut builder = Llama::open(&path)
        .max_seq_len(max_ctx)
        .max_batch_size(max_b);
    if let Some(t) = a.threads {
        builder = builder.threads(t);
    }
    if let Some(t) = &a.tokenizer {
        builder = builder.tokenizer(t);
    }
    if let Some(t) = a.kv_type {
        builder = builder.kv_type(t.into());
    }
    let llama = builder.build()?;
    let threads = llama.threads();
    let kv = llama.engine().config().kv_type.name();
    if a.output == Format::Md {
        println!(
            "\nmain: model = {}, n_threads = {threads}, kv = {kv}\n",
            path.display()
        );
        println!("|    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |");
        println!("|-------|--------|------|--------|----------|----------|----------|----------|----------|----------|");
    }
    let mut rows = Vec::new();
    // Warm-up: page in the weights and repack them.
    run_case(&llama, a.npp[0].min(32), 2, 1)?;
    for &pp in &a.npp {
        for &tg in &a.ntg {
            for &b in &a.npl {
                let mut runs = Vec::with_capacity(a.repetitions);
                for _ in 0..a.repetitions {
                    runs.push(run_case(&llama, pp, tg, b)?);
                }
                let t_pp = median(&runs.iter().map(|r| r.0).collect::<Vec<_>>());
                let t_tg = median(&runs.iter().map(|r| r.1).collect::<Vec<_>>());
                let n_kv = b * (pp + tg);
                let (s_pp, s_tg) = ((b * pp) as f64 / t_pp, (b * tg) as f64 / t_tg);
                let t = t_pp + t_tg;
                let s = n_kv as f64 / t;
                if a.output == Format::Md {
                    println!(
                        "| {pp:5} | {tg:6} | {b:4} | {n_kv:6} | {t_pp:8.3} | {s_pp:8.2} | {t_tg:8.3} | {s_tg:8.2} | {t:8.3} | {s:8.2} |"
                    );
                }
                rows.push(json!({
                    "pp": pp, "tg": tg, "pl": b, "n_kv": n_kv,
                    "t_pp": t_pp, "speed_pp": s_pp, "t_tg": t_tg, "speed_tg": s_tg,
                    "t": t, "speed": s, "threads": threads, "kv_type": kv,
                }));
            }
        }
    }
    if a.output == Format::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(())
}
