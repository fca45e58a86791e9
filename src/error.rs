//! The one error type every layer of the publish stack returns.

use std::{borrow::Cow, fmt, time::Duration};

use uuid::Uuid;

/// A boxed error, as `tower` uses for sources.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong with a publish, for callers that want to match on it.
///
/// [`PublishError::is_retryable`] says whether the stack tries the same event again,
/// and [`PublishError::delivery`] what the broker may hold; the
/// [errors guide](crate::guide::errors) says what happens under each fault.
///
/// # The kinds
///
/// The HTTP status the axum integration answers with, whether the stack retries it, and
/// whether the broker may have stored the event (a test keeps this table and the code in
/// step):
///
#[doc = include_str!("../docs/reference/error-kinds.md")]
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The event failed validation (type name, schema or field rules); it never reached the broker.
    Validation,
    /// The event has no organization id and its type requires one.
    MissingOrganization,
    /// An explicit organization id differs from the request's and overrides are not allowed.
    OrganizationMismatch,
    /// The broker answered with a negative acknowledgement (`basic.nack`): the queue is
    /// full (`x-overflow: reject-publish`), or a quorum queue lost its leader (its node
    /// stopped or died: RabbitMQ 3.10 then nacks every publish on the channels that
    /// used it). The event was not stored. Not counted by the circuit breaker: it is an
    /// answer about this event, not the broker's health. Retried within the publish
    /// deadline: in a cluster, a quorum queue answers again once its new leader is
    /// elected (the transport replaces a channel open for a second or more that nacks,
    /// since RabbitMQ keeps nacking on the channels that used the old leader); a full
    /// queue answers `Nacked` again, and the last one is returned.
    Nacked,
    /// The broker returned the event: no queue is bound for its routing key.
    Unroutable,
    /// The broker refused the publish with `403 ACCESS_REFUSED`: the user may not write
    /// to the exchange, or the exchange is `internal`. The broker closes the channel
    /// and stores nothing; a configuration problem, so not retried and not counted
    /// by the circuit breaker.
    AccessRefused,
    /// The broker answered `404 NOT_FOUND`: the exchange does not exist (deleted, or
    /// never declared with `declare_exchange = false`). Nothing stored, not retried,
    /// not counted by the circuit breaker.
    NotFound,
    /// The broker answered `406 PRECONDITION_FAILED` to the publish or to the
    /// exchange's declaration (an exchange of that name exists with another type or
    /// other arguments; a message over the broker's `max_message_size`). Nothing
    /// stored, not retried, not counted by the circuit breaker.
    PreconditionFailed,
    /// No confirm arrived within the deadline.
    Timeout,
    /// The circuit breaker is open: the broker has been failing and the event was not sent.
    CircuitOpen,
    /// The connection or channel to the broker failed or could not be opened.
    Connection,
    /// No channel could be taken from the pool in time.
    PoolTimeout,
    /// The broker has blocked the connection (`connection.blocked`: its memory or disk
    /// alarm) and the event was not sent. Retried within the publish deadline and
    /// counted by the circuit breaker; publishing resumes when the broker unblocks the
    /// connection, without a reconnect.
    Blocked,
    /// The detached-publish queue is full.
    QueueFull,
    /// The publisher has been closed.
    Shutdown,
    /// The configuration is invalid.
    Config,
    /// The encoded event is larger than allowed: its body exceeds
    /// [`max_body_bytes`](crate::PublisherConfig::max_body_bytes), or its properties and
    /// headers do not fit the connection's negotiated AMQP frame size. Refused before
    /// any I/O; not retryable, not a broker failure.
    TooLarge,
}

impl ErrorKind {
    /// Every kind, in the order of the table above.
    pub const ALL: [ErrorKind; 17] = [
        ErrorKind::Validation,
        ErrorKind::MissingOrganization,
        ErrorKind::OrganizationMismatch,
        ErrorKind::TooLarge,
        ErrorKind::Config,
        ErrorKind::Nacked,
        ErrorKind::Unroutable,
        ErrorKind::AccessRefused,
        ErrorKind::NotFound,
        ErrorKind::PreconditionFailed,
        ErrorKind::Timeout,
        ErrorKind::Connection,
        ErrorKind::PoolTimeout,
        ErrorKind::Blocked,
        ErrorKind::CircuitOpen,
        ErrorKind::QueueFull,
        ErrorKind::Shutdown,
    ];

