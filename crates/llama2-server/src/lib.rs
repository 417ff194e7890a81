//! `llama2 serve`: an OpenAI-compatible HTTP server on llama2's continuous-batching
//! engine.
//!
//! The server binds first and answers `/health` with `loading` while the model loads,
//! then `ok`; after a shutdown signal it says `draining`, refuses new work, ends the
//! requests in flight (streams get their final chunk and `[DONE]`) and returns. Every
//! request is checked, admitted against the slots plus the queue ([`jobs`]), and run by
//! the engine alongside the others; the only state shared between requests is the
//! engine's prefix cache.
//!
//! Modules: [`protocol`] (request shapes and checks), [`openai`] (chat and completions,
//! whole or streamed), [`admin`] (health, models, metrics, tokenize), [`jobs`] (admission
//! and the engine-to-async bridge), [`metrics`], [`error`].

pub mod admin;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod openai;
pub mod protocol;
pub mod safety;

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, MatchedPath, State};
use axum::http::{header, HeaderMap, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::FutureExt;
use llama2::safety::{Guard, GuardOptions};
use llama2::{KvType, Llama, TemplateChoice};

use crate::error::ApiError;
use crate::jobs::Admission;
use crate::metrics::Metrics;
use crate::protocol::Limits;

/// `system_fingerprint` of every answer: the server's name and version.
pub const FINGERPRINT: &str = concat!("llama2-", env!("CARGO_PKG_VERSION"));

/// Default request body limit (bytes).
pub const DEFAULT_BODY_LIMIT: usize = 4 << 20;

/// How `llama2 serve` is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Model file or folder.
    pub model_path: PathBuf,
    /// Tokenizer file when it is not beside the model.
    pub tokenizer: Option<PathBuf>,
    /// Chat format.
    pub template: TemplateChoice,
    /// Context per slot; `None`: the model's, at most 4096.
    pub ctx_size: Option<usize>,
    /// Slots: sequences decoded together.
    pub parallel: usize,
    /// Requests waiting for a slot beyond which new ones get 503.
    pub queue: usize,
    /// Worker threads; `None`: the physical cores.
    pub threads: Option<usize>,
    /// KV cache type; `None`: f16 for quantized weights.
    pub kv_type: Option<KvType>,
    /// Most tokens per engine step (decode tokens, then prompt pieces); `None`: the
    /// library's default.
    pub step_tokens: Option<usize>,
    /// Address to listen on.
    pub addr: SocketAddr,
    /// Key clients must send as `Authorization: Bearer KEY` (all routes but `/health`).
    pub api_key: Option<String>,
    /// Name of the model in answers and `/v1/models`; `None`: the file's stem.
    pub model_id: Option<String>,
    /// Largest request body in bytes.
    pub body_limit: usize,
    /// After a shutdown signal, the longest wait for responses to finish.
    pub shutdown_grace: Duration,
    /// A Llama Guard model judging chat prompts and answers, with its options (its
    /// worker pool is the chat model's).
    pub guard: Option<(PathBuf, GuardOptions)>,
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The model is loading: `/health` is 503.
    Loading = 0,
    /// Serving.
    Ready = 1,
    /// Shutting down: no new work.
    Draining = 2,
}

/// Everything the handlers share.
pub struct AppState {
    phase: AtomicU8,
    llama: OnceLock<Arc<Llama>>,
    guard: OnceLock<Arc<Guard>>,
    /// Slots plus queue.
    pub admission: Arc<Admission>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The model's name in answers.
    pub model_id: String,
    /// Unix time the server started (the model's `created`).
    pub started_at: u64,
    /// Largest request body.
    pub body_limit: usize,
    api_key: Option<String>,
    seeds: AtomicU64,
    ids: AtomicU64,
}

