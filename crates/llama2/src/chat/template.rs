//! Chat templates: the built-in Llama 2 and Llama 3 formats (exact reference behaviour) and Jinja
//! templates shipped with models (`tokenizer.chat_template` in GGUF, `chat_template` in
//! `tokenizer_config.json`), rendered with minijinja.
//!
//! The special-tag refusal generalises: a dialog whose messages contain one of the
//! template's control strings (the Llama 2 tags; `<|im_start|>`/`<|im_end|>` for ChatML;
//! any special-token text the template uses) is refused, because rendered prompts are
//! tokenized with special-token parsing and such text would forge turns.

use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use super::{
    encode_dialog, encode_dialog_llama3, validate, DialogError, Message, LLAMA3_CONTROL,
    LLAMA3_RESERVED_PREFIX, SPECIAL_TAGS,
};
use crate::tokenizer::Tokenizer;

/// ChatML as SmolLM2, Qwen and others use it, without a default system prompt.
pub const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Special tokens that end an assistant turn in common templates.
const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

/// Upper bound on template evaluation steps: templates come from model files.
const TEMPLATE_FUEL: u64 = 5_000_000;

/// Most bytes a template may write: templates come from model files, and a rendered
/// prompt is tokenized whole (64 MiB is ~16M tokens of English, far past any context
/// this engine serves). This bounds what reaches the output; minijinja keeps captured
/// blocks and `~` concatenations in memory without a bound (see the README).
const MAX_RENDERED_BYTES: usize = 64 << 20;

/// Longest template source accepted (published chat templates are under 20 KiB).
const MAX_TEMPLATE_BYTES: usize = 1 << 20;

/// Collects a template's output and stops the rendering past [`MAX_RENDERED_BYTES`].
#[derive(Default)]
struct LimitedOutput {
    bytes: Vec<u8>,
    over: bool,
}

