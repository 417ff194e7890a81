//! `llama._llama`: the native half of the `llama` Python package.
//!
//! The Python package (`python/python/llama/`) gives Meta's API (`Llama.build`,
//! `text_completion`, `chat_completion`, `generate`, `Tokenizer`); this module does the
//! work with the Rust engine.
//!
//! Every engine call runs on a worker thread while the calling thread waits with the GIL
//! released. The worker reports each generated token over a channel; the waiting thread
//! then briefly re-attaches to the interpreter and checks for signals, so Ctrl-C stops a
//! generation within one token: the pending `KeyboardInterrupt` is raised and a cancel
//! flag makes the worker's per-token callback return `Break`. The same channel carries
//! the text deltas of the streaming iterators. Engine errors become the exception classes
//! of `llama.errors`; a panic on the worker becomes `LlamaError`, never a crash.

// The methods mirror the reference's Python signatures, keyword arguments included.
#![allow(clippy::too_many_arguments)]

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use llama2::safety::{Category, Guard, GuardFormat, GuardOptions, GuardedAnswer, Verdict};
use llama2::{
    ChatPrediction, CompletionPrediction, Dialog, DialogError, GenerationOptions, Llama, Message,
    Precision, Role, TemplateChoice,
};
use pyo3::exceptions::{PyAssertionError, PyException, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// How long a waiting thread sleeps between signal checks when no token arrives
/// (model loading, prefill, waiting for another call to finish).
const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// An exception of class `name` from `llama.errors` (falling back to `fallback` if that
/// module cannot be imported, e.g. when `_llama` is used on its own).
fn raise<F: pyo3::PyTypeInfo>(py: Python<'_>, name: &str, msg: String) -> PyErr {
    let built = py
        .import("llama.errors")
        .and_then(|m| m.getattr(name))
        .and_then(|cls| cls.call1((msg.clone(),)));
    match built {
        Ok(value) => PyErr::from_value(value),
        Err(_) => PyErr::from_type(py.get_type::<F>(), msg),
    }
}

/// Maps an engine error to the matching `llama.errors` exception, with the engine's message.
fn engine_err(py: Python<'_>, e: llama2::Error) -> PyErr {
    use llama2::Error as E;
    let msg = e.to_string();
    match e {
        E::Dialog(DialogError::Template(_)) => {
            raise::<PyValueError>(py, "InvalidArgumentError", msg)
        }
        E::Dialog(_) => raise::<PyAssertionError>(py, "DialogError", msg),
        E::BatchTooLarge { .. } => raise::<PyValueError>(py, "BatchTooLargeError", msg),
        E::PromptTooLong { .. } => raise::<PyValueError>(py, "PromptTooLongError", msg),
        E::InvalidArgument(_) | E::InvalidTokenId { .. } => {
            raise::<PyValueError>(py, "InvalidArgumentError", msg)
        }
        E::Io { .. } | E::Checkpoint { .. } | E::Config(_) | E::Tokenizer(_) | E::Shape { .. } => {
            raise::<PyOSError>(py, "ModelLoadError", msg)
        }
        E::Guard(_) => raise::<PyException>(py, "SafetyClassifierError", msg),
        #[allow(unreachable_patterns)]
        _ => raise::<PyException>(py, "LlamaError", msg),
    }
}

fn invalid(py: Python<'_>, msg: impl Into<String>) -> PyErr {
    raise::<PyValueError>(py, "InvalidArgumentError", msg.into())
}

/// A non-negative Python int as `usize`, or `InvalidArgumentError` naming `what`.
fn count(py: Python<'_>, what: &str, v: i64) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| invalid(py, format!("{what} must be >= 0, got {v}")))
}

/// Token ids from Python ints, refusing negatives and values beyond `u32`.
fn token_ids(py: Python<'_>, ids: Vec<i64>) -> PyResult<Vec<u32>> {
    ids.into_iter()
        .map(|t| u32::try_from(t).map_err(|_| invalid(py, format!("invalid token id {t}"))))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Worker threads
// ---------------------------------------------------------------------------------------

/// What a worker reports while it runs.
enum Event {
    /// A token was generated (non-streaming calls).
    Tick,
    /// A text delta (streaming calls).
    Text(String),
}

/// The worker's side of a job: report progress, learn about cancellation.
struct Ctl {
    tx: Sender<Event>,
    cancel: Arc<AtomicBool>,
}

impl Ctl {
    fn flow(&self) -> ControlFlow<()> {
        if self.cancel.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// Per-token callback of non-streaming calls.
    fn tick(&self) -> ControlFlow<()> {
        let _ = self.tx.send(Event::Tick);
        self.flow()
    }

    /// Per-delta callback of streaming calls.
    fn text(&self, delta: &str) -> ControlFlow<()> {
        let _ = self.tx.send(Event::Text(delta.to_owned()));
        self.flow()
    }

    fn cancelled(&self) -> llama2::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(llama2::Error::InvalidArgument("cancelled".into()))
        } else {
            Ok(())
        }
    }
}

/// The caller's side of a job running on a worker thread.
struct Job<T> {
    events: Mutex<Receiver<Event>>,
    handle: Mutex<Option<JoinHandle<llama2::Result<T>>>>,
    cancel: Arc<AtomicBool>,
}

/// What [`Job::next`] saw.
enum Step<T> {
    Text(String),
    Done(T),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic on a worker is reported as an error; the engine state it leaves is still
    // usable (every call starts from fresh caches), so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Send + 'static> Job<T> {
    fn spawn(f: impl FnOnce(&Ctl) -> llama2::Result<T> + Send + 'static) -> PyResult<Job<T>> {
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let ctl = Ctl {
            tx,
            cancel: Arc::clone(&cancel),
        };
        let handle = std::thread::Builder::new()
            .name("llama2-call".into())
            .spawn(move || f(&ctl))
            .map_err(|e| PyOSError::new_err(format!("cannot start a worker thread: {e}")))?;
        Ok(Job {
            events: Mutex::new(rx),
            handle: Mutex::new(Some(handle)),
            cancel,
        })
    }

    /// Waits (GIL released) for the next text delta or the end of the job. Signals are
    /// checked after every token and every [`POLL`]; a pending one (Ctrl-C) cancels
    /// the job and is raised. After the end, returns `Ok(None)`.
    fn next(&self, py: Python<'_>) -> PyResult<Option<Step<T>>> {
        loop {
            if lock(&self.handle).is_none() {
                return Ok(None);
            }
            let got = py.detach(|| lock(&self.events).recv_timeout(POLL));
            match got {
                Ok(Event::Text(s)) => return Ok(Some(Step::Text(s))),
                Ok(Event::Tick) | Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = py.check_signals() {
                        self.cancel();
                        return Err(e);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let Some(handle) = lock(&self.handle).take() else {
                        return Ok(None);
                    };
                    return match py.detach(|| handle.join()) {
                        Ok(Ok(v)) => Ok(Some(Step::Done(v))),
                        Ok(Err(e)) => Err(engine_err(py, e)),
                        Err(panic) => Err(raise::<PyException>(
                            py,
                            "LlamaError",
                            format!("internal error in the engine: {}", panic_text(&panic)),
                        )),
                    };
                }
            }
        }
    }

    /// Runs the job to its end and returns its result.
    fn wait(self, py: Python<'_>) -> PyResult<T> {
        loop {
            match self.next(py)? {
                Some(Step::Done(v)) => return Ok(v),
                Some(Step::Text(_)) => {}
                None => {
                    return Err(raise::<PyException>(
                        py,
                        "LlamaError",
                        "the call has already finished".into(),
                    ))
                }
            }
        }
    }

    /// Asks the worker to stop at its next token. A cancelled job's thread finishes on
    /// its own; nobody waits for it.
    fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        lock(&self.handle).take();
    }
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_owned()
    }
}

