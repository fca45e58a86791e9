//! [`OrganizationId`]: the tenant, a checked id; the same rule for correlation ids.

use std::{borrow::Cow, fmt, sync::Arc};

use crate::ident::check_identifier;

/// The tenant an event belongs to: a checked organization id.
///
/// An `OrganizationId` is always valid — it can only be made by [`parse`](Self::parse)
/// or `TryFrom<&str>` / `TryFrom<String>`, which enforce the rule:
///
/// - 1 to 255 bytes (UTF-8; it travels in an AMQP header and the envelope);
/// - no whitespace at either end, so never empty or whitespace-only after trimming —
///   the id is not trimmed for you, it is refused (`" org-1"` is most likely a bug in
///   the caller, and silently trimming would make two spellings name one tenant);
/// - no control character anywhere (Unicode category Cc: `\0`, `\t`, `\r`, `\n`, DEL, …),
///   which rules out header injection (`"org-1\r\nX-Injected: yes"`);
/// - no invisible format character (Unicode category Cf) anywhere: zero-width space
///   U+200B, zero-width non-joiner and joiner U+200C/U+200D, word joiner U+2060, byte
///   order mark U+FEFF, soft hyphen U+00AD, bidirectional formatting (U+061C, U+200E,
///   U+200F, U+202A–U+202E, U+2066–U+2069), tags, … — `"org\u{200b}-1"` displays as
///   `org-1`, `"\u{202e}gro-1"` as `1-org`; the error names the character
///   (`contains U+200B ZERO WIDTH SPACE, …`);
/// - no line or paragraph separator (U+2028, U+2029).
///
/// Letters of any script, digits, punctuation and inner spaces are allowed.
///
/// [`Event::with_organization`](crate::Event::with_organization) takes an `OrganizationId` or a string and stays
/// infallible, so events are still built in one expression: an invalid string is not
/// stored, and the publish fails with [`ErrorKind::Validation`](crate::ErrorKind::Validation)
/// naming `organization_id` — the same path and error as every other bad field, and an
/// event cannot carry an unchecked id to the transport. Making `with_organization`
/// return a `Result` instead would push a `?` or `unwrap` into every event construction
/// for a check that the publish reports anyway; call [`OrganizationId::parse`] first
/// when you want to handle a bad id yourself (an HTTP header, for example).
///
/// Put one into the request extensions (your auth middleware does this) and the
/// HTTP integration stamps it on every event of that request.
///
/// # Example
/// ```
/// use fitviz_events::OrganizationId;
///
/// let org = OrganizationId::parse("org-42").unwrap();
/// assert_eq!(org.as_str(), "org-42");
/// assert!(OrganizationId::parse("").is_err());
/// assert!(OrganizationId::parse("   ").is_err());
/// assert!(OrganizationId::try_from("org-1\r\nX-Injected: yes").is_err());
/// assert!(OrganizationId::try_from("x".repeat(256)).is_err());
/// let zwsp = OrganizationId::parse("org\u{200b}-1").unwrap_err();
/// assert!(zwsp.to_string().contains("U+200B ZERO WIDTH SPACE"), "{zwsp}");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrganizationId(Arc<str>);

/// The longest organization id, in bytes.
pub const MAX_ORGANIZATION_ID_BYTES: usize = 255;

/// Why a string is not a valid [`OrganizationId`] (or correlation id). It never
/// contains the rejected input, which may be huge or contain control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidId {
    field: &'static str,
    reason: Cow<'static, str>,
}

impl InvalidId {
    pub(crate) fn new(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }

    /// The field the value was meant for: `organization_id` or `correlation_id`.
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// Why it was refused, in lowercase words (`"contains a control character"`),
    /// naming a refused invisible character by its code point
    /// (`"contains U+200B ZERO WIDTH SPACE, an invisible format character …"`).
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidId {}

impl From<std::convert::Infallible> for InvalidId {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl OrganizationId {
    /// Checks `id` against the rule in the [type docs](Self) and wraps it.
    ///
    /// # Errors
    /// [`InvalidId`] naming `organization_id` and the broken rule.
    pub fn parse(id: &str) -> Result<Self, InvalidId> {
        check_organization_id(id)?;
        Ok(Self(Arc::from(id)))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub(crate) fn check_organization_id(id: &str) -> Result<(), InvalidId> {
    check_identifier(id, MAX_ORGANIZATION_ID_BYTES)
        .map_err(|reason| InvalidId::new("organization_id", reason))
}

/// The longest correlation id, in bytes (it travels as the AMQP `correlation-id`
/// property, a short string).
pub const MAX_CORRELATION_ID_BYTES: usize = 255;

/// Checks a correlation id: the same rule as an [`OrganizationId`], at most
/// [`MAX_CORRELATION_ID_BYTES`] bytes.
///
/// # Errors
/// [`InvalidId`] naming `correlation_id` and the broken rule.
pub fn check_correlation_id(id: &str) -> Result<(), InvalidId> {
    check_identifier(id, MAX_CORRELATION_ID_BYTES)
        .map_err(|reason| InvalidId::new("correlation_id", reason))
}

impl fmt::Debug for OrganizationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for OrganizationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for OrganizationId {
    type Error = InvalidId;

    fn try_from(s: &str) -> Result<Self, InvalidId> {
        Self::parse(s)
    }
}

impl TryFrom<String> for OrganizationId {
    type Error = InvalidId;

    fn try_from(s: String) -> Result<Self, InvalidId> {
        check_organization_id(&s)?;
        Ok(Self(Arc::from(s)))
    }
}

impl TryFrom<&String> for OrganizationId {
    type Error = InvalidId;

    fn try_from(s: &String) -> Result<Self, InvalidId> {
        Self::parse(s)
    }
}

impl std::str::FromStr for OrganizationId {
    type Err = InvalidId;

    fn from_str(s: &str) -> Result<Self, InvalidId> {
        Self::parse(s)
    }
}
