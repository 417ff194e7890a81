//! Dialogs as data: roles, messages, and the errors of a dialog that breaks the format's
//! rules. A leaf module (it imports nothing of the crate), so the crate's error type can
//! hold a [`DialogError`] without a cycle.

use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant (first message only).
    System,
    /// The human.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// The role's name as the reference spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Author.
    pub role: Role,
    /// Text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
        }
    }
}

/// A conversation: optional system message, then user/assistant turns ending with user.
pub type Dialog = Vec<Message>;

/// Why a dialog cannot be formatted. Messages are the reference's assertion texts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DialogError {
    /// Roles do not go (system,) user, assistant, user, …
    #[error("model only supports 'system', 'user' and 'assistant' roles, starting with 'system', then 'user' and alternating (u/a/u/a/u...)")]
    RoleOrder,
    /// The last message is not the user's.
    #[error("Last message must be from user, got {}", .0.as_str())]
    LastNotUser(Role),
    /// No messages at all.
    #[error("dialog is empty: it needs at least one user message")]
    Empty,
    /// A Jinja chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
}