// ---------------------------------------------------------------------------------------
// Tokenizer
// ---------------------------------------------------------------------------------------

/// The model's tokenizer, as Meta's `llama.Tokenizer`: `encode(s, bos, eos)`,
/// `decode(t)`, and the `n_words`, `bos_id`, `eos_id`, `pad_id` attributes (`pad_id` is
/// -1 when the vocabulary has none, as for Llama 2).
#[pyclass(module = "llama._llama", name = "Tokenizer", frozen)]
struct PyTokenizer {
    inner: Arc<llama2::Tokenizer>,
}

#[pymethods]
impl PyTokenizer {
    /// Loads a SentencePiece `tokenizer.model` (or a Hugging Face `tokenizer.json`).
    #[new]
    fn new(py: Python<'_>, model_path: PathBuf) -> PyResult<Self> {
        let loaded = py.detach(|| {
            if model_path.extension().is_some_and(|e| e == "json") {
                llama2::Tokenizer::from_hf_json(&model_path)
            } else {
                llama2::Tokenizer::from_file(&model_path)
            }
        });
        let inner = loaded.map_err(|e| engine_err(py, e))?;
        Ok(PyTokenizer {
            inner: Arc::new(inner),
        })
    }

    /// Token ids of `s`, with BOS first if `bos` and EOS last if `eos`.
    fn encode(&self, py: Python<'_>, s: &str, bos: bool, eos: bool) -> Vec<u32> {
        let s = s.to_owned();
        py.detach(|| self.inner.encode(&s, bos, eos))
    }

