//! The caller's own AMQP headers on an event: [`Event::with_header`](crate::Event::with_header),
//! the values they may hold, and the names they may not take.

use std::{borrow::Cow, sync::Arc};

/// The value of a custom AMQP header (see [`Event::with_header`](crate::Event::with_header)).
///
/// On the wire a string is an AMQP long string (`S`), an integer a signed 64-bit
/// integer (`l`), a boolean a boolean (`t`) and a float a double (`d`): the types
/// RabbitMQ and its clients read without surprises.
///
/// # Example
/// ```
/// use fitviz_events::header::HeaderValue;
///
/// assert_eq!(HeaderValue::from("gold"), HeaderValue::String("gold".into()));
/// assert_eq!(HeaderValue::from(7_u32), HeaderValue::Int(7));
/// assert_eq!(HeaderValue::from(true), HeaderValue::Bool(true));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum HeaderValue {
    /// A UTF-8 string (AMQP long string).
    String(Arc<str>),
    /// A signed 64-bit integer (AMQP long-long-int).
    Int(i64),
    /// A boolean (AMQP boolean).
    Bool(bool),
    /// A 64-bit float (AMQP double).
    Float(f64),
}

impl From<&str> for HeaderValue {
    fn from(value: &str) -> Self {
        Self::String(value.into())
    }
}

impl From<String> for HeaderValue {
    fn from(value: String) -> Self {
        Self::String(value.into())
    }
}

impl From<&String> for HeaderValue {
    fn from(value: &String) -> Self {
        Self::String(value.as_str().into())
    }
}

impl From<Arc<str>> for HeaderValue {
    fn from(value: Arc<str>) -> Self {
        Self::String(value)
    }
}

impl From<i64> for HeaderValue {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<i32> for HeaderValue {
    fn from(value: i32) -> Self {
        Self::Int(value.into())
    }
}

impl From<u32> for HeaderValue {
    fn from(value: u32) -> Self {
        Self::Int(value.into())
    }
}

impl From<bool> for HeaderValue {
    fn from(value: bool) -> Self {
        Self::Bool(value)
    }
}

impl From<f64> for HeaderValue {
    fn from(value: f64) -> Self {
        Self::Float(value)
    }
}

/// The longest custom header name, in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 128;

/// The most custom headers one event may carry.
pub const MAX_CUSTOM_HEADERS: usize = 64;

/// AMQP header carrying the event's organization id.
pub const HEADER_ORGANIZATION_ID: &str = "organization_id";
/// AMQP header carrying the event's schema version.
pub const HEADER_SCHEMA_VERSION: &str = "schema_version";
/// AMQP header marking a copy republished from the archive by a replay: the offset (a
/// long-long int) of the event it copies in `<exchange>.archive`. Body, `message_id` and
/// every other property are the original's; a later replay skips such copies unless
/// told otherwise (see [*Replaying events*](crate::guide::replay)).
pub const HEADER_REPLAYED_FROM: &str = "replayed_from";

/// Header names a custom header may not take, compared without regard to ASCII case:
/// the library's own headers (`organization_id`, `schema_version`, `replayed_from`), the W3C trace-context
/// headers it will add (`traceparent`, `tracestate`, `baggage`), and RabbitMQ's
/// sender-selected distribution headers `CC` and `BCC` (they add routing keys). Names
/// starting with one of [`RESERVED_HEADER_PREFIXES`] are refused too.
pub const RESERVED_HEADERS: &[&str] = &[
    HEADER_ORGANIZATION_ID,
    HEADER_SCHEMA_VERSION,
    HEADER_REPLAYED_FROM,
    "traceparent",
    "tracestate",
    "baggage",
    "CC",
    "BCC",
];

/// Prefixes a custom header name may not start with, compared without regard to ASCII
/// case: `fitviz` (the library's future headers) and `x-` (RabbitMQ's: `x-death`,
/// `x-delay`, `x-match`, … mean something to the broker).
pub const RESERVED_HEADER_PREFIXES: &[&str] = &["fitviz", "x-"];

const RESERVED_BY_FITVIZ: &str = "is reserved by fitviz-events";
const RESERVED_BY_RABBITMQ_X: &str = "is reserved by RabbitMQ (x- headers)";
const RESERVED_BY_RABBITMQ_CC: &str =
    "is reserved by RabbitMQ (CC and BCC add routing keys: sender-selected distribution)";
const TOO_MANY: &str = "is one custom header too many (at most 64 per event)";

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

fn starts_with_ignore_case(name: &str, prefix: &str) -> bool {
    name.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// Checks the name of a custom header: 1 to [`MAX_HEADER_NAME_BYTES`] bytes of ASCII
/// letters, digits, `-`, `_` and `.`, and none of the [`RESERVED_HEADERS`] nor starting
/// with one of the [`RESERVED_HEADER_PREFIXES`] (both compared without regard to ASCII
/// case).
///
/// # Errors
/// Why the name is refused, in lowercase words (`"is reserved by fitviz-events"`).
///
/// # Example
/// ```
/// use fitviz_events::header::check_header_name;
///
/// assert!(check_header_name("tenant-tier").is_ok());
/// assert_eq!(check_header_name("X-Death"), Err("is reserved by RabbitMQ (x- headers)"));
/// assert_eq!(check_header_name("traceparent"), Err("is reserved by fitviz-events"));
/// ```
pub fn check_header_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > MAX_HEADER_NAME_BYTES {
        return Err("is longer than 128 bytes");
    }
    if !name.bytes().all(is_name_byte) {
        return Err("may only contain ascii letters, digits, `-`, `_` and `.`");
    }
    if let Some(reserved) = RESERVED_HEADERS
        .iter()
        .find(|reserved| name.eq_ignore_ascii_case(reserved))
    {
        return Err(if matches!(*reserved, "CC" | "BCC") {
            RESERVED_BY_RABBITMQ_CC
        } else {
            RESERVED_BY_FITVIZ
        });
    }
    if starts_with_ignore_case(name, "x-") {
        return Err(RESERVED_BY_RABBITMQ_X);
    }
    if starts_with_ignore_case(name, "fitviz") {
        return Err(RESERVED_BY_FITVIZ);
    }
    Ok(())
}

/// How a header name appears in an error: as it is when it obeys the name's character
/// and length rules, else quoted, escaped to printable ASCII and cut after 32 characters
/// — a refused name may be huge or hold control characters.
fn shown_name(name: &str) -> Cow<'_, str> {
    const SHOWN_CHARS: usize = 32;
    if !name.is_empty() && name.len() <= MAX_HEADER_NAME_BYTES && name.bytes().all(is_name_byte) {
        return Cow::Borrowed(name);
    }
    let mut shown = String::from("\"");
    for (i, c) in name.chars().enumerate() {
        if i == SHOWN_CHARS {
            shown.push_str("...");
            break;
        }
        shown.extend(c.escape_default());
    }
    shown.push('"');
    Cow::Owned(shown)
}

