//! Meta's reference API on the engine: [`Llama::build`], [`Llama::generate`],
//! [`Llama::text_completion`], [`Llama::chat_completion`], plus streaming variants.
//!
//! Semantics follow REFERENCE §4–6. Each call submits one engine request per prompt
//! (row `i` samples from stream `i` of the call's seed) and waits for them; the engine
//! may run other callers' requests in the same steps. Because every kernel computes
//! each output element the same way whatever the batch, a row's logits do not depend
//! on the other rows or on how its prompt was split into steps; the reference's
//! lockstep teacher forcing therefore yields exactly these results. Methods take
//! `&self`: any number of threads may call one `Llama` at once.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::chat::ChatTemplate;
use crate::chat::{self, Dialog, Message, Role};
use crate::engine::{Engine, EngineConfig, EventKind, Request, SeqOptions, SharedPool, TokenOut};
use crate::error::{Error, Result};
use crate::kernels::Precision;
use crate::loader::{load_model, LoadedModel};
use crate::model::{KvPool, KvType, SeqChunk, Transformer, Workspace};
use crate::sampling::SamplingParams;
use crate::tokenizer::Tokenizer;

/// Per-call generation settings. `Default` gives the reference's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationOptions {
    /// Softmax temperature; 0 selects the argmax (default 0.6).
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1] (default 0.9).
    pub top_p: f32,
    /// Most tokens to generate per prompt; `None` = `max_seq_len - 1`.
    pub max_gen_len: Option<usize>,
    /// Also return the log-probability of each returned token.
    pub logprobs: bool,
    /// Return the prompt tokens before the generated ones.
    pub echo: bool,
    /// Seed of this call's sampling (row `i` draws from stream `i` of it); `None` takes
    /// the next seed of the `Llama`'s own sequence, which starts at the builder's seed.
    pub seed: Option<u64>,
}

impl Default for GenerationOptions {
    fn default() -> Self {
        GenerationOptions {
            temperature: 0.6,
            top_p: 0.9,
            max_gen_len: None,
            logprobs: false,
            echo: false,
            seed: None,
        }
    }
}

/// Tokens returned for one prompt by [`Llama::generate`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenerationOutput {
    /// Generated tokens (prompt first with `echo`), cut before the first EOS.
    pub tokens: Vec<u32>,
    /// Log-probability of each token at temperature 1, when asked for.
    pub logprobs: Option<Vec<f32>>,
}

/// Timing of the last [`Llama::generate`] call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct GenerationStats {
    /// Prompt tokens of the call.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys and values were reused from an earlier call (a chat's
    /// earlier turns), not run again.
    pub reused_tokens: usize,
    /// Tokens generated (EOS included), over all rows.
    pub generated_tokens: usize,
    /// Wall time until the first generated token (prefill: time to first token).
    pub prefill: std::time::Duration,
    /// Wall time of sampling and decode steps.
    pub decode: std::time::Duration,
}

impl GenerationStats {
    /// Prompt tokens run through the model per second (reused ones not counted).
    pub fn prefill_tokens_per_s(&self) -> f64 {
        (self.prompt_tokens - self.reused_tokens) as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Generated tokens per second.
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.generated_tokens as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// One `text_completion` result, shaped like the reference's dict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CompletionPrediction {
    /// The generated text.
    pub generation: String,
    /// Each token decoded alone (with `logprobs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<String>>,
    /// Log-probability of each token (with `logprobs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<f32>>,
}

/// One `chat_completion` result, shaped like the reference's dict.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatPrediction {
    /// The assistant's message.
    pub generation: Message,
    /// Each token decoded alone (with `logprobs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<String>>,
    /// Log-probability of each token (with `logprobs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<f32>>,
}

/// Which chat format [`Llama::chat_completion`] uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TemplateChoice {
    /// The model's own Jinja template if it ships one, else the built-in Llama 3 format
    /// when the vocabulary has its header tokens, else the Llama 2 format.
    #[default]
    Auto,
    /// Meta's Llama 2 format (built in, exact).
    Llama2,
    /// Meta's Llama 3 format (built in, exact).
    Llama3,
    /// Built-in ChatML.
    ChatMl,
    /// A Jinja template given as source text.
    Jinja(String),
}