    /// The text of token ids `t` (control tokens produce nothing).
    fn decode(&self, py: Python<'_>, t: Vec<i64>) -> PyResult<String> {
        let ids = token_ids(py, t)?;
        self.inner.decode(&ids).map_err(|e| engine_err(py, e))
    }

    /// Vocabulary size.
    #[getter]
    fn n_words(&self) -> usize {
        self.inner.n_words()
    }

    /// Beginning-of-sequence id.
    #[getter]
    fn bos_id(&self) -> u32 {
        self.inner.bos_id()
    }

    /// End-of-sequence id.
    #[getter]
    fn eos_id(&self) -> u32 {
        self.inner.eos_id()
    }

    /// Padding id, or -1 when there is none (Llama 2).
    #[getter]
    fn pad_id(&self) -> i64 {
        self.inner.pad_id().map_or(-1, i64::from)
    }

    fn __repr__(&self) -> String {
        format!(
            "Tokenizer(n_words={}, bos_id={}, eos_id={}, pad_id={})",
            self.n_words(),
            self.bos_id(),
            self.eos_id(),
            self.pad_id()
        )
    }
}

// ---------------------------------------------------------------------------------------
// Engine
// ---------------------------------------------------------------------------------------

/// A loaded model: the engine behind `llama.Llama`. Calls from several Python threads
/// run at once: each submits its requests to the shared continuous-batching engine.
#[pyclass(module = "llama._llama", frozen)]
struct Engine {
    llama: Arc<Llama>,
    /// The safety classifier around `chat_completion` (`guard_path`).
    guard: Option<Arc<Guard>>,
    tokenizer: Arc<llama2::Tokenizer>,
    max_seq_len: usize,
    max_batch_size: usize,
    threads: usize,
    model_path: PathBuf,
}

/// Runs `f` on the engine on a worker thread and waits for it (Ctrl-C aware).
fn on_engine<T: Send + 'static>(
    py: Python<'_>,
    llama: &Arc<Llama>,
    f: impl FnOnce(&Llama, &Ctl) -> llama2::Result<T> + Send + 'static,
) -> PyResult<T> {
    let llama = Arc::clone(llama);
    Job::spawn(move |ctl| {
        ctl.cancelled()?;
        f(&llama, ctl)
    })?
    .wait(py)
}

fn template_choice(py: Python<'_>, t: &str) -> PyResult<TemplateChoice> {
    Ok(match t {
        "auto" => TemplateChoice::Auto,
        "llama2" => TemplateChoice::Llama2,
        "llama3" => TemplateChoice::Llama3,
        "chatml" => TemplateChoice::ChatMl,
        src if src.contains("{{") || src.contains("{%") => TemplateChoice::Jinja(src.to_owned()),
        other => {
            return Err(invalid(
                py,
                format!(
                    "template must be 'auto', 'llama2', 'llama3', 'chatml' or Jinja source, got {other:?}"
                ),
            ))
        }
    })
}

