//! The classifier: prompt rendering, the greedy run and the verdict.

use std::path::Path;
use std::time::{Duration, Instant};

use minijinja::Environment;
use serde::Serialize;

use super::format::{Category, GuardFormat};
use crate::chat::{ChatTemplate, Message, Role};
use crate::engine::{EventKind, Request, SeqOptions, SharedPool};
use crate::error::{Error, Result};
use crate::llama::Llama;
use crate::tokenizer::Tokenizer;

/// Most tokens a verdict may take (`unsafe\nS1,S2,...` of every category fits).
const MAX_ANSWER_TOKENS: usize = 48;

/// Upper bound on template evaluation steps (templates come from model files).
const TEMPLATE_FUEL: u64 = 5_000_000;

/// How a [`Guard`] is set up.
#[derive(Clone, Debug, Default)]
pub struct GuardOptions {
    /// Force a built-in prompt format instead of the file's template (or the guess for
    /// a file without one).
    pub format: Option<GuardFormat>,
    /// Call a conversation unsafe when P(`unsafe`) at the first answer token reaches
    /// this; `None`: the model's own first token decides.
    pub threshold: Option<f32>,
    /// Category codes left out of the prompt (where the format allows it).
    pub excluded: Vec<String>,
    /// Categories that replace the model's list (where the format allows it).
    pub categories: Option<Vec<Category>>,
    /// Context of the classifier (default 4096 positions): a conversation plus the
    /// instructions (~400 tokens) must fit, so give the chat model's context plus 1024.
    pub max_seq_len: Option<usize>,
    /// Worker threads when not sharing a pool.
    pub threads: Option<usize>,
    /// Run on this pool (the chat model's) instead of starting one.
    pub pool: Option<SharedPool>,
}

/// Where the classifier prompt comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum GuardPrompt {
    /// The Jinja template the model file carries (wins over the built-in formats).
    Template {
        /// Template source.
        source: String,
        /// The format its wording follows (for the category list and the answer shape).
        format: GuardFormat,
    },
    /// A built-in format.
    Builtin(GuardFormat),
}

impl GuardPrompt {
    /// The format whose categories and answer shape apply.
    pub fn format(&self) -> GuardFormat {
        match self {
            GuardPrompt::Template { format, .. } | GuardPrompt::Builtin(format) => *format,
        }
    }
}

/// A classifier's answer about one conversation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    /// Whether the judged message is safe.
    pub safe: bool,
    /// The violated categories (codes with names; a code the prompt did not list keeps
    /// an empty name).
    pub categories: Vec<Category>,
    /// P(`unsafe`) at the first answer token (the model cards' classifier score).
    pub unsafe_probability: f32,
    /// The model's answer as generated.
    pub text: String,
    /// Tokens in the classifier prompt.
    pub prompt_tokens: usize,
    /// Wall time of the check.
    #[serde(skip)]
    pub elapsed: Duration,
}

/// A Llama Guard classifier; see the [module docs](super).
pub struct Guard {
    llama: Llama,
    prompt: GuardPrompt,
    categories: Vec<Category>,
    excluded: Vec<String>,
    threshold: Option<f32>,
    /// Ids whose probability at the verdict token is P(`unsafe`), and those of `safe`.
    unsafe_ids: Vec<u32>,
    safe_ids: Vec<u32>,
    /// Texts no judged message may contain: the classifier prompt's control tokens and
    /// turn markers, which typed by a user would forge the classifier's own turns.
    forbidden: Vec<String>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("prompt", &self.prompt.format())
            .field("categories", &self.categories.len())
            .finish()
    }
}

#[derive(Serialize)]
struct TextPart<'a> {
    r#type: &'static str,
    text: &'a str,
}

#[derive(Serialize)]
struct TemplateMessage<C: Serialize> {
    role: &'static str,
    content: C,
}

