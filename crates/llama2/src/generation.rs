//! The generate loop and the reference's public API: [`Llama::build`],
//! [`Llama::text_completion`], [`Llama::chat_completion`], plus streaming variants.
//!
//! Semantics follow REFERENCE §4–6. Each prompt is prefilled in one pass, then all
//! unfinished rows advance one token per model call. Because every kernel computes
//! each output element the same way whatever the batch, a row's logits do not depend
//! on the other rows; the reference's lockstep teacher forcing therefore yields
//! exactly these results, without re-running prompt tokens one at a time.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use crate::chat::ChatTemplate;
use crate::chat::{self, Dialog, Message, Role};
use crate::error::{Error, Result};
use crate::kernels::{Precision, WorkerPool};
use crate::loader::{load_model, LoadedModel};
use crate::model::{KvPool, KvType, SeqChunk, Transformer};
use crate::sampling::{self, Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};

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
    /// Reseed the sampler before this call (reproducible sampling).
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
    /// Prompt tokens processed in the prefill pass.
    pub prompt_tokens: usize,
    /// Tokens generated (EOS included), over all rows.
    pub generated_tokens: usize,
    /// Wall time of the prefill pass.
    pub prefill: std::time::Duration,
    /// Wall time of sampling and decode steps.
    pub decode: std::time::Duration,
}

impl GenerationStats {
    /// Prompt tokens per second.
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
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
    /// The model's own Jinja template if it ships one, else the Llama 2 format.
    #[default]
    Auto,
    /// Meta's Llama 2 format (built in, exact).
    Llama2,
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
}

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

    /// Most prompts per call.
    pub fn max_batch_size(mut self, n: usize) -> Self {
        self.max_batch_size = n;
        self
    }

    /// Worker threads (default: all available cores).
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

    /// Loads the model and tokenizer and checks they belong together.
    pub fn build(self) -> Result<Llama> {
        let loaded = load_model(&self.model_path, self.tokenizer_path.as_deref())?;
        Llama::from_loaded(loaded, &self)
    }
}