/// Options of [`Llama::build`] beyond the reference's four arguments.
#[derive(Clone, Debug)]
pub struct LlamaBuilder {
    model_path: PathBuf,
    tokenizer_path: Option<PathBuf>,
    max_seq_len: Option<usize>,
    max_batch_size: usize,
    threads: Option<usize>,
    seed: u64,
    template: TemplateChoice,
    precision: Precision,
    kv_type: Option<KvType>,
    step_tokens: usize,
    pool: Option<SharedPool>,
}

/// Default token budget of one engine step.
pub const DEFAULT_STEP_TOKENS: usize = 512;

impl LlamaBuilder {
    /// Arithmetic for quantized weights (default [`Precision::Fast`], llama.cpp's;
    /// [`Precision::Exact`] dequantizes to f32).
    pub fn precision(mut self, p: Precision) -> Self {
        self.precision = p;
        self
    }

    /// Context length (prompt plus generation) per sequence (default: the model's
    /// trained context, capped at 4096, or 512 when the model does not state one).
    pub fn max_seq_len(mut self, n: usize) -> Self {
        self.max_seq_len = Some(n);
        self
    }

    /// Most prompts per call, and sequences the engine decodes together (KV slots).
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = n;
        self
    }

    /// Worker threads (default: the physical cores).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = Some(n);
        self
    }

    /// Initial sampler seed (the reference uses 1).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Tokenizer file to use instead of the one found with the model.
    pub fn tokenizer(mut self, path: impl AsRef<Path>) -> Self {
        self.tokenizer_path = Some(path.as_ref().to_path_buf());
        self
    }

    /// Chat format (default: [`TemplateChoice::Auto`]).
    pub fn template(mut self, t: TemplateChoice) -> Self {
        self.template = t;
        self
    }

    /// KV cache element type (default: f16 for quantized weights with
    /// [`Precision::Fast`], as llama.cpp keeps it; f32 otherwise, the arithmetic of the
    /// float32 reference).
    pub fn kv_type(mut self, t: KvType) -> Self {
        self.kv_type = Some(t);
        self
    }

    /// Runs on another engine's worker pool ([`Engine::pool`]) instead of starting one:
    /// the two models then take turns on the same cores (a chat model and its guard).
    pub fn share_pool(mut self, pool: SharedPool) -> Self {
        self.pool = Some(pool);
        self
    }

    /// Most tokens per engine step (default [`DEFAULT_STEP_TOKENS`]): longer prompts are
    /// prefilled in pieces of this size between other sequences' decode steps.
    pub fn step_tokens(mut self, n: usize) -> Self {
        self.step_tokens = n;
        self
    }

    /// Loads the model and tokenizer and checks they belong together.
    pub fn build(self) -> Result<Llama> {
        let loaded = load_model(&self.model_path, self.tokenizer_path.as_deref())?;
        Llama::from_loaded(loaded, &self)
    }
}

/// A loaded model with its tokenizer, limits and engine: the reference's `Llama`
/// generator object.
pub struct Llama {
    engine: Engine,
    max_seq_len: usize,
    max_batch_size: usize,
    template: ChatTemplate,
    /// Tokens that end a generation: the tokenizer's EOS plus the model's extra ones.
    eos_ids: Vec<u32>,
    defaults: GenerationOptions,
    /// Seed of the next call without one (a Weyl sequence from the builder's seed).
    next_seed: AtomicU64,
    /// [`Tokenizer::max_token_bytes`], for refusing texts too long to fit before
    /// tokenizing them.
    max_token_bytes: Option<usize>,
    stats: Mutex<GenerationStats>,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("args", self.model().args())
            .field("max_seq_len", &self.max_seq_len)
            .field("max_batch_size", &self.max_batch_size)
            .field("threads", &self.threads())
            .finish()
    }
}

/// What one row of a call produced.
#[derive(Default)]
struct Row {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    prompt_logprobs: Vec<f32>,
    /// Text held back until the end (streaming).
    tail: String,
    done: bool,
}