    /// The kind's name in snake case (`"validation"`, `"circuit_open"`, `"too_large"`, …):
    /// the `outcome` and `error.type` label of the [metrics](crate::telemetry) and the
    /// `error.type` attribute of the producer span.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Validation => "validation",
            ErrorKind::MissingOrganization => "missing_organization",
            ErrorKind::OrganizationMismatch => "organization_mismatch",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Config => "config",
            ErrorKind::Nacked => "nacked",
            ErrorKind::Unroutable => "unroutable",
            ErrorKind::AccessRefused => "access_refused",
            ErrorKind::NotFound => "not_found",
            ErrorKind::PreconditionFailed => "precondition_failed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Connection => "connection",
            ErrorKind::PoolTimeout => "pool_timeout",
            ErrorKind::Blocked => "blocked",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::Shutdown => "shutdown",
        }
    }

    /// Whether an error of this kind may succeed if the same event is tried again (see
    /// [`PublishError::is_retryable`]).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Nacked
                | ErrorKind::Connection
                | ErrorKind::Timeout
                | ErrorKind::PoolTimeout
                | ErrorKind::Blocked
        )
    }

    /// What an error of this kind says about the event at the broker when no earlier
    /// attempt may have reached it; [`PublishError::delivery`] also accounts for that.
    pub fn delivery(self) -> Delivery {
        match self {
            ErrorKind::Nacked
            | ErrorKind::Unroutable
            | ErrorKind::AccessRefused
            | ErrorKind::NotFound
            | ErrorKind::PreconditionFailed => Delivery::Refused,
            ErrorKind::Timeout => Delivery::Unknown,
            _ => Delivery::NotSent,
        }
    }
}

/// What a failed publish says about the event at the broker.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// The event was not sent: nothing reached the broker (invalid input, an open
    /// circuit, a closed publisher, a connection that failed before the event was
    /// written). Publishing it again cannot create a duplicate.
    NotSent,
    /// The broker answered and did not store it (a nack, returned as unroutable, or
    /// refused with 403, 404 or 406).
    Refused,
    /// The event may have been stored: an attempt was written and its confirm was lost
    /// or timed out. Publish it again only with the same `event_id`, so consumers can
    /// de-duplicate.
    Unknown,
}

impl Delivery {
    /// `"not sent"`, `"refused"` or `"unknown"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::NotSent => "not sent",
            Delivery::Refused => "refused",
            Delivery::Unknown => "unknown",
        }
    }
}

/// The error of every publish: the kind, the event it concerns, and the cause.
///
/// Use [`kind`](Self::kind) to branch, [`is_retryable`](Self::is_retryable) to decide
/// whether trying again may help.
///
/// # Display and `source()`
///
/// One rule, so that however the error is printed each cause appears exactly once:
///
/// - **`Display` tells the cause.** It is the message (lowercase, no trailing period), then
///   ` (event <id>)` when the event is known, then `: ` and the cause's own `Display` — the
///   validation details, or the error that made the publish fail:
///   `could not connect to the broker at amqp://guest:***@127.0.0.1:5672/%2f: protocol
///   error: AMQP soft error: ACCESS-REFUSED: ACCESS_REFUSED - Login was refused …`.
///   Logging `%error` alone is therefore enough.
/// - **`source()` continues where `Display` stopped.** It does not return the cause just
///   printed, but the first error further down the cause's chain whose text `Display` has
///   not already shown. Some causes repeat their own source in their message (lapin's
///   `IO error: connection refused` over the `io::Error` `connection refused`); such links
///   are skipped. Printing the `Display` of every error in the chain — anyhow's `{:#}`, a
///   `Caused by:` list — thus repeats nothing.
///
/// Credentials never appear: a password in a URL anywhere in the message or the cause's
/// text is shown as `***`, in `Display` and in `Debug`.
pub struct PublishError {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    event_id: Option<Uuid>,
    validation: Option<crate::schema::ValidationError>,
    source: Option<BoxError>,
    /// The connection this error happened on, for the circuit breaker to count one
    /// lost connection once, however many publishes were in flight on it.
    connection_generation: Option<u64>,
    /// An attempt may have reached the broker: the outcome is unknown.
    maybe_delivered: bool,
}