fn precision(py: Python<'_>, p: &str) -> PyResult<Precision> {
    match p {
        "fast" => Ok(Precision::Fast),
        "exact" => Ok(Precision::Exact),
        other => Err(invalid(
            py,
            format!("precision must be 'fast' or 'exact', got {other:?}"),
        )),
    }
}

/// Meta's `model_parallel_size` check: the number of `consolidated.*.pth` shards of a
/// Meta folder (1 for any other format) must equal it.
fn check_model_parallel(py: Python<'_>, path: &Path, mp: i64) -> PyResult<()> {
    let is_meta = path.is_dir()
        && std::fs::read_dir(path).is_ok_and(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("consolidated.") && name.ends_with(".pth")
            })
        });
    let shards = if is_meta {
        llama2::checkpoint::shard_count(path).map_err(|e| engine_err(py, e))?
    } else {
        1
    };
    if i64::try_from(shards).ok() != Some(mp) {
        return Err(raise::<PyAssertionError>(
            py,
            "ModelParallelSizeError",
            format!("Loading a checkpoint for MP={shards} but world size is {mp}"),
        ));
    }
    Ok(())
}

/// Generation options from the reference's keyword arguments.
fn options(
    py: Python<'_>,
    temperature: f64,
    top_p: f64,
    max_gen_len: Option<i64>,
    logprobs: bool,
    echo: bool,
) -> PyResult<GenerationOptions> {
    let max_gen_len = max_gen_len
        .map(|n| count(py, "max_gen_len", n))
        .transpose()?;
    Ok(GenerationOptions {
        temperature: temperature as f32,
        top_p: top_p as f32,
        max_gen_len,
        logprobs,
        echo,
        seed: None,
    })
}

/// A dialog from a list of `{"role", "content"}` mappings.
///
/// A role other than the three is replaced by one that can never be in its place
/// (assistant first, system later), so validation fails with the reference's
/// role-order message, as Meta's assertion does for any unknown role.
fn extract_dialog(dialog: &Bound<'_, PyAny>) -> PyResult<Dialog> {
    let mut out = Vec::new();
    for (i, msg) in dialog.try_iter()?.enumerate() {
        let msg = msg?;
        let role: String = msg.get_item("role")?.extract()?;
        let content: String = msg.get_item("content")?.extract()?;
        let role = match role.as_str() {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ if i == 0 => Role::Assistant,
            _ => Role::System,
        };
        out.push(Message::new(role, content));
    }
    Ok(out)
}

fn extract_dialogs(dialogs: &Bound<'_, PyAny>) -> PyResult<Vec<Dialog>> {
    dialogs.try_iter()?.map(|d| extract_dialog(&d?)).collect()
}

fn add_logprobs(
    d: &Bound<'_, PyDict>,
    tokens: Option<Vec<String>>,
    logprobs: Option<Vec<f32>>,
) -> PyResult<()> {
    if let Some(t) = tokens {
        d.set_item("tokens", t)?;
    }
    if let Some(l) = logprobs {
        d.set_item("logprobs", l.into_iter().map(f64::from).collect::<Vec<_>>())?;
    }
    Ok(())
}

fn completion_dict<'py>(py: Python<'py>, p: CompletionPrediction) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("generation", p.generation)?;
    add_logprobs(&d, p.tokens, p.logprobs)?;
    Ok(d)
}

fn chat_dict<'py>(py: Python<'py>, p: ChatPrediction) -> PyResult<Bound<'py, PyDict>> {
    let m = PyDict::new(py);
    m.set_item("role", p.generation.role.as_str())?;
    m.set_item("content", p.generation.content)?;
    let d = PyDict::new(py);
    d.set_item("generation", m)?;
    add_logprobs(&d, p.tokens, p.logprobs)?;
    Ok(d)
}

impl Engine {
    /// Raw-text and token calls bypass the chat roles a guard judges: refused when one
    /// is set.
    fn unguarded_only(&self, py: Python<'_>, call: &str) -> PyResult<()> {
        if self.guard.is_some() {
            return Err(invalid(
                py,
                format!("{call} is not available with a guard (guard_path): use chat_completion"),
            ));
        }
        Ok(())
    }
}