impl Llama {
    /// The reference's `Llama.build(ckpt_dir, tokenizer_path, max_seq_len,
    /// max_batch_size)`: a Meta checkpoint folder and a `tokenizer.model` (any other
    /// model path [`Llama::open`] accepts works too).
    pub fn build(
        ckpt_dir: impl AsRef<Path>,
        tokenizer_path: impl AsRef<Path>,
        max_seq_len: usize,
        max_batch_size: usize,
    ) -> Result<Llama> {
        Self::builder(ckpt_dir, tokenizer_path)
            .max_seq_len(max_seq_len)
            .max_batch_size(max_batch_size)
            .build()
    }

    /// A builder for a Meta checkpoint folder and its tokenizer, with more options.
    pub fn builder(ckpt_dir: impl AsRef<Path>, tokenizer_path: impl AsRef<Path>) -> LlamaBuilder {
        Self::open(ckpt_dir).tokenizer(tokenizer_path)
    }

    /// A builder for any model path: a Meta checkpoint folder, a Hugging Face folder or
    /// a `.gguf` file, detected from what is there.
    pub fn open(model_path: impl AsRef<Path>) -> LlamaBuilder {
        LlamaBuilder {
            model_path: model_path.as_ref().to_path_buf(),
            tokenizer_path: None,
            max_seq_len: None,
            max_batch_size: 8,
            threads: None,
            seed: 1,
            template: TemplateChoice::Auto,
            precision: Precision::default(),
            kv_type: None,
            step_tokens: DEFAULT_STEP_TOKENS,
            pool: None,
        }
    }