/// The guess of a file's format from what it is: a SentencePiece vocabulary is Llama
/// Guard 1; a Llama 3 one is Llama Guard 3 (1B below 32 layers) when the RoPE is
/// llama3-scaled, else Llama Guard 2.
fn guess_format(llama: &Llama) -> GuardFormat {
    let args = llama.model().args();
    match llama.tokenizer() {
        Tokenizer::SentencePiece(_) => GuardFormat::LlamaGuard1,
        Tokenizer::Bpe(_) if args.rope_scaling.is_none() => GuardFormat::LlamaGuard2,
        Tokenizer::Bpe(_) if args.n_layers < 32 => GuardFormat::LlamaGuard3OneB,
        Tokenizer::Bpe(_) => GuardFormat::LlamaGuard3,
    }
}

/// The format a template's wording follows.
fn template_format(source: &str, fallback: GuardFormat) -> GuardFormat {
    if source.contains("<|start_header_id|>") {
        if source.contains("Code Interpreter Abuse") {
            GuardFormat::LlamaGuard3
        } else {
            GuardFormat::LlamaGuard3OneB
        }
    } else if source.contains("ONLY THE LAST") {
        GuardFormat::LlamaGuard2
    } else if source.contains("O1:") {
        GuardFormat::LlamaGuard1
    } else {
        fallback
    }
}

impl Guard {
    /// Loads a Llama Guard model from any path [`Llama::open`] takes.
    pub fn open(path: impl AsRef<Path>, options: GuardOptions) -> Result<Guard> {
        let mut b = Llama::open(path.as_ref())
            .max_seq_len(options.max_seq_len.unwrap_or(4096))
            .max_batch_size(2);
        if let Some(t) = options.threads {
            b = b.threads(t);
        }
        if let Some(p) = options.pool.clone() {
            b = b.share_pool(p);
        }
        let llama = b.build()?;
        let template = match llama.chat_template() {
            ChatTemplate::Jinja(j) => Some(j.source().to_string()),
            _ => None,
        };
        Self::from_llama(llama, template, options)
    }