impl PublishError {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                message: message.into(),
                event_id: None,
                validation: None,
                source: None,
                connection_generation: None,
                maybe_delivered: false,
            }),
        }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    pub(crate) fn for_event(mut self, event_id: Uuid) -> Self {
        self.inner.event_id = Some(event_id);
        self
    }

    /// Tags the error with the connection it happened on (see
    /// [`connection_generation`](Self::connection_generation)).
    pub(crate) fn on_connection(mut self, generation: u64) -> Self {
        self.inner.connection_generation = Some(generation);
        self
    }

    /// Marks the outcome as unknown: the event may have reached the broker (see
    /// [`maybe_delivered`](Self::maybe_delivered)).
    pub(crate) fn mark_maybe_delivered(mut self) -> Self {
        self.inner.maybe_delivered = true;
        self
    }

    /// The final error of a publish one of whose attempts may have reached the broker,
    /// whatever error ended it: marked [`maybe_delivered`](Self::maybe_delivered). An
    /// open circuit no longer claims that the event was not sent, only the last attempt.
    pub(crate) fn set_outcome_unknown(&mut self) {
        if self.inner.kind == ErrorKind::CircuitOpen {
            self.inner.message = Cow::Borrowed(
                "circuit breaker is open: the broker has been failing; the last attempt was not sent",
            );
        }
        self.inner.maybe_delivered = true;
    }

    pub(crate) fn validation(error: crate::schema::ValidationError) -> Self {
        let mut err = Self::new(ErrorKind::Validation, "invalid event");
        err.inner.validation = Some(error);
        err
    }

    pub(crate) fn connection(
        context: impl Into<Cow<'static, str>>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::new(ErrorKind::Connection, context).with_source(source)
    }

    pub(crate) fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// Connecting to the broker at `url` failed: "could not connect to the broker at
    /// `url`: `source`". The URL's password is masked here, so the raw URL may be passed.
    pub(crate) fn connect(url: &str, source: impl Into<BoxError>) -> Self {
        let message = format!(
            "could not connect to the broker at {}",
            redact_credentials(url)
        );
        Self::new(ErrorKind::Connection, message).with_source(source)
    }

    /// The encoded event is too large: `what`, its size when known, and the limit.
    pub(crate) fn too_large(what: &str, size: Option<usize>, limit: usize) -> Self {
        let size = size
            .map(|size| format!(" ({size} bytes)"))
            .unwrap_or_default();
        Self::new(
            ErrorKind::TooLarge,
            format!("{what} exceeds the limit of {limit} bytes{size}"),
        )
    }

    pub(crate) fn shutdown() -> Self {
        Self::new(ErrorKind::Shutdown, "the publisher is closed")
    }

    /// A deadline expired: `what` is the operation, e.g. `"publish attempt"`.
    pub(crate) fn timeout(what: &str, after: Duration) -> Self {
        Self::new(
            ErrorKind::Timeout,
            format!("{what} timed out after {} ms", after.as_millis()),
        )
    }

    /// The circuit breaker refused the call; no allocation beyond the error itself.
    pub(crate) fn circuit_open() -> Self {
        Self::new(
            ErrorKind::CircuitOpen,
            "circuit breaker is open: the broker has been failing; event not sent",
        )
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The id of the event this error concerns, when it is known.
    pub fn event_id(&self) -> Option<Uuid> {
        self.inner.event_id
    }

    /// Whether the outcome is **unknown**: an attempt was written to the broker and its
    /// confirm was lost (the connection closed, or the attempt timed out), so the event
    /// may be stored even though the publish failed. Publish it again only with the
    /// same event (the same `event_id`), so that consumers can de-duplicate; never as
    /// a new event. `Display` then ends with `[outcome unknown: …]`, and the HTTP
    /// mapping adds `"outcome": "unknown"` and the `event_id`.
    ///
    /// The retry layer sets it on the final error, whatever its kind (`CircuitOpen`,
    /// `Timeout`, `Connection`, …), once any attempt may have reached the broker; the
    /// overall deadline sets it too (an attempt may have been in flight).
    pub fn maybe_delivered(&self) -> bool {
        self.inner.maybe_delivered
    }

    /// The connection (a number unique within the process) a
    /// [`Connection`](ErrorKind::Connection) error happened on, when it happened on an
    /// open one; `None` for a failed connection attempt. The circuit breaker counts
    /// one lost connection as one failure, however many publishes it failed.
    pub fn connection_generation(&self) -> Option<u64> {
        self.inner.connection_generation
    }

    /// The validation details, for [`ErrorKind::Validation`].
    pub fn validation_error(&self) -> Option<&crate::schema::ValidationError> {
        self.inner.validation.as_ref()
    }

    /// Whether trying the same event again after a backoff may succeed: connection
    /// and channel failures, timeouts, an exhausted pool, a blocked connection and a
    /// nack (see [`ErrorKind::Nacked`]) are; validation, missing organization, an event
    /// too large, unroutable, the broker's refusals (403, 404, 406), an open circuit
    /// and shutdown are not.
    pub fn is_retryable(&self) -> bool {
        self.inner.kind.is_retryable()
    }

    /// What this failure says about the event at the broker: [`Delivery::Unknown`]
    /// whenever an attempt may have reached it ([`maybe_delivered`](Self::maybe_delivered)),
    /// whatever kind ended the publish; otherwise [`ErrorKind::delivery`].
    pub fn delivery(&self) -> Delivery {
        if self.inner.maybe_delivered {
            Delivery::Unknown
        } else {
            self.inner.kind.delivery()
        }
    }

    /// Whether this error says the broker is unhealthy (as opposed to this event being
    /// refused): connection failures, timeouts, an exhausted pool and a connection the
    /// broker blocked. A nack is the
    /// broker's answer about one event (a full queue), not a sign of ill health. The
    /// circuit breaker counts only these, and a lost connection once (see
    /// [`connection_generation`](Self::connection_generation)).
    pub fn is_broker_failure(&self) -> bool {
        matches!(
            self.inner.kind,
            ErrorKind::Connection
                | ErrorKind::Timeout
                | ErrorKind::PoolTimeout
                | ErrorKind::Blocked
        )
    }
}