#[pymethods]
impl Engine {
    /// Loads a model: a Meta checkpoint folder, a Hugging Face folder or a `.gguf` file
    /// (`model_path` None: the default model, fetched on first use).
    #[new]
    #[pyo3(signature = (model_path=None, tokenizer_path=None, max_seq_len=None, max_batch_size=8,
        seed=1, threads=None, template="auto", precision="fast", model_parallel_size=None,
        guard_path=None, guard_format=None, guard_threshold=None, guard_exclude=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        model_path: Option<PathBuf>,
        tokenizer_path: Option<PathBuf>,
        max_seq_len: Option<i64>,
        max_batch_size: i64,
        seed: u64,
        threads: Option<i64>,
        template: &str,
        precision: &str,
        model_parallel_size: Option<i64>,
        guard_path: Option<PathBuf>,
        guard_format: Option<String>,
        guard_threshold: Option<f64>,
        guard_exclude: Option<Vec<String>>,
    ) -> PyResult<Self> {
        let guard = guard_path
            .map(|path| {
                GuardSpec {
                    path,
                    format: guard_format,
                    threshold: guard_threshold,
                    exclude: guard_exclude,
                    categories: None,
                    threads: None,
                }
                .options(py)
            })
            .transpose()?;
        let max_seq_len = max_seq_len
            .map(|n| count(py, "max_seq_len", n))
            .transpose()?;
        let max_batch_size = count(py, "max_batch_size", max_batch_size)?;
        let threads = threads.map(|n| count(py, "threads", n)).transpose()?;
        let template = template_choice(py, template)?;
        let precision = self::precision(py, precision)?;
        let model_path = match model_path {
            Some(p) => p,
            None => Job::spawn(|_| Ok(llama2_default_model::path_or_fetch()))?
                .wait(py)?
                .map_err(|e| raise::<PyOSError>(py, "ModelLoadError", e.to_string()))?,
        };
        if let Some(mp) = model_parallel_size {
            check_model_parallel(py, &model_path, mp)?;
        }
        let path = model_path.clone();
        let llama = Job::spawn(move |_| {
            let mut b = Llama::open(&path)
                .max_batch_size(max_batch_size)
                .seed(seed)
                .template(template)
                .precision(precision);
            if let Some(t) = tokenizer_path {
                b = b.tokenizer(t);
            }
            if let Some(n) = max_seq_len {
                b = b.max_seq_len(n);
            }
            if let Some(n) = threads {
                b = b.threads(n);
            }
            let llama = b.build()?;
            // The guard runs on the chat model's worker pool.
            let guard = guard
                .map(|(path, o)| {
                    let o = GuardOptions {
                        pool: Some(llama.engine().pool()),
                        max_seq_len: Some(llama.max_seq_len().saturating_add(1024)),
                        ..o
                    };
                    Guard::open(path, o)
                })
                .transpose()?;
            Ok((llama, guard))
        })?
        .wait(py)?;
        let (llama, guard) = llama;
        Ok(Engine {
            guard: guard.map(Arc::new),
            tokenizer: Arc::new(llama.tokenizer().clone()),
            max_seq_len: llama.max_seq_len(),
            max_batch_size: llama.max_batch_size(),
            threads: llama.threads(),
            llama: Arc::new(llama),
            model_path,
        })
    }

    /// The tokenizer (a new handle on the same vocabulary each time).
    #[getter]
    fn tokenizer(&self) -> PyTokenizer {
        PyTokenizer {
            inner: Arc::clone(&self.tokenizer),
        }
    }

    /// Context length per sequence (prompt plus generation).
    #[getter]
    fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// Most prompts or dialogs per call.
    #[getter]
    fn max_batch_size(&self) -> usize {
        self.max_batch_size
    }

    /// Worker threads of the engine.
    #[getter]
    fn threads(&self) -> usize {
        self.threads
    }

    /// The model path that was loaded.
    #[getter]
    fn model_path(&self) -> PathBuf {
        self.model_path.clone()
    }

    /// Timing of the last call: prompt/generated token counts, seconds, tokens/s.
    fn last_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let llama = Arc::clone(&self.llama);
        let s = py.detach(move || llama.last_stats());
        let d = PyDict::new(py);
        d.set_item("prompt_tokens", s.prompt_tokens)?;
        d.set_item("reused_tokens", s.reused_tokens)?;
        d.set_item("generated_tokens", s.generated_tokens)?;
        d.set_item("prefill_s", s.prefill.as_secs_f64())?;
        d.set_item("decode_s", s.decode.as_secs_f64())?;
        d.set_item("prefill_tokens_per_s", s.prefill_tokens_per_s())?;
        d.set_item("decode_tokens_per_s", s.decode_tokens_per_s())?;
        Ok(d)
    }

    /// The reference's `generate`: returns `(tokens, logprobs or None)`.
    #[pyo3(signature = (prompt_tokens, max_gen_len, temperature=0.6, top_p=0.9, logprobs=false, echo=false))]
    fn generate<'py>(
        &self,
        py: Python<'py>,
        prompt_tokens: Vec<Vec<i64>>,
        max_gen_len: Option<i64>,
        temperature: f64,
        top_p: f64,
        logprobs: bool,
        echo: bool,
    ) -> PyResult<(Bound<'py, PyList>, Option<Bound<'py, PyList>>)> {
        self.unguarded_only(py, "generate")?;
        let opts = options(py, temperature, top_p, max_gen_len, logprobs, echo)?;
        let prompts = prompt_tokens
            .into_iter()
            .map(|p| token_ids(py, p))
            .collect::<PyResult<Vec<_>>>()?;
        let outs = on_engine(py, &self.llama, move |llama, ctl| {
            llama.generate_with(&prompts, &opts, &mut |_, _| ctl.tick())
        })?;
        let tokens = PyList::empty(py);
        let lps = PyList::empty(py);
        for o in outs {
            tokens.append(o.tokens)?;
            if let Some(l) = o.logprobs {
                lps.append(l.into_iter().map(f64::from).collect::<Vec<_>>())?;
            }
        }
        Ok((tokens, logprobs.then_some(lps)))
    }

    /// The reference's `text_completion`: a list of `{"generation": str}` dicts (plus
    /// `"tokens"` and `"logprobs"` with `logprobs=True`).
    #[pyo3(signature = (prompts, temperature=0.6, top_p=0.9, max_gen_len=None, logprobs=false, echo=false))]
    fn text_completion<'py>(
        &self,
        py: Python<'py>,
        prompts: Vec<String>,
        temperature: f64,
        top_p: f64,
        max_gen_len: Option<i64>,
        logprobs: bool,
        echo: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        self.unguarded_only(py, "text_completion")?;
        let opts = options(py, temperature, top_p, max_gen_len, logprobs, echo)?;
        let preds = on_engine(py, &self.llama, move |llama, ctl| {
            llama.text_completion_with(&prompts, &opts, &mut |_, _| ctl.tick())
        })?;
        let list = PyList::empty(py);
        for p in preds {
            list.append(completion_dict(py, p)?)?;
        }
        Ok(list)
    }

    /// The reference's `chat_completion`: a list of
    /// `{"generation": {"role": "assistant", "content": str}}` dicts.
    #[pyo3(signature = (dialogs, temperature=0.6, top_p=0.9, max_gen_len=None, logprobs=false))]
    fn chat_completion<'py>(
        &self,
        py: Python<'py>,
        dialogs: &Bound<'py, PyAny>,
        temperature: f64,
        top_p: f64,
        max_gen_len: Option<i64>,
        logprobs: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let opts = options(py, temperature, top_p, max_gen_len, logprobs, false)?;
        let dialogs = extract_dialogs(dialogs)?;
        if let Some(g) = &self.guard {
            let g = Arc::clone(g);
            let answers = on_engine(py, &self.llama, move |llama, ctl| {
                llama2::safety::guarded_chat_batch(llama, &g, &dialogs, &opts, &mut |_, _| {
                    ctl.tick()
                })
            })?;
            let list = PyList::empty(py);
            for a in answers {
                let d = match (&a.blocked, a.prediction.clone()) {
                    (None, Some(p)) => chat_dict(py, p)?,
                    _ => chat_dict(
                        py,
                        ChatPrediction {
                            generation: a.message.clone(),
                            tokens: None,
                            logprobs: None,
                        },
                    )?,
                };
                d.set_item("safety", safety_dict(py, &a)?)?;
                list.append(d)?;
            }
            return Ok(list);
        }
        let preds = on_engine(py, &self.llama, move |llama, ctl| {
            llama.chat_completion_with(&dialogs, &opts, &mut |_, _| ctl.tick())
        })?;
        let list = PyList::empty(py);
        for p in preds {
            list.append(chat_dict(py, p)?)?;
        }
        Ok(list)
    }

    /// An iterator of text deltas continuing `prompt`.
    #[pyo3(signature = (prompt, temperature=0.6, top_p=0.9, max_gen_len=None))]
    fn stream_text_completion(
        &self,
        py: Python<'_>,
        prompt: String,
        temperature: f64,
        top_p: f64,
        max_gen_len: Option<i64>,
    ) -> PyResult<TextStream> {
        self.unguarded_only(py, "stream_text_completion")?;
        let opts = options(py, temperature, top_p, max_gen_len, false, false)?;
        let llama = Arc::clone(&self.llama);
        let job = Job::spawn(move |ctl| {
            ctl.cancelled()?;
            llama
                .text_completion_stream(&prompt, &opts, &mut |d| ctl.text(d))
                .map(|_| ())
        })?;
        Ok(TextStream { job })
    }

    /// An iterator of text deltas of the assistant's answer to `dialog`.
    #[pyo3(signature = (dialog, temperature=0.6, top_p=0.9, max_gen_len=None))]
    fn stream_chat_completion(
        &self,
        py: Python<'_>,
        dialog: &Bound<'_, PyAny>,
        temperature: f64,
        top_p: f64,
        max_gen_len: Option<i64>,
    ) -> PyResult<TextStream> {
        let opts = options(py, temperature, top_p, max_gen_len, false, false)?;
        let dialog = extract_dialog(dialog)?;
        let llama = Arc::clone(&self.llama);
        let guard = self.guard.clone();
        let job = Job::spawn(move |ctl| {
            ctl.cancelled()?;
            match guard {
                Some(g) => {
                    llama2::safety::guarded_chat(&llama, &g, &dialog, &opts, &mut |d| ctl.text(d))
                        .map(|_| ())
                }
                None => llama
                    .chat_completion_stream(&dialog, &opts, &mut |d| ctl.text(d))
                    .map(|_| ()),
            }
        })?;
        Ok(TextStream { job })
    }

    fn __repr__(&self) -> String {
        format!(
            "Engine(model_path={:?}, max_seq_len={}, max_batch_size={}, threads={})",
            self.model_path, self.max_seq_len, self.max_batch_size, self.threads
        )
    }
}

