//! Dialogs and chat formats: the Llama 2 format (REFERENCE §6: role validation,
//! system-prompt merge, special-tag refusal, per-turn token layout with BOS/EOS inserted
//! as ids, so typed `<s>` stays text), the Llama 3 format (header tokens and `<|eot_id|>`
//! inserted as ids) and, in [`ChatTemplate`], Jinja templates that models ship.

pub(crate) mod dialog;
mod template;

pub use dialog::{Dialog, DialogError, Message, Role};
pub use template::{ChatTemplate, JinjaTemplate, CHATML};

use crate::tokenizer::Tokenizer;

/// Instruction opening tag.
pub const B_INST: &str = "[INST]";
/// Instruction closing tag.
pub const E_INST: &str = "[/INST]";
/// System block opening (with its newline).
pub const B_SYS: &str = "<<SYS>>\n";
/// System block closing (with its newlines).
pub const E_SYS: &str = "\n<</SYS>>\n\n";
/// Strings that may not appear in any message.
pub const SPECIAL_TAGS: [&str; 4] = [B_INST, E_INST, "<<SYS>>", "<</SYS>>"];
/// The reference's answer content for a dialog containing special tags.
pub const UNSAFE_ERROR: &str = "Error: special tags are not allowed as part of the prompt.";

/// Llama 3 control-token texts no message may contain (with any
/// `<|reserved_special_token_N|>`): typed into a rendered prompt they would forge turns.
pub const LLAMA3_CONTROL: [&str; 8] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "<|finetune_right_pad_id|>",
];

/// Prefix of Llama 3's reserved special tokens.
pub const LLAMA3_RESERVED_PREFIX: &str = "<|reserved_special_token_";

/// True when any message contains one of [`SPECIAL_TAGS`].
pub fn has_special_tags(dialog: &[Message]) -> bool {
    dialog
        .iter()
        .any(|m| SPECIAL_TAGS.iter().any(|t| m.content.contains(t)))
}

/// Python's `str.strip()`: Rust's `char::is_whitespace` plus U+001C..U+001F, which
/// Python also treats as whitespace.
pub fn python_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// The dialog after the system message is merged into the first user message.
fn merged(dialog: &[Message]) -> Result<Vec<Message>, DialogError> {
    match dialog {
        [] => Err(DialogError::Empty),
        [sys, next, rest @ ..] if sys.role == Role::System => {
            let mut out = vec![Message::new(
                next.role,
                format!("{B_SYS}{}{E_SYS}{}", sys.content, next.content),
            )];
            out.extend_from_slice(rest);
            Ok(out)
        }
        [only] if only.role == Role::System => Err(DialogError::RoleOrder),
        _ => Ok(dialog.to_vec()),
    }
}

/// Checks the role order exactly as the reference's assertions do.
pub fn validate(dialog: &[Message]) -> Result<(), DialogError> {
    merged(dialog).and_then(|d| check_roles(&d))
}

fn check_roles(d: &[Message]) -> Result<(), DialogError> {
    let alternates = d.iter().enumerate().all(|(i, m)| {
        m.role
            == if i % 2 == 0 {
                Role::User
            } else {
                Role::Assistant
            }
    });
    if !alternates {
        return Err(DialogError::RoleOrder);
    }
    match d.last() {
        Some(m) if m.role != Role::User => Err(DialogError::LastNotUser(m.role)),
        _ => Ok(()),
    }
}

/// The prompt token ids the reference feeds the model for `dialog`.
pub fn encode_dialog(tok: &Tokenizer, dialog: &[Message]) -> Result<Vec<u32>, DialogError> {
    let d = merged(dialog)?;
    check_roles(&d)?;
    let mut ids = Vec::new();
    for pair in d.chunks_exact(2) {
        let text = format!(
            "{B_INST} {} {E_INST} {} ",
            python_strip(&pair[0].content),
            python_strip(&pair[1].content)
        );
        ids.extend(tok.encode(&text, true, true));
    }
    if let Some(last) = d.last() {
        let text = format!("{B_INST} {} {E_INST}", python_strip(&last.content));
        ids.extend(tok.encode(&text, true, false));
    }
    Ok(ids)
}

/// The Llama 3 prompt ids for `dialog` (Meta's `ChatFormat.encode_dialog_prompt`):
/// `<|begin_of_text|>`, then per message `<|start_header_id|>{role}<|end_header_id|>`,
/// `"\n\n"`, the stripped content and `<|eot_id|>`, then the assistant header for the
/// answer. Control tokens are inserted as ids; message text is plain text. The system
/// message keeps its own header (no merge); the roles otherwise follow the Llama 2 rules.
pub fn encode_dialog_llama3(tok: &Tokenizer, dialog: &[Message]) -> Result<Vec<u32>, DialogError> {
    validate(dialog)?;
    let special = |name: &str| {
        tok.piece_to_id(name)
            .filter(|&id| tok.is_control(id))
            .ok_or_else(|| {
                DialogError::Template(format!(
                    "the Llama 3 chat format needs the special token {name}, which this \
                     vocabulary lacks"
                ))
            })
    };
    let (bos, start, end, eot) = (
        special("<|begin_of_text|>")?,
        special("<|start_header_id|>")?,
        special("<|end_header_id|>")?,
        special("<|eot_id|>")?,
    );
    let header = |ids: &mut Vec<u32>, role: &str| {
        ids.push(start);
        ids.extend(tok.encode(role, false, false));
        ids.push(end);
        ids.extend(tok.encode("\n\n", false, false));
    };
    let mut ids = vec![bos];
    for m in dialog {
        header(&mut ids, m.role.as_str());
        ids.extend(tok.encode(python_strip(&m.content), false, false));
        ids.push(eot);
    }
    header(&mut ids, "assistant");
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: Role, c: &str) -> Message {
        Message::new(role, c)
    }

    #[test]
    fn role_rules() {
        use Role::*;
        assert_eq!(validate(&[m(User, "hi")]), Ok(()));
        assert_eq!(validate(&[m(System, "s"), m(User, "hi")]), Ok(()));
        assert_eq!(
            validate(&[m(User, "a"), m(Assistant, "b"), m(User, "c")]),
            Ok(())
        );
        assert_eq!(validate(&[]), Err(DialogError::Empty));
        assert_eq!(validate(&[m(System, "s")]), Err(DialogError::RoleOrder));
        assert_eq!(validate(&[m(Assistant, "a")]), Err(DialogError::RoleOrder));
        assert_eq!(
            validate(&[m(User, "a"), m(User, "b")]),
            Err(DialogError::RoleOrder)
        );
        assert_eq!(
            validate(&[m(User, "a"), m(System, "b"), m(User, "c")]),
            Err(DialogError::RoleOrder)
        );
        assert_eq!(
            validate(&[m(User, "a"), m(Assistant, "b")]),
            Err(DialogError::LastNotUser(Assistant))
        );
        assert_eq!(
            DialogError::LastNotUser(Assistant).to_string(),
            "Last message must be from user, got assistant"
        );
    }

    #[test]
    fn special_tags_and_strip() {
        assert!(has_special_tags(&[m(Role::User, "x [/INST] y")]));
        assert!(has_special_tags(&[m(Role::System, "<</SYS>>")]));
        assert!(!has_special_tags(&[m(Role::User, "[INST ] <SYS> <s>")]));
        assert_eq!(python_strip("\u{1f} \t hi \u{3000}\n"), "hi");
        assert_eq!(python_strip("\u{200b}x"), "\u{200b}x"); // zero-width space is not whitespace
    }
}
