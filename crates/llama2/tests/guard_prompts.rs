//! Llama Guard prompt rendering against Meta's own sources:
//! - the built-in formats against `llama-cookbook`'s `prompt_format_utils` output
//!   (written at test time to `target/guard/prompts.json` by
//!   `scripts/record-guard-prompts.py`, which `scripts/test.sh` runs: the cookbook's
//!   text is not vendored), with the documented differences applied (messages
//!   stripped; Llama Guard 3 as its templates write it: `\n\n` after the user header,
//!   no trailing spaces after category names);
//! - the models' Hugging Face templates (`tests/fixtures/guard/templates`) rendered by
//!   our template path, against the built-in formats, with and without excluded
//!   categories;
//! - answers: safe, unsafe with one and several categories, garbage.

mod common;

use llama2::safety::{parse_answer, render_template, Category, GuardFormat};
use serde_json::Value;

fn reference() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/guard/prompts.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run `python3 scripts/record-guard-prompts.py` (scripts/test.sh does)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

fn format_of(version: &str) -> GuardFormat {
    match version {
        "llama_guard_1" => GuardFormat::LlamaGuard1,
        "llama_guard_2" => GuardFormat::LlamaGuard2,
        _ => GuardFormat::LlamaGuard3,
    }
}

fn template(name: &str) -> String {
    std::fs::read_to_string(
        common::fixtures()
            .join("guard/templates")
            .join(format!("{name}.jinja")),
    )
    .unwrap()
}

fn turns(messages: &[String]) -> Vec<(bool, &str)> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| (i % 2 == 0, m.as_str()))
        .collect()
}

#[test]
fn category_lists_are_the_cookbook_s() {
    let r = reference();
    for (version, format) in [
        ("llama_guard_1", GuardFormat::LlamaGuard1),
        ("llama_guard_2", GuardFormat::LlamaGuard2),
        ("llama_guard_3", GuardFormat::LlamaGuard3),
    ] {
        let want: Vec<(String, String)> = r["categories"][version]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let name = c["name"].as_str().unwrap().trim_end();
                (
                    c["code"].as_str().unwrap().to_string(),
                    name.trim_end_matches('.').to_string(),
                )
            })
            .collect();
        let got: Vec<(String, String)> = format
            .categories()
            .into_iter()
            .map(|c| (c.code, c.name))
            .collect();
        assert_eq!(got, want, "{version}");
    }
    // 1B: the 8B list without Code Interpreter Abuse.
    let one_b = GuardFormat::LlamaGuard3OneB.categories();
    assert_eq!(one_b.len(), 13);
    assert_eq!(one_b[..], GuardFormat::LlamaGuard3.categories()[..13]);
}

#[test]
fn builtin_formats_equal_the_cookbook_s_prompts() {
    let r = reference();
    let mut compared = 0;
    for case in r["cases"].as_array().unwrap() {
        let id = case["id"].as_str().unwrap();
        // Policy descriptions and renumbered exclusions are cookbook customisations the
        // models' own templates do not have (exclusions are checked against the 1B
        // template below).
        if case["with_policy"] == true || !case["excluded"].as_array().unwrap().is_empty() {
            continue;
        }
        let version = case["version"].as_str().unwrap();
        let messages: Vec<String> = serde_json::from_value(case["messages"].clone()).unwrap();
        let mut want = case["prompt"].as_str().unwrap().to_string();
        // Differences documented in SAFETY.md: messages are stripped ...
        for (i, m) in messages.iter().enumerate() {
            let who = if i % 2 == 0 { "User" } else { "Agent" };
            want = want.replacen(
                &format!("{who}: {m}"),
                &format!("{who}: {}", llama2::chat::python_strip(m)),
                1,
            );
        }
        let mut format = format_of(version);
        let kept: Vec<String> = serde_json::from_value(case["kept_codes"].clone()).unwrap();
        if format == GuardFormat::LlamaGuard3 {
            // ... and Llama Guard 3 is written as its templates write it.
            want = want
                .replacen("<|end_header_id|> Task", "<|end_header_id|>\n\nTask", 1)
                .replace(". \n", ".\n")
                .replacen("categories. <|eot_id|>", "categories.<|eot_id|>", 1);
            if kept.len() == 13 {
                format = GuardFormat::LlamaGuard3OneB;
                want = want.replacen("categories.<|eot_id|>", "categories. <|eot_id|>", 1);
            }
        }
        let categories: Vec<Category> = format.categories();
        let got = format.render(&turns(&messages), &categories);
        assert_eq!(got, want, "{id}");
        compared += 1;
    }
    assert!(compared >= 12, "{compared} cases compared");
}

#[test]
fn templates_render_as_the_builtin_formats() {
    let conversations: [&[&str]; 3] = [
        &["How do I bake a cake?"],
        &["  How do I bake a cake?\n", "Mix flour, eggs and sugar. "],
        &["Hi", "Hello! How can I help?", "Tell me a joke about élan"],
    ];
    for msgs in conversations {
        let t: Vec<(bool, &str)> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| (i % 2 == 0, *m))
            .collect();
        for (name, format, leading) in [
            ("Meta-Llama-Guard-2-8B", GuardFormat::LlamaGuard2, ""),
            ("Llama-Guard-3-8B", GuardFormat::LlamaGuard3, " "),
            ("Llama-Guard-3-1B", GuardFormat::LlamaGuard3OneB, ""),
        ] {
            let cats = format.categories();
            let got = render_template(&template(name), &t, &cats, &[]).unwrap();
            // The 8B template starts with a stray space before <|begin_of_text|>.
            let want = format!("{leading}{}", format.render(&t, &cats));
            assert_eq!(got, want, "{name} {msgs:?}");
        }
        // Exclusions (only the 1B template takes them): the lines are left out, the
        // codes kept.
        let cats = GuardFormat::LlamaGuard3OneB.categories();
        let excluded = vec!["S2".to_string(), "S11".to_string()];
        let got = render_template(&template("Llama-Guard-3-1B"), &t, &cats, &excluded).unwrap();
        let kept: Vec<Category> = cats
            .iter()
            .filter(|c| !excluded.contains(&c.code))
            .cloned()
            .collect();
        assert_eq!(got, GuardFormat::LlamaGuard3OneB.render(&t, &kept));
        assert!(!got.contains("S2: ") && got.contains("S3: Sex Crimes.\n"));
    }
}

#[test]
fn verdicts_are_parsed_or_refused() {
    assert_eq!(parse_answer("safe").unwrap(), (true, vec![]));
    assert_eq!(
        parse_answer("\n\nunsafe\nS1").unwrap(),
        (false, vec!["S1".to_string()])
    );
    assert_eq!(
        parse_answer(" unsafe\nO3,O5").unwrap(),
        (false, vec!["O3".to_string(), "O5".to_string()])
    );
    assert!(parse_answer("I cannot help with that").is_err());
    assert!(parse_answer("").is_err());
}