impl std::io::Write for LimitedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_RENDERED_BYTES {
            self.over = true;
            return Err(std::io::Error::other("template output over the limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How a dialog becomes prompt tokens.
#[derive(Clone, Debug, PartialEq)]
pub enum ChatTemplate {
    /// Meta's Llama 2 format, built in: per-turn encoding with BOS/EOS as ids.
    Llama2,
    /// Meta's Llama 3 format, built in: header tokens and `<|eot_id|>` as ids.
    Llama3,
    /// A Jinja template.
    Jinja(JinjaTemplate),
}

/// A Jinja chat template and the strings user content may not contain.
#[derive(Clone, Debug, PartialEq)]
pub struct JinjaTemplate {
    name: String,
    source: String,
    bos_token: String,
    eos_token: String,
    control_strings: Vec<String>,
    stop_ids: Vec<u32>,
}

#[derive(Serialize)]
struct Context<'a> {
    messages: &'a [Message],
    add_generation_prompt: bool,
    bos_token: &'a str,
    eos_token: &'a str,
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function(
        "raise_exception",
        |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        },
    );
    env
}

impl JinjaTemplate {
    /// The template's source text.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl ChatTemplate {
    /// A Jinja template for the model whose tokenizer is `tok`. Fails if it does not
    /// compile.
    pub fn jinja(
        name: impl Into<String>,
        source: impl Into<String>,
        tok: &Tokenizer,
    ) -> Result<Self, DialogError> {
        let source = source.into();
        if source.len() > MAX_TEMPLATE_BYTES {
            return Err(DialogError::Template(format!(
                "the chat template is {} bytes, more than the {} MiB allowed",
                source.len(),
                MAX_TEMPLATE_BYTES >> 20
            )));
        }
        environment().template_from_str(&source).map_err(|e| {
            DialogError::Template(format!("the chat template does not compile: {e}"))
        })?;
        let text = |id: u32| tok.token_text(id).unwrap_or_default().to_string();
        let (bos_token, eos_token) = (text(tok.bos_id()), text(tok.eos_id()));
        let mut control: Vec<String> = vec![bos_token.clone(), eos_token.clone()];
        // Every special token's text the template itself uses.
        for s in (0..tok.n_words() as u32).filter_map(|id| tok.token_text(id)) {
            if source.contains(s) {
                control.push(s.to_string());
            }
        }
        // Turn markers of well-known formats, even when the tokenizer lacks them as
        // special tokens (they still structure the prompt text the model sees).
        if source.contains("[INST]") {
            control.extend(SPECIAL_TAGS.iter().map(|s| s.to_string()));
        }
        for marker in END_OF_TURN
            .iter()
            .chain(&["<|im_start|>", "<|start_header_id|>"])
        {
            if source.contains(marker) {
                control.push(marker.to_string());
            }
        }
        control.retain(|s| !s.is_empty());
        control.sort();
        control.dedup();
        let mut stop_ids = vec![tok.eos_id()];
        for s in END_OF_TURN {
            if let Some(id) = tok.piece_to_id(s).filter(|_| source.contains(s)) {
                stop_ids.push(id);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Ok(ChatTemplate::Jinja(JinjaTemplate {
            name: name.into(),
            source,
            bos_token,
            eos_token,
            control_strings: control,
            stop_ids,
        }))
    }

    /// The built-in format for a model without a template of its own: Llama 3's when
    /// the vocabulary has its header tokens, else Llama 2's.
    pub fn builtin_for(tok: &Tokenizer) -> Self {
        let control = |t: &str| tok.piece_to_id(t).is_some_and(|id| tok.is_control(id));
        if control("<|start_header_id|>") && control("<|eot_id|>") {
            ChatTemplate::Llama3
        } else {
            ChatTemplate::Llama2
        }
    }

    /// Built-in ChatML.
    pub fn chatml(tok: &Tokenizer) -> Result<Self, DialogError> {
        Self::jinja("chatml", CHATML, tok)
    }

    /// Short name for display (`llama2`, `chatml`, or the model's template).
    pub fn name(&self) -> &str {
        match self {
            ChatTemplate::Llama2 => "llama2",
            ChatTemplate::Llama3 => "llama3",
            ChatTemplate::Jinja(j) => &j.name,
        }
    }

    /// Strings no message may contain.
    pub fn control_strings(&self) -> Vec<&str> {
        match self {
            ChatTemplate::Llama2 => SPECIAL_TAGS.to_vec(),
            ChatTemplate::Llama3 => {
                let mut c = LLAMA3_CONTROL.to_vec();
                c.push(LLAMA3_RESERVED_PREFIX);
                c
            }
            ChatTemplate::Jinja(j) => j.control_strings.iter().map(String::as_str).collect(),
        }
    }

    /// True when a message contains a control string: the dialog is refused.
    pub fn is_refused(&self, dialog: &[Message]) -> bool {
        let control = self.control_strings();
        dialog
            .iter()
            .any(|m| control.iter().any(|c| m.content.contains(c)))
    }

    /// Tokens that end the assistant's turn (EOS and the template's end-of-turn token).
    pub fn stop_ids(&self, tok: &Tokenizer) -> Vec<u32> {
        match self {
            ChatTemplate::Llama2 => vec![tok.eos_id()],
            ChatTemplate::Llama3 => {
                // Meta's stop tokens: end of text, end of message, end of turn.
                let mut ids: Vec<u32> = ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]
                    .iter()
                    .filter_map(|t| tok.piece_to_id(t))
                    .chain([tok.eos_id()])
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                ids
            }
            ChatTemplate::Jinja(j) => j.stop_ids.clone(),
        }
    }

    fn bos_text(&self) -> String {
        match self {
            ChatTemplate::Llama2 | ChatTemplate::Llama3 => String::new(),
            ChatTemplate::Jinja(j) => j.bos_token.clone(),
        }
    }

    /// The prompt text (Jinja templates only; the built-in formats are built from ids).
    pub fn render(&self, dialog: &[Message]) -> Result<Option<String>, DialogError> {
        let ChatTemplate::Jinja(j) = self else {
            return Ok(None);
        };
        let env = environment();
        let ctx = Context {
            messages: dialog,
            add_generation_prompt: true,
            bos_token: &j.bos_token,
            eos_token: &j.eos_token,
        };
        let template = env
            .template_from_str(&j.source)
            .map_err(|e| DialogError::Template(e.to_string()))?;
        let mut out = LimitedOutput::default();
        let rendered = template.render_captured_to(ctx, &mut out);
        if out.over {
            return Err(DialogError::Template(format!(
                "the chat template wrote more than {} MiB",
                MAX_RENDERED_BYTES >> 20
            )));
        }
        rendered.map_err(|e| DialogError::Template(e.to_string()))?;
        String::from_utf8(out.bytes)
            .map(Some)
            .map_err(|e| DialogError::Template(e.to_string()))
    }

    /// The prompt ids for `dialog`, after the reference's role checks.
    pub fn encode(&self, tok: &Tokenizer, dialog: &[Message]) -> Result<Vec<u32>, DialogError> {
        validate(dialog)?;
        if *self == ChatTemplate::Llama3 {
            return encode_dialog_llama3(tok, dialog);
        }
        match self.render(dialog)? {
            None => encode_dialog(tok, dialog),
            Some(text) => {
                // The model's BOS, unless the template already wrote it.
                let bos = self.bos_text();
                let written = !bos.is_empty() && text.starts_with(&bos);
                Ok(tok.encode_with_special(&text, tok.add_bos() && !written))
            }
        }
    }
}
