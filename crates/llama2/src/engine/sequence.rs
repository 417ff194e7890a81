//! One request in the engine: its options, tokens, KV slot and position, its own sampler,
//! its stream decoder and stop-string matcher, and its cancel flag.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::sampling::{self, Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};

use super::stop::StopText;

/// Most stop strings per request, and the longest one in bytes.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string in bytes.
pub const MAX_STOP_BYTES: usize = 256;
/// Most ids in [`SeqOptions::watch_ids`].
pub const MAX_WATCH_IDS: usize = 16;

/// Most alternatives per position in `top_logprobs` (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// How one request is generated. `Default` is greedy until the context is full.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqOptions {
    /// Softmax temperature; 0 is greedy (argmax).
    pub temperature: f32,
    /// Nucleus mass in (0, 1].
    pub top_p: f32,
    /// Most tokens to generate; `None`: until the context is full.
    pub max_tokens: Option<usize>,
    /// Token ids that end the sequence (not returned), besides the model's EOS ids.
    pub stop_ids: Vec<u32>,
    /// Strings that end the sequence when generated text contains them (not returned).
    pub stop_strings: Vec<String>,
    /// Keep going through the model's EOS ids (benchmarks).
    pub ignore_eos: bool,
    /// Report each generated token's log-probability.
    pub logprobs: bool,
    /// Also report this many most likely alternatives per token (at most
    /// [`MAX_TOP_LOGPROBS`]).
    pub top_logprobs: usize,
    /// Report the log-probability of each prompt token after the first (runs the whole
    /// prompt; no prefix is reused).
    pub prompt_logprobs: bool,
    /// Report the log-probabilities of these ids at every generated position, chosen or
    /// not (a classifier's score; at most [`MAX_WATCH_IDS`]).
    pub watch_ids: Vec<u32>,
    /// Seed of this request's sampler: the same seed gives the same answer whatever else
    /// the engine runs.
    pub seed: u64,
    /// Stream of the seed's random sequence (rows of one Meta-API call use 0, 1, …).
    pub seed_stream: u64,
}

impl Default for SeqOptions {
    fn default() -> Self {
        SeqOptions {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens: None,
            stop_ids: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
            logprobs: false,
            top_logprobs: 0,
            prompt_logprobs: false,
            watch_ids: Vec::new(),
            seed: 1,
            seed_stream: 0,
        }
    }
}

impl SeqOptions {
    /// Checks every range; the sampling settings on success.
    pub(crate) fn validate(&self) -> Result<SamplingParams> {
        let params = SamplingParams::new(self.temperature, self.top_p)?;
        if self.top_logprobs > MAX_TOP_LOGPROBS {
            return Err(Error::InvalidArgument(format!(
                "top_logprobs must be at most {MAX_TOP_LOGPROBS}, got {}",
                self.top_logprobs
            )));
        }
        if self.watch_ids.len() > MAX_WATCH_IDS {
            return Err(Error::InvalidArgument(format!(
                "at most {MAX_WATCH_IDS} watched ids, got {}",
                self.watch_ids.len()
            )));
        }
        if self.stop_strings.len() > MAX_STOP_STRINGS {
            return Err(Error::InvalidArgument(format!(
                "at most {MAX_STOP_STRINGS} stop strings, got {}",
                self.stop_strings.len()
            )));
        }
        if let Some(s) = self.stop_strings.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(Error::InvalidArgument(format!(
                "stop strings are limited to {MAX_STOP_BYTES} bytes, got one of {}",
                s.len()
            )));
        }
        Ok(params)
    }
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS or stop token, or a stop string.
    Stop,
    /// `max_tokens` generated, or the context is full.
    Length,
    /// Cancelled by the caller (or its receiver went away).
    Cancelled,
}

/// One generated token, as reported to the caller.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenOut {
    /// Token id.
    pub id: u32,
    /// Text this token completes, UTF-8-safe, with possible stop-string starts held
    /// back (may be empty).
    pub text: String,
    /// Log-probability at temperature 1 (with `logprobs`).
    pub logprob: Option<f32>,
    /// Most likely alternatives with their log-probabilities (with `top_logprobs`).
    pub top_logprobs: Vec<(u32, f32)>,
    /// Log-probabilities of [`SeqOptions::watch_ids`] here, in their order (an id
    /// outside the vocabulary reads as negative infinity).
    pub watched: Vec<f32>,
}

/// How a sequence ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    /// Why.
    pub reason: FinishReason,
    /// Text held back until the end (a partial stop string that never completed, or an
    /// unfinished UTF-8 character); empty if none.
    pub text: String,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were reused from an earlier request.
    pub cached_tokens: usize,
    /// Tokens generated (the stopping token included).
    pub generated_tokens: usize,
    /// Log-probabilities of prompt tokens 1.. (with `prompt_logprobs`).
    pub prompt_logprobs: Option<Vec<f32>>,
}

/// What the engine reports about a request.
#[derive(Debug)]
pub enum EventKind {
    /// A token was generated.
    Token(TokenOut),
    /// The request ended; nothing follows.
    Done(Finished),
    /// The request failed; nothing follows.
    Failed(Error),
}

/// An [`EventKind`] with the tag the request was submitted with.
#[derive(Debug)]
pub struct Event {
    /// The submitter's tag.
    pub tag: u64,
    /// What happened.
    pub kind: EventKind,
}