impl PublishError {
    /// The causes `Display` prints, outermost first.
    fn causes(&self) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
        let validation = self
            .inner
            .validation
            .as_ref()
            .map(|v| v as &(dyn std::error::Error + 'static));
        let source = self
            .inner
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static));
        validation.into_iter().chain(source)
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_credentials(&self.inner.message))?;
        if let Some(id) = &self.inner.event_id {
            write!(f, " (event {id})")?;
        }
        for cause in self.causes() {
            write!(f, ": {}", redact_credentials(&cause.to_string()))?;
        }
        if self.inner.maybe_delivered {
            f.write_str(OUTCOME_UNKNOWN)?;
        }
        Ok(())
    }
}

impl fmt::Debug for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("PublishError");
        d.field("kind", &self.inner.kind)
            .field("message", &redact_credentials(&self.inner.message));
        if let Some(id) = &self.inner.event_id {
            d.field("event_id", id);
        }
        if let Some(v) = &self.inner.validation {
            d.field("validation", v);
        }
        if let Some(s) = &self.inner.source {
            d.field("source", &redact_credentials(&s.to_string()));
        }
        if let Some(generation) = self.inner.connection_generation {
            d.field("connection_generation", &generation);
        }
        if self.inner.maybe_delivered {
            d.field("maybe_delivered", &true);
        }
        d.finish()
    }
}

