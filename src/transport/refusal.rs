//! The broker's refusals: a channel closed with `403 ACCESS_REFUSED`, `404 NOT_FOUND` or
//! `406 PRECONDITION_FAILED` is an answer about what this publisher asked for (its
//! exchange, its permissions, a message's size), not a sick broker. They get kinds of
//! their own, which are not retried and not counted by the circuit breaker, so that a
//! misconfiguration is reported at once and by name instead of as an outage.
//!
//! The broker closes the channel on a refusal and ignores what was written on it after
//! the refused message, so every event awaiting its confirm on that channel ends with
//! the same refusal. For 403 and 404 that is exact: they concern the exchange, which all
//! of them use. A 406 about one message (over `max_message_size`) also ends the others
//! in flight on its channel, which the broker never looked at: they fail as refused and
//! may be published again. (An event written *before* the refused one, still awaiting
//! its confirm, may have been stored: only if the exchange's permissions or existence
//! changed between the two writes.)
//!
//! Only channel-level (soft) errors are refusals: a connection closed with a hard error
//! (a refused login, `CONNECTION_FORCED`) stays a connection failure.

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};

use crate::error::{ErrorKind, PublishError};

/// The refusal `error` carries, with the broker's reply code and text, if it is one.
pub(crate) fn refusal(error: &lapin::Error) -> Option<(ErrorKind, u16, String)> {
    let lapin::ErrorKind::ProtocolError(amqp) = error.kind() else {
        return None;
    };
    let kind = match amqp.kind() {
        AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => ErrorKind::AccessRefused,
        AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => ErrorKind::NotFound,
        AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => ErrorKind::PreconditionFailed,
        _ => return None,
    };
    Some((kind, amqp.get_id(), amqp.get_message().to_string()))
}

/// `error` as a refusal of `what` (e.g. "the publish to exchange `x`"), when it is one:
/// "the broker refused the publish to exchange `x` (403 ACCESS_REFUSED - …)". lapin's
/// error is not kept as the source: its text is the reply text again.
pub(crate) fn refused(what: impl FnOnce() -> String, error: &lapin::Error) -> Option<PublishError> {
    let (kind, code, text) = refusal(error)?;
    Some(PublishError::new(
        kind,
        format!("the broker refused {} ({code} {text})", what()),
    ))
}

#[cfg(test)]
mod tests {
    use lapin::protocol::{AMQPError, AMQPHardError};

    use super::*;

    fn closed_with(kind: AMQPErrorKind, text: &str) -> lapin::Error {
        lapin::ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into()
    }

    #[test]
    fn soft_403_404_406_are_refusals_with_their_reply() {
        for (soft, kind, code) in [
            (AMQPSoftError::ACCESSREFUSED, ErrorKind::AccessRefused, 403),
            (AMQPSoftError::NOTFOUND, ErrorKind::NotFound, 404),
            (
                AMQPSoftError::PRECONDITIONFAILED,
                ErrorKind::PreconditionFailed,
                406,
            ),
        ] {
            let error = closed_with(AMQPErrorKind::Soft(soft), "REPLY - text");
            assert_eq!(
                refusal(&error),
                Some((kind, code, "REPLY - text".to_owned()))
            );
            let err = refused(|| "the publish to exchange `x`".to_owned(), &error).unwrap();
            assert_eq!(err.kind(), kind);
            assert!(!err.is_retryable() && !err.is_broker_failure(), "{err:?}");
            assert!(!err.maybe_delivered(), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!("the broker refused the publish to exchange `x` ({code} REPLY - text)")
            );
        }
    }

    #[test]
    fn other_soft_errors_hard_errors_and_io_are_not_refusals() {
        let other_soft = closed_with(
            AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED),
            "RESOURCE_LOCKED",
        );
        let login = closed_with(
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED),
            "CONNECTION_FORCED",
        );
        let io = lapin::Error::from(lapin::ErrorKind::IOError(std::sync::Arc::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionReset),
        )));
        for error in [other_soft, login, io] {
            assert_eq!(refusal(&error), None, "{error}");
        }
    }
}