/// Where a request's events go: a standard channel, or anything else that can take them
/// from the engine thread without blocking (an async channel in a server).
pub trait EventSink: Send {
    /// Delivers one event; `false` when nobody listens any more (the request is then
    /// cancelled).
    fn deliver(&self, event: Event) -> bool;
}

impl EventSink for Sender<Event> {
    fn deliver(&self, event: Event) -> bool {
        self.send(event).is_ok()
    }
}

impl std::fmt::Debug for dyn EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}

/// A request inside the engine, from admission to retirement.
#[derive(Debug)]
pub(crate) struct Sequence {
    pub tag: u64,
    pub events: Box<dyn EventSink>,
    pub cancel: Arc<AtomicBool>,
    pub opts: SeqOptions,
    params: SamplingParams,
    sampler: Sampler,
    decoder: StreamDecoder,
    stop: StopText,
    /// Prompt then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// KV slot, once admitted.
    pub slot: usize,
    /// Tokens whose keys and values are in the slot (positions `0..fed`).
    pub fed: usize,
    /// Prompt tokens reused from the slot.
    pub cached: usize,
    /// Most tokens to generate.
    pub budget: usize,
    pub generated: usize,
    pub prompt_lp: Vec<f32>,
    /// A `Failed` event was sent: nothing may follow it.
    failed: bool,
}

impl Sequence {
    /// A validated request, waiting for a slot.
    pub fn new(
        tag: u64,
        prompt: Vec<u32>,
        opts: SeqOptions,
        params: SamplingParams,
        ctx: usize,
        events: Box<dyn EventSink>,
        cancel: Arc<AtomicBool>,
    ) -> Sequence {
        let room = ctx.saturating_sub(prompt.len());
        Sequence {
            tag,
            events,
            cancel,
            params,
            sampler: Sampler::with_stream(opts.seed, opts.seed_stream),
            decoder: StreamDecoder::new(),
            stop: StopText::new(&opts.stop_strings),
            budget: opts.max_tokens.map_or(room, |m| m.min(room)),
            prompt_len: prompt.len(),
            tokens: prompt,
            opts,
            slot: usize::MAX,
            fed: 0,
            cached: 0,
            generated: 0,
            prompt_lp: Vec::new(),
            failed: false,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Tokens still to run through the model before the next sample.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.fed
    }

    /// Sends an event; `false` if the receiver is gone (the sequence is then cancelled).
    pub fn send(&self, kind: EventKind) -> bool {
        let ok = self.events.deliver(Event {
            tag: self.tag,
            kind,
        });
        if !ok {
            self.cancel.store(true, Ordering::Relaxed);
        }
        ok
    }

    /// Records prompt log-probabilities from the logits of positions `start..` (`rows`
    /// rows of `vocab`): row `i` predicts the token at `start + i + 1`.
    pub fn record_prompt_logprobs(&mut self, start: usize, logits: &[f32], vocab: usize) {
        for (i, row) in logits.chunks_exact(vocab).enumerate() {
            let next = start + i + 1;
            if next < self.prompt_len {
                self.prompt_lp
                    .push(sampling::logprob(row, self.tokens[next]));
            }
        }
    }

    /// Samples the next token from `logits` and reports it. Returns how the sequence
    /// ended, if it did.
    pub fn advance(
        &mut self,
        logits: &[f32],
        tokenizer: &Tokenizer,
        eos_ids: &[u32],
    ) -> Option<FinishReason> {
        if self.budget == 0 {
            return Some(FinishReason::Length);
        }
        let id = self.sampler.sample(logits, self.params);
        self.generated += 1;
        let is_stop =
            self.opts.stop_ids.contains(&id) || (!self.opts.ignore_eos && eos_ids.contains(&id));
        if is_stop {
            return Some(FinishReason::Stop);
        }
        self.tokens.push(id);
        let delta = match self.decoder.push(tokenizer, id) {
            Ok(d) => d,
            Err(e) => {
                self.send(EventKind::Failed(e));
                self.failed = true;
                return Some(FinishReason::Cancelled);
            }
        };
        let (text, hit_stop) = self.stop.push(&delta);
        let out = TokenOut {
            id,
            text,
            logprob: self.opts.logprobs.then(|| sampling::logprob(logits, id)),
            top_logprobs: sampling::top_logprobs(logits, self.opts.top_logprobs),
            watched: sampling::logprobs_of(logits, &self.opts.watch_ids),
        };
        if !self.send(EventKind::Token(out)) {
            return Some(FinishReason::Cancelled);
        }
        if hit_stop {
            Some(FinishReason::Stop)
        } else if self.generated >= self.budget {
            Some(FinishReason::Length)
        } else {
            None
        }
    }

    /// Reports the end of the sequence (unless it failed: nothing follows `Failed`).
    pub fn finish(&mut self, mut reason: FinishReason, tokenizer: &Tokenizer) {
        if self.failed {
            return;
        }
        let mut text = String::new();
        if reason != FinishReason::Cancelled && !self.stop.stopped() {
            let rest = self.decoder.finish(tokenizer).unwrap_or_default();
            let (t, hit_stop) = self.stop.push(&rest);
            text = t;
            if hit_stop {
                reason = FinishReason::Stop;
            } else {
                text.push_str(&self.stop.finish());
            }
        }
        let done = Finished {
            reason,
            text,
            prompt_tokens: self.prompt_len,
            cached_tokens: self.cached,
            generated_tokens: self.generated,
            prompt_logprobs: self
                .opts
                .prompt_logprobs
                .then(|| std::mem::take(&mut self.prompt_lp)),
        };
        self.send(EventKind::Done(done));
    }
}
