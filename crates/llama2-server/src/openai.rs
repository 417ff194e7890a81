//! `POST /v1/chat/completions` and `POST /v1/completions`: requests checked and turned
//! into engine requests, answers assembled whole or streamed as Server-Sent Events in
//! OpenAI's chunk shapes.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use llama2::engine::{FinishReason, Finished, TokenOut};
use llama2::safety::{Guard, Stage, Verdict, CHECK_EVERY_TOKENS, REFUSAL};
use llama2::{Dialog, Llama, Message, Request, Role, SeqOptions, Tokenizer};
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::jobs::{Job, Update};
use crate::protocol::{
    check_top_logprobs, parse_generation, ChatRequest, CompletionRequest, MessageContent,
    PromptField, Sampling,
};
use crate::{safety, AppState};

/// The body, or 413 when it is over the limit.
pub fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })
}

/// OpenAI's name for why a choice ended. A cancelled sequence (the server is shutting
/// down) was cut short by a limit, hence `length`.
fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Cancelled => "length",
    }
}

/// The bytes a token stands for, and their text (lossy for a token that is part of a
/// multi-byte character).
fn token_bytes(tok: &Tokenizer, id: u32) -> Vec<u8> {
    if let Some(b) = tok.byte_value(id) {
        return vec![b];
    }
    if tok.is_control(id) {
        return Vec::new();
    }
    match tok.as_sentencepiece() {
        Some(_) => tok
            .id_to_piece(id)
            .unwrap_or_default()
            .replace('\u{2581}', " ")
            .into_bytes(),
        None => tok.decode(&[id]).unwrap_or_default().into_bytes(),
    }
}

fn token_text(tok: &Tokenizer, id: u32) -> (String, Vec<u8>) {
    let b = token_bytes(tok, id);
    (String::from_utf8_lossy(&b).into_owned(), b)
}

/// Chat's `logprobs.content` entry of one token.
fn chat_logprob(tok: &Tokenizer, t: &TokenOut) -> Value {
    let (text, bytes) = token_text(tok, t.id);
    let top: Vec<Value> = t
        .top_logprobs
        .iter()
        .map(|&(id, lp)| {
            let (text, bytes) = token_text(tok, id);
            json!({"token": text, "logprob": lp, "bytes": bytes})
        })
        .collect();
    json!({"token": text, "logprob": t.logprob, "bytes": bytes, "top_logprobs": top})
}

