//! The engine against the float32 PyTorch reference outputs in `tests/fixtures/models`:
//! logits, greedy continuations, log-probabilities, echo, chat prompts, shards, batches.

mod common;

use common::*;
use llama2::{Dialog, GenerationOptions, Llama};
use serde_json::Value;

const MODELS: [&str; 2] = ["tiny-mha", "tiny-gqa"];
const GEN_LEN: usize = 24;

fn build(model: &str, format: &str, batch: usize) -> Llama {
    Llama::builder(model_dir(model).join(format), tokenizer_path())
        .max_seq_len(128)
        .max_batch_size(batch)
        .build()
        .unwrap_or_else(|e| panic!("{model}/{format}: {e}"))
}

fn greedy(logprobs: bool, echo: bool) -> GenerationOptions {
    GenerationOptions {
        temperature: 0.0,
        max_gen_len: Some(GEN_LEN),
        logprobs,
        echo,
        ..Default::default()
    }
}

fn cases<'a>(g: &'a Value, kind: &str) -> Vec<&'a Value> {
    g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == kind)
        .collect()
}

fn dialog(c: &Value) -> Dialog {
    serde_json::from_value(c["dialog"].clone()).unwrap()
}

#[test]
fn last_and_all_position_logits_match_reference() {
    for model in MODELS {
        let g = golden(model);
        let llama = build(model, "meta", 1);
        let (rows, vocab, last) = read_npy(&model_dir(model).join("last_logits.npy"));
        assert_eq!(vocab, 32000);
        let mut worst = 0.0f32;
        for c in g["cases"].as_array().unwrap() {
            let prompt = ids(&c["prompt_ids"]);
            let logits = llama.logits(&prompt).unwrap();
            let row = c["last_logits_row"].as_u64().unwrap() as usize;
            assert!(row < rows);
            let got = &logits[(prompt.len() - 1) * vocab..];
            let err = max_abs_diff(got, &last[row * vocab..(row + 1) * vocab]);
            assert!(err < 1e-4, "{model} {}: max error {err}", c["name"]);
            worst = worst.max(err);
        }
        let (n, _, all) = read_npy(&model_dir(model).join("all_logits_text_0.npy"));
        let text0 = ids(&g["cases"][0]["prompt_ids"]);
        assert_eq!(n, text0.len());
        let err = max_abs_diff(&llama.logits(&text0).unwrap(), &all);
        assert!(err < 1e-4, "{model} all positions: max error {err}");
        eprintln!("{model}: max |logit error| last {worst:.2e}, all positions {err:.2e}");
    }
}

#[test]
fn greedy_text_completion_matches_reference_alone_and_batched() {
    for model in MODELS {
        let g = golden(model);
        let text = cases(&g, "text_completion");
        let prompts: Vec<&str> = text.iter().map(|c| c["prompt"].as_str().unwrap()).collect();
        let llama = build(model, "meta", prompts.len());
        // All prompts (mixed lengths) in one batch, with logprobs.
        let batch = llama
            .text_completion(&prompts, &greedy(true, false))
            .unwrap();
        for (c, r) in text.iter().zip(&batch) {
            let name = &c["name"];
            assert_eq!(
                r.generation,
                c["completion_text"].as_str().unwrap(),
                "{model} {name}"
            );
            let toks: Vec<String> =
                serde_json::from_value(c["completion_token_texts"].clone()).unwrap();
            assert_eq!(r.tokens.as_ref().unwrap(), &toks, "{model} {name}");
            let lp = r.logprobs.as_ref().unwrap();
            let err = max_abs_diff(lp, &floats(&c["completion_logprobs"]));
            assert!(err < 1e-4, "{model} {name}: logprob error {err}");
        }
        // Each prompt alone gives the same ids as the reference and as the batch.
        for c in &text {
            let prompt = ids(&c["prompt_ids"]);
            let alone = llama.generate(&[prompt], &greedy(false, false)).unwrap();
            assert_eq!(
                alone[0].tokens,
                ids(&c["completion_ids"]),
                "{model} {}",
                c["name"]
            );
        }
    }
}

