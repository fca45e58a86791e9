//! [`ConfigError`]: which setting is invalid, and why.

use std::borrow::Cow;

/// Longest value, in characters, quoted in an error message.
const MAX_SHOWN_CHARS: usize = 200;

/// An invalid configuration value: which setting, why, and what it was.
///
/// Displays as ``<setting>: <reason>, got `<value>` ``, the setting named as its source
/// names it: `FITVIZ_EVENTS_POOL_SIZE` for the environment, the config file key
/// (`pool_size`, `confirm_timeout_ms`) otherwise. A URL is shown with its password redacted;
/// control characters are escaped and long values shortened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    field: Cow<'static, str>,
    message: String,
}

impl ConfigError {
    /// `message` is the whole text after the setting's name.
    pub(crate) fn new(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// ``<field>: <reason>, got `<value>` ``; `value` must hold no secret.
    pub(crate) fn invalid(
        field: impl Into<Cow<'static, str>>,
        reason: impl std::fmt::Display,
        value: &str,
    ) -> Self {
        Self::new(field, got(reason, value))
    }

    /// The setting at fault: an environment variable or config file key.
    pub fn field(&self) -> &str {
        &self.field
    }
}

/// ``<reason>, got `<value>` ``, the value escaped and shortened.
pub(super) fn got(reason: impl std::fmt::Display, value: &str) -> String {
    format!("{reason}, got `{}`", shown(value))
}

/// Escapes control characters (keeping messages on one line) and shortens long values.
fn shown(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(MAX_SHOWN_CHARS + 4));
    for (i, c) in value.chars().enumerate() {
        if i == MAX_SHOWN_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
