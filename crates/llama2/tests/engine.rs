//! The continuous-batching engine: every request's greedy tokens and log-probabilities
//! (a function of its whole logits row) are bit-identical to the same request run alone,
//! whatever joins, leaves, is chunked, queued, cancelled or reuses a prefix around it;
//! sampled requests keep their answer for their seed; stop strings; many threads.

mod common;

use std::sync::Arc;
use std::thread;

use common::*;
use llama2::engine::{EventKind, Finished, RequestHandle};
use llama2::{FinishReason, KvType, Llama, Request, SeqOptions};

/// What one request produced.
#[derive(Debug, PartialEq)]
struct Outcome {
    tokens: Vec<u32>,
    /// Bits of each token's logprob and of its top-5 alternatives.
    logits_trace: Vec<Vec<(u32, u32)>>,
    text: String,
    reason: FinishReason,
}

fn collect(h: &RequestHandle) -> (Outcome, Finished) {
    let mut o = Outcome {
        tokens: Vec::new(),
        logits_trace: Vec::new(),
        text: String::new(),
        reason: FinishReason::Cancelled,
    };
    while let Some(ev) = h.recv() {
        match ev.kind {
            EventKind::Token(t) => {
                o.tokens.push(t.id);
                let mut trace = vec![(t.id, t.logprob.map_or(0, f32::to_bits))];
                trace.extend(t.top_logprobs.iter().map(|(i, l)| (*i, l.to_bits())));
                o.logits_trace.push(trace);
                o.text.push_str(&t.text);
            }
            EventKind::Done(f) => {
                o.text.push_str(&f.text);
                o.reason = f.reason;
                return (o, f);
            }
            EventKind::Failed(e) => panic!("request failed: {e}"),
        }
    }
    panic!("the engine ended a request without Done");
}

enum Model {
    /// The f32 Meta checkpoint (f32 KV cache).
    MetaF32,
    /// The Q8_0 GGUF (integer kernels, f16 KV cache).
    GgufQ8,
}

fn engine(model: &Model, slots: usize, step_tokens: usize) -> Llama {
    let b = match model {
        Model::MetaF32 => Llama::builder(model_dir("tiny-gqa").join("meta"), tokenizer_path()),
        Model::GgufQ8 => Llama::open(model_dir("tiny-gqa").join("gguf/tiny-gqa-q8_0.gguf")),
    };
    b.max_seq_len(96)
        .max_batch_size(slots)
        .step_tokens(step_tokens)
        .threads(2)
        .build()
        .unwrap()
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    let mut p = vec![1];
    p.extend((1..len as u32).map(|i| 3 + (i * 37 + salt * 101) % 250));
    p
}

fn greedy(max: usize) -> SeqOptions {
    SeqOptions {
        max_tokens: Some(max),
        ignore_eos: true,
        logprobs: true,
        top_logprobs: 5,
        ..SeqOptions::default()
    }
}

fn req(prompt: Vec<u32>, options: SeqOptions) -> Request {
    Request {
        prompt,
        options,
        tag: 0,
    }
}

/// Each request alone on a fresh engine, its prompt in one pass.
fn solo(model: &Model, requests: &[Request]) -> Vec<Outcome> {
    requests
        .iter()
        .map(|r| {
            let llama = engine(model, 1, 512);
            let h = llama.engine().submit(r.clone()).unwrap();
            collect(&h).0
        })
        .collect()
}

