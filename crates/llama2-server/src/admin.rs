//! The routes around generation: `GET /health`, `GET /v1/models`, `GET /metrics`,
//! `POST /tokenize`, `POST /detokenize`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::ApiError;
use crate::openai::body_bytes;
use crate::protocol::{parse_body, DetokenizeRequest, TokenizeRequest};
use crate::{AppState, Phase};

/// `GET /health`: 200 `{"status": "ok"}` when ready, 503 with `loading` or `draining`
/// otherwise. No key needed.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (status, word) = match state.phase() {
        Phase::Loading => (StatusCode::SERVICE_UNAVAILABLE, "loading"),
        Phase::Ready => (StatusCode::OK, "ok"),
        Phase::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
    };
    (status, Json(json!({"status": word}))).into_response()
}

/// `GET /v1/models`: the one model this server runs.
pub async fn models(State(state): State<Arc<AppState>>) -> Response {
    let ctx = state.llama().map(|l| l.max_seq_len());
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.model_id,
            "object": "model",
            "created": state.started_at,
            "owned_by": "llama2",
            "max_model_len": ctx,
        }]
    }))
    .into_response()
}

/// `GET /metrics`: Prometheus text, with the engine's gauges read now.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Some(l) = state.llama() {
        let g = l.engine().gauges();
        let cfg = l.engine().config();
        let positions = (cfg.slots * cfg.ctx).max(1);
        state.metrics.set_engine_gauges(
            g.waiting.load(Ordering::Relaxed),
            g.running.load(Ordering::Relaxed),
            g.kv_used.load(Ordering::Relaxed) as f64 / positions as f64,
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `POST /tokenize`: `{"content" | "prompt": text, "add_special": bool}` →
/// `{"tokens": [...], "count": n, "max_model_len": ctx}`.
pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let llama = state.llama().ok_or_else(AppState::loading_error)?;
    let body = body_bytes(body, state.body_limit)?;
    let req: TokenizeRequest = parse_body(&body)?;
    let Some(text) = req.content.or(req.prompt) else {
        return Err(ApiError::invalid_param(
            "content",
            "give the text as `content` (or `prompt`)",
        ));
    };
    let add_special = req.add_special.unwrap_or(true);
    let l = Arc::clone(&llama);
    let tokens = tokio::task::spawn_blocking(move || {
        let tok = l.tokenizer();
        tok.encode(&text, add_special && tok.add_bos(), false)
    })
    .await
    .map_err(|e| ApiError::internal(format!("tokenizing failed: {e}")))?;
    Ok(Json(json!({
        "count": tokens.len(),
        "tokens": tokens,
        "max_model_len": llama.max_seq_len(),
    }))
    .into_response())
}

/// `POST /detokenize`: `{"tokens": [...]}` → `{"content": text}`; an id outside the
/// vocabulary is a 400.
pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let llama = state.llama().ok_or_else(AppState::loading_error)?;
    let body = body_bytes(body, state.body_limit)?;
    let req: DetokenizeRequest = parse_body(&body)?;
    let text = llama
        .tokenizer()
        .decode(&req.tokens)
        .map_err(|e| ApiError::from(e).with_param("tokens"))?;
    Ok(Json(json!({ "content": text })).into_response())
}