/// The guard arguments of `Engine` and `PyGuard`: the classifier's path and options.
struct GuardSpec {
    path: PathBuf,
    format: Option<String>,
    threshold: Option<f64>,
    exclude: Option<Vec<String>>,
    categories: Option<Vec<(String, String)>>,
    threads: Option<i64>,
}

impl GuardSpec {
    fn options(self, py: Python<'_>) -> PyResult<(PathBuf, GuardOptions)> {
        let format = self
            .format
            .map(|f| {
                GuardFormat::parse(&f).ok_or_else(|| {
                    invalid(
                        py,
                        format!("guard format must be lg1, lg2, lg3 or lg3-1b, got {f:?}"),
                    )
                })
            })
            .transpose()?;
        let threads = self.threads.map(|n| count(py, "threads", n)).transpose()?;
        Ok((
            self.path,
            GuardOptions {
                format,
                threshold: self.threshold.map(|t| t as f32),
                excluded: self.exclude.unwrap_or_default(),
                categories: self.categories.map(|c| {
                    c.into_iter()
                        .map(|(code, name)| Category { code, name })
                        .collect()
                }),
                max_seq_len: None,
                threads,
                pool: None,
            },
        ))
    }
}

fn verdict_dict<'py>(py: Python<'py>, v: &Verdict) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("safe", v.safe)?;
    let cats = PyList::empty(py);
    for c in &v.categories {
        let cd = PyDict::new(py);
        cd.set_item("code", &c.code)?;
        cd.set_item("name", &c.name)?;
        cats.append(cd)?;
    }
    d.set_item("categories", cats)?;
    d.set_item("unsafe_probability", f64::from(v.unsafe_probability))?;
    d.set_item("text", &v.text)?;
    d.set_item("prompt_tokens", v.prompt_tokens)?;
    d.set_item("seconds", v.elapsed.as_secs_f64())?;
    Ok(d)
}