fn busy_batch_is_bit_identical_to_solo(model: Model) {
    // Prompts longer than the 7-token step budget are prefilled in pieces; six requests
    // on four slots queue, and reuse the slots of those that finish.
    let lens = [20, 3, 33, 9, 15, 26];
    let requests: Vec<Request> = lens
        .iter()
        .enumerate()
        .map(|(i, &n)| req(prompt(n, i as u32), greedy(12 + 3 * i)))
        .collect();
    let want = solo(&model, &requests);
    let llama = engine(&model, 4, 7);
    let e = llama.engine();
    // Two start; the rest join while those are decoding.
    let first: Vec<RequestHandle> = requests[..2]
        .iter()
        .map(|r| e.submit(r.clone()).unwrap())
        .collect();
    let ev = first[0].recv().unwrap();
    let EventKind::Token(t0) = ev.kind else {
        panic!("expected a token")
    };
    let rest: Vec<RequestHandle> = requests[2..]
        .iter()
        .map(|r| e.submit(r.clone()).unwrap())
        .collect();
    let (mut got0, _) = collect(&first[0]);
    got0.tokens.insert(0, t0.id);
    let mut trace = vec![(t0.id, t0.logprob.unwrap().to_bits())];
    trace.extend(t0.top_logprobs.iter().map(|(i, l)| (*i, l.to_bits())));
    got0.logits_trace.insert(0, trace);
    got0.text.insert_str(0, &t0.text);
    assert_eq!(got0, want[0], "request 0");
    let mut all = vec![collect(&first[1]).0];
    all.extend(rest.iter().map(|h| collect(h).0));
    for (i, (got, want)) in all.iter().zip(&want[1..]).enumerate() {
        assert_eq!(got, want, "request {}", i + 1);
        assert_eq!(got.reason, FinishReason::Length);
    }
}

#[test]
fn busy_batch_is_bit_identical_to_solo_f32() {
    busy_batch_is_bit_identical_to_solo(Model::MetaF32);
}

#[test]
fn busy_batch_is_bit_identical_to_solo_quantized_f16_kv() {
    busy_batch_is_bit_identical_to_solo(Model::GgufQ8);
}

/// A cancelled request ends as cancelled and its slot serves the queued one (the
/// one-step bound itself is tested on the scheduler, stepped by hand).
#[test]
fn cancelled_request_frees_its_slot_for_the_queued_one() {
    let llama = Llama::builder(model_dir("tiny-gqa").join("meta"), tokenizer_path())
        .max_seq_len(4096)
        .max_batch_size(1)
        .threads(2)
        .build()
        .unwrap();
    let e = llama.engine();
    // Up to 4000 tokens: far longer than the few reads below take.
    let long = e.submit(req(prompt(10, 1), greedy(4000))).unwrap();
    let queued = req(prompt(12, 2), greedy(10));
    let want = solo(&Model::MetaF32, std::slice::from_ref(&queued));
    let next = e.submit(queued).unwrap();
    for _ in 0..3 {
        assert!(matches!(long.recv().unwrap().kind, EventKind::Token(_)));
    }
    long.cancel();
    let done = loop {
        match long.recv().unwrap().kind {
            EventKind::Token(_) => {}
            EventKind::Done(f) => break f,
            EventKind::Failed(err) => panic!("{err}"),
        }
    };
    assert_eq!(done.reason, FinishReason::Cancelled);
    assert!(done.generated_tokens < 4000);
    assert_eq!(collect(&next).0, want[0]);
    // Dropping a handle cancels too: the slot is free again for the next request.
    drop(e.submit(req(prompt(10, 3), greedy(4000))).unwrap());
    let last = req(prompt(8, 4), greedy(5));
    let want = solo(&Model::MetaF32, std::slice::from_ref(&last));
    assert_eq!(collect(&e.submit(last).unwrap()).0, want[0]);
}

#[test]
fn next_turn_reuses_the_cached_prefix_and_answers_the_same() {
    for model in [Model::MetaF32, Model::GgufQ8] {
        let llama = engine(&model, 2, 512);
        let e = llama.engine();
        let first = prompt(30, 5);
        let (o1, f1) = collect(&e.submit(req(first.clone(), greedy(10))).unwrap());
        assert_eq!(f1.cached_tokens, 0);
        let mut second = first.clone();
        second.extend(&o1.tokens);
        second.extend(prompt(6, 9));
        let r2 = req(second.clone(), greedy(10));
        let (o2, f2) = collect(&e.submit(r2.clone()).unwrap());
        // Every fed token of the first turn (the last generated one was never fed).
        assert_eq!(f2.cached_tokens, first.len() + o1.tokens.len() - 1);
        assert_eq!(o2, solo(&model, &[r2])[0]);
    }
}

