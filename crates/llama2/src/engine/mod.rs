//! The continuous-batching engine: many independent requests share one model, each
//! joining and leaving at any step.
//!
//! [`Engine`] runs a [`scheduler`] loop on its own thread, which owns the worker pool
//! and the KV cache ([`crate::model::KvPool`]). Callers on any thread submit a
//! [`Request`] with its own [`SeqOptions`] and receive [`Event`]s (tokens with text
//! deltas, then the end) over a channel; a request's cancel flag (set too when its
//! [`RequestHandle`] is dropped) retires it within one step, and a receiver that went
//! away is noticed at the next event sent to it. A greedy request gets the same tokens alone or
//! in any batch, and a sampled one the same tokens for the same seed, because every
//! kernel computes a row the same way whatever the batch and each request has its own
//! sampler.

mod scheduler;
pub mod sequence;
pub mod stop;

pub use sequence::{
    Event, EventKind, EventSink, FinishReason, Finished, SeqOptions, TokenOut, MAX_STOP_BYTES,
    MAX_STOP_STRINGS, MAX_TOP_LOGPROBS, MAX_WATCH_IDS,
};

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::kernels::WorkerPool;
use crate::model::{KvPool, KvType, Transformer};
use crate::tokenizer::Tokenizer;

use scheduler::Scheduler;
use sequence::Sequence;

/// Most positions per slot an engine takes (the RoPE table and KV cache grow with it).
pub const MAX_CONTEXT: usize = 1 << 20;
/// Most slots an engine takes.
pub const MAX_SLOTS: usize = 4096;
/// Most tokens per step an engine takes.
pub const MAX_STEP_TOKENS: usize = 1 << 16;

/// Most worker threads: eight per logical CPU (more only queue for the same cores).
pub fn max_threads() -> usize {
    8 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Total physical memory in bytes, where the system says (Linux `/proc/meminfo`).
fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// How an [`Engine`] is set up.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Sequences decoded together (KV slots).
    pub slots: usize,
    /// Context (prompt plus generation) per slot.
    pub ctx: usize,
    /// KV cache element type.
    pub kv_type: KvType,
    /// Most tokens per forward pass: every running sequence's decode token, then pieces
    /// of waiting prompts (chunked prefill).
    pub step_tokens: usize,
    /// Worker threads (the engine thread included).
    pub threads: usize,
    /// Token ids that end every sequence unless `ignore_eos`.
    pub eos_ids: Vec<u32>,
}

/// Counters the engine keeps current for monitoring.
#[derive(Debug, Default)]
pub struct EngineGauges {
    /// Requests waiting for a slot.
    pub waiting: AtomicUsize,
    /// Requests holding a slot.
    pub running: AtomicUsize,
    /// KV positions held by running requests.
    pub kv_used: AtomicUsize,
    /// Forward steps run since the engine started.
    pub steps: AtomicUsize,
}

/// A job run on the engine thread between steps.
type Exclusive = Box<dyn FnOnce(&Transformer, &WorkerPool) + Send>;

/// A worker pool several engines can run on, one forward step at a time (a chat model
/// and its safety classifier share the CPU cores rather than oversubscribe them).
pub type SharedPool = Arc<Mutex<WorkerPool>>;

/// Locks a shared pool; a pool whose holder panicked is still usable (steps catch
/// their own panics).
pub(crate) fn lock_pool(pool: &SharedPool) -> MutexGuard<'_, WorkerPool> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

enum Command {
    Submit(Box<Sequence>),
    Exclusive(Exclusive),
}

/// A request: prompt token ids and how to continue them.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// Generation settings.
    pub options: SeqOptions,
    /// Returned in every [`Event`] of this request.
    pub tag: u64,
}

/// The caller's side of a submitted request: its events and its cancel flag.
#[derive(Debug)]
pub struct RequestHandle {
    events: Receiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl RequestHandle {
    /// The next event; `None` once the request has ended and all events were taken.
    pub fn recv(&self) -> Option<Event> {
        self.events.recv().ok()
    }

    /// Asks the engine to retire the request (within one step).
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The request's cancel flag.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.cancel)
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A shared handle on the engine thread. `Send + Sync`: submit from any thread.
pub struct Engine {
    commands: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    model: Arc<Transformer>,
    tokenizer: Arc<Tokenizer>,
    config: EngineConfig,
    kv_reserved: usize,
    gauges: Arc<EngineGauges>,
    pool: SharedPool,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.config)
            .finish()
    }
}

impl Engine {
    /// Starts the engine thread with its worker pool and KV cache.
    pub fn start(
        model: Arc<Transformer>,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
    ) -> Result<Engine> {
        Self::start_on(model, tokenizer, config, None)
    }

    /// Like [`start`](Self::start), on another engine's [`pool`](Self::pool)
    /// (`config.threads` is then that pool's size).
    pub fn start_sharing(
        model: Arc<Transformer>,
        tokenizer: Arc<Tokenizer>,
        mut config: EngineConfig,
        pool: SharedPool,
    ) -> Result<Engine> {
        config.threads = lock_pool(&pool).threads();
        Self::start_on(model, tokenizer, config, Some(pool))
    }

