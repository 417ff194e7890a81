//! What one Llama Guard check costs: the classifier prompt of a conversation of about
//! `--words` words (user question, assistant answer) rendered in the guard's format,
//! prefilled, and the verdict's tokens generated (`\n\nsafe<|eot_id|>`: 3 steps for
//! Llama Guard 3; `--answer-tokens`). Runs on any Llama Guard-shaped file, random
//! weights included (their answer is not read), so the cost can be measured at real
//! shapes without the real weights.
//!
//! ```text
//! cargo run --release --example guard_cost -- GUARD.gguf [--threads N] [--words 150] [--runs 5]
//! ```

use std::time::Instant;

use llama2::safety::{Guard, GuardOptions};
use llama2::{GenerationOptions, Message, Role};

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> llama2::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(path) = args.first() else {
        eprintln!(
            "usage: guard_cost GUARD [--threads N] [--words W] [--runs R] [--answer-tokens T]"
        );
        std::process::exit(2);
    };
    let threads = arg(&args, "--threads", 2);
    let words = arg(&args, "--words", 150);
    let runs = arg(&args, "--runs", 5).max(1);
    let answer_tokens = arg(&args, "--answer-tokens", 3);
    let guard = Guard::open(
        path,
        GuardOptions {
            threads: Some(threads),
            ..GuardOptions::default()
        },
    )?;
    let text = |n: usize, seed: usize| -> String {
        const W: [&str; 12] = [
            "the", "recipe", "needs", "flour", "water", "and", "a", "pinch", "of", "salt", "then",
            "bake",
        ];
        (0..n)
            .map(|i| W[(i * 7 + seed) % W.len()])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let dialog = |run: usize| {
        vec![
            Message::new(Role::User, text(words / 3, run)),
            Message::new(Role::Assistant, text(words - words / 3, run + 5)),
        ]
    };
    let tok = guard.llama().tokenizer();
    let conversation_tokens: usize = dialog(0)
        .iter()
        .map(|m| tok.encode(&m.content, false, false).len())
        .sum();
    let opts = GenerationOptions {
        temperature: 0.0,
        max_gen_len: Some(answer_tokens),
        ..Default::default()
    };
    let mut times = Vec::with_capacity(runs + 1);
    let mut prompt_len = 0;
    let mut reused = 0;
    // Run 0 is cold (first use of the weights); every run judges another conversation,
    // as real traffic does (the instructions before it are the same each time).
    for run in 0..=runs {
        let t = Instant::now();
        let ids = guard.encode(&dialog(run))?;
        prompt_len = ids.len();
        guard.llama().generate(&[ids], &opts)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        reused = guard.llama().last_stats().reused_tokens;
    }
    let cold = times[0];
    times.remove(0);
    times.sort_by(f64::total_cmp);
    println!(
        "{path}: format {}, {} threads: conversation {conversation_tokens} tokens, classifier \
         prompt {prompt_len} tokens, {answer_tokens} answer tokens: median {:.1} ms per \
         check (min {:.1}, max {:.1}, {runs} runs; first check {cold:.1} ms; prompt tokens \
         reused from the prefix cache: {reused})",
        guard.prompt().format().name(),
        guard.llama().threads(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
    );
    Ok(())
}