/// A loaded model with its tokenizer, limits, thread pool and sampler: the
/// reference's `Llama` generator object.
pub struct Llama {
    model: Transformer,
    tokenizer: Arc<Tokenizer>,
    max_seq_len: usize,
    max_batch_size: usize,
    pool: WorkerPool,
    sampler: Sampler,
    rope: crate::kernels::RopeTable,
    stats: GenerationStats,
    template: ChatTemplate,
    /// Tokens that end a generation: the tokenizer's EOS plus the model's extra ones.
    eos_ids: Vec<u32>,
    defaults: GenerationOptions,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("args", self.model.args())
            .field("max_seq_len", &self.max_seq_len)
            .field("max_batch_size", &self.max_batch_size)
            .field("threads", &self.pool.threads())
            .finish()
    }
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
            TemplateChoice::ChatMl => ChatTemplate::chatml(&tokenizer)?,
            TemplateChoice::Jinja(src) => ChatTemplate::jinja("custom", src.clone(), &tokenizer)?,
            TemplateChoice::Auto => match chat_template {
                Some(src) => ChatTemplate::jinja("model", src, &tokenizer)?,
                None => ChatTemplate::Llama2,
            },
        };
        let max_seq_len = b
            .max_seq_len
            .unwrap_or_else(|| context_length.map_or(512, |c| c.min(4096)));
        let mut llama = Llama::new(
            model,
            tokenizer,
            max_seq_len,
            b.max_batch_size,
            b.threads,
            b.seed,
        )?;
        llama.template = template;
        for id in generation.eos_token_ids {
            if (id as usize) < llama.tokenizer.n_words() && !llama.eos_ids.contains(&id) {
                llama.eos_ids.push(id);
            }
        }
        llama.defaults.temperature = generation.temperature.unwrap_or(llama.defaults.temperature);
        llama.defaults.top_p = generation.top_p.unwrap_or(llama.defaults.top_p);
        Ok(llama)
    }

    /// Wraps an already loaded model and tokenizer.
    pub fn new(
        model: Transformer,
        tokenizer: Tokenizer,
        max_seq_len: usize,
        max_batch_size: usize,
        threads: Option<usize>,
        seed: u64,
    ) -> Result<Llama> {
        if max_seq_len == 0 || max_batch_size == 0 {
            return Err(Error::InvalidArgument(
                "max_seq_len and max_batch_size must be at least 1".into(),
            ));
        }
        let threads = match threads {
            Some(0) => return Err(Error::InvalidArgument("threads must be at least 1".into())),
            Some(n) => n,
            None => crate::kernels::default_threads(),
        };
        let pool = WorkerPool::new(threads)
            .map_err(|e| Error::InvalidArgument(format!("cannot start {threads} threads: {e}")))?;
        let rope = model.rope_table(max_seq_len);
        let eos_ids = vec![tokenizer.eos_id()];
        Ok(Llama {
            model,
            tokenizer: Arc::new(tokenizer),
            max_seq_len,
            max_batch_size,
            pool,
            sampler: Sampler::new(seed),
            rope,
            stats: GenerationStats::default(),
            template: ChatTemplate::Llama2,
            eos_ids,
            defaults: GenerationOptions::default(),
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model.
    pub fn model(&self) -> &Transformer {
        &self.model
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

    /// Timing of the last generation call.
    pub fn last_stats(&self) -> GenerationStats {
        self.stats
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// Times one prefill of `n` tokens from an empty cache (logits of the last position
    /// only), as `llama-bench`'s `pp` test does. Token ids are a fixed pseudo-random
    /// sequence.
    pub fn bench_prefill(&self, n: usize) -> Result<std::time::Duration> {
        if n == 0 || n > self.max_seq_len {
            return Err(Error::InvalidArgument(format!(
                "prefill length {n} must be in 1..={}",
                self.max_seq_len
            )));
        }
        let vocab = self.model.vocab_size() as u64;
        let tokens: Vec<u32> = (0..n as u64)
            .map(|i| ((i * 2654435761 + 12345) % vocab) as u32)
            .collect();
        let mut cache = KvPool::new(self.model.args(), 1, n, KvType::F32)?;
        let chunk = SeqChunk {
            slot: 0,
            start_pos: 0,
            tokens: &tokens,
            all_logits: false,
        };
        let (model, rope) = (&self.model, &self.rope);
        let start = std::time::Instant::now();
        model.forward_once(&self.pool, &mut cache, rope, &[chunk])?;
        Ok(start.elapsed())
    }

    /// Times `n` single-token decode steps (greedy, never stopping at EOS) after a
    /// one-token prompt, as `llama-bench`'s `tg` test does.
    pub fn bench_decode(&self, n: usize) -> Result<std::time::Duration> {
        if n == 0 || n >= self.max_seq_len {
            return Err(Error::InvalidArgument(format!(
                "generation length {n} must be in 1..{}",
                self.max_seq_len
            )));
        }
        let mut cache = KvPool::new(self.model.args(), 1, n + 1, KvType::F32)?;
        let (model, rope) = (&self.model, &self.rope);
        let mut tok = self.tokenizer.bos_id();
        let start = std::time::Instant::now();
        for pos in 0..n {
            let t = [tok];
            let chunk = SeqChunk {
                slot: 0,
                start_pos: pos,
                tokens: &t,
                all_logits: false,
            };
            let logits = model.forward_once(&self.pool, &mut cache, rope, &[chunk])?;
            tok = sampling::argmax(&logits[0]);
        }
        Ok(start.elapsed())
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
        let mut cache = KvPool::new(self.model.args(), 1, tokens.len(), KvType::F32)?;
        let chunk = SeqChunk {
            slot: 0,
            start_pos: 0,
            tokens,
            all_logits: true,
        };
        let (model, rope) = (&self.model, &self.rope);
        let mut out = model.forward_once(&self.pool, &mut cache, rope, &[chunk])?;
        Ok(out.remove(0))
    }

    /// The reference's `generate`: continues each prompt (token ids).
    pub fn generate(
        &mut self,
        prompt_tokens: &[Vec<u32>],
        opts: &GenerationOptions,
    ) -> Result<Vec<GenerationOutput>> {
        self.generate_with(prompt_tokens, opts, &mut |_, _| ControlFlow::Continue(()))
    }

    /// [`Llama::generate`], calling `on_token(row, id)` for every generated token
    /// (EOS excluded) as soon as it is chosen. Returning `Break` stops the whole call;
    /// the outputs then hold what was generated so far.
    pub fn generate_with(
        &mut self,
        prompt_tokens: &[Vec<u32>],
        opts: &GenerationOptions,
        on_token: &mut dyn FnMut(usize, u32) -> ControlFlow<()>,
    ) -> Result<Vec<GenerationOutput>> {
        let stops = self.eos_ids.clone();
        self.generate_until(prompt_tokens, opts, &stops, on_token)
    }

    /// The generate loop; a row ends at any token of `stops` (excluded from the output).
    fn generate_until(
        &mut self,
        prompt_tokens: &[Vec<u32>],
        opts: &GenerationOptions,
        stops: &[u32],
        on_token: &mut dyn FnMut(usize, u32) -> ControlFlow<()>,
    ) -> Result<Vec<GenerationOutput>> {
        let params = SamplingParams::new(opts.temperature, opts.top_p)?;
        let bsz = prompt_tokens.len();
        if bsz > self.max_batch_size {
            return Err(Error::BatchTooLarge {
                got: bsz,
                max: self.max_batch_size,
            });
        }
        let n_words = self.tokenizer.n_words();
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
        if let Some(seed) = opts.seed {
            self.sampler = Sampler::new(seed);
        }
        let max_gen_len = opts.max_gen_len.unwrap_or(self.max_seq_len - 1);
        // Tokens each row may generate: the reference's total_len cut, per row.
        let budget: Vec<usize> = prompt_tokens
            .iter()
            .map(|p| max_gen_len.min(self.max_seq_len - p.len()))
            .collect();
        let cache_len = prompt_tokens
            .iter()
            .zip(&budget)
            .map(|(p, b)| p.len() + b)
            .max()
            .unwrap_or(1);
        let mut cache = KvPool::new(self.model.args(), bsz, cache_len, KvType::F32)?;
        let want_prompt_logprobs = opts.logprobs && opts.echo;

        let chunks: Vec<SeqChunk> = prompt_tokens
            .iter()
            .enumerate()
            .map(|(slot, p)| SeqChunk {
                slot,
                start_pos: 0,
                tokens: p,
                all_logits: want_prompt_logprobs,
            })
            .collect();
        let (model, rope) = (&self.model, &self.rope);
        let started = std::time::Instant::now();
        let prefill = model.forward_once(&self.pool, &mut cache, rope, &chunks)?;
        self.stats = GenerationStats {
            prompt_tokens: prompt_tokens.iter().map(Vec::len).sum(),
            prefill: started.elapsed(),
            ..Default::default()
        };
        let started = std::time::Instant::now();

        let vocab = self.model.vocab_size();
        let mut prompt_lp: Vec<Vec<f32>> = vec![Vec::new(); bsz];
        let mut last_logits: Vec<Vec<f32>> = Vec::with_capacity(bsz);
        for (row, logits) in prefill.into_iter().enumerate() {
            let p = &prompt_tokens[row];
            if want_prompt_logprobs {
                prompt_lp[row].push(0.0);
                for t in 1..p.len() {
                    let l = &logits[(t - 1) * vocab..t * vocab];
                    prompt_lp[row].push(sampling::logprob(l, p[t]));
                }
                last_logits.push(logits[(p.len() - 1) * vocab..].to_vec());
            } else {
                last_logits.push(logits);
            }
        }

        let mut generated: Vec<Vec<u32>> = vec![Vec::new(); bsz];
        let mut gen_lp: Vec<Vec<f32>> = vec![Vec::new(); bsz];
        let mut active: Vec<bool> = budget.iter().map(|&b| b > 0).collect();
        let mut stopped = false;
        while !stopped && active.iter().any(|&a| a) {
            let mut step: Vec<(usize, u32)> = Vec::new();
            for row in 0..bsz {
                if !active[row] {
                    continue;
                }
                let logits = &last_logits[row];
                let tok = self.sampler.sample(logits, params);
                self.stats.generated_tokens += 1;
                if stops.contains(&tok) {
                    active[row] = false;
                    continue;
                }
                if opts.logprobs {
                    gen_lp[row].push(sampling::logprob(logits, tok));
                }
                generated[row].push(tok);
                if on_token(row, tok).is_break() {
                    stopped = true;
                }
                if generated[row].len() >= budget[row] {
                    active[row] = false;
                } else {
                    step.push((row, tok));
                }
            }
            if stopped || step.is_empty() {
                break;
            }
            let toks: Vec<[u32; 1]> = step.iter().map(|&(_, t)| [t]).collect();
            let chunks: Vec<SeqChunk> = step
                .iter()
                .zip(&toks)
                .map(|(&(row, _), t)| SeqChunk {
                    slot: row,
                    start_pos: prompt_tokens[row].len() + generated[row].len() - 1,
                    tokens: t,
                    all_logits: false,
                })
                .collect();
            let (model, rope) = (&self.model, &self.rope);
            let out = model.forward_once(&self.pool, &mut cache, rope, &chunks)?;
            for ((row, _), logits) in step.iter().zip(out) {
                last_logits[*row] = logits;
            }
        }

        self.stats.decode = started.elapsed();
        let mut outputs = Vec::with_capacity(bsz);
        for row in 0..bsz {
            let (mut tokens, mut lps) = if opts.echo {
                let mut t = prompt_tokens[row].clone();
                t.extend_from_slice(&generated[row]);
                let mut l = std::mem::take(&mut prompt_lp[row]);
                l.extend_from_slice(&gen_lp[row]);
                (t, l)
            } else {
                (
                    std::mem::take(&mut generated[row]),
                    std::mem::take(&mut gen_lp[row]),
                )
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

    fn piece_texts(&self, tokens: &[u32]) -> Result<Vec<String>> {
        tokens
            .iter()
            .map(|&t| self.tokenizer.decode(&[t]))
            .collect()
    }

    /// The reference's `text_completion`: each prompt encoded with BOS, continued.
    pub fn text_completion<S: AsRef<str>>(
        &mut self,
        prompts: &[S],
        opts: &GenerationOptions,
    ) -> Result<Vec<CompletionPrediction>> {
        self.text_completion_with(prompts, opts, &mut |_, _| ControlFlow::Continue(()))
    }

    /// [`Llama::text_completion`], calling `on_token(row, id)` for every generated token
    /// as [`Llama::generate_with`] does; `Break` stops the whole call.
    pub fn text_completion_with<S: AsRef<str>>(
        &mut self,
        prompts: &[S],
        opts: &GenerationOptions,
        on_token: &mut dyn FnMut(usize, u32) -> ControlFlow<()>,
    ) -> Result<Vec<CompletionPrediction>> {
        let tokens: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| self.tokenizer.encode(p.as_ref(), true, false))
            .collect();
        let outs = self.generate_with(&tokens, opts, on_token)?;
        outs.into_iter()
            .map(|o| self.completion_prediction(o))
            .collect()
    }

    fn completion_prediction(&self, o: GenerationOutput) -> Result<CompletionPrediction> {
        Ok(CompletionPrediction {
            generation: self.tokenizer.decode(&o.tokens)?,
            tokens: match o.logprobs {
                Some(_) => Some(self.piece_texts(&o.tokens)?),
                None => None,
            },
            logprobs: o.logprobs,
        })
    }

    /// Prompt ids of each dialog, or `None` for a dialog refused for special tags.
    /// Fails (like the reference's assertions) if any dialog breaks the role rules.
    fn dialog_prompts(&self, dialogs: &[Dialog]) -> Result<Vec<Option<Vec<u32>>>> {
        if dialogs.len() > self.max_batch_size {
            return Err(Error::BatchTooLarge {
                got: dialogs.len(),
                max: self.max_batch_size,
            });
        }
        dialogs
            .iter()
            .map(|d| {
                let ids = self.template.encode(&self.tokenizer, d)?;
                Ok((!self.template.is_refused(d)).then_some(ids))
            })
            .collect()
    }

    /// The reference's `chat_completion`. A dialog with special tags gets the error
    /// text as its content without running the model; the others are generated as one
    /// batch, unaffected by it.
    pub fn chat_completion(
        &mut self,
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
        &mut self,
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
        let stops = self.chat_stops();
        let mut outs = self
            .generate_until(&safe, &chat_opts, &stops, on_token)?
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

    /// Tokens that end an assistant turn: EOS ids plus the template's end-of-turn.
    fn chat_stops(&self) -> Vec<u32> {
        let mut stops = self.eos_ids.clone();
        for id in self.template.stop_ids(&self.tokenizer) {
            if !stops.contains(&id) {
                stops.push(id);
            }
        }
        stops
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
        &mut self,
        prompt: &str,
        opts: &GenerationOptions,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<CompletionPrediction> {
        let tokens = vec![self.tokenizer.encode(prompt, true, false)];
        let opts = GenerationOptions {
            echo: false,
            ..opts.clone()
        };
        let stops = self.eos_ids.clone();
        let o = self.stream_row(&tokens, &opts, &stops, on_text)?;
        self.completion_prediction(o)
    }

    /// Streams the answer to one dialog (see [`Llama::text_completion_stream`]).
    pub fn chat_completion_stream(
        &mut self,
        dialog: &Dialog,
        opts: &GenerationOptions,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<ChatPrediction> {
        let Some(ids) = self.dialog_prompts(std::slice::from_ref(dialog))?.remove(0) else {
            let _ = on_text(chat::UNSAFE_ERROR);
            return Ok(self.refusal(opts.logprobs));
        };
        let opts = GenerationOptions {
            echo: false,
            ..opts.clone()
        };
        let stops = self.chat_stops();
        let o = self.stream_row(&[ids], &opts, &stops, on_text)?;
        self.chat_prediction(o)
    }

    fn stream_row(
        &mut self,
        tokens: &[Vec<u32>],
        opts: &GenerationOptions,
        stops: &[u32],
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<GenerationOutput> {
        let mut decoder = StreamDecoder::new();
        let tokenizer = Arc::clone(&self.tokenizer);
        let mut decode_err = None;
        let mut outs = self.generate_until(tokens, opts, stops, &mut |_, id| match decoder
            .push(&tokenizer, id)
        {
            Ok(delta) if delta.is_empty() => ControlFlow::Continue(()),
            Ok(delta) => on_text(&delta),
            Err(e) => {
                decode_err = Some(e);
                ControlFlow::Break(())
            }
        })?;
        if let Some(e) = decode_err {
            return Err(e);
        }
        let rest = decoder.finish(&tokenizer)?;
        if !rest.is_empty() {
            let _ = on_text(&rest);
        }
        Ok(outs.remove(0))
    }
}
