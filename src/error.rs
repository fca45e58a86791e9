//! The one error type every layer of the publish stack returns.

use std::{borrow::Cow, fmt, time::Duration};

use uuid::Uuid;

/// A boxed error, as `tower` uses for sources.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong with a publish, for callers that want to match on it.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The event failed validation (type name, schema or field rules); it never reached the broker.
    Validation,
    /// The event has no organization id and its type requires one.
    MissingOrganization,
    /// An explicit organization id differs from the request's and overrides are not allowed.
    OrganizationMismatch,
    /// The broker answered with a negative acknowledgement (`basic.nack`).
    Nacked,
    /// The broker returned the event: no queue is bound for its routing key.
    Unroutable,
    /// No confirm arrived within the deadline.
    Timeout,
    /// The circuit breaker is open: the broker has been failing and the event was not sent.
    CircuitOpen,
    /// The connection or channel to the broker failed or could not be opened.
    Connection,
    /// No channel could be taken from the pool in time.
    PoolTimeout,
    /// The detached-publish queue is full.
    QueueFull,
    /// The publisher has been closed.
    Shutdown,
    /// The configuration is invalid.
    Config,
}

/// The error of every publish: the kind, the event it concerns, and the cause.
///
/// Messages are lowercase and never contain credentials. Use [`kind`](Self::kind) to
/// branch, [`is_retryable`](Self::is_retryable) to decide whether trying again may help.
pub struct PublishError {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    event_id: Option<Uuid>,
    validation: Option<crate::schema::ValidationError>,
    source: Option<BoxError>,
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

    /// The validation details, for [`ErrorKind::Validation`].
    pub fn validation_error(&self) -> Option<&crate::schema::ValidationError> {
        self.inner.validation.as_ref()
    }

    /// Whether trying the same event again may succeed: connection and channel
    /// failures, timeouts, nacks and an exhausted pool are; validation, missing
    /// organization, unroutable, an open circuit and shutdown are not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.inner.kind,
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Nacked | ErrorKind::PoolTimeout
        )
    }

    /// Whether this error says the broker is unhealthy (as opposed to the event being bad).
    /// The circuit breaker counts only these.
    pub fn is_broker_failure(&self) -> bool {
        matches!(
            self.inner.kind,
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Nacked | ErrorKind::PoolTimeout
        )
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)?;
        if let Some(validation) = &self.inner.validation {
            write!(f, ": {validation}")?;
        }
        if let Some(id) = &self.inner.event_id {
            write!(f, " (event {id})")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("PublishError");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(id) = &self.inner.event_id {
            d.field("event_id", id);
        }
        if let Some(v) = &self.inner.validation {
            d.field("validation", v);
        }
        if let Some(s) = &self.inner.source {
            d.field("source", &format_args!("{s}"));
        }
        d.finish()
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        if let Some(v) = &self.inner.validation {
            return Some(v);
        }
        self.inner
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
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
        assert!(PublishError::new(ErrorKind::Nacked, "x").is_retryable());
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
}
