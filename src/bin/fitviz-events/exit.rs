//! Failures and their exit codes (see the crate docs of the binary).

use std::process::ExitCode;

use fitviz_events::{
    ErrorKind, PublishError,
    config::ConfigError,
    topology::{TopologyError, TopologyErrorKind},
};

/// What went wrong, with the exit code that says so.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    /// A word for scripts (`"validation"`, `"config"`, …).
    kind: &'static str,
    message: String,
    /// What was done before the failure (a replay's report), printed with it.
    report: Option<serde_json::Value>,
}

/// Another failure.
pub(crate) const OTHER: u8 = 1;
/// Usage: unknown command or flag, missing or malformed argument (clap's own code, kept
/// when `--json` reports it), and a command refusing its argument (`dlq list` of a
/// queue that is not a dead-letter queue).
pub(crate) const USAGE: u8 = 2;
/// An invalid `FITVIZ_EVENTS_*` variable.
pub(crate) const CONFIG: u8 = 3;
/// An invalid event: nothing was sent.
pub(crate) const INVALID: u8 = 4;
/// Refused by the broker.
pub(crate) const REFUSED: u8 = 5;
/// The broker is unavailable.
pub(crate) const UNAVAILABLE: u8 = 6;
/// The outbox's database failed, or its tables are missing or of another version.
#[cfg(feature = "outbox-postgres")]
pub(crate) const DATABASE: u8 = 7;

impl Failure {
    pub(crate) fn new(code: u8, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            kind,
            message: message.into(),
            report: None,
        }
    }

    /// Adds what was done before the failure: in the JSON object as `report`.
    pub(crate) fn with_report(mut self, report: serde_json::Value) -> Self {
        self.report = Some(report);
        self
    }

    /// Prints the failure (one line) and returns its exit code.
    pub(crate) fn report(self, json: bool) -> ExitCode {
        if json {
            let mut object = serde_json::json!({ "error": self.kind, "message": self.message });
            if let Some(report) = self.report {
                object["report"] = report;
            }
            println!("{object}");
        } else {
            eprintln!("fitviz-events: {}: {}", self.kind, self.message);
        }
        ExitCode::from(self.code)
    }
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Self {
        Self::new(CONFIG, "config", error.to_string())
    }
}

impl From<TopologyError> for Failure {
    fn from(error: TopologyError) -> Self {
        let (code, kind) = match error.kind() {
            TopologyErrorKind::Config => (CONFIG, "config"),
            TopologyErrorKind::Connection => (UNAVAILABLE, "connection"),
            TopologyErrorKind::Conflict => (REFUSED, "conflict"),
            TopologyErrorKind::NotFound => (REFUSED, "not_found"),
            TopologyErrorKind::AccessRefused => (REFUSED, "access_refused"),
            TopologyErrorKind::Refused => (REFUSED, "refused"),
            TopologyErrorKind::CountsAsDelivery => (USAGE, "counts_as_delivery"),
            _ => (OTHER, "topology"),
        };
        Self::new(code, kind, error.to_string().replace('\n', " "))
    }
}

impl From<PublishError> for Failure {
    fn from(error: PublishError) -> Self {
        let kind = error.kind();
        let code = match kind {
            ErrorKind::Config => CONFIG,
            ErrorKind::Validation
            | ErrorKind::MissingOrganization
            | ErrorKind::OrganizationMismatch
            | ErrorKind::TooLarge => INVALID,
            ErrorKind::Unroutable
            | ErrorKind::Nacked
            | ErrorKind::AccessRefused
            | ErrorKind::NotFound
            | ErrorKind::PreconditionFailed => REFUSED,
            ErrorKind::Timeout
            | ErrorKind::CircuitOpen
            | ErrorKind::Connection
            | ErrorKind::PoolTimeout
            | ErrorKind::Blocked
            | ErrorKind::QueueFull
            | ErrorKind::Shutdown => UNAVAILABLE,
            _ => OTHER,
        };
        // One line: the message already names the cause.
        let message = error.to_string().replace('\n', " ");
        Self::new(code, kind.as_str(), message)
    }
}