#[test]
fn a_seed_gives_the_same_sample_alone_and_in_a_busy_batch() {
    let sampled = |seed| SeqOptions {
        temperature: 1.0,
        top_p: 0.95,
        seed,
        ..greedy(24)
    };
    let target = req(prompt(11, 7), sampled(42));
    let want = solo(&Model::GgufQ8, std::slice::from_ref(&target))[0]
        .tokens
        .clone();
    let llama = engine(&Model::GgufQ8, 4, 5);
    let e = llama.engine();
    let others: Vec<RequestHandle> = (0..3)
        .map(|i| {
            e.submit(req(prompt(9 + 4 * i, i as u32), sampled(i as u64)))
                .unwrap()
        })
        .collect();
    let got = collect(&e.submit(target).unwrap()).0.tokens;
    assert_eq!(got, want);
    // Another seed gives another answer (the test could fail).
    let other = req(prompt(11, 7), sampled(43));
    assert_ne!(collect(&e.submit(other).unwrap()).0.tokens, want);
    drop(others);
}

#[test]
fn stop_strings_straddling_tokens_end_the_text_and_are_never_streamed() {
    let llama = engine(&Model::MetaF32, 2, 512);
    let e = llama.engine();
    let p = prompt(9, 3);
    let (full, _) = collect(&e.submit(req(p.clone(), greedy(40))).unwrap());
    let tok = llama.tokenizer();
    // A stop string made of the end of one token's text and the start of the next.
    let texts: Vec<String> = (1..=full.tokens.len())
        .map(|n| tok.decode(&full.tokens[..n]).unwrap())
        .collect();
    let (cut, stop) = (1..texts.len() - 1)
        .find_map(|i| {
            let (a, b) = (&texts[i - 1], &texts[i]);
            let (prev, this) = (a.chars().last()?, b[a.len()..].chars().next()?);
            let s = format!("{prev}{this}");
            let at = full.text.find(&s)?;
            (at + prev.len_utf8() == a.len()).then_some((at, s))
        })
        .expect("some adjacent tokens with text on both sides");
    let with_stop = SeqOptions {
        stop_strings: vec!["never appears \u{1}".into(), stop.clone()],
        ..greedy(40)
    };
    let h = e.submit(req(p, with_stop)).unwrap();
    let mut shown = String::new();
    let reason = loop {
        match h.recv().unwrap().kind {
            EventKind::Token(t) => {
                shown.push_str(&t.text);
                // What is shown is always a prefix of the final text.
                assert!(
                    full.text[..cut].starts_with(&shown),
                    "{shown:?} vs {stop:?}"
                );
            }
            EventKind::Done(f) => {
                shown.push_str(&f.text);
                break f.reason;
            }
            EventKind::Failed(err) => panic!("{err}"),
        }
    };
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(shown, full.text[..cut]);
}

#[test]
fn many_threads_submit_at_once() {
    let llama = Arc::new(engine(&Model::GgufQ8, 3, 16));
    let requests: Vec<Request> = (0..8)
        .map(|i| req(prompt(5 + 3 * i, i as u32), greedy(10 + i)))
        .collect();
    let want = solo(&Model::GgufQ8, &requests);
    let handles: Vec<_> = requests
        .into_iter()
        .map(|r| {
            let llama = Arc::clone(&llama);
            thread::spawn(move || collect(&llama.engine().submit(r).unwrap()).0)
        })
        .collect();
    for (h, want) in handles.into_iter().zip(&want) {
        assert_eq!(&h.join().unwrap(), want);
    }
    // The Meta API from several threads at once: each answer as alone.
    let opts = llama2::GenerationOptions {
        temperature: 0.0,
        max_gen_len: Some(12),
        ..Default::default()
    };
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| prompt(4 + 5 * i, i as u32)).collect();
    let alone: Vec<_> = prompts
        .iter()
        .map(|p| llama.generate(std::slice::from_ref(p), &opts).unwrap())
        .collect();
    let threads: Vec<_> = prompts
        .into_iter()
        .map(|p| {
            let (llama, opts) = (Arc::clone(&llama), opts.clone());
            thread::spawn(move || llama.generate(&[p], &opts).unwrap())
        })
        .collect();
    for (t, want) in threads.into_iter().zip(alone) {
        assert_eq!(t.join().unwrap(), want);
    }
}

