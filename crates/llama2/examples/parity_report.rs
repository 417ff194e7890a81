//! How close llama2's logits and greedy tokens come to llama.cpp's, per prompt of a
//! parity fixture (`scripts/record-llama-cpp-parity.py [--more]`).
//!
//! `cargo run --release -p llama2 --example parity_report -- [FIXTURE] [MODEL]`
//! (defaults: `tests/fixtures/parity/smollm2-q4_1-more.json`, the fixture's model).
//!
//! Per prompt, a markdown row: teacher-forced on llama.cpp's tokens (one forward pass),
//! the largest |our logit − llama.cpp's| for llama.cpp's token and the steps where the
//! argmax agrees; free-running greedy, how many tokens equal llama.cpp's, against the
//! first step where llama.cpp's top-2 gap is below 0.1 (issue 14's target: max ≤ 0.05,
//! and equal up to that step).
use llama2::{GenerationOptions, Llama};
use serde_json::Value;

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_u64())
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

fn argmax(row: &[f32]) -> usize {
    // Ties go to the lowest id, as llama.cpp's greedy tool breaks them.
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let fixture = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("tests/fixtures/parity/smollm2-q4_1-more.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(fixture)?)?;
    let model = args
        .get(2)
        .cloned()
        .or_else(|| r["model"].as_str().map(String::from))
        .ok_or("no model given or named in the fixture")?;
    let llama = Llama::open(&model).max_seq_len(512).build()?;
    let vocab = llama.model().vocab_size();
    let eos = llama.eos_ids();
    println!(
        "| prompt | max \\|Δlogit\\| | argmax equal | greedy equal | llama.cpp's first gap < 0.1 |"
    );
    println!("| --- | ---: | ---: | ---: | ---: |");
    let (mut worst_all, mut short) = (0.0f32, 0);
    for c in r["cases"].as_array().ok_or("no cases")? {
        let name = c["name"].as_str().unwrap_or("?");
        let prompt = u32s(&c["prompt_ids"]);
        let steps = c["steps"].as_array().ok_or("no steps")?;
        let tokens: Vec<u32> = steps
            .iter()
            .filter_map(|s| s["token"].as_u64())
            .map(|t| t as u32)
            .collect();
        if tokens.len() != steps.len() || tokens.is_empty() || prompt.is_empty() {
            return Err(format!("{name}: malformed case").into());
        }
        let mut seq = prompt.clone();
        seq.extend_from_slice(&tokens[..tokens.len() - 1]);
        let logits = llama.logits(&seq)?;
        let (mut worst, mut agree) = (0.0f32, 0);
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(format!("{name}: token {bad} is outside the vocabulary").into());
        }
        for (i, (&want, s)) in tokens.iter().zip(steps).enumerate() {
            let row = &logits[(prompt.len() - 1 + i) * vocab..(prompt.len() + i) * vocab];
            let theirs = s["top1_logit"]
                .as_f64()
                .ok_or_else(|| format!("{name}: step {i} has no top1_logit"))?
                as f32;
            let d = (row[want as usize] - theirs).abs();
            // A NaN on either side is the worst difference, not a skipped one.
            worst = if d.is_nan() {
                f32::INFINITY
            } else {
                worst.max(d)
            };
            agree += usize::from(argmax(row) as u32 == want);
        }
        let tie = steps
            .iter()
            .position(|s| s["gap"].as_f64().is_some_and(|g| g < 0.1))
            .unwrap_or(steps.len());
        let opts = GenerationOptions {
            temperature: 0.0,
            max_gen_len: Some(steps.len()),
            ..Default::default()
        };
        let out = llama.generate(&[prompt], &opts)?;
        // Our output stops before an end-of-turn token (not returned); llama.cpp's record
        // has it as its last step, which counts as equal when we stopped there too.
        let mut want = tokens.clone();
        let stop = want.iter().position(|&t| eos.contains(&t));
        if let Some(i) = stop {
            want.truncate(i);
        }
        let got = &out[0].tokens;
        let mut equal = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        if stop.is_some() && equal == want.len() && got.len() == want.len() {
            equal += 1;
        }
        let reached = equal >= tie;
        short += usize::from(!reached);
        worst_all = worst_all.max(worst);
        println!(
            "| {name} | {worst:.3} | {agree}/{} | {equal}{} | {tie} |",
            steps.len(),
            if reached { "" } else { " (short)" }
        );
    }
    println!(
        "\nmax |Δlogit| over all prompts {worst_all:.3}; {short} prompt(s) part from llama.cpp before its first gap < 0.1"
    );
    Ok(())
}
