//! Llama Guard around `/v1/chat/completions` (`--guard`): the prompt is judged before
//! any sequence starts; answers are judged every
//! [`CHECK_EVERY_TOKENS`](llama2::safety::CHECK_EVERY_TOKENS) tokens while they stream
//! and once complete. A blocked choice ends with the refusal, `finish_reason:
//! "content_filter"` and a `safety` object naming the categories.

use std::sync::Arc;
use std::time::Instant;

use llama2::safety::{with_answer, Guard, Stage, Verdict};
use llama2::Dialog;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::metrics::Metrics;

/// Judges the last message of `dialog` off the async runtime, timing it in `/metrics`.
pub async fn check(
    guard: &Arc<Guard>,
    metrics: &Metrics,
    dialog: Dialog,
) -> Result<Verdict, ApiError> {
    let g = Arc::clone(guard);
    let started = Instant::now();
    // Input the classifier cannot take (too long, forged control text) is the
    // request's fault (400); a classifier that fails or answers garbage is ours (500).
    let verdict = tokio::task::spawn_blocking(move || g.check(&dialog))
        .await
        .map_err(|e| ApiError::internal(format!("the safety check failed: {e}")))?
        .map_err(|e| ApiError::from(e).with_param("messages"))?;
    metrics.guard_check.observe(started.elapsed().as_secs_f64());
    Ok(verdict)
}

/// Judges `answer` as the assistant's reply to `dialog`.
pub async fn check_answer(
    guard: &Arc<Guard>,
    metrics: &Metrics,
    dialog: &Dialog,
    answer: &str,
) -> Result<Verdict, ApiError> {
    check(guard, metrics, with_answer(dialog, answer)).await
}

/// The `safety` object of a blocked choice.
pub fn safety_json(stage: Stage, v: &Verdict) -> Value {
    json!({
        "blocked": stage,
        "categories": v.categories,
        "unsafe_probability": v.unsafe_probability,
        "classifier_answer": v.text,
    })
}

/// Counts a blocked message in `/metrics`.
pub fn count_block(metrics: &Metrics, stage: Stage) {
    metrics
        .guard_blocked
        .with_label_values(&[stage.as_str()])
        .inc();
}