/// `{"blocked": None | "prompt" | "answer", "verdict": {...} | None, "checks": n}`.
fn safety_dict<'py>(py: Python<'py>, a: &GuardedAnswer) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match &a.blocked {
        None => {
            d.set_item("blocked", py.None())?;
            d.set_item("verdict", py.None())?;
        }
        Some(b) => {
            d.set_item("blocked", b.stage.as_str())?;
            d.set_item("verdict", verdict_dict(py, &b.verdict)?)?;
        }
    }
    d.set_item("checks", a.checks.len())?;
    Ok(d)
}

/// A Llama Guard classifier on its own: `check(dialog)` judges the dialog's last message.
#[pyclass(module = "llama._llama", name = "Guard", frozen)]
struct PyGuard {
    guard: Arc<Guard>,
}

#[pymethods]
impl PyGuard {
    /// Loads a Llama Guard model (any model path the engine opens).
    #[new]
    #[pyo3(signature = (path, format=None, threshold=None, exclude=None, categories=None, threads=None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        format: Option<String>,
        threshold: Option<f64>,
        exclude: Option<Vec<String>>,
        categories: Option<Vec<(String, String)>>,
        threads: Option<i64>,
    ) -> PyResult<Self> {
        let (path, options) = GuardSpec {
            path,
            format,
            threshold,
            exclude,
            categories,
            threads,
        }
        .options(py)?;
        let guard = Job::spawn(move |_| Guard::open(path, options))?.wait(py)?;
        Ok(PyGuard {
            guard: Arc::new(guard),
        })
    }

    /// Judges the last message of `dialog` (a user prompt, or an assistant answer
    /// after its prompt): `{"safe", "categories", "unsafe_probability", "text",
    /// "prompt_tokens", "seconds"}`.
    fn check<'py>(
        &self,
        py: Python<'py>,
        dialog: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let dialog = extract_dialog(dialog)?;
        let g = Arc::clone(&self.guard);
        let v = Job::spawn(move |_| g.check(&dialog))?.wait(py)?;
        verdict_dict(py, &v)
    }

    /// The prompt format in use (`lg1`, `lg2`, `lg3`, `lg3-1b`).
    #[getter]
    fn format(&self) -> &'static str {
        self.guard.prompt().format().name()
    }

    /// The classifier prompt text for `dialog`.
    fn render(&self, py: Python<'_>, dialog: &Bound<'_, PyAny>) -> PyResult<String> {
        let dialog = extract_dialog(dialog)?;
        self.guard.render(&dialog).map_err(|e| engine_err(py, e))
    }
}

/// An iterator of text deltas from a streaming call; their concatenation is the
/// generated text. Ctrl-C while waiting raises `KeyboardInterrupt` and stops the
/// generation; so do `close()` and dropping the iterator.
#[pyclass(module = "llama._llama", frozen)]
struct TextStream {
    job: Job<()>,
}

#[pymethods]
impl TextStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        match self.job.next(py)? {
            Some(Step::Text(s)) => Ok(Some(s)),
            Some(Step::Done(())) | None => Ok(None),
        }
    }

    /// Stops the generation at its next token.
    fn close(&self) {
        self.job.cancel();
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close();
        false
    }
}

impl Drop for TextStream {
    fn drop(&mut self) {
        self.job.cancel.store(true, Ordering::Relaxed);
    }
}

/// The native module `llama._llama`.
#[pymodule]
fn _llama(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Engine>()?;
    m.add_class::<PyTokenizer>()?;
    m.add_class::<TextStream>()?;
    m.add_class::<PyGuard>()?;
    m.add("REFUSAL", llama2::safety::REFUSAL)?;
    m.add("UNSAFE_ERROR", llama2::chat::UNSAFE_ERROR)?;
    Ok(())
}
