//! Chat with a guard around it: the user's message is judged before the chat model
//! sees it, the answer while it streams (every [`CHECK_EVERY_TOKENS`] tokens) and once
//! complete. What is blocked becomes [`REFUSAL`](super::REFUSAL).

use std::ops::ControlFlow;

use serde::Serialize;

use super::{Guard, Verdict, REFUSAL};
use crate::chat::{Dialog, Message, Role};
use crate::error::Result;
use crate::llama::{ChatPrediction, GenerationOptions, Llama};

/// A streamed answer is judged again after this many tokens.
pub const CHECK_EVERY_TOKENS: usize = 64;

/// Which message a blocking verdict was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The user's message (the chat model never ran).
    Prompt,
    /// The assistant's answer (cut or replaced).
    Answer,
}

impl Stage {
    /// `prompt` or `answer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Prompt => "prompt",
            Stage::Answer => "answer",
        }
    }
}

/// Why a turn was blocked.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Blocked {
    /// Which message.
    pub stage: Stage,
    /// The classifier's verdict on it.
    pub verdict: Verdict,
}

/// One guarded chat turn.
#[derive(Clone, Debug)]
pub struct GuardedAnswer {
    /// The answer the user gets: the model's, or [`REFUSAL`].
    pub message: Message,
    /// Set when the prompt or the answer was judged unsafe.
    pub blocked: Option<Blocked>,
    /// Every verdict of the turn, in order (costs for `--stats`).
    pub checks: Vec<Verdict>,
    /// The chat model's prediction as generated, when it ran (for a blocked answer, the
    /// unsafe text the user did not get).
    pub prediction: Option<ChatPrediction>,
}

fn refused(
    stage: Stage,
    verdict: Verdict,
    checks: Vec<Verdict>,
    p: Option<ChatPrediction>,
) -> GuardedAnswer {
    GuardedAnswer {
        message: Message::new(Role::Assistant, REFUSAL),
        blocked: Some(Blocked { stage, verdict }),
        checks,
        prediction: p,
    }
}

/// The dialog with `answer` as the assistant's last message (what judging an answer
/// takes).
pub fn with_answer(dialog: &Dialog, answer: &str) -> Dialog {
    let mut d = dialog.clone();
    d.push(Message::new(Role::Assistant, answer));
    d
}

/// Answers `dialog` with `llama`, judged by `guard`; `on_text` receives the answer's
/// text as it streams. When the prompt is unsafe the chat model does not run and
/// `on_text` gets [`REFUSAL`]; when the answer turns unsafe the stream stops and
/// `on_text` gets `"\n"` and [`REFUSAL`] (what was already streamed stays streamed).
/// An answer the classifier cannot read is an error, never a pass.
pub fn guarded_chat(
    llama: &Llama,
    guard: &Guard,
    dialog: &Dialog,
    opts: &GenerationOptions,
    on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<GuardedAnswer> {
    let mut checks = Vec::new();
    let verdict = check_prompt(guard, dialog, &mut checks)?;
    if !verdict.safe {
        let _ = on_text(REFUSAL);
        return Ok(refused(Stage::Prompt, verdict, checks, None));
    }
    let mut answer = String::new();
    let mut tokens = 0usize;
    let mut cut: Option<Verdict> = None;
    let mut failure = None;
    let prediction = llama.chat_completion_stream_tokens(dialog, opts, &mut |text| {
        answer.push_str(text);
        tokens += 1;
        if tokens.is_multiple_of(CHECK_EVERY_TOKENS) {
            match guard.check(&with_answer(dialog, &answer)) {
                Ok(v) if !v.safe => {
                    checks.push(v.clone());
                    cut = Some(v);
                    return ControlFlow::Break(());
                }
                Ok(v) => checks.push(v),
                Err(e) => {
                    failure = Some(e);
                    return ControlFlow::Break(());
                }
            }
        }
        if text.is_empty() {
            return ControlFlow::Continue(());
        }
        on_text(text)
    })?;
    if let Some(e) = failure {
        return Err(e);
    }
    if let Some(v) = cut {
        let _ = on_text("\n");
        let _ = on_text(REFUSAL);
        return Ok(refused(Stage::Answer, v, checks, Some(prediction)));
    }
    let verdict = guard.check(&with_answer(dialog, &prediction.generation.content))?;
    checks.push(verdict.clone());
    if !verdict.safe {
        let _ = on_text("\n");
        let _ = on_text(REFUSAL);
        return Ok(refused(Stage::Answer, verdict, checks, Some(prediction)));
    }
    Ok(GuardedAnswer {
        message: prediction.generation.clone(),
        blocked: None,
        checks,
        prediction: Some(prediction),
    })
}

/// Judges a prompt: the dialog as it stands (its last user message, with any system
/// message folded into the first user turn), and, when the system message is not in
/// that last turn, the system message on its own. Returns the first unsafe verdict, or
/// the last.
fn check_prompt(guard: &Guard, dialog: &Dialog, checks: &mut Vec<Verdict>) -> Result<Verdict> {
    let system: Vec<&Message> = dialog.iter().filter(|m| m.role == Role::System).collect();
    let users = dialog.iter().filter(|m| m.role == Role::User).count();
    if !system.is_empty() && users > 1 {
        let text: Vec<&str> = system.iter().map(|m| m.content.as_str()).collect();
        let v = guard.check(&[Message::new(Role::User, text.join("\n\n"))])?;
        checks.push(v.clone());
        if !v.safe {
            return Ok(v);
        }
    }
    let v = guard.check(dialog)?;
    checks.push(v.clone());
    Ok(v)
}

/// Answers several dialogs as one batch: prompts judged first, the safe ones answered
/// together, each answer judged once complete. `on_token(row, id)` sees every generated
/// token of the safe rows (`Break` stops the call, e.g. on Ctrl-C).
pub fn guarded_chat_batch(
    llama: &Llama,
    guard: &Guard,
    dialogs: &[Dialog],
    opts: &GenerationOptions,
    on_token: &mut dyn FnMut(usize, u32) -> ControlFlow<()>,
) -> Result<Vec<GuardedAnswer>> {
    let mut verdicts = Vec::with_capacity(dialogs.len());
    let mut prompt_checks = Vec::with_capacity(dialogs.len());
    for d in dialogs {
        let mut checks = Vec::new();
        verdicts.push(check_prompt(guard, d, &mut checks)?);
        prompt_checks.push(checks);
    }
    let safe: Vec<Dialog> = dialogs
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v.safe)
        .map(|(d, _)| d.clone())
        .collect();
    let mut predictions = llama
        .chat_completion_with(&safe, opts, on_token)?
        .into_iter();
    let mut out = Vec::with_capacity(dialogs.len());
    for ((d, v), mut checks) in dialogs.iter().zip(verdicts).zip(prompt_checks) {
        if !v.safe {
            out.push(refused(Stage::Prompt, v, checks, None));
            continue;
        }
        let p = predictions.next().expect("one prediction per safe dialog");
        let answer_verdict = guard.check(&with_answer(d, &p.generation.content))?;
        checks.push(answer_verdict.clone());
        if answer_verdict.safe {
            out.push(GuardedAnswer {
                message: p.generation.clone(),
                blocked: None,
                checks,
                prediction: Some(p),
            });
        } else {
            out.push(refused(Stage::Answer, answer_verdict, checks, Some(p)));
        }
    }
    Ok(out)
}