impl AppState {
    /// State for a server that is loading its model.
    pub fn new(config: &ServerConfig) -> AppState {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let model_id = config.model_id.clone().unwrap_or_else(|| {
            let p = &config.model_path;
            p.file_stem()
                .or(p.file_name())
                .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
        });
        AppState {
            phase: AtomicU8::new(Phase::Loading as u8),
            llama: OnceLock::new(),
            guard: OnceLock::new(),
            admission: Arc::new(Admission::new(config.parallel.saturating_add(config.queue))),
            metrics: Arc::new(Metrics::new()),
            model_id,
            started_at: now.as_secs(),
            body_limit: config.body_limit,
            api_key: config.api_key.clone(),
            seeds: AtomicU64::new(now.as_nanos() as u64 | 1),
            ids: AtomicU64::new(now.as_nanos() as u64),
        }
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Loading,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Release);
    }

    /// The model, once loaded.
    pub fn llama(&self) -> Option<Arc<Llama>> {
        self.llama.get().cloned()
    }

    /// The safety classifier, if the server has one.
    pub fn guard(&self) -> Option<Arc<Guard>> {
        self.guard.get().cloned()
    }

    /// Installs the loaded model (and guard) and starts serving.
    pub fn set_ready(&self, llama: Llama, guard: Option<Guard>) {
        if let Some(g) = guard {
            let _ = self.guard.set(Arc::new(g));
        }
        if self.llama.set(Arc::new(llama)).is_ok() && self.phase() == Phase::Loading {
            self.set_phase(Phase::Ready);
        }
    }

    /// Stops taking work and ends what is in flight.
    pub fn drain(&self) {
        self.set_phase(Phase::Draining);
        self.admission.cancel_all();
    }

    fn loading_error() -> ApiError {
        ApiError::unavailable("the model is still loading; retry shortly", "model_loading")
    }

    /// Request limits of the loaded model.
    pub fn limits(&self, llama: &Llama) -> Limits {
        Limits {
            ctx: llama.max_seq_len(),
            slots: llama.max_batch_size(),
        }
    }

    /// A seed for a request that set none (a Weyl sequence from the start time).
    pub fn next_seed(&self) -> u64 {
        self.seeds
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_mul(0xBF58_476D_1CE4_E5B9)
    }

    /// A unique id for a response.
    pub fn request_id(&self) -> String {
        format!("{:016x}", self.ids.fetch_add(1, Ordering::Relaxed))
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(key) = &self.api_key else {
            return true;
        };
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        // Compare every byte whatever the first difference, so timing tells nothing.
        given.len() == key.len()
            && given
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// Key check, drain check, panic catching and request counting around every route.
async fn guard(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let resp = if route != "/health" && !state.authorized(req.headers()) {
        ApiError::unauthorized().into_response()
    } else if state.phase() == Phase::Draining && route.starts_with("/v1/") && route != "/v1/models"
    {
        ApiError::unavailable("the server is shutting down", "draining").into_response()
    } else {
        match AssertUnwindSafe(next.run(req)).catch_unwind().await {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                eprintln!("llama2 serve: bug: a request handler panicked on {route}: {msg}");
                ApiError::internal(format!("internal error: {msg}")).into_response()
            }
        }
    };
    state
        .metrics
        .requests
        .with_label_values(&[route.as_str(), resp.status().as_str()])
        .inc();
    resp
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// The routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(admin::models))
        .route("/health", get(admin::health))
        .route("/metrics", get(admin::metrics))
        .route("/tokenize", post(admin::tokenize))
        .route("/detokenize", post(admin::detokenize))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&state), guard))
        .layer(DefaultBodyLimit::max(state.body_limit))
        .with_state(state)
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The model could not be loaded.
    #[error(transparent)]
    Load(#[from] llama2::Error),
    /// Serving failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Loads the model described by `config`, and its guard on the same worker pool.
pub fn load(config: &ServerConfig) -> llama2::Result<(Llama, Option<Guard>)> {
    let mut b = Llama::open(&config.model_path)
        .max_batch_size(config.parallel)
        .template(config.template.clone());
    if let Some(t) = &config.tokenizer {
        b = b.tokenizer(t);
    }
    if let Some(n) = config.ctx_size {
        b = b.max_seq_len(n);
    }
    if let Some(t) = config.threads {
        b = b.threads(t);
    }
    if let Some(t) = config.kv_type {
        b = b.kv_type(t);
    }
    if let Some(n) = config.step_tokens {
        b = b.step_tokens(n);
    }
    let llama = b.build()?;
    let guard = match &config.guard {
        None => None,
        Some((path, options)) => Some(Guard::open(
            path,
            GuardOptions {
                pool: Some(llama.engine().pool()),
                // A slot's whole context plus the classifier's instructions.
                max_seq_len: Some(llama.max_seq_len().saturating_add(1024)),
                ..options.clone()
            },
        )?),
    };
    Ok((llama, guard))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Serves until `shutdown` resolves; loads the model after binding. Progress lines go
/// to standard error.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    let addr = listener.local_addr()?;
    let state = Arc::new(AppState::new(&config));
    eprintln!(
        "llama2 serve: listening on http://{addr} (loading {})",
        config.model_path.display()
    );

    let (load_failed_tx, load_failed_rx) = tokio::sync::oneshot::channel::<llama2::Error>();
    let loader = {
        let state = Arc::clone(&state);
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let start = std::time::Instant::now();
            match load(&config) {
                Ok((llama, guard)) => {
                    let cfg = llama.engine().config();
                    eprintln!(
                        "llama2 serve: ready in {:.1}s: model {} ({}), {} slots x {} positions, \
                         KV cache {} reserving {:.1} MiB, {} threads, queue {}, template {}, \
                         on http://{addr}",
                        start.elapsed().as_secs_f64(),
                        state.model_id,
                        config.model_path.display(),
                        cfg.slots,
                        cfg.ctx,
                        cfg.kv_type.name(),
                        llama.engine().kv_reserved_bytes() as f64 / (1u64 << 20) as f64,
                        cfg.threads,
                        config.queue,
                        llama.chat_template().name(),
                    );
                    if let Some(g) = &guard {
                        eprintln!(
                            "llama2 serve: safety classifier {} ({} format)",
                            config
                                .guard
                                .as_ref()
                                .map_or_else(String::new, |(p, _)| p.display().to_string()),
                            g.prompt().format().name()
                        );
                    }
                    state.set_ready(llama, guard);
                }
                Err(e) => {
                    let _ = load_failed_tx.send(e);
                }
            }
        })
    };

    let app = router(Arc::clone(&state));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let failure = Arc::new(std::sync::Mutex::new(None::<llama2::Error>));
    {
        let state = Arc::clone(&state);
        let failure = Arc::clone(&failure);
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown => eprintln!("llama2 serve: shutting down"),
                Ok(e) = load_failed_rx => {
                    *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            }
            state.drain();
            let _ = stop_tx.send(true);
        });
    }
    let graceful = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        // Token chunks are small writes; do not let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(graceful);
    let grace = config.shutdown_grace;
    tokio::select! {
        r = server => r?,
        () = async {
            let _ = stop_rx.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => eprintln!("llama2 serve: responses still open after {grace:?}; closing them"),
    }
    let failed = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(e) = failed {
        return Err(ServeError::Load(e));
    }
    // The engine thread ends when the last handle on the model goes.
    drop(loader);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    fn config(api_key: Option<&str>) -> ServerConfig {
        ServerConfig {
            model_path: "model.gguf".into(),
            tokenizer: None,
            template: TemplateChoice::Auto,
            ctx_size: None,
            parallel: 1,
            queue: 0,
            threads: None,
            kv_type: None,
            step_tokens: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            api_key: api_key.map(String::from),
            model_id: None,
            body_limit: DEFAULT_BODY_LIMIT,
            shutdown_grace: Duration::from_secs(1),
            guard: None,
        }
    }

    async fn boom() -> &'static str {
        panic!("a bug in a handler")
    }

    /// The routes plus one whose handler panics.
    fn app(state: Arc<AppState>) -> Router {
        Router::new()
            .route("/boom", get(boom))
            .route("/health", get(admin::health))
            .layer(middleware::from_fn_with_state(Arc::clone(&state), guard))
            .with_state(state)
    }

    async fn call(app: &Router, path: &str, key: Option<&str>) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder().uri(path);
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_panicking_handler_is_a_500_and_the_server_goes_on() {
        let state = Arc::new(AppState::new(&config(None)));
        let app = app(Arc::clone(&state));
        let (status, body) = call(&app, "/boom", None).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("a bug in a handler"));
        let (status, body) = call(&app, "/health", None).await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("loading"))
        );
        state.drain();
        let (_, body) = call(&app, "/health", None).await;
        assert_eq!(body["status"], "draining");
    }

    #[tokio::test]
    async fn the_key_is_checked_everywhere_but_health() {
        let state = Arc::new(AppState::new(&config(Some("k3y"))));
        let app = app(state);
        assert_eq!(call(&app, "/boom", None).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(
            call(&app, "/boom", Some("k3z")).await.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(&app, "/boom", Some("k3y")).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            call(&app, "/health", None).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