/// An event's custom headers, and the ones it was given but refused.
#[derive(Clone, Debug, Default)]
pub(crate) struct CustomHeaders {
    /// In the order first set; names are unique.
    entries: Vec<(Arc<str>, HeaderValue)>,
    /// `headers.<name>` and why, for each refused name (once each, at most
    /// [`MAX_CUSTOM_HEADERS`] of them).
    rejected: Vec<(Box<str>, &'static str)>,
}

impl CustomHeaders {
    /// Sets `name` to `value`, replacing an earlier value of the same name; remembers
    /// why instead when `name` is refused or one header too many.
    pub(crate) fn set(&mut self, name: &str, value: HeaderValue) {
        if let Err(reason) = check_header_name(name) {
            return self.reject(name, reason);
        }
        if let Some(entry) = self.entries.iter_mut().find(|(n, _)| **n == *name) {
            entry.1 = value;
        } else if self.entries.len() >= MAX_CUSTOM_HEADERS {
            self.reject(name, TOO_MANY);
        } else {
            self.entries.push((name.into(), value));
        }
    }

    fn reject(&mut self, name: &str, reason: &'static str) {
        let field = format!("headers.{}", shown_name(name));
        if self.rejected.len() < MAX_CUSTOM_HEADERS
            && !self.rejected.iter().any(|(f, _)| **f == *field)
        {
            self.rejected.push((field.into(), reason));
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &HeaderValue)> {
        self.entries.iter().map(|(name, value)| (&**name, value))
    }

    /// `(headers.<name>, reason)` for each refused header.
    pub(crate) fn rejected(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.rejected
            .iter()
            .map(|(field, reason)| (&**field, *reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        for good in [
            "a",
            "tenant-tier",
            "Tenant_Tier.v2",
            "0",
            "xdeath",
            "x_death",
            "ccc",
            "bcc-list",
            "org_id",
            "my-fitviz",
            "trace-parent",
            &"n".repeat(128),
        ] {
            assert_eq!(check_header_name(good), Ok(()), "{good:?}");
        }
        let charset = "may only contain ascii letters, digits, `-`, `_` and `.`";
        for (bad, why) in [
            ("", "is empty"),
            (&*"n".repeat(129), "is longer than 128 bytes"),
            ("a b", charset),
            ("a\r\nb", charset),
            ("a\0", charset),
            ("tenant:tier", charset),
            ("tier/x", charset),
            ("tïer", charset),
            (" a", charset),
        ] {
            assert_eq!(check_header_name(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn reserved_names_are_refused_whatever_their_case() {
        for own in [
            "organization_id",
            "ORGANIZATION_ID",
            "schema_version",
            "Schema_Version",
            "traceparent",
            "TraceParent",
            "tracestate",
            "baggage",
            "BAGGAGE",
            "fitviz",
            "fitviz-anything",
            "FitViz_trace",
            "fitviz.x",
        ] {
            assert_eq!(check_header_name(own), Err(RESERVED_BY_FITVIZ), "{own:?}");
        }
        for broker in [
            "x-",
            "x-death",
            "X-Death",
            "x-delay",
            "x-match",
            "X-FIRST-DEATH-QUEUE",
        ] {
            assert_eq!(
                check_header_name(broker),
                Err(RESERVED_BY_RABBITMQ_X),
                "{broker:?}"
            );
        }
        for routing in ["CC", "cc", "Cc", "BCC", "bcc", "bCc"] {
            assert_eq!(
                check_header_name(routing),
                Err(RESERVED_BY_RABBITMQ_CC),
                "{routing:?}"
            );
        }
        // Every listed name and prefix is refused, and the library's own headers are listed.
        for reserved in RESERVED_HEADERS {
            assert!(check_header_name(reserved).is_err(), "{reserved}");
        }
        for prefix in RESERVED_HEADER_PREFIXES {
            assert!(
                check_header_name(&format!("{prefix}1")).is_err(),
                "{prefix}"
            );
        }
        assert!(RESERVED_HEADERS.contains(&HEADER_ORGANIZATION_ID));
        assert!(RESERVED_HEADERS.contains(&HEADER_SCHEMA_VERSION));
    }

    #[test]
    fn the_same_name_twice_replaces_the_value() {
        let mut headers = CustomHeaders::default();
        headers.set("tier", "gold".into());
        headers.set("count", 3.into());
        headers.set("tier", "silver".into());
        headers.set("Tier", true.into()); // names are case-sensitive, as in AMQP
        let set: Vec<_> = headers.iter().collect();
        assert_eq!(
            set,
            [
                ("tier", &HeaderValue::from("silver")),
                ("count", &HeaderValue::Int(3)),
                ("Tier", &HeaderValue::Bool(true)),
            ]
        );
        assert_eq!(headers.rejected().count(), 0);
    }

    #[test]
    fn refused_names_are_remembered_once_and_shown_safely() {
        let mut headers = CustomHeaders::default();
        headers.set("x-death", 1.into());
        headers.set("x-death", 2.into());
        headers.set("a\r\nInjected: yes", 1.into());
        headers.set(&"\u{202e}".repeat(40), 1.into()); // 120 bytes
        headers.set("", 1.into());
        headers.set(&"n".repeat(129), 1.into());
        assert_eq!(headers.iter().count(), 0);
        let rejected: Vec<_> = headers.rejected().collect();
        assert_eq!(
            rejected,
            [
                ("headers.x-death", RESERVED_BY_RABBITMQ_X),
                (
                    r#"headers."a\r\nInjected: yes""#,
                    "may only contain ascii letters, digits, `-`, `_` and `.`"
                ),
                (
                    &*format!(r#"headers."{}...""#, r"\u{202e}".repeat(32)),
                    "may only contain ascii letters, digits, `-`, `_` and `.`"
                ),
                (r#"headers."""#, "is empty"),
                (
                    &*format!(r#"headers."{}...""#, "n".repeat(32)),
                    "is longer than 128 bytes"
                ),
            ]
        );
        for (field, _) in rejected {
            assert!(
                field.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
                "{field}"
            );
        }
    }

    #[test]
    fn at_most_64_custom_headers() {
        let mut headers = CustomHeaders::default();
        for i in 0..MAX_CUSTOM_HEADERS {
            headers.set(&format!("h{i}"), i64::try_from(i).unwrap().into());
        }
        headers.set("h0", "replaced".into()); // replacing is not one more
        assert_eq!(headers.rejected().count(), 0);
        headers.set("h64", 64.into());
        assert_eq!(headers.iter().count(), MAX_CUSTOM_HEADERS);
        assert_eq!(
            headers.rejected().collect::<Vec<_>>(),
            [("headers.h64", TOO_MANY)]
        );
        // However many are refused, the error stays bounded.
        for i in 0..1000 {
            headers.set(&format!("x-{i}"), 1.into());
        }
        assert_eq!(headers.rejected().count(), MAX_CUSTOM_HEADERS);
    }

    #[test]
    fn values_from_rust_types() {
        assert_eq!(HeaderValue::from("a"), HeaderValue::String("a".into()));
        assert_eq!(
            HeaderValue::from(String::from("a")),
            HeaderValue::String("a".into())
        );
        assert_eq!(
            HeaderValue::from(&String::from("a")),
            HeaderValue::String("a".into())
        );
        assert_eq!(
            HeaderValue::from(Arc::<str>::from("a")),
            HeaderValue::String("a".into())
        );
        assert_eq!(HeaderValue::from(-1_i64), HeaderValue::Int(-1));
        assert_eq!(HeaderValue::from(-1_i32), HeaderValue::Int(-1));
        assert_eq!(
            HeaderValue::from(u32::MAX),
            HeaderValue::Int(i64::from(u32::MAX))
        );
        assert_eq!(HeaderValue::from(false), HeaderValue::Bool(false));
        assert_eq!(HeaderValue::from(1.5), HeaderValue::Float(1.5));
    }
}
