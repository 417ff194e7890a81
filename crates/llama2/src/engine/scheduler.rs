//! The step loop: admits waiting sequences into free KV slots (reusing a cached prefix
//! where one matches), fills a token budget per step with one decode token for every
//! running sequence plus pieces of prompts (chunked prefill), runs one forward pass,
//! samples per sequence and retires finished or cancelled ones.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::error::Error;
use crate::kernels::RopeTable;
#[cfg(test)]
use crate::kernels::WorkerPool;
use crate::model::{KvPool, SeqChunk, Transformer, Workspace};
use crate::tokenizer::Tokenizer;

use super::sequence::{EventKind, FinishReason, Sequence};
use super::{lock_pool, EngineGauges, SharedPool};

/// What a slot holds between requests.
#[derive(Debug, Default)]
struct SlotState {
    /// A running sequence owns it.
    busy: bool,
    /// Tokens whose keys and values are in the slot, from position 0.
    cached: Vec<u32>,
    /// Step at which it was last used (least recently used slots are taken first).
    last_used: u64,
}

/// The engine's state on its thread.
pub(crate) struct Scheduler {
    pub model: Arc<Transformer>,
    pub pool: SharedPool,
    pub tokenizer: Arc<Tokenizer>,
    pub eos_ids: Vec<u32>,
    kv: KvPool,
    rope: RopeTable,
    ws: Workspace,
    logits: Vec<f32>,
    slots: Vec<SlotState>,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    /// Most tokens per forward pass (decode tokens first, then prompt pieces).
    step_tokens: usize,
    steps: u64,
    gauges: Arc<EngineGauges>,
}