    fn from_loaded(loaded: LoadedModel, b: &LlamaBuilder) -> Result<Llama> {
        let LoadedModel {
            path,
            mut weights,
            tokenizer,
            chat_template,
            context_length,
            generation,
            ..
        } = loaded;
        if weights.vocab_size != tokenizer.n_words() {
            return Err(Error::checkpoint(
                &path,
                format!(
                    "the tokenizer has {} pieces but the model's vocabulary has {} rows",
                    tokenizer.n_words(),
                    weights.vocab_size
                ),
            ));
        }
        let mut model =
            Transformer::from_tensors(&weights.args, weights.vocab_size, &mut weights.tensors)
                .map_err(|e| match e {
                    Error::Checkpoint { msg, .. } => Error::checkpoint(&path, msg),
                    other => other,
                })?;
        model.set_precision(b.precision);
        let template = match &b.template {
            TemplateChoice::Llama2 => ChatTemplate::Llama2,
            TemplateChoice::Llama3 => ChatTemplate::Llama3,
            TemplateChoice::ChatMl => ChatTemplate::chatml(&tokenizer)?,
            TemplateChoice::Jinja(src) => ChatTemplate::jinja("custom", src.clone(), &tokenizer)?,
            TemplateChoice::Auto => match chat_template {
                // The model file's own template: a broken one is a broken model file.
                Some(src) => ChatTemplate::jinja("model", src, &tokenizer)
                    .map_err(|e| Error::checkpoint(&path, e.to_string()))?,
                None => ChatTemplate::builtin_for(&tokenizer),
            },
        };
        let max_seq_len = b
            .max_seq_len
            .unwrap_or_else(|| context_length.map_or(512, |c| c.min(4096)));
        let kv_type =
            b.kv_type
                .unwrap_or(if model.is_quantized() && b.precision == Precision::Fast {
                    KvType::F16
                } else {
                    KvType::F32
                });
        let mut eos_ids = vec![tokenizer.eos_id()];
        // Llama 3 vocabularies: Meta's generation stops at end of turn and end of
        // message too.
        if ChatTemplate::builtin_for(&tokenizer) == ChatTemplate::Llama3 {
            eos_ids.extend(ChatTemplate::Llama3.stop_ids(&tokenizer));
            eos_ids.sort_unstable();
            eos_ids.dedup();
        }
        for id in generation.eos_token_ids {
            if (id as usize) < tokenizer.n_words() && !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let mut llama = Llama::start(
            model,
            tokenizer,
            EngineSetup {
                max_seq_len,
                max_batch_size: b.max_batch_size,
                threads: b.threads,
                seed: b.seed,
                kv_type,
                step_tokens: b.step_tokens,
                eos_ids,
                pool: b.pool.clone(),
            },
        )?;
        llama.template = template;
        llama.defaults.temperature = generation.temperature.unwrap_or(llama.defaults.temperature);
        llama.defaults.top_p = generation.top_p.unwrap_or(llama.defaults.top_p);
        Ok(llama)
    }

    /// Wraps an already loaded model and tokenizer (f32 KV cache).
    pub fn new(
        model: Transformer,
        tokenizer: Tokenizer,
        max_seq_len: usize,
        max_batch_size: usize,
        threads: Option<usize>,
        seed: u64,
    ) -> Result<Llama> {
        let eos_ids = vec![tokenizer.eos_id()];
        Llama::start(
            model,
            tokenizer,
            EngineSetup {
                max_seq_len,
                max_batch_size,
                threads,
                seed,
                kv_type: KvType::F32,
                step_tokens: DEFAULT_STEP_TOKENS,
                eos_ids,
                pool: None,
            },
        )
    }

    fn start(model: Transformer, tokenizer: Tokenizer, s: EngineSetup) -> Result<Llama> {
        if s.max_seq_len == 0 || s.max_batch_size == 0 {
            return Err(Error::InvalidArgument(
                "max_seq_len and max_batch_size must be at least 1".into(),
            ));
        }
        let threads = match s.threads {
            Some(0) => return Err(Error::InvalidArgument("threads must be at least 1".into())),
            Some(n) => n,
            None => crate::kernels::default_threads(),
        };
        let config = EngineConfig {
            slots: s.max_batch_size,
            ctx: s.max_seq_len,
            kv_type: s.kv_type,
            step_tokens: s.step_tokens,
            threads,
            eos_ids: s.eos_ids.clone(),
        };
        let (model, tokenizer) = (Arc::new(model), Arc::new(tokenizer));
        let engine = match s.pool {
            Some(pool) => Engine::start_sharing(model, tokenizer, config, pool)?,
            None => Engine::start(model, tokenizer, config)?,
        };
        // Weights are rearranged for the kernels here rather than in the first request.
        engine.exclusive(|model, pool| model.prepare(pool))?;
        let max_token_bytes = engine.tokenizer().max_token_bytes();
        Ok(Llama {
            engine,
            max_seq_len: s.max_seq_len,
            max_batch_size: s.max_batch_size,
            template: ChatTemplate::Llama2,
            eos_ids: s.eos_ids,
            defaults: GenerationOptions::default(),
            next_seed: AtomicU64::new(s.seed),
            max_token_bytes,
            stats: Mutex::new(GenerationStats::default()),
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        self.engine.tokenizer()
    }

    /// The model.
    pub fn model(&self) -> &Transformer {
        self.engine.model()
    }

    /// The engine behind this `Llama`: submit requests with options of their own.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Context length per sequence.
    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// Most prompts per call.
    pub fn max_batch_size(&self) -> usize {
        self.max_batch_size
    }

    /// The chat format in use.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.template
    }

    /// Replaces the chat format.
    pub fn set_chat_template(&mut self, template: ChatTemplate) {
        self.template = template;
    }

    /// The reference's defaults with the model's own (e.g. `generation_config.json`
    /// temperature/top_p) applied.
    pub fn default_options(&self) -> GenerationOptions {
        self.defaults.clone()
    }

    /// Timing of the last generation call (of any thread).
    pub fn last_stats(&self) -> GenerationStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.engine.config().threads
    }

    /// Tokens that end a generation (EOS and the model's extra end tokens).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Token ids that end an assistant turn: EOS ids plus the template's end-of-turn.
    pub fn chat_stop_ids(&self) -> Vec<u32> {
        let mut stops = self.eos_ids.clone();
        for id in self.template.stop_ids(self.tokenizer()) {
            if !stops.contains(&id) {
                stops.push(id);
            }
        }
        stops
    }

    /// Logits after every position of `tokens` (one forward pass from position 0):
    /// `tokens.len()` rows of `vocab_size` floats, row `t` predicting token `t + 1`.
    pub fn logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens given".into()));
        }
        if tokens.len() > self.max_seq_len {
            return Err(Error::PromptTooLong {
                index: 0,
                len: tokens.len(),
                max_seq_len: self.max_seq_len,
            });
        }
        let tokens = tokens.to_vec();
        let kv_type = self.engine.config().kv_type;
        self.engine.exclusive(move |model, pool| {
            let mut kv = KvPool::new(model.args(), 1, tokens.len(), kv_type)?;
            let rope = model.rope_table(tokens.len());
            let chunk = SeqChunk {
                slot: 0,
                start_pos: 0,
                tokens: &tokens,
                all_logits: true,
            };
            let mut logits = Vec::new();
            model.forward(
                pool,
                &mut kv,
                &rope,
                &[chunk],
                &mut Workspace::new(),
                &mut logits,
            )?;
            Ok(logits)
        })?
    }

    /// The reference's `generate`: continues each prompt (token ids).
    pub fn generate(
        &self,
        prompt_tokens: &[Vec<u32>],
        opts: &GenerationOptions,
    ) -> Result<Vec<GenerationOutput>> {
        self.generate_with(prompt_tokens, opts, &mut |_, _| ControlFlow::Continue(()))
    }

    /// [`Llama::generate`], calling `on_token(row, id)` for every generated token
    /// (EOS excluded) as soon as it is chosen. Returning `Break` stops the whole call;
    /// the outputs then hold what was generated so far.
    pub fn generate_with(
        &self,
        prompt_tokens: &[Vec<u32>],
        opts: &GenerationOptions,
        on_token: &mut dyn FnMut(usize, u32) -> ControlFlow<()>,
    ) -> Result<Vec<GenerationOutput>> {
        let stops = self.eos_ids.clone();
        self.generate_until(prompt_tokens, opts, &stops, &mut |row, t| {
            on_token(row, t.id)
        })
    }

    /// The seed of a call: its own, else the next of the `Llama`'s sequence.
    fn call_seed(&self, opts: &GenerationOptions) -> u64 {
        opts.seed.unwrap_or_else(|| {
            // A Weyl sequence (SplitMix64's state step): the first call gets the
            // builder's seed itself; the sampler's seeding mixes the rest.
            self.next_seed
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some(s.wrapping_add(0x9E37_79B9_7F4A_7C15))
                })
                .unwrap_or_else(|s| s)
        })
    }

    /// The generate loop on the engine; a row ends at any token of `stops` (excluded
    /// from the output).
    fn generate_until(
        &self,
        prompt_tokens: &[Vec<u32>],
        opts: &GenerationOptions,
        stops: &[u32],
        on_token: &mut dyn FnMut(usize, &TokenOut) -> ControlFlow<()>,
    ) -> Result<Vec<GenerationOutput>> {
        let rows = self.run_rows(prompt_tokens, opts, stops, on_token)?;
        let mut outputs = Vec::with_capacity(rows.len());
        for (row, r) in rows.into_iter().enumerate() {
            let (mut tokens, mut lps) = if opts.echo {
                let mut t = prompt_tokens[row].clone();
                t.extend_from_slice(&r.tokens);
                let mut l = Vec::with_capacity(t.len());
                if opts.logprobs {
                    l.push(0.0);
                    l.extend_from_slice(&r.prompt_logprobs);
                    l.extend_from_slice(&r.logprobs);
                }
                (t, l)
            } else {
                (r.tokens, r.logprobs)
            };
            // With echo a prompt may itself hold EOS (earlier chat turns): the
            // reference cuts there too.
            if let Some(i) = tokens.iter().position(|t| stops.contains(t)) {
                tokens.truncate(i);
                lps.truncate(i);
            }
            outputs.push(GenerationOutput {
                tokens,
                logprobs: opts.logprobs.then_some(lps),
            });
        }
        Ok(outputs)
    }

    /// Submits one engine request per prompt and collects what each row generates.
    fn run_rows(
        &self,
        prompt_tokens: &[Vec<u32>],
        opts: &GenerationOptions,
        stops: &[u32],
        on_token: &mut dyn FnMut(usize, &TokenOut) -> ControlFlow<()>,
    ) -> Result<Vec<Row>> {
        SamplingParams::new(opts.temperature, opts.top_p)?;
        let bsz = prompt_tokens.len();
        if bsz > self.max_batch_size {
            return Err(Error::BatchTooLarge {
                got: bsz,
                max: self.max_batch_size,
            });
        }
        let n_words = self.tokenizer().n_words();
        for (index, p) in prompt_tokens.iter().enumerate() {
            if p.is_empty() {
                return Err(Error::InvalidArgument(format!("prompt {index} is empty")));
            }
            if p.len() > self.max_seq_len {
                return Err(Error::PromptTooLong {
                    index,
                    len: p.len(),
                    max_seq_len: self.max_seq_len,
                });
            }
            if let Some(&id) = p.iter().find(|&&t| t as usize >= n_words) {
                return Err(Error::InvalidTokenId { id, n_words });
            }
        }
        if bsz == 0 {
            return Ok(Vec::new());
        }
        let seed = self.call_seed(opts);
        let max_gen_len = opts.max_gen_len.unwrap_or(self.max_seq_len - 1);
        let extra_stops: Vec<u32> = stops
            .iter()
            .copied()
            .filter(|t| !self.eos_ids.contains(t))
            .collect();
        let (tx, rx) = mpsc::channel();
        let mut cancels: Vec<Arc<AtomicBool>> = Vec::with_capacity(bsz);
        let cancel_all = |cancels: &[Arc<AtomicBool>]| {
            for c in cancels {
                c.store(true, Ordering::Relaxed);
            }
        };
        let started = Instant::now();
        for (row, p) in prompt_tokens.iter().enumerate() {
            let req = Request {
                prompt: p.clone(),
                options: SeqOptions {
                    temperature: opts.temperature,
                    top_p: opts.top_p,
                    max_tokens: Some(max_gen_len),
                    stop_ids: extra_stops.clone(),
                    logprobs: opts.logprobs,
                    prompt_logprobs: opts.logprobs && opts.echo,
                    seed,
                    seed_stream: row as u64,
                    ..SeqOptions::default()
                },
                tag: row as u64,
            };
            match self.engine.submit_to(req, tx.clone()) {
                Ok(c) => cancels.push(c),
                Err(e) => {
                    cancel_all(&cancels);
                    return Err(e);
                }
            }
        }
        drop(tx);
        let _cancel_on_unwind = CancelGuard(&cancels);
        let mut rows: Vec<Row> = (0..bsz).map(|_| Row::default()).collect();
        let mut first_token: Option<Duration> = None;
        let (mut generated, mut reused) = (0, 0);
        let mut failure = None;
        // After a `Break` the engine may already have sent more tokens: they were not
        // seen by the caller, so they are not part of the answer.
        let mut stopped = false;
        // The channel closes once every row has ended (each request's sender is dropped).
        while let Ok(ev) = rx.recv() {
            let row = ev.tag as usize;
            match ev.kind {
                EventKind::Token(_) if stopped => {}
                EventKind::Token(t) => {
                    first_token.get_or_insert_with(|| started.elapsed());
                    let r = &mut rows[row];
                    r.tokens.push(t.id);
                    if let Some(lp) = t.logprob {
                        r.logprobs.push(lp);
                    }
                    if on_token(row, &t).is_break() {
                        stopped = true;
                        cancel_all(&cancels);
                    }
                }
                EventKind::Done(f) => {
                    let r = &mut rows[row];
                    r.done = true;
                    r.tail = f.text;
                    r.prompt_logprobs = f.prompt_logprobs.unwrap_or_default();
                    generated += f.generated_tokens;
                    reused += f.cached_tokens;
                }
                EventKind::Failed(e) => {
                    cancel_all(&cancels);
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if rows.iter().any(|r| !r.done) {
            return Err(Error::InvalidArgument(
                "the engine stopped before the generation ended".into(),
            ));
        }
        let total = started.elapsed();
        let prefill = first_token.unwrap_or(total);
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = GenerationStats {
            prompt_tokens: prompt_tokens.iter().map(Vec::len).sum(),
            reused_tokens: reused,
            generated_tokens: generated,
            prefill,
            decode: total - prefill,
        };
        Ok(rows)
    }

    fn piece_texts(&self, tokens: &[u32]) -> Result<Vec<String>> {
        tokens
            .iter()
            .map(|&t| self.tokenizer().decode(&[t]))
            .collect()
    }

    /// The reference's `text_completion`: each prompt encoded with BOS, continued.
    pub fn text_completion<S: AsRef<str>>(
        &self,
        prompts: &[S],
        opts: &GenerationOptions,
    ) -> Result<Vec<CompletionPrediction>> {
        self.text_completion_with(prompts, opts, &mut |_, _| ControlFlow::Continue(()))
    }

    /// [`Llama::text_completion`], calling `on_token(row, id)` for every generated token
    /// as [`Llama::generate_with`] does; `Break` stops the whole call.
    pub fn text_completion_with<S: AsRef<str>>(
        &self,
        prompts: &[S],
        opts: &GenerationOptions,
        on_token: &mut dyn FnMut(usize, u32) -> ControlFlow<()>,
    ) -> Result<Vec<CompletionPrediction>> {
        let tokens: Vec<Vec<u32>> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                self.check_text_fits(i, p.as_ref().len())?;
                Ok(self.tokenizer().encode(p.as_ref(), true, false))
            })
            .collect::<Result<_>>()?;
        let outs = self.generate_with(&tokens, opts, on_token)?;
        outs.into_iter()
            .map(|o| self.completion_prediction(o))
            .collect()
    }

    fn completion_prediction(&self, o: GenerationOutput) -> Result<CompletionPrediction> {
        Ok(CompletionPrediction {
            generation: self.tokenizer().decode(&o.tokens)?,
            tokens: match o.logprobs {
                Some(_) => Some(self.piece_texts(&o.tokens)?),
                None => None,
            },
            logprobs: o.logprobs,
        })
    }

    /// Prompt ids of each dialog, or `None` for a dialog refused for special tags.
    /// Fails (like the reference's assertions) if any dialog breaks the role rules.
    pub fn dialog_prompts(&self, dialogs: &[Dialog]) -> Result<Vec<Option<Vec<u32>>>> {
        if dialogs.len() > self.max_batch_size {
            return Err(Error::BatchTooLarge {
                got: dialogs.len(),
                max: self.max_batch_size,
            });
        }
        dialogs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                if self.template.is_refused(d) {
                    // Answered with the refusal text: its role order still checked.
                    chat::validate(d)?;
                    return Ok(None);
                }
                self.check_text_fits(i, Self::dialog_bytes(d))?;
                self.template
                    .encode(self.tokenizer(), d)
                    .map(Some)
                    .map_err(Into::into)
            })
            .collect()
    }

    /// Refuses text of `bytes` bytes that cannot fit in the context whatever its
    /// tokens ([`Error::PromptTooLong`], with the fewest tokens it could take), before
    /// it is tokenized: a 10 MB message costs a length check, not seconds and
    /// gigabytes.
    pub fn check_text_fits(&self, index: usize, bytes: usize) -> Result<()> {
        let Some(per_token) = self.max_token_bytes else {
            return Ok(()); // no bound: the tokenizer may drop text
        };
        if bytes > self.max_seq_len.saturating_mul(per_token) {
            return Err(Error::PromptTooLong {
                index,
                len: bytes.div_ceil(per_token),
                max_seq_len: self.max_seq_len,
            });
        }
        Ok(())
    }

    /// The bytes of a dialog's messages as the chat formats use them (stripped).
    fn dialog_bytes(d: &Dialog) -> usize {
        d.iter().map(|m| chat::python_strip(&m.content).len()).sum()
    }

    /// The reference's `chat_completion`. A dialog with special tags gets the error
    /// text as its content without running the model; the others are generated as one
    /// batch, unaffected by it.
    pub fn chat_completion(
        &self,
        dialogs: &[Dialog],
        opts: &GenerationOptions,
    ) -> Result<Vec<ChatPrediction>> {
        self.chat_completion_with(dialogs, opts, &mut |_, _| ControlFlow::Continue(()))
    }

    /// [`Llama::chat_completion`], calling `on_token(row, id)` for every generated token
    /// as [`Llama::generate_with`] does (`row` counts only the dialogs that are not
    /// refused). Returning `Break` stops the whole call; the answers then hold what was
    /// generated so far.
    pub fn chat_completion_with(
        &self,
        dialogs: &[Dialog],
        opts: &GenerationOptions,
        on_token: &mut dyn FnMut(usize, u32) -> ControlFlow<()>,
    ) -> Result<Vec<ChatPrediction>> {
        let prompts = self.dialog_prompts(dialogs)?;
        let safe: Vec<Vec<u32>> = prompts.iter().flatten().cloned().collect();
        let chat_opts = GenerationOptions {
            echo: false,
            ..opts.clone()
        };
        let stops = self.chat_stop_ids();
        let mut outs = self
            .generate_until(&safe, &chat_opts, &stops, &mut |row, t| on_token(row, t.id))?
            .into_iter();
        prompts
            .iter()
            .map(|p| match p {
                None => Ok(self.refusal(opts.logprobs)),
                Some(_) => {
                    let o = outs.next().expect("one output per safe dialog");
                    self.chat_prediction(o)
                }
            })
            .collect()
    }

    fn refusal(&self, logprobs: bool) -> ChatPrediction {
        ChatPrediction {
            generation: Message::new(Role::Assistant, chat::UNSAFE_ERROR),
            tokens: logprobs.then(Vec::new),
            logprobs: logprobs.then(Vec::new),
        }
    }

    fn chat_prediction(&self, o: GenerationOutput) -> Result<ChatPrediction> {
        let c = self.completion_prediction(o)?;
        Ok(ChatPrediction {
            generation: Message::new(Role::Assistant, c.generation),
            tokens: c.tokens,
            logprobs: c.logprobs,
        })
    }

    /// Streams one completion: `on_text` receives UTF-8-safe text deltas whose
    /// concatenation is the returned generation. `Break` stops early.
    pub fn text_completion_stream(
        &self,
        prompt: &str,
        opts: &GenerationOptions,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<CompletionPrediction> {
        self.check_text_fits(0, prompt.len())?;
        let tokens = vec![self.tokenizer().encode(prompt, true, false)];
        let stops = self.eos_ids.clone();
        let o = self.stream_row(&tokens, opts, &stops, false, on_text)?;
        self.completion_prediction(o)
    }

    /// Streams the answer to one dialog (see [`Llama::text_completion_stream`]).
    pub fn chat_completion_stream(
        &self,
        dialog: &Dialog,
        opts: &GenerationOptions,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<ChatPrediction> {
        self.chat_stream(dialog, opts, false, on_text)
    }

    /// [`Llama::chat_completion_stream`] with `on_token` called once per generated token,
    /// with the text it completes (empty while a character or a possible stop string is
    /// incomplete), then once more with any held-back text: for callers that act every
    /// N tokens (safety checks of a streamed answer).
    pub fn chat_completion_stream_tokens(
        &self,
        dialog: &Dialog,
        opts: &GenerationOptions,
        on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<ChatPrediction> {
        self.chat_stream(dialog, opts, true, on_token)
    }

    fn chat_stream(
        &self,
        dialog: &Dialog,
        opts: &GenerationOptions,
        every_token: bool,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<ChatPrediction> {
        let Some(ids) = self.dialog_prompts(std::slice::from_ref(dialog))?.remove(0) else {
            let _ = on_text(chat::UNSAFE_ERROR);
            return Ok(self.refusal(opts.logprobs));
        };
        let stops = self.chat_stop_ids();
        let o = self.stream_row(&[ids], opts, &stops, every_token, on_text)?;
        self.chat_prediction(o)
    }

    fn stream_row(
        &self,
        tokens: &[Vec<u32>],
        opts: &GenerationOptions,
        stops: &[u32],
        every_token: bool,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationOutput> {
        let opts = GenerationOptions {
            echo: false,
            ..opts.clone()
        };
        let mut stopped = false;
        let mut rows = self.run_rows(tokens, &opts, stops, &mut |_, t| {
            if t.text.is_empty() && !every_token {
                return ControlFlow::Continue(());
            }
            let flow = on_text(&t.text);
            stopped |= flow.is_break();
            flow
        })?;
        let row = rows.remove(0);
        if !stopped && !row.tail.is_empty() {
            let _ = on_text(&row.tail);
        }
        Ok(GenerationOutput {
            tokens: row.tokens,
            logprobs: opts.logprobs.then_some(row.logprobs),
        })
    }
}

/// The engine settings of a `Llama`.
struct EngineSetup {
    max_seq_len: usize,
    max_batch_size: usize,
    threads: Option<usize>,
    seed: u64,
    kv_type: KvType,
    step_tokens: usize,
    eos_ids: Vec<u32>,
    pool: Option<SharedPool>,
}

/// Cancels a call's requests if the caller unwinds (a panicking callback).
struct CancelGuard<'a>(&'a [Arc<AtomicBool>]);

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in self.0 {
                c.store(true, Ordering::Relaxed);
            }
        }
    }
}