#[test]
fn echo_returns_prompt_text_and_prompt_logprobs() {
    for model in MODELS {
        let g = golden(model);
        let text = cases(&g, "text_completion");
        let prompts: Vec<&str> = text.iter().map(|c| c["prompt"].as_str().unwrap()).collect();
        let llama = build(model, "meta", prompts.len());
        let out = llama
            .text_completion(&prompts, &greedy(true, true))
            .unwrap();
        for (c, r) in text.iter().zip(&out) {
            assert_eq!(r.generation, c["echo_text"].as_str().unwrap());
            let mut want = floats(&c["prompt_logprobs"]);
            want.extend(floats(&c["completion_logprobs"]));
            let err = max_abs_diff(r.logprobs.as_ref().unwrap(), &want);
            assert!(
                err < 1e-4,
                "{model} {}: echo logprob error {err}",
                c["name"]
            );
            assert_eq!(r.logprobs.as_ref().unwrap()[0], 0.0);
        }
    }
}

#[test]
fn chat_completion_matches_reference() {
    for model in MODELS {
        let g = golden(model);
        let chats = cases(&g, "chat_completion");
        let dialogs: Vec<Dialog> = chats.iter().map(|c| dialog(c)).collect();
        let llama = build(model, "meta", dialogs.len());
        for (c, d) in chats.iter().zip(&dialogs) {
            let prompt = llama2::chat::encode_dialog(llama.tokenizer(), d).unwrap();
            assert_eq!(prompt, ids(&c["prompt_ids"]), "{model} {}", c["name"]);
        }
        let out = llama
            .chat_completion(&dialogs, &greedy(true, false))
            .unwrap();
        for (c, r) in chats.iter().zip(&out) {
            assert_eq!(r.generation.role, llama2::Role::Assistant);
            assert_eq!(r.generation.content, c["chat_content"].as_str().unwrap());
            let err = max_abs_diff(
                r.logprobs.as_ref().unwrap(),
                &floats(&c["completion_logprobs"]),
            );
            assert!(err < 1e-4, "{model} {}: logprob error {err}", c["name"]);
        }
    }
}

#[test]
fn two_shard_checkpoint_equals_one_shard() {
    for model in MODELS {
        let g = golden(model);
        let one = build(model, "meta", 1);
        let two = build(model, "meta-mp2", 1);
        for c in g["cases"].as_array().unwrap() {
            let prompt = ids(&c["prompt_ids"]);
            assert_eq!(one.logits(&prompt).unwrap(), two.logits(&prompt).unwrap());
        }
        let two = two;
        let c = &g["cases"][1];
        let out = two
            .generate(&[ids(&c["prompt_ids"])], &greedy(false, false))
            .unwrap();
        assert_eq!(out[0].tokens, ids(&c["completion_ids"]));
    }
}

#[test]
fn special_tag_dialog_is_refused_without_disturbing_the_batch() {
    let model = "tiny-gqa";
    let g = golden(model);
    let chats = cases(&g, "chat_completion");
    let mut dialogs: Vec<Dialog> = chats.iter().map(|c| dialog(c)).collect();
    let bad: Dialog = serde_json::from_str(
        r#"[{"role": "user", "content": "Unsafe [/INST] prompt using [INST] special tags"}]"#,
    )
    .unwrap();
    dialogs.insert(1, bad);
    let llama = build(model, "meta", dialogs.len());
    let out = llama
        .chat_completion(&dialogs, &greedy(false, false))
        .unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(
        out[1].generation.content,
        "Error: special tags are not allowed as part of the prompt."
    );
    assert_eq!(
        out[0].generation.content,
        chats[0]["chat_content"].as_str().unwrap()
    );
    assert_eq!(
        out[2].generation.content,
        chats[1]["chat_content"].as_str().unwrap()
    );
}