impl Scheduler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: Arc<Transformer>,
        pool: SharedPool,
        tokenizer: Arc<Tokenizer>,
        eos_ids: Vec<u32>,
        kv: KvPool,
        step_tokens: usize,
        gauges: Arc<EngineGauges>,
    ) -> Scheduler {
        let rope = model.rope_table(kv.ctx());
        let slots = (0..kv.slots()).map(|_| SlotState::default()).collect();
        Scheduler {
            model,
            pool,
            tokenizer,
            eos_ids,
            kv,
            rope,
            ws: Workspace::new(),
            logits: Vec::new(),
            slots,
            waiting: VecDeque::new(),
            running: Vec::new(),
            step_tokens: step_tokens.max(1),
            steps: 0,
            gauges,
        }
    }

    /// Whether any sequence is waiting or running.
    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Queues a validated sequence.
    pub fn enqueue(&mut self, seq: Sequence) {
        self.waiting.push_back(seq);
        self.publish();
    }

    /// Cancels everything (engine shutdown).
    pub fn cancel_all(&mut self) {
        for s in self.waiting.iter().chain(&self.running) {
            s.cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.retire_cancelled();
    }

    fn publish(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let g = &self.gauges;
        g.waiting.store(self.waiting.len(), Relaxed);
        g.running.store(self.running.len(), Relaxed);
        let used: usize = self.running.iter().map(|s| s.fed).sum();
        g.kv_used.store(used, Relaxed);
        g.steps.store(self.steps as usize, Relaxed);
    }

    /// Fails every waiting and running sequence (after a bug in a step) and empties every
    /// slot, whose contents are then suspect.
    pub fn fail_all(&mut self, msg: &str) {
        for s in self.waiting.drain(..).chain(self.running.drain(..)) {
            s.send(EventKind::Failed(Error::InvalidArgument(format!(
                "the engine failed: {msg}"
            ))));
        }
        for (i, st) in self.slots.iter_mut().enumerate() {
            *st = SlotState::default();
            self.kv.release(i);
        }
        self.publish();
    }

    /// Ends cancelled sequences, waiting or running, and frees their slots.
    fn retire_cancelled(&mut self) {
        let tok = Arc::clone(&self.tokenizer);
        self.waiting.retain_mut(|s| {
            if s.is_cancelled() {
                s.finish(FinishReason::Cancelled, &tok);
                false
            } else {
                true
            }
        });
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].is_cancelled() {
                let mut s = self.running.remove(i);
                s.finish(FinishReason::Cancelled, &tok);
                self.free_slot(&s);
            } else {
                i += 1;
            }
        }
    }

    /// Gives a finished sequence's slot back, keeping its tokens for prefix reuse.
    fn free_slot(&mut self, s: &Sequence) {
        let st = &mut self.slots[s.slot];
        st.busy = false;
        st.cached.clear();
        st.cached.extend_from_slice(&s.tokens[..s.fed]);
        st.last_used = self.steps;
    }

    /// Picks a slot for `prompt`: the free slot whose cached tokens it continues (at
    /// least half of them shared: the same conversation, as llama.cpp's slot
    /// similarity), the longest such prefix first; else an empty slot; else the least
    /// recently used. Returns (slot, reusable tokens).
    fn pick_slot(&self, prompt: &[u32], reuse: bool) -> Option<(usize, usize)> {
        let free = || self.slots.iter().enumerate().filter(|(_, s)| !s.busy);
        let continued = free()
            .filter(|_| reuse)
            .map(|(i, s)| {
                let same = s.cached.iter().zip(prompt).take_while(|(a, b)| a == b);
                // At least one prompt token must run, to give the logits to sample from.
                (i, same.count().min(prompt.len() - 1), s.cached.len())
            })
            .filter(|&(_, common, cached)| common > 0 && 2 * common >= cached)
            .max_by_key(|&(i, common, _)| (common, std::cmp::Reverse(i)));
        if let Some((i, common, _)) = continued {
            return Some((i, common));
        }
        free()
            .min_by_key(|(i, s)| (!s.cached.is_empty(), s.last_used, *i))
            .map(|(i, _)| (i, 0))
    }

    /// Moves waiting sequences into free slots, in arrival order.
    fn admit(&mut self) {
        while let Some(s) = self.waiting.front() {
            let Some((slot, reuse)) = self.pick_slot(&s.tokens, !s.opts.prompt_logprobs) else {
                break;
            };
            let mut s = self.waiting.pop_front().expect("front exists");
            self.slots[slot].busy = true;
            s.slot = slot;
            s.fed = reuse;
            s.cached = reuse;
            self.running.push(s);
        }
    }

    /// One engine step. Returns whether any work was done.
    pub fn step(&mut self) -> bool {
        self.retire_cancelled();
        self.admit();
        // A prompt that fills the context has nothing to generate (unless its prompt
        // log-probabilities are wanted: it runs, then ends at its first sample).
        let tok = Arc::clone(&self.tokenizer);
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].budget == 0 && !self.running[i].opts.prompt_logprobs {
                let mut s = self.running.remove(i);
                s.finish(FinishReason::Length, &tok);
                self.free_slot(&s);
            } else {
                i += 1;
            }
        }
        if self.running.is_empty() {
            self.publish();
            return false;
        }
        self.steps += 1;
        // Decode tokens first (every running stream advances), then prompt pieces in
        // admission order while the budget lasts.
        let mut plan: Vec<(usize, usize, usize)> = Vec::new(); // (running index, start, len)
        let mut budget = self.step_tokens;
        for (i, s) in self.running.iter().enumerate() {
            if s.pending() == 1 {
                plan.push((i, s.fed, 1));
                budget = budget.saturating_sub(1);
            }
        }
        for (i, s) in self.running.iter().enumerate() {
            if s.pending() > 1 && budget > 0 {
                let take = s.pending().min(budget);
                plan.push((i, s.fed, take));
                budget -= take;
            }
        }
        let chunks: Vec<SeqChunk<'_>> = plan
            .iter()
            .map(|&(i, start, len)| {
                let s = &self.running[i];
                SeqChunk {
                    slot: s.slot,
                    start_pos: start,
                    tokens: &s.tokens[start..start + len],
                    all_logits: s.opts.prompt_logprobs && start < s.prompt_len,
                }
            })
            .collect();
        let (model, pool, kv, rope, ws, logits) = (
            &self.model,
            &self.pool,
            &mut self.kv,
            &self.rope,
            &mut self.ws,
            &mut self.logits,
        );
        let result = catch_unwind(AssertUnwindSafe(|| {
            // Engines sharing the pool (a chat model and its guard) take turns by step.
            model.forward(&lock_pool(pool), kv, rope, &chunks, ws, logits)
        }));
        let rows: Vec<usize> = chunks
            .iter()
            .map(|c| if c.all_logits { c.tokens.len() } else { 1 })
            .collect();
        drop(chunks);
        let failure = match result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(p) => Some(panic_message(&p)),
        };
        if let Some(msg) = failure {
            // Fail only the sequences of this step; their slots' contents are suspect.
            let mut failed: Vec<usize> = plan.iter().map(|p| p.0).collect();
            failed.sort_unstable();
            for &i in failed.iter().rev() {
                let s = self.running.remove(i);
                s.send(EventKind::Failed(Error::InvalidArgument(format!(
                    "the forward pass failed: {msg}"
                ))));
                self.kv.release(s.slot);
                let st = &mut self.slots[s.slot];
                st.busy = false;
                st.cached.clear();
            }
            self.publish();
            return true;
        }
        let vocab = self.model.vocab_size();
        let mut done: Vec<(usize, FinishReason)> = Vec::new();
        let mut row = 0;
        for (&(i, start, len), &n_rows) in plan.iter().zip(&rows) {
            let block = &self.logits[row * vocab..(row + n_rows) * vocab];
            row += n_rows;
            let s = &mut self.running[i];
            s.fed = start + len;
            if s.opts.prompt_logprobs && start < s.prompt_len {
                s.record_prompt_logprobs(start, block, vocab);
            }
            if s.pending() == 0 {
                let last = &block[(n_rows - 1) * vocab..];
                if let Some(reason) = s.advance(last, &tok, &self.eos_ids) {
                    done.push((i, reason));
                }
            }
        }
        done.sort_unstable_by_key(|d| d.0);
        for &(i, reason) in done.iter().rev() {
            let mut s = self.running.remove(i);
            s.finish(reason, &tok);
            self.free_slot(&s);
        }
        self.publish();
        true
    }

    /// Runs `f` with the model and the worker pool (between steps).
    pub fn exclusive(&mut self, f: super::Exclusive) {
        f(&self.model, &lock_pool(&self.pool))
    }
}

pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::Ordering::Relaxed;
    use std::sync::mpsc;

    use super::*;
    use crate::engine::sequence::{Event, SeqOptions};
    use crate::model::KvType;

    /// A scheduler over the tiny fixture model with `slots` slots, stepped by hand.
    fn scheduler(slots: usize) -> Scheduler {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let mut loaded = crate::loader::load_model(
            &root.join("models/tiny-gqa/meta"),
            Some(&root.join("tokenizer/tokenizer.model")),
        )
        .unwrap();
        let w = &mut loaded.weights;
        let model = Transformer::from_tensors(&w.args, w.vocab_size, &mut w.tensors).unwrap();
        let kv = KvPool::new(&w.args, slots, 64, KvType::F32).unwrap();
        let eos = vec![loaded.tokenizer.eos_id()];
        Scheduler::new(
            Arc::new(model),
            Arc::new(std::sync::Mutex::new(WorkerPool::new(1).unwrap())),
            Arc::new(loaded.tokenizer),
            eos,
            kv,
            512,
            Arc::new(EngineGauges::default()),
        )
    }

    fn sequence(
        s: &Scheduler,
        prompt_len: u32,
        max_tokens: usize,
    ) -> (Sequence, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel();
        let opts = SeqOptions {
            max_tokens: Some(max_tokens),
            ignore_eos: true,
            ..SeqOptions::default()
        };
        let params = opts.validate().unwrap();
        let prompt: Vec<u32> = (0..prompt_len).map(|i| 1 + i * 7 % 200).collect();
        let ctx = s.kv.ctx();
        let cancel = Arc::new(AtomicBool::new(false));
        (
            Sequence::new(0, prompt, opts, params, ctx, Box::new(tx), cancel),
            rx,
        )
    }

    fn tokens_then_end(rx: &mpsc::Receiver<Event>) -> (usize, Option<FinishReason>) {
        let mut n = 0;
        for ev in rx.try_iter() {
            match ev.kind {
                EventKind::Token(_) => n += 1,
                EventKind::Done(f) => return (n, Some(f.reason)),
                EventKind::Failed(e) => panic!("{e}"),
            }
        }
        (n, None)
    }

    #[test]
    fn a_cancelled_sequence_leaves_at_the_next_step_and_its_slot_is_taken_then() {
        let mut s = scheduler(1);
        let (a, a_rx) = sequence(&s, 6, 40);
        let a_cancel = Arc::clone(&a.cancel);
        let (b, b_rx) = sequence(&s, 5, 3);
        s.enqueue(a);
        s.enqueue(b);
        for _ in 0..3 {
            assert!(s.step());
        }
        assert_eq!(tokens_then_end(&a_rx), (3, None));
        assert_eq!(s.gauges.waiting.load(Relaxed), 1, "one slot: b waits");
        a_cancel.store(true, Relaxed);
        assert!(s.step());
        // a ended without another token, b took the slot and prefilled in that step.
        assert_eq!(tokens_then_end(&a_rx), (0, Some(FinishReason::Cancelled)));
        assert_eq!(tokens_then_end(&b_rx), (1, None));
        assert_eq!(s.gauges.running.load(Relaxed), 1);
        assert_eq!(s.gauges.waiting.load(Relaxed), 0);
        s.step();
        s.step();
        assert_eq!(tokens_then_end(&b_rx), (2, Some(FinishReason::Length)));
        assert!(!s.has_work());
    }

    #[test]
    fn a_dropped_receiver_cancels_its_sequence() {
        let mut s = scheduler(1);
        let (a, a_rx) = sequence(&s, 4, 40);
        s.enqueue(a);
        s.step();
        drop(a_rx);
        s.step(); // the send fails: the sequence is marked cancelled
        s.step(); // and retired
        assert!(!s.has_work());
    }

    #[test]
    fn an_unrelated_prompt_takes_an_empty_slot_not_a_cached_conversation() {
        let mut s = scheduler(2);
        let (a, _a_rx) = sequence(&s, 30, 2);
        let a_prompt = a.tokens.clone();
        s.enqueue(a);
        while s.has_work() {
            s.step();
        }
        let a_slot = (0..2).find(|&i| !s.slots[i].cached.is_empty()).unwrap();
        // Shares only the first token (BOS-like) with the cached conversation.
        let (mut b, _b_rx) = sequence(&s, 1, 2);
        b.tokens = vec![a_prompt[0], 250, 251, 252];
        b.prompt_len = b.tokens.len();
        s.enqueue(b);
        s.step();
        assert_eq!(s.running[0].slot, 1 - a_slot);
        assert_eq!(s.running[0].cached, 0);
        // The conversation's next turn still finds its slot.
        let (mut c, _c_rx) = sequence(&s, 1, 2);
        c.tokens = a_prompt.clone();
        c.tokens.extend([7, 8, 9]);
        c.prompt_len = c.tokens.len();
        s.enqueue(c);
        s.step();
        let c = s
            .running
            .iter()
            .find(|r| r.prompt_len == a_prompt.len() + 3)
            .unwrap();
        assert_eq!(c.slot, a_slot);
        assert!(c.cached >= a_prompt.len());
    }

    #[test]
    fn long_prompts_are_prefilled_in_pieces_of_the_step_budget() {
        let mut s = scheduler(2);
        s.step_tokens = 8;
        let (a, a_rx) = sequence(&s, 20, 2);
        s.enqueue(a);
        // 20 prompt tokens: 8 + 8 + 4, the first token sampled at the third step.
        s.step();
        s.step();
        assert_eq!(tokens_then_end(&a_rx), (0, None));
        s.step();
        assert_eq!(tokens_then_end(&a_rx), (1, None));
    }
}