#[test]
fn invalid_requests_are_refused_before_scheduling() {
    let llama = engine(&Model::MetaF32, 1, 512);
    let e = llama.engine();
    assert!(e.submit(req(Vec::new(), greedy(1))).is_err());
    assert!(e.submit(req(prompt(97, 0), greedy(1))).is_err());
    assert!(e.submit(req(vec![1, 99_999], greedy(1))).is_err());
    let bad = |o: SeqOptions| e.submit(req(prompt(4, 0), o)).is_err();
    assert!(bad(SeqOptions {
        temperature: -1.0,
        ..greedy(1)
    }));
    assert!(bad(SeqOptions {
        top_logprobs: 21,
        ..greedy(1)
    }));
    assert!(bad(SeqOptions {
        stop_strings: vec!["x".repeat(300)],
        ..greedy(1)
    }));
    // The engine still serves a good one.
    let ok = req(prompt(4, 0), greedy(3));
    assert_eq!(collect(&e.submit(ok).unwrap()).0.tokens.len(), 3);
}

#[test]
fn echo_logprobs_cover_the_prompt_even_with_nothing_to_generate() {
    let llama = engine(&Model::MetaF32, 2, 5);
    let p = prompt(14, 8);
    let opts = |n| llama2::GenerationOptions {
        temperature: 0.0,
        max_gen_len: Some(n),
        logprobs: true,
        echo: true,
        ..Default::default()
    };
    let none = llama.generate(std::slice::from_ref(&p), &opts(0)).unwrap();
    let some = llama.generate(std::slice::from_ref(&p), &opts(3)).unwrap();
    let lp = none[0].logprobs.as_ref().unwrap();
    assert_eq!(none[0].tokens, p);
    assert_eq!(lp.len(), p.len());
    assert_eq!(lp[..], some[0].logprobs.as_ref().unwrap()[..p.len()]);
    assert!(lp[1..].iter().all(|l| *l < 0.0));
}

#[test]
fn f16_kv_reserves_half_of_f32() {
    let build = |t| {
        Llama::open(model_dir("tiny-gqa").join("gguf/tiny-gqa-q8_0.gguf"))
            .max_seq_len(64)
            .max_batch_size(3)
            .kv_type(t)
            .build()
            .unwrap()
    };
    let (f16, f32) = (build(KvType::F16), build(KvType::F32));
    // 3 slots x 64 positions x 3 layers x (keys + values) x kv_dim 16.
    assert_eq!(f32.engine().kv_reserved_bytes(), 3 * 64 * 3 * 2 * 16 * 4);
    assert_eq!(
        f16.engine().kv_reserved_bytes() * 2,
        f32.engine().kv_reserved_bytes()
    );
}

#[test]
fn out_of_range_settings_are_refused_before_anything_is_reserved() {
    let open = || {
        Llama::builder(model_dir("tiny-gqa").join("meta"), tokenizer_path())
            .max_seq_len(96)
            .max_batch_size(2)
            .threads(1)
    };
    let refused = |b: llama2::LlamaBuilder, what: &str| match b.build() {
        Err(llama2::Error::InvalidArgument(m)) => assert!(m.contains(what), "{m}"),
        other => panic!("{what}: expected a refusal, got {other:?}"),
    };
    refused(open().max_seq_len(usize::MAX), "context");
    refused(
        open().max_seq_len(llama2::engine::MAX_CONTEXT + 1),
        "context",
    );
    refused(
        open().max_batch_size(llama2::engine::MAX_SLOTS + 1),
        "slots",
    );
    refused(open().threads(llama2::engine::max_threads() + 1), "threads");
    refused(open().step_tokens(usize::MAX), "step_tokens");
    // The largest context and slots the ranges allow still need far more memory than
    // any machine running these tests has: the memory check refuses them.
    refused(
        open()
            .max_seq_len(llama2::engine::MAX_CONTEXT)
            .max_batch_size(llama2::engine::MAX_SLOTS),
        "memory",
    );
    assert!(open().build().is_ok());
}