    fn start_on(
        model: Arc<Transformer>,
        tokenizer: Arc<Tokenizer>,
        config: EngineConfig,
        pool: Option<SharedPool>,
    ) -> Result<Engine> {
        let range = |name: &str, v: usize, max: usize| {
            if (1..=max).contains(&v) {
                Ok(())
            } else {
                Err(Error::InvalidArgument(format!(
                    "{name} must be between 1 and {max}, got {v}"
                )))
            }
        };
        range("threads", config.threads, max_threads())?;
        range(
            "the context per slot (max_seq_len)",
            config.ctx,
            MAX_CONTEXT,
        )?;
        range("the slots (max_batch_size)", config.slots, MAX_SLOTS)?;
        range("step_tokens", config.step_tokens, MAX_STEP_TOKENS)?;
        if tokenizer.n_words() != model.vocab_size() {
            return Err(Error::InvalidArgument(format!(
                "the tokenizer has {} pieces but the model's vocabulary has {} rows",
                tokenizer.n_words(),
                model.vocab_size()
            )));
        }
        let kv = KvPool::new(model.args(), config.slots, config.ctx, config.kv_type)?;
        let kv_reserved = kv.reserved_bytes();
        // The cache fills as slots do; refuse one that could never fit rather than fail
        // (or swap) once it is full.
        if let Some(total) = physical_memory() {
            if kv_reserved as u64 > total {
                let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
                return Err(Error::InvalidArgument(format!(
                    "a {} KV cache of {} slots x {} positions needs {:.1} GiB, more than this \
                     machine's {:.1} GiB of memory: lower the context or the slots",
                    config.kv_type.name(),
                    config.slots,
                    config.ctx,
                    gib(kv_reserved as u64),
                    gib(total)
                )));
            }
        }
        let threads = config.threads;
        let pool = match pool {
            Some(p) => p,
            None => Arc::new(Mutex::new(WorkerPool::new(threads).map_err(|e| {
                Error::InvalidArgument(format!("cannot start {threads} threads: {e}"))
            })?)),
        };
        let gauges = Arc::new(EngineGauges::default());
        let mut sched = Scheduler::new(
            Arc::clone(&model),
            Arc::clone(&pool),
            Arc::clone(&tokenizer),
            config.eos_ids.clone(),
            kv,
            config.step_tokens,
            Arc::clone(&gauges),
        );
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("llama2-engine".into())
            .spawn(move || run(&mut sched, &rx))
            .map_err(|e| Error::InvalidArgument(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            commands: Some(tx),
            thread: Some(thread),
            model,
            tokenizer,
            config,
            kv_reserved,
            gauges,
            pool,
        })
    }

    /// The worker pool, for another engine to share ([`start_sharing`](Self::start_sharing)).
    pub fn pool(&self) -> SharedPool {
        Arc::clone(&self.pool)
    }

    /// The model.
    pub fn model(&self) -> &Arc<Transformer> {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Bytes the KV cache may hold when every slot is full (what it reserves).
    pub fn kv_reserved_bytes(&self) -> usize {
        self.kv_reserved
    }

    /// Live counters (queue, running, KV use).
    pub fn gauges(&self) -> &EngineGauges {
        &self.gauges
    }

    /// Checks `req` and queues it; events go to `events` tagged with `req.tag`. An
    /// invalid request is refused here, before it is scheduled. Returns the request's
    /// cancel flag.
    pub fn submit_to(
        &self,
        req: Request,
        events: impl EventSink + 'static,
    ) -> Result<Arc<AtomicBool>> {
        let params = req.options.validate()?;
        let ctx = self.config.ctx;
        let n_words = self.model.vocab_size();
        if req.prompt.is_empty() {
            return Err(Error::InvalidArgument("the prompt is empty".into()));
        }
        if req.prompt.len() > ctx {
            return Err(Error::PromptTooLong {
                index: 0,
                len: req.prompt.len(),
                max_seq_len: ctx,
            });
        }
        if let Some(&id) = req.prompt.iter().find(|&&t| t as usize >= n_words) {
            return Err(Error::InvalidTokenId { id, n_words });
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let seq = Sequence::new(
            req.tag,
            req.prompt,
            req.options,
            params,
            ctx,
            Box::new(events),
            Arc::clone(&cancel),
        );
        self.send(Command::Submit(Box::new(seq)))?;
        Ok(cancel)
    }

    /// [`Engine::submit_to`] with a channel of its own.
    pub fn submit(&self, req: Request) -> Result<RequestHandle> {
        let (tx, rx) = mpsc::channel();
        let cancel = self.submit_to(req, tx)?;
        Ok(RequestHandle { events: rx, cancel })
    }

    /// Runs `f` on the engine thread between steps, with the model and the worker pool,
    /// and returns its result (benchmarks, one-off forward passes).
    pub fn exclusive<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Transformer, &WorkerPool) -> R + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = mpsc::channel();
        self.send(Command::Exclusive(Box::new(move |m, p| {
            let _ = tx.send(f(m, p));
        })))?;
        rx.recv()
            .map_err(|_| Error::InvalidArgument("the engine stopped during the job".into()))
    }

    fn send(&self, c: Command) -> Result<()> {
        self.commands
            .as_ref()
            .and_then(|tx| tx.send(c).ok())
            .ok_or_else(|| Error::InvalidArgument("the engine has stopped".into()))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the channel ends the loop once running sequences are cancelled.
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The engine thread: take commands, step while there is work, sleep when idle.
fn run(sched: &mut Scheduler, rx: &Receiver<Command>) {
    loop {
        let take = |c: Command, sched: &mut Scheduler| match c {
            Command::Submit(seq) => sched.enqueue(*seq),
            Command::Exclusive(f) => {
                let r =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sched.exclusive(f)));
                drop(r); // a panicking job dropped its sender: the caller sees an error
            }
        };
        if !sched.has_work() {
            match rx.recv() {
                Ok(c) => take(c, sched),
                Err(_) => return,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(c) => take(c, sched),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    sched.cancel_all();
                    return;
                }
            }
        }
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sched.step()));
        if let Err(p) = stepped {
            // A bug outside the forward pass: fail what was in flight, keep serving.
            sched.fail_all(&scheduler::panic_message(&p));
        }
    }
}