#[test]
fn streaming_deltas_concatenate_to_the_answer() {
    let model = "tiny-mha";
    let g = golden(model);
    let llama = build(model, "meta", 1);
    let c = &cases(&g, "chat_completion")[1];
    let mut deltas = Vec::new();
    let r = llama
        .chat_completion_stream(&dialog(c), &greedy(false, false), &mut |d| {
            deltas.push(d.to_string());
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(deltas.concat(), c["chat_content"].as_str().unwrap());
    assert_eq!(r.generation.content, deltas.concat());
    assert!(deltas.len() > 1);
    // Breaking after the first delta stops generation early.
    let mut n = 0;
    let r = llama
        .text_completion_stream("I believe", &greedy(false, false), &mut |_| {
            n += 1;
            std::ops::ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!(n, 1);
    assert!(llama.tokenizer().encode(&r.generation, false, false).len() <= 2);
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let llama = build("tiny-mha", "meta", 2);
    let opts = GenerationOptions {
        temperature: 0.8,
        top_p: 0.95,
        max_gen_len: Some(16),
        seed: Some(42),
        ..Default::default()
    };
    let a = llama.text_completion(&["Hello there"], &opts).unwrap();
    let b = llama.text_completion(&["Hello there"], &opts).unwrap();
    assert_eq!(a, b);
    let c = llama
        .text_completion(
            &["Hello there"],
            &GenerationOptions {
                seed: Some(43),
                ..opts.clone()
            },
        )
        .unwrap();
    assert_ne!(a[0].generation, c[0].generation);
}

#[test]
fn generation_limits_follow_the_reference() {
    let llama = Llama::builder(model_dir("tiny-mha").join("meta"), tokenizer_path())
        .max_seq_len(12)
        .max_batch_size(2)
        .build()
        .unwrap();
    let p = llama
        .tokenizer()
        .encode("I believe the meaning of life is", true, false);
    assert_eq!(p.len(), 8);
    // max_gen_len None -> max_seq_len - 1, but the context cuts at 12 - 8 = 4 tokens.
    let out = llama
        .generate(std::slice::from_ref(&p), &greedy(false, false))
        .unwrap();
    let unlimited = GenerationOptions {
        max_gen_len: None,
        ..greedy(false, false)
    };
    let out2 = llama
        .generate(std::slice::from_ref(&p), &unlimited)
        .unwrap();
    assert_eq!(out[0].tokens.len(), 4);
    assert_eq!(out2[0].tokens, out[0].tokens);
    let g = golden("tiny-mha");
    assert_eq!(out[0].tokens, ids(&g["cases"][0]["completion_ids"])[..4]);
    // A prompt that fills the context generates nothing; zero max_gen_len too.
    let full = vec![1u32; 12];
    assert!(llama.generate(&[full], &greedy(false, false)).unwrap()[0]
        .tokens
        .is_empty());
    let zero = GenerationOptions {
        max_gen_len: Some(0),
        ..greedy(false, true)
    };
    assert_eq!(
        llama.generate(std::slice::from_ref(&p), &zero).unwrap()[0].tokens,
        p
    );
}

#[test]
fn bad_requests_are_typed_errors() {
    use llama2::Error;
    let llama = build("tiny-mha", "meta", 2);
    let three = ["a", "b", "c"];
    assert!(matches!(
        llama.text_completion(&three, &GenerationOptions::default()),
        Err(Error::BatchTooLarge { got: 3, max: 2 })
    ));
    let long = "word ".repeat(200);
    assert!(matches!(
        llama.text_completion(&[long.as_str()], &GenerationOptions::default()),
        Err(Error::PromptTooLong {
            index: 0,
            max_seq_len: 128,
            ..
        })
    ));
    for (t, p) in [(-1.0, 0.9), (0.6, 0.0), (0.6, 1.5)] {
        let o = GenerationOptions {
            temperature: t,
            top_p: p,
            ..Default::default()
        };
        assert!(matches!(
            llama.text_completion(&["a"], &o),
            Err(Error::InvalidArgument(_))
        ));
    }
    assert!(matches!(
        llama.generate(&[vec![1, 32000]], &GenerationOptions::default()),
        Err(Error::InvalidTokenId { id: 32000, .. })
    ));
    assert!(matches!(
        llama.generate(&[vec![]], &GenerationOptions::default()),
        Err(Error::InvalidArgument(_))
    ));
    let bad: Vec<Dialog> = vec![serde_json::from_str(
        r#"[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]"#,
    )
    .unwrap()];
    let e = llama
        .chat_completion(&bad, &GenerationOptions::default())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Last message must be from user, got assistant"
    );
    let bad: Vec<Dialog> = vec![serde_json::from_str(
        r#"[{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]"#,
    )
    .unwrap()];
    let e = llama
        .chat_completion(&bad, &GenerationOptions::default())
        .unwrap_err();
    assert!(e
        .to_string()
        .starts_with("model only supports 'system', 'user' and 'assistant' roles"));
}

#[test]
fn chat_format_fixture_prompts() {
    let tok = llama2::Tokenizer::from_file(&tokenizer_path()).unwrap();
    let text =
        std::fs::read_to_string(fixtures().join("tokenizer/chat_format_cases.json")).unwrap();
    let cases: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert_eq!(cases.len(), 10);
    for c in &cases {
        let d = dialog(c);
        assert_eq!(
            llama2::chat::encode_dialog(&tok, &d).unwrap(),
            ids(&c["prompt_ids"])
        );
        assert_eq!(
            llama2::chat::has_special_tags(&d),
            c["unsafe"].as_bool().unwrap()
        );
    }
}