    /// Wraps a loaded classifier; `template` is the chat template its file carries.
    pub fn from_llama(
        llama: Llama,
        template: Option<String>,
        options: GuardOptions,
    ) -> Result<Guard> {
        let guess = guess_format(&llama);
        let prompt = match (options.format, template) {
            (Some(f), _) => GuardPrompt::Builtin(f),
            (None, Some(source)) if source.contains("Check if there is unsafe content") => {
                let format = template_format(&source, guess);
                GuardPrompt::Template { source, format }
            }
            (None, _) => GuardPrompt::Builtin(guess),
        };
        let format = prompt.format();
        if let GuardPrompt::Template { source, .. } = &prompt {
            let takes_categories = source.contains("excluded_category_keys");
            if options.categories.is_some() && !takes_categories {
                return Err(Error::Guard(
                    "this model's template has a fixed category list: categories cannot be \
                     replaced (use a built-in format with --guard-format to override it)"
                        .into(),
                ));
            }
            if !options.excluded.is_empty() && !takes_categories {
                return Err(Error::Guard(
                    "this model's template has a fixed category list: categories cannot be \
                     excluded (use a built-in format with --guard-format to override it)"
                        .into(),
                ));
            }
        }
        let categories = options.categories.unwrap_or_else(|| format.categories());
        for code in &options.excluded {
            if !categories.iter().any(|c| &c.code == code) {
                return Err(Error::InvalidArgument(format!(
                    "category {code} is not one of this model's ({})",
                    categories
                        .iter()
                        .map(|c| c.code.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        if let Some(t) = options.threshold {
            if !(0.0..=1.0).contains(&t) || t.is_nan() {
                return Err(Error::InvalidArgument(format!(
                    "the guard threshold must be between 0 and 1, got {t}"
                )));
            }
        }
        let tok = llama.tokenizer();
        let ids_of = |words: &[&str]| -> Vec<u32> {
            let mut ids: Vec<u32> = words
                .iter()
                .filter_map(|w| match tok.encode(w, false, false).as_slice() {
                    [one] => Some(*one),
                    _ => None,
                })
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        // The answer's first word, with or without a leading space (SentencePiece
        // vocabularies write `▁safe`).
        let unsafe_ids = ids_of(&["unsafe", " unsafe"]);
        let safe_ids = ids_of(&["safe", " safe"]);
        // `[INST]` prompts built in are plain text: only their tags could forge a turn.
        // Every other prompt is tokenized with special tokens parsed: their texts too.
        let inst = matches!(format, GuardFormat::LlamaGuard1 | GuardFormat::LlamaGuard2);
        let mut forbidden: Vec<String> = Vec::new();
        if !(inst && matches!(prompt, GuardPrompt::Builtin(_))) {
            forbidden.extend(
                (0..tok.n_words() as u32)
                    .filter(|&id| tok.is_control(id))
                    .filter_map(|id| tok.token_text(id))
                    .filter(|t| !t.is_empty())
                    .map(str::to_string),
            );
        }
        if inst {
            forbidden.extend(["[INST]", "[/INST]"].map(String::from));
        }
        if unsafe_ids.is_empty() || safe_ids.is_empty() {
            return Err(Error::Guard(
                "the vocabulary has no single token for 'safe' or 'unsafe': not a Llama Guard \
                 model"
                    .into(),
            ));
        }
        Ok(Guard {
            llama,
            prompt,
            categories,
            excluded: options.excluded,
            threshold: options.threshold,
            unsafe_ids,
            safe_ids,
            forbidden,
        })
    }

    /// The prompt source in use.
    pub fn prompt(&self) -> &GuardPrompt {
        &self.prompt
    }

    /// The categories listed (before exclusions).
    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    /// The classifier model.
    pub fn llama(&self) -> &Llama {
        &self.llama
    }

    /// The conversation the classifier judges: user/assistant turns in order, a system
    /// message folded into the first user turn (the formats have no system role, and
    /// what it says must be judged too). The judged role is the last message's.
    fn turns(dialog: &[Message]) -> Result<Vec<(bool, std::borrow::Cow<'_, str>)>> {
        use std::borrow::Cow;
        let system: Vec<&str> = dialog
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let mut turns: Vec<(bool, Cow<'_, str>)> = dialog
            .iter()
            .filter(|m| m.role != Role::System)
            .map(|m| (m.role == Role::User, Cow::Borrowed(m.content.as_str())))
            .collect();
        if let (false, Some((true, first))) = (system.is_empty(), turns.first_mut()) {
            *first = Cow::Owned(format!("{}\n\n{first}", system.join("\n\n")));
        }
        let alternates = turns.iter().enumerate().all(|(i, t)| t.0 == (i % 2 == 0));
        if turns.is_empty() || !alternates {
            return Err(Error::Guard(
                "the conversation must alternate user/assistant, starting with the user".into(),
            ));
        }
        Ok(turns)
    }

    /// The classifier prompt text for `dialog` (judging its last message). A message
    /// holding one of the prompt's control texts (`<|eot_id|>`, `[/INST]`, ...) is an
    /// [`Error::InvalidArgument`]: it could forge the classifier's turns, so it cannot be
    /// judged (and is not passed).
    pub fn render(&self, dialog: &[Message]) -> Result<String> {
        for m in dialog {
            if let Some(t) = self
                .forbidden
                .iter()
                .find(|t| m.content.contains(t.as_str()))
            {
                return Err(Error::InvalidArgument(format!(
                    "a message contains {t:?}, a control text of the safety classifier's \
                     prompt: it cannot be judged"
                )));
            }
        }
        let turns = Self::turns(dialog)?;
        let turns: Vec<(bool, &str)> = turns.iter().map(|(u, t)| (*u, t.as_ref())).collect();
        let listed: Vec<Category> = self
            .categories
            .iter()
            .filter(|c| !self.excluded.contains(&c.code))
            .cloned()
            .collect();
        match &self.prompt {
            GuardPrompt::Builtin(f) => Ok(f.render(&turns, &listed)),
            GuardPrompt::Template { source, .. } => {
                render_template(source, &turns, &self.categories, &self.excluded)
            }
        }
    }

    /// The prompt ids for `dialog`.
    pub fn encode(&self, dialog: &[Message]) -> Result<Vec<u32>> {
        let text = self.render(dialog)?;
        let tok = self.llama.tokenizer();
        Ok(match self.prompt.format() {
            // `[INST]` formats are plain text after BOS (Llama 2 encodes BOS as an id).
            GuardFormat::LlamaGuard1 | GuardFormat::LlamaGuard2
                if matches!(self.prompt, GuardPrompt::Builtin(_)) =>
            {
                tok.encode(&text, true, false)
            }
            _ => {
                let bos = tok.token_text(tok.bos_id()).unwrap_or_default();
                let written = !bos.is_empty() && text.trim_start().starts_with(bos);
                tok.encode_with_special(&text, !written)
            }
        })
    }

    /// Judges the last message of `dialog` (a user prompt, or an assistant answer after
    /// the prompt it answers).
    pub fn check(&self, dialog: &[Message]) -> Result<Verdict> {
        let started = Instant::now();
        let prompt = self.encode(dialog)?;
        let prompt_tokens = prompt.len();
        if prompt_tokens + MAX_ANSWER_TOKENS > self.llama.max_seq_len() {
            return Err(Error::PromptTooLong {
                index: 0,
                len: prompt_tokens + MAX_ANSWER_TOKENS,
                max_seq_len: self.llama.max_seq_len(),
            });
        }
        let watch_ids: Vec<u32> = self
            .unsafe_ids
            .iter()
            .chain(&self.safe_ids)
            .copied()
            .collect();
        let handle = self.llama.engine().submit(Request {
            prompt,
            options: SeqOptions {
                max_tokens: Some(MAX_ANSWER_TOKENS),
                watch_ids,
                ..SeqOptions::default()
            },
            tag: 0,
        })?;
        let tok = self.llama.tokenizer();
        let mut ids = Vec::new();
        let mut text = String::new();
        let mut score = None;
        while let Some(ev) = handle.recv() {
            match ev.kind {
                EventKind::Token(t) => {
                    // The verdict token is the first that is not blank (Llama Guard 3
                    // answers "\n\n" first).
                    if score.is_none() && !tok.decode(&[t.id])?.trim().is_empty() {
                        let p: f32 = t.watched[..self.unsafe_ids.len()]
                            .iter()
                            .map(|l| l.exp())
                            .sum();
                        score = Some(p);
                    }
                    ids.push(t.id);
                    text.push_str(&t.text);
                }
                EventKind::Done(f) => {
                    text.push_str(&f.text);
                    break;
                }
                EventKind::Failed(e) => return Err(e),
            }
        }
        let (said_safe, codes) = parse_answer(&text)?;
        let unsafe_probability = score.unwrap_or(if said_safe { 0.0 } else { 1.0 });
        let safe = match self.threshold {
            Some(t) => unsafe_probability < t,
            None => said_safe,
        };
        let categories = if safe {
            Vec::new()
        } else {
            codes
                .into_iter()
                .map(|code| {
                    let name = self
                        .categories
                        .iter()
                        .find(|c| c.code == code)
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                    Category { code, name }
                })
                .collect()
        };
        Ok(Verdict {
            safe,
            categories,
            unsafe_probability,
            text,
            prompt_tokens,
            elapsed: started.elapsed(),
        })
    }
}

/// Renders a Llama Guard chat template (a model file's) for `turns` (`(is_user, text)`),
/// passing `categories` and `excluded` as the Llama Guard 3 1B template takes them
/// (`categories`: `{"S1": "Violent Crimes.", ...}`, `excluded_category_keys`).
pub fn render_template(
    source: &str,
    turns: &[(bool, &str)],
    categories: &[Category],
    excluded: &[String],
) -> Result<String> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    let role = |user: bool| if user { "user" } else { "assistant" };
    // Llama Guard 3 1B's template reads content as a list of text parts; the others
    // as a string.
    let parts = source.contains("selectattr('type'");
    let categories: indexmap_like::Ordered = categories
        .iter()
        .map(|c| (c.code.clone(), format!("{}.", c.name)))
        .collect();
    let render = |messages: minijinja::Value| {
        let ctx = minijinja::context! {
            messages => messages,
            categories => minijinja::Value::from_serialize(&categories),
            excluded_category_keys => excluded,
            add_generation_prompt => true,
        };
        env.render_str(source, ctx)
            .map_err(|e| Error::Guard(format!("the model's template failed: {e}")))
    };
    let messages = if parts {
        minijinja::Value::from_serialize(
            turns
                .iter()
                .map(|(u, t)| TemplateMessage {
                    role: role(*u),
                    content: vec![TextPart {
                        r#type: "text",
                        text: t,
                    }],
                })
                .collect::<Vec<_>>(),
        )
    } else {
        minijinja::Value::from_serialize(
            turns
                .iter()
                .map(|(u, t)| TemplateMessage {
                    role: role(*u),
                    content: *t,
                })
                .collect::<Vec<_>>(),
        )
    };
    render(messages)
}

/// Reads a Llama Guard answer: `safe`, or `unsafe` with the violated codes on the next
/// line (comma-separated). Leading blank lines are skipped (Llama Guard 3). Anything
/// else is an [`Error::Guard`]: a classifier that cannot be read must not pass traffic.
pub fn parse_answer(text: &str) -> Result<(bool, Vec<String>)> {
    let mut lines = text.trim_start().lines();
    let first = lines.next().unwrap_or_default().trim();
    match first {
        "safe" => Ok((true, Vec::new())),
        "unsafe" => {
            let codes = lines
                .next()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            Ok((false, codes))
        }
        _ => Err(Error::Guard(format!(
            "the classifier answered {text:?}, neither 'safe' nor 'unsafe'"
        ))),
    }
}

mod indexmap_like {
    //! Categories as an ordered map for templates (`{"S1": "Violent Crimes.", ...}`).
    use serde::ser::{Serialize, SerializeMap, Serializer};

    /// Key/value pairs serialized as a map in their order.
    pub struct Ordered(pub Vec<(String, String)>);

    impl FromIterator<(String, String)> for Ordered {
        fn from_iter<I: IntoIterator<Item = (String, String)>>(it: I) -> Self {
            Ordered(it.into_iter().collect())
        }
    }

    impl Serialize for Ordered {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut m = s.serialize_map(Some(self.0.len()))?;
            for (k, v) in &self.0 {
                m.serialize_entry(k, v)?;
            }
            m.end()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_or_refused() {
        assert_eq!(parse_answer("safe").unwrap(), (true, vec![]));
        assert_eq!(parse_answer("\n\nsafe").unwrap(), (true, vec![]));
        assert_eq!(parse_answer(" safe\n").unwrap(), (true, vec![]));
        assert_eq!(
            parse_answer("unsafe\nS1").unwrap(),
            (false, vec!["S1".to_string()])
        );
        assert_eq!(
            parse_answer("\n\nunsafe\nS1,S10, S14").unwrap(),
            (false, vec!["S1".into(), "S10".into(), "S14".into()])
        );
        assert_eq!(parse_answer("unsafe").unwrap(), (false, vec![]));
        for garbage in ["", "Sure! Here is", "safely", "unsafe-ish\nS1", "SAFE"] {
            assert!(
                matches!(parse_answer(garbage), Err(Error::Guard(_))),
                "{garbage:?}"
            );
        }
    }
}