/// What `Display` appends when [`PublishError::maybe_delivered`] holds.
const OUTCOME_UNKNOWN: &str = " [outcome unknown: the event may have reached the broker; \
publish it again only with the same event_id]";

/// `source()` skips what `Display` printed: see [`PublishError`]'s docs.
impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let printed = self.causes().last()?;
        let printed_text = printed.to_string();
        let mut next = printed.source();
        // A link whose text is part of the printed cause's text adds nothing: skip it.
        // Deeper links repeated by a skipped one are part of the printed text too.
        while let Some(link) = next {
            if !printed_text.contains(&link.to_string()) {
                break;
            }
            next = link.source();
        }
        next
    }
}

/// Masks the password of every URL in `text` (`scheme://user:password@host` becomes
/// `scheme://user:***@host`). Errs on the side of hiding too much: the userinfo runs to
/// the last `@` before the next whitespace, as in an unencoded password.
fn redact_credentials(text: &str) -> Cow<'_, str> {
    const REDACTED: &str = "***";
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme_end) = rest.find("://") {
        let authority_start = scheme_end + 3;
        out.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let token_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let token = &rest[..token_end];
        // Without a password, a later `://` in the token is looked at next.
        if let Some((colon, at)) = token
            .rfind('@')
            .and_then(|at| Some((token[..at].find(':')?, at)))
        {
            out.push_str(&token[..=colon]);
            out.push_str(REDACTED);
            out.push_str(&token[at..]);
            rest = &rest[token_end..];
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

impl From<crate::config::ConfigError> for PublishError {
    fn from(error: crate::config::ConfigError) -> Self {
        Self::new(ErrorKind::Config, format!("invalid configuration: {error}"))
    }
}

impl From<crate::schema::ValidationError> for PublishError {
    fn from(error: crate::schema::ValidationError) -> Self {
        Self::validation(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_kinds() {
        assert!(PublishError::new(ErrorKind::Timeout, "x").is_retryable());
        assert!(PublishError::new(ErrorKind::Connection, "x").is_retryable());
        assert!(PublishError::new(ErrorKind::Nacked, "x").is_retryable());
        assert!(!PublishError::new(ErrorKind::Nacked, "x").is_broker_failure());
        assert!(!PublishError::new(ErrorKind::Unroutable, "x").is_retryable());
        assert!(!PublishError::new(ErrorKind::Validation, "x").is_retryable());
        assert!(!PublishError::new(ErrorKind::CircuitOpen, "x").is_retryable());
    }

    #[test]
    fn display_names_the_event() {
        let id = Uuid::nil();
        let err =
            PublishError::new(ErrorKind::Nacked, "the broker refused the event").for_event(id);
        assert_eq!(
            err.to_string(),
            "the broker refused the event (event 00000000-0000-0000-0000-000000000000)"
        );
    }

    /// The `Display` of every error in the `source()` chain, outermost first.
    fn chain(err: &PublishError) -> Vec<String> {
        let mut texts = vec![err.to_string()];
        let mut next = std::error::Error::source(err);
        while let Some(e) = next {
            texts.push(e.to_string());
            next = e.source();
        }
        texts
    }

    fn occurrences(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }

    /// An error that adds context to its source, like a TLS or auth layer would.
    #[derive(Debug)]
    struct Wrapper(&'static str, std::io::Error);

    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn a_connection_error_names_its_cause_once_across_the_chain() {
        // lapin's own error repeats its io::Error in its message ("IO error: …") and
        // also returns it from `source()`.
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err = PublishError::connect(
            "amqp://guest:guest@127.0.0.1:5672/%2f",
            lapin::Error::from(io),
        )
        .for_event(Uuid::nil());
        assert_eq!(
            err.to_string(),
            "could not connect to the broker at amqp://guest:***@127.0.0.1:5672/%2f \
             (event 00000000-0000-0000-0000-000000000000): IO error: connection refused"
        );
        let texts = chain(&err);
        assert_eq!(texts.len(), 1, "nothing left untold: {texts:?}");
        let joined = texts.join(": "); // anyhow's `{:#}`
        assert_eq!(occurrences(&joined, "connection refused"), 1, "{joined}");

        // A cause whose source says something new: that source is the next link, and
        // every text still appears once.
        let nested = Wrapper(
            "the broker refused the login",
            std::io::Error::other("ACCESS_REFUSED - login was refused"),
        );
        let err = PublishError::connection("could not connect to the broker", nested);
        let texts = chain(&err);
        assert_eq!(
            texts,
            [
                "could not connect to the broker: the broker refused the login",
                "ACCESS_REFUSED - login was refused",
            ]
        );
        let joined = texts.join(": ");
        assert_eq!(occurrences(&joined, "refused the login"), 1, "{joined}");
        assert_eq!(occurrences(&joined, "ACCESS_REFUSED"), 1, "{joined}");
    }

    #[test]
    fn validation_details_appear_once_across_the_chain() {
        let validation =
            crate::schema::ValidationError::single("workout.created", "member_id", "is empty");
        let err = PublishError::validation(validation).for_event(Uuid::nil());
        let texts = chain(&err);
        assert_eq!(
            texts,
            [
                "invalid event (event 00000000-0000-0000-0000-000000000000): \
              `workout.created`: member_id: is empty"
            ]
        );
        assert!(err.validation_error().is_some());
    }

    #[test]
    fn no_password_appears_in_display_debug_or_the_chain() {
        const PASSWORD: &str = "s3cr3t-Pa55word";
        let url = format!("amqp://fitviz:{PASSWORD}@rabbit.internal:5672/fitviz");
        // Even a cause that quotes the URL does not leak it.
        let cause = Wrapper(
            "connecting failed",
            std::io::Error::other(format!("cannot reach amqp://fitviz:{PASSWORD}@rabbit")),
        );
        let err = PublishError::connect(&url, cause);
        let printed = format!("{err} | {err:?} | {err:#?}");
        assert!(!printed.contains(PASSWORD), "{printed}");
        assert!(
            err.to_string().starts_with(
                "could not connect to the broker at amqp://fitviz:***@rabbit.internal:5672/fitviz: "
            ),
            "{err}"
        );
        let quoted = PublishError::connection(
            "could not connect to the broker",
            format!("bad uri amqp://fitviz:{PASSWORD}@rabbit/%2f and amqps://u:{PASSWORD}@h"),
        );
        let printed = format!("{quoted} | {quoted:?}");
        assert!(!printed.contains(PASSWORD), "{printed}");
        assert!(
            printed.contains("amqp://fitviz:***@rabbit/%2f and amqps://u:***@h"),
            "{printed}"
        );
    }

    #[test]
    fn redaction_leaves_text_without_passwords_alone() {
        for text in [
            "plain text",
            "amqp://127.0.0.1:5672/%2f",
            "amqp://guest@rabbit/v",
            "mail me at a@b.c: amqp://rabbit:5672",
        ] {
            assert_eq!(redact_credentials(text), text);
        }
        assert_eq!(
            redact_credentials("a amqp://u:p@h b http://x:y@z"),
            "a amqp://u:***@h b http://x:***@z"
        );
    }

    proptest::proptest! {
        #[test]
        fn redaction_hides_any_url_password(
            pw in "[a-zA-Z0-9!$&'()*+,;=:@/]{6,16}",
            user in "[a-z]{0,8}",
            before in "[^@]{0,16}",
            after in "[ /:.a-z0-9]{0,16}",
        ) {
            let text = format!("{before} amqp://{user}:{pw}@rabbit{after}");
            proptest::prop_assume!(!before.contains(&pw) && !after.contains(&pw) && !user.contains(&pw));
            let redacted = redact_credentials(&text);
            proptest::prop_assert!(!redacted.contains(&pw), "{}", redacted);
        }
    }
}