/// Unix time in seconds.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A message list as a dialog; roles other than system/developer/user/assistant are
/// refused, content parts other than text too.
fn dialog_of(req: &ChatRequest) -> Result<Dialog, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` is empty: it needs at least one user message",
        ));
    }
    req.messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(ApiError::invalid_param(
                        format!("messages[{i}].role"),
                        format!(
                            "unsupported role {other:?}: this model takes system, user and assistant messages"
                        ),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(MessageContent::Text(s)) => s.clone(),
                Some(MessageContent::Parts(parts)) => {
                    let mut s = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => s.push_str(t),
                            _ => {
                                return Err(ApiError::invalid_param(
                                    format!("messages[{i}].content[{j}]"),
                                    format!(
                                        "unsupported content part of type {:?}: only text parts are read",
                                        p.kind
                                    ),
                                ))
                            }
                        }
                    }
                    s
                }
            };
            Ok(Message::new(role, content))
        })
        .collect()
}

/// The engine settings of choice `index` of a request.
fn seq_options(
    s: &Sampling,
    seed: u64,
    index: usize,
    stop_ids: &[u32],
    logprobs: bool,
    top_logprobs: usize,
) -> SeqOptions {
    SeqOptions {
        temperature: s.temperature,
        top_p: s.top_p,
        max_tokens: s.max_tokens,
        stop_ids: stop_ids.to_vec(),
        stop_strings: s.stop.clone(),
        ignore_eos: s.ignore_eos,
        logprobs: logprobs || top_logprobs > 0,
        top_logprobs,
        prompt_logprobs: false,
        watch_ids: Vec::new(),
        seed,
        seed_stream: index as u64,
    }
}

/// Refuses a prompt that leaves no room to generate, saying by how much it is over.
fn check_prompt_len(len: usize, ctx: usize, param: &str) -> Result<(), ApiError> {
    if len == 0 {
        return Err(ApiError::invalid_param(param, "the prompt is empty"));
    }
    if len >= ctx {
        return Err(ApiError::invalid_param(
            param,
            format!(
                "the prompt has {len} tokens, {} more than this server's context of {ctx} \
                 tokens per request allows (it must leave room for at least one generated token)",
                len + 1 - ctx
            ),
        )
        .with_code("context_length_exceeded"));
    }
    Ok(())
}

/// Token usage over a job's choices; prompts count once each.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    prompt: usize,
    cached: usize,
    completion: usize,
}

impl Usage {
    fn add(&mut self, f: &Finished, counts_prompt: bool) {
        if counts_prompt {
            self.prompt += f.prompt_tokens;
            self.cached += f.cached_tokens;
        }
        self.completion += f.generated_tokens;
    }

    fn json(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt,
            "completion_tokens": self.completion,
            "total_tokens": self.prompt + self.completion,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        })
    }
}

/// One choice being assembled.
#[derive(Debug, Default)]
struct ChoiceAcc {
    text: String,
    tokens: Vec<TokenOut>,
    finished: Option<Finished>,
}

/// Runs a job to its end, collecting every choice.
async fn collect(
    mut job: Job,
    n: usize,
    counts_prompt: impl Fn(usize) -> bool,
) -> Result<(Vec<ChoiceAcc>, Usage), ApiError> {
    let mut acc: Vec<ChoiceAcc> = (0..n).map(|_| ChoiceAcc::default()).collect();
    let mut usage = Usage::default();
    while let Some(u) = job.next().await {
        match u? {
            Update::Token(i, t) => {
                acc[i].text.push_str(&t.text);
                acc[i].tokens.push(t);
            }
            Update::Done(i, f) => {
                acc[i].text.push_str(&f.text);
                usage.add(&f, counts_prompt(i));
                acc[i].finished = Some(f);
            }
        }
    }
    Ok((acc, usage))
}

/// A fresh seed for a request that did not set one.
fn seed_for(state: &AppState, s: &Sampling) -> u64 {
    s.seed.unwrap_or_else(|| state.next_seed())
}

/// Data handed to the handlers once the model is loaded.
fn ready(state: &AppState) -> Result<Arc<Llama>, ApiError> {
    state.llama().ok_or_else(|| {
        ApiError::unavailable("the model is still loading; retry shortly", "model_loading")
    })
}

// ---- chat --------------------------------------------------------------------------

/// `POST /v1/chat/completions`.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let llama = ready(&state)?;
    let body = body_bytes(body, state.body_limit)?;
    let (req, sampling): (ChatRequest, _) = parse_generation(&body)?;
    let limits = state.limits(&llama);
    let sampling = sampling.check(limits)?;
    let top_logprobs = check_top_logprobs("top_logprobs", req.top_logprobs)?;
    let logprobs = req.logprobs.unwrap_or(false);
    if top_logprobs > 0 && !logprobs {
        return Err(ApiError::invalid_param(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        ));
    }
    let dialog = dialog_of(&req)?;
    let guard = state.guard();
    let judged = guard.as_ref().map(|_| dialog.clone());
    // Templates and tokenizers may take a while on a long conversation: off the runtime.
    let l = Arc::clone(&llama);
    let prompt = tokio::task::spawn_blocking(move || -> Result<Vec<u32>, ApiError> {
        // Text that cannot fit whatever its tokens is refused before it is tokenized.
        let bytes = dialog
            .iter()
            .map(|m| llama2::chat::python_strip(&m.content).len())
            .sum();
        l.check_text_fits(0, bytes).map_err(|e| {
            ApiError::from(e)
                .with_param("messages")
                .with_code("context_length_exceeded")
        })?;
        let template = l.chat_template();
        if template.is_refused(&dialog) {
            return Err(
                ApiError::invalid_param("messages", llama2::chat::UNSAFE_ERROR)
                    .with_code("special_tags"),
            );
        }
        template
            .encode(l.tokenizer(), &dialog)
            .map_err(|e| ApiError::from(llama2::Error::from(e)).with_param("messages"))
    })
    .await
    .map_err(|e| ApiError::internal(format!("prompt formatting failed: {e}")))??;
    check_prompt_len(prompt.len(), limits.ctx, "messages")?;
    // The guard judges the prompt before any sequence starts.
    let guarded = match (&guard, judged) {
        (Some(g), Some(d)) => {
            // The check holds a place, so checks too are bounded by --parallel + --queue.
            let place = state.admission.admit(1)?;
            let v = safety::check(g, &state.metrics, d.clone()).await?;
            drop(place);
            if !v.safe {
                safety::count_block(&state.metrics, Stage::Prompt);
                let head = Head {
                    id: format!("chatcmpl-{}", state.request_id()),
                    created: now_secs(),
                    model: state.model_id.clone(),
                };
                return Ok(blocked_prompt(&head, &sampling, &v));
            }
            Some((Arc::clone(g), d))
        }
        _ => None,
    };
    let seed = seed_for(&state, &sampling);
    // `ignore_eos` (benchmarks) generates exactly `max_tokens`: no end-of-turn either.
    let stop_ids = if sampling.ignore_eos {
        Vec::new()
    } else {
        llama.chat_stop_ids()
    };
    let requests = (0..sampling.n)
        .map(|i| Request {
            prompt: prompt.clone(),
            options: seq_options(&sampling, seed, i, &stop_ids, logprobs, top_logprobs),
            tag: i as u64,
        })
        .collect();
    let (job, head) = start(&state, &llama, requests, arrived, "chatcmpl")?;
    if sampling.stream {
        let format = ChatChunks {
            llama,
            n: sampling.n,
            logprobs,
        };
        let mut s = ChunkStream::new(job, head, format, sampling.include_usage);
        if let Some((g, d)) = guarded {
            s.guard = Some(StreamGuard::new(
                g,
                d,
                Arc::clone(&state.metrics),
                sampling.n,
            ));
        }
        return Ok(s.into_response());
    }
    let (acc, usage) = collect(job, sampling.n, |i| i == 0).await?;
    let tok = llama.tokenizer();
    let mut choices = Vec::with_capacity(acc.len());
    for (i, c) in acc.iter().enumerate() {
        let reason = c
            .finished
            .as_ref()
            .map_or("length", |f| finish_reason(f.reason));
        let mut choice = json!({
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": logprobs.then(|| json!({
                "content": c.tokens.iter().map(|t| chat_logprob(tok, t)).collect::<Vec<_>>()
            })),
            "finish_reason": reason,
        });
        // Each answer is judged once complete.
        if let Some((g, d)) = &guarded {
            let v = safety::check_answer(g, &state.metrics, d, &c.text).await?;
            if !v.safe {
                safety::count_block(&state.metrics, Stage::Answer);
                choice["message"]["content"] = json!(REFUSAL);
                choice["logprobs"] = Value::Null;
                choice["finish_reason"] = json!("content_filter");
                choice["safety"] = safety::safety_json(Stage::Answer, &v);
            }
        }
        choices.push(choice);
    }
    Ok(whole(&head, "chat.completion", choices, usage))
}

/// The answer to a prompt the guard blocked: every choice is the refusal with
/// `finish_reason: "content_filter"` (streamed or whole, as asked); nothing was
/// generated.
fn blocked_prompt(head: &Head, sampling: &Sampling, v: &Verdict) -> Response {
    let safety = safety::safety_json(Stage::Prompt, v);
    if !sampling.stream {
        let choices = (0..sampling.n)
            .map(|i| {
                json!({"index": i,
                       "message": {"role": "assistant", "content": REFUSAL},
                       "logprobs": null, "finish_reason": "content_filter",
                       "safety": safety})
            })
            .collect();
        return whole(head, "chat.completion", choices, Usage::default());
    }
    let chunk = |choices: Vec<Value>| {
        let mut c = json!({
            "id": head.id, "object": "chat.completion.chunk", "created": head.created,
            "model": head.model, "system_fingerprint": crate::FINGERPRINT, "choices": choices,
        });
        if sampling.include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut events = Vec::new();
    for i in 0..sampling.n {
        events.push(data(&chunk(vec![json!({"index": i,
            "delta": {"role": "assistant", "content": REFUSAL},
            "logprobs": null, "finish_reason": null})])));
        events.push(data(&chunk(vec![
            json!({"index": i, "delta": {}, "logprobs": null,
            "finish_reason": "content_filter", "safety": safety}),
        ])));
    }
    if sampling.include_usage {
        let mut u = chunk(Vec::new());
        u["usage"] = Usage::default().json();
        events.push(data(&u));
    }
    events.push(SseEvent::default().data("[DONE]"));
    Sse::new(stream::iter(events.into_iter().map(Ok::<_, Infallible>))).into_response()
}

/// The guard's state over a streamed chat answer: each choice's text so far, judged
/// every `CHECK_EVERY_TOKENS` tokens and at its end.
struct StreamGuard {
    guard: Arc<Guard>,
    dialog: Dialog,
    metrics: Arc<crate::metrics::Metrics>,
    texts: Vec<String>,
    tokens: Vec<usize>,
    cut: Vec<bool>,
}

impl StreamGuard {
    fn new(
        guard: Arc<Guard>,
        dialog: Dialog,
        metrics: Arc<crate::metrics::Metrics>,
        n: usize,
    ) -> Self {
        StreamGuard {
            guard,
            dialog,
            metrics,
            texts: vec![String::new(); n],
            tokens: vec![0; n],
            cut: vec![false; n],
        }
    }

    /// Judges choice `i`'s text; `Some(verdict)` when it is unsafe (the choice is then
    /// cut).
    async fn judge(&mut self, i: usize) -> Result<Option<Verdict>, ApiError> {
        let v =
            safety::check_answer(&self.guard, &self.metrics, &self.dialog, &self.texts[i]).await?;
        if v.safe {
            return Ok(None);
        }
        safety::count_block(&self.metrics, Stage::Answer);
        self.cut[i] = true;
        Ok(Some(v))
    }

    /// The last chunk of a cut choice.
    fn cut_choice(i: usize, v: &Verdict) -> Value {
        json!({"index": i, "delta": {"content": format!("\n{}", REFUSAL)},
               "logprobs": null, "finish_reason": "content_filter",
               "safety": safety::safety_json(Stage::Answer, v)})
    }
}

/// Admits and submits a request's sequences; the response's `id` starts with `prefix`.
fn start(
    state: &AppState,
    llama: &Llama,
    requests: Vec<Request>,
    arrived: Instant,
    prefix: &str,
) -> Result<(Job, Head), ApiError> {
    let job = Job::start(
        llama.engine(),
        &state.admission,
        &state.metrics,
        requests,
        arrived,
    )?;
    let head = Head {
        id: format!("{prefix}-{}", state.request_id()),
        created: now_secs(),
        model: state.model_id.clone(),
    };
    Ok((job, head))
}

/// Fields every chunk of one response repeats.
#[derive(Debug, Clone)]
struct Head {
    id: String,
    created: u64,
    model: String,
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// What one endpoint's chunks look like.
trait ChunkFormat: Send + 'static {
    /// The chunks' `object`.
    const OBJECT: &'static str;
    /// Choices of a first chunk sent before any token (none: no such chunk).
    fn opening(&self) -> Vec<Value>;
    /// The choice for generated token `t` of choice `i` (`None`: nothing to send).
    fn token(&self, i: usize, t: &TokenOut) -> Option<Value>;
    /// The last choice of choice `i`, with its finish reason.
    fn done(&self, i: usize, f: &Finished) -> Value;
    /// Whether choice `i`'s prompt counts in the usage (once per prompt).
    fn counts_prompt(&self, i: usize) -> bool;
}

/// A streamed answer: the format's opening chunk, a chunk per token and per finished
/// choice, the usage chunk (empty `choices`) when asked, then `[DONE]`. Dropping it
/// (the client went away) drops the job, which cancels what still runs.
struct ChunkStream<F> {
    job: Job,
    head: Head,
    format: F,
    include_usage: bool,
    usage: Usage,
    started: bool,
    ended: bool,
    /// Safety checks of the streamed text (chat with `--guard`).
    guard: Option<StreamGuard>,
}

impl<F: ChunkFormat> ChunkStream<F> {
    fn new(job: Job, head: Head, format: F, include_usage: bool) -> Self {
        ChunkStream {
            job,
            head,
            format,
            include_usage,
            usage: Usage::default(),
            started: false,
            ended: false,
            guard: None,
        }
    }

    fn chunk(&self, choices: Vec<Value>) -> Value {
        let mut v = json!({
            "id": self.head.id,
            "object": F::OBJECT,
            "created": self.head.created,
            "model": self.head.model,
            "system_fingerprint": crate::FINGERPRINT,
            "choices": choices,
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        v
    }

    async fn next_events(&mut self) -> Option<Vec<SseEvent>> {
        if self.ended {
            return None;
        }
        if !self.started {
            self.started = true;
            let opening = self.format.opening();
            if !opening.is_empty() {
                return Some(vec![data(&self.chunk(opening))]);
            }
        }
        match self.job.next().await {
            Some(Ok(Update::Token(i, t))) => {
                if let Some(g) = &mut self.guard {
                    if g.cut[i] {
                        return Some(Vec::new());
                    }
                    g.texts[i].push_str(&t.text);
                    g.tokens[i] += 1;
                    let due = g.tokens[i].is_multiple_of(CHECK_EVERY_TOKENS);
                    if due {
                        if let Some(evs) = self.judge_choice(i).await {
                            return Some(evs);
                        }
                    }
                }
                Some(
                    self.format
                        .token(i, &t)
                        .map(|c| data(&self.chunk(vec![c])))
                        .into_iter()
                        .collect(),
                )
            }
            Some(Ok(Update::Done(i, f))) => {
                self.usage.add(&f, self.format.counts_prompt(i));
                let judge = match &mut self.guard {
                    Some(g) if g.cut[i] => return Some(Vec::new()),
                    Some(g) => {
                        g.texts[i].push_str(&f.text);
                        true
                    }
                    None => false,
                };
                if judge {
                    if let Some(evs) = self.judge_choice(i).await {
                        return Some(evs);
                    }
                }
                Some(vec![data(&self.chunk(vec![self.format.done(i, &f)]))])
            }
            Some(Err(e)) => {
                self.ended = true;
                Some(vec![data(&e.body()), SseEvent::default().data("[DONE]")])
            }
            None => {
                self.ended = true;
                let mut out = Vec::new();
                if self.include_usage {
                    let mut u = self.chunk(Vec::new());
                    u["usage"] = self.usage.json();
                    out.push(data(&u));
                }
                out.push(SseEvent::default().data("[DONE]"));
                Some(out)
            }
        }
    }

    /// Judges choice `i`'s text so far (`--guard`): the events to send instead of the
    /// token when it is unsafe (the choice's last chunk; its sequence is stopped) or
    /// the check failed (an error, then the end of the stream); `None` when safe.
    async fn judge_choice(&mut self, i: usize) -> Option<Vec<SseEvent>> {
        let g = self.guard.as_mut()?;
        match g.judge(i).await {
            Ok(None) => None,
            Ok(Some(v)) => {
                self.job.cancel(i);
                let c = StreamGuard::cut_choice(i, &v);
                Some(vec![data(&self.chunk(vec![c]))])
            }
            Err(e) => {
                self.ended = true;
                Some(vec![data(&e.body()), SseEvent::default().data("[DONE]")])
            }
        }
    }

    fn into_response(self) -> Response {
        let events = stream::unfold(self, |mut s| async move {
            let evs = s.next_events().await?;
            Some((stream::iter(evs), s))
        })
        .flatten();
        Sse::new(events.map(Ok::<_, Infallible>)).into_response()
    }
}

/// `chat.completion.chunk`s: a role delta per choice first, content deltas, a final
/// delta with the finish reason.
struct ChatChunks {
    llama: Arc<Llama>,
    n: usize,
    logprobs: bool,
}

impl ChunkFormat for ChatChunks {
    const OBJECT: &'static str = "chat.completion.chunk";

    fn opening(&self) -> Vec<Value> {
        (0..self.n)
            .map(|i| {
                json!({"index": i, "delta": {"role": "assistant", "content": ""},
                       "logprobs": null, "finish_reason": null})
            })
            .collect()
    }

    fn token(&self, i: usize, t: &TokenOut) -> Option<Value> {
        if t.text.is_empty() && !self.logprobs {
            return None;
        }
        let lp = self
            .logprobs
            .then(|| json!({"content": [chat_logprob(self.llama.tokenizer(), t)]}));
        Some(
            json!({"index": i, "delta": {"content": t.text}, "logprobs": lp,
                    "finish_reason": null}),
        )
    }

    fn done(&self, i: usize, f: &Finished) -> Value {
        let delta = if f.text.is_empty() {
            json!({})
        } else {
            json!({"content": f.text})
        };
        json!({"index": i, "delta": delta, "logprobs": null,
               "finish_reason": finish_reason(f.reason)})
    }

    fn counts_prompt(&self, i: usize) -> bool {
        i == 0
    }
}

/// A whole (non-streamed) answer.
fn whole(head: &Head, object: &str, choices: Vec<Value>, usage: Usage) -> Response {
    Json(json!({
        "id": head.id,
        "object": object,
        "created": head.created,
        "model": head.model,
        "choices": choices,
        "usage": usage.json(),
        "system_fingerprint": crate::FINGERPRINT,
    }))
    .into_response()
}

// ---- completions ---------------------------------------------------------------------

/// One completion prompt, tokenized.
struct Prompt {
    ids: Vec<u32>,
    text: String,
}

/// `POST /v1/completions`.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let arrived = Instant::now();
    let llama = ready(&state)?;
    if state.guard().is_some() {
        // Raw prompts would bypass the classifier's view of who says what.
        return Err(ApiError::bad_request(
            "this server judges prompts and answers with a safety classifier (--guard): \
             use /v1/chat/completions; /v1/completions is disabled",
        )
        .with_code("guarded"));
    }
    let body = body_bytes(body, state.body_limit)?;
    let (req, sampling): (CompletionRequest, _) = parse_generation(&body)?;
    let limits = state.limits(&llama);
    let sampling = sampling.check(limits)?;
    let top = check_top_logprobs("logprobs", req.logprobs)?;
    let logprobs = req.logprobs.is_some();
    let echo = req.echo.unwrap_or(false);
    // Refuse what cannot fit before any prompt is tokenized or copied.
    let count = match &req.prompt {
        PromptField::Text(_) | PromptField::Ids(_) => 1,
        PromptField::Texts(v) => v.len(),
        PromptField::IdLists(v) => v.len(),
    };
    if count == 0 {
        return Err(ApiError::invalid_param(
            "prompt",
            "`prompt` is an empty list",
        ));
    }
    let capacity = state.admission.capacity();
    if count.saturating_mul(sampling.n) > capacity {
        return Err(ApiError::invalid_param(
            "prompt",
            format!(
                "{count} prompts x n = {} need more sequences than the server takes at once ({capacity})",
                sampling.n
            ),
        ));
    }
    let l = Arc::clone(&llama);
    let prompts = tokio::task::spawn_blocking(move || -> Result<Vec<Prompt>, ApiError> {
        let tok = l.tokenizer();
        let texts = |v: Vec<String>| -> Result<Vec<Prompt>, ApiError> {
            v.into_iter()
                .enumerate()
                .map(|(i, t)| {
                    // Text that cannot fit whatever its tokens: refused untokenized.
                    l.check_text_fits(i, t.len()).map_err(|e| {
                        ApiError::from(e)
                            .with_param("prompt")
                            .with_code("context_length_exceeded")
                    })?;
                    Ok(Prompt {
                        ids: tok.encode(&t, tok.add_bos(), false),
                        text: t,
                    })
                })
                .collect()
        };
        let ids = |v: Vec<Vec<u32>>| -> Result<Vec<Prompt>, ApiError> {
            v.into_iter()
                .map(|ids| {
                    let text = tok.decode(&ids)?;
                    Ok(Prompt { ids, text })
                })
                .collect()
        };
        match req.prompt {
            PromptField::Text(t) => texts(vec![t]),
            PromptField::Texts(v) => texts(v),
            PromptField::Ids(v) => ids(vec![v]),
            PromptField::IdLists(v) => ids(v),
        }
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))??;
    for (i, p) in prompts.iter().enumerate() {
        let param = if prompts.len() == 1 {
            "prompt".to_string()
        } else {
            format!("prompt[{i}]")
        };
        check_prompt_len(p.ids.len(), limits.ctx, &param)?;
    }
    let seed = seed_for(&state, &sampling);
    let n = sampling.n;
    let total = prompts.len() * n;
    // The end ids stop a completion (as the engine's own check does) unless `ignore_eos`
    // asks for exactly `max_tokens`: passed as stop ids, they would stop it even then.
    let stop_ids: &[u32] = if sampling.ignore_eos {
        &[]
    } else {
        llama.eos_ids()
    };
    let mut requests = Vec::with_capacity(total);
    for (pi, p) in prompts.iter().enumerate() {
        for j in 0..n {
            let mut options = seq_options(&sampling, seed, j, stop_ids, false, top);
            options.logprobs = logprobs;
            options.prompt_logprobs = echo && logprobs;
            requests.push(Request {
                prompt: p.ids.clone(),
                options,
                tag: (pi * n + j) as u64,
            });
        }
    }
    let (job, head) = start(&state, &llama, requests, arrived, "cmpl")?;
    if sampling.stream {
        let format = CompletionChunks {
            llama,
            prompts,
            n,
            echo,
            logprobs,
        };
        return Ok(ChunkStream::new(job, head, format, sampling.include_usage).into_response());
    }
    let (acc, usage) = collect(job, total, |i| i.is_multiple_of(n)).await?;
    let tok = llama.tokenizer();
    let choices: Vec<Value> = acc
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let p = &prompts[i / n];
            let reason = c
                .finished
                .as_ref()
                .map_or("length", |f| finish_reason(f.reason));
            let text = if echo {
                format!("{}{}", p.text, c.text)
            } else {
                c.text.clone()
            };
            let lp = logprobs.then(|| completion_logprobs(tok, p, c, echo));
            json!({"index": i, "text": text, "logprobs": lp, "finish_reason": reason})
        })
        .collect();
    Ok(whole(&head, "text_completion", choices, usage))
}

/// The legacy completions `logprobs` object: tokens, their log-probabilities, the top
/// alternatives as `{token: logprob}` maps, and each token's offset in the text.
fn completion_logprobs(tok: &Tokenizer, p: &Prompt, c: &ChoiceAcc, echo: bool) -> Value {
    let mut tokens = Vec::new();
    let mut lps: Vec<Value> = Vec::new();
    let mut tops: Vec<Value> = Vec::new();
    let mut offsets = Vec::new();
    let mut offset = 0usize;
    let mut push = |text: String, lp: Value, top: Value| {
        offsets.push(offset);
        offset += text.len();
        tokens.push(text);
        lps.push(lp);
        tops.push(top);
    };
    if echo {
        let prompt_lp = c.finished.as_ref().and_then(|f| f.prompt_logprobs.as_ref());
        for (k, &id) in p.ids.iter().enumerate() {
            let lp = match (k, prompt_lp) {
                (0, _) | (_, None) => Value::Null,
                (k, Some(v)) => v.get(k - 1).map_or(Value::Null, |&x| json!(x)),
            };
            push(token_text(tok, id).0, lp, Value::Null);
        }
    }
    for t in &c.tokens {
        let top: serde_json::Map<String, Value> = t
            .top_logprobs
            .iter()
            .map(|&(id, lp)| (token_text(tok, id).0, json!(lp)))
            .collect();
        push(
            token_text(tok, t.id).0,
            json!(t.logprob),
            Value::Object(top),
        );
    }
    json!({"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
}

/// `text_completion` chunks: the prompts first with `echo`, then text pieces, then a
/// final piece with the finish reason.
struct CompletionChunks {
    llama: Arc<Llama>,
    prompts: Vec<Prompt>,
    n: usize,
    echo: bool,
    logprobs: bool,
}

impl ChunkFormat for CompletionChunks {
    const OBJECT: &'static str = "text_completion";

    fn opening(&self) -> Vec<Value> {
        if !self.echo {
            return Vec::new();
        }
        (0..self.prompts.len() * self.n)
            .map(|i| {
                json!({"index": i, "text": self.prompts[i / self.n].text,
                       "logprobs": null, "finish_reason": null})
            })
            .collect()
    }

    fn token(&self, i: usize, t: &TokenOut) -> Option<Value> {
        if t.text.is_empty() && !self.logprobs {
            return None;
        }
        let lp = self.logprobs.then(|| {
            let tok = self.llama.tokenizer();
            let top: serde_json::Map<String, Value> = t
                .top_logprobs
                .iter()
                .map(|&(id, lp)| (token_text(tok, id).0, json!(lp)))
                .collect();
            json!({"tokens": [token_text(tok, t.id).0], "token_logprobs": [t.logprob],
                   "top_logprobs": [top], "text_offset": [0]})
        });
        Some(json!({"index": i, "text": t.text, "logprobs": lp, "finish_reason": null}))
    }

    fn done(&self, i: usize, f: &Finished) -> Value {
        json!({"index": i, "text": f.text, "logprobs": null,
               "finish_reason": finish_reason(f.reason)})
    }

    fn counts_prompt(&self, i: usize) -> bool {
        i.is_multiple_of(self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::parse_body;

    #[test]
    fn prompt_length_errors_say_by_how_much() {
        assert!(check_prompt_len(9, 10, "messages").is_ok());
        let e = check_prompt_len(12, 10, "messages").unwrap_err();
        assert!(e.message.contains("12 tokens, 3 more"), "{}", e.message);
        assert_eq!(e.code, Some("context_length_exceeded"));
        assert!(check_prompt_len(0, 10, "prompt").is_err());
    }

    #[test]
    fn roles_and_parts_are_checked() {
        let req: ChatRequest = parse_body(
            br#"{"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, {"role": "user", "content": null}]}"#,
        )
        .unwrap();
        let d = dialog_of(&req).unwrap();
        assert_eq!(d[0], Message::new(Role::System, "ab"));
        assert_eq!(d[1], Message::new(Role::User, ""));
        let req: ChatRequest =
            parse_body(br#"{"messages": [{"role": "tool", "content": "x"}]}"#).unwrap();
        assert_eq!(
            dialog_of(&req).unwrap_err().param.as_deref(),
            Some("messages[0].role")
        );
        let req: ChatRequest = parse_body(
            br#"{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#,
        )
        .unwrap();
        assert!(dialog_of(&req).is_err());
        let req: ChatRequest = parse_body(br#"{"messages": []}"#).unwrap();
        assert!(dialog_of(&req).is_err());
    }
}
