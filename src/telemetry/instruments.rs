//! The per-event instruments: the duration histogram and the sent-messages counter
//! of each (event type, outcome), registered with the recorder once and kept, so
//! that a publish costs a lookup, not a registration (which builds and hashes the
//! whole key); and the in-flight confirms gauge.

use std::{
    collections::HashMap,
    sync::{
        OnceLock, PoisonError, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use metrics::{Counter, Gauge, Histogram, Label, SharedString};

use super::{CONFIRMS_IN_FLIGHT, PUBLISH_DURATION, SENT_MESSAGES, outcome_label};
use crate::error::ErrorKind;

/// Instruments keyed by (event type label, outcome label); both are `'static`.
type Cache<H> = RwLock<HashMap<(&'static str, &'static str), H>>;

/// The instruments of one publisher (one exchange). Shared by its telemetry layer
/// and its transport.
#[derive(Debug)]
pub(crate) struct Instruments {
    exchange: SharedString,
    durations: Cache<Histogram>,
    sent: Cache<Counter>,
    in_flight: OnceLock<Gauge>,
}

impl Instruments {
    pub(crate) fn new(exchange: &str) -> Self {
        Self {
            exchange: SharedString::from(exchange.to_owned()),
            durations: RwLock::default(),
            sent: RwLock::default(),
            in_flight: OnceLock::new(),
        }
    }

    /// The exchange, as the `messaging.destination.name` label.
    pub(crate) fn exchange(&self) -> &str {
        &self.exchange
    }

    fn labels(&self, event_type: &'static str, outcome: &'static str) -> Vec<Label> {
        let mut labels = vec![
            Label::from_static_parts("messaging.system", "rabbitmq"),
            Label::from_static_parts("messaging.operation.name", "publish"),
            Label::new("messaging.destination.name", self.exchange.clone()),
            Label::from_static_parts("event_type", event_type),
            Label::from_static_parts("outcome", outcome),
        ];
        if outcome != "ok" {
            labels.push(Label::from_static_parts("error.type", outcome));
        }
        labels
    }

    /// Calls `f` with the instrument of (`event_type`, `outcome`), registering it first
    /// if this is its first use.
    fn with<H>(
        &self,
        cache: &Cache<H>,
        event_type: &'static str,
        outcome: &'static str,
        register: impl FnOnce(Vec<Label>) -> H,
        f: impl FnOnce(&H),
    ) {
        let key = (event_type, outcome);
        if let Some(handle) = cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return f(handle);
        }
        let handle = register(self.labels(event_type, outcome));
        f(&handle);
        cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert(handle);
    }

    /// Records a finished publish (all its attempts).
    pub(crate) fn publish_ended(
        &self,
        event_type: &'static str,
        outcome: Option<ErrorKind>,
        elapsed: Duration,
    ) {
        self.with(
            &self.durations,
            event_type,
            outcome_label(outcome),
            |labels| metrics::histogram!(PUBLISH_DURATION, labels),
            |h| h.record(elapsed.as_secs_f64()),
        );
    }

    /// Counts a message written to the broker, with its attempt's outcome.
    fn sent(&self, event_type: &'static str, outcome: &'static str) {
        self.with(
            &self.sent,
            event_type,
            outcome,
            |labels| metrics::counter!(SENT_MESSAGES, labels),
            |c| c.increment(1),
        );
    }

    fn in_flight(&self) -> &Gauge {
        self.in_flight.get_or_init(|| {
            metrics::gauge!(CONFIRMS_IN_FLIGHT, "messaging.destination.name" => self.exchange.clone())
        })
    }

    /// A guard for one attempt of an event of `event_type`: see [`SentGuard`].
    pub(crate) fn attempt(&self, event_type: &'static str) -> SentGuard<'_> {
        SentGuard {
            instruments: self,
            event_type,
            written: AtomicBool::new(false),
            finished: false,
        }
    }
}

/// Follows one attempt: once the message is [written](Self::written), the attempt
/// counts as a sent message and as a confirm in flight until it
/// [finishes](Self::finish) — or is dropped unfinished (its deadline passed), which
/// counts it with the outcome `timeout`. An attempt never written is not counted.
#[derive(Debug)]
pub(crate) struct SentGuard<'a> {
    instruments: &'a Instruments,
    event_type: &'static str,
    written: AtomicBool,
    finished: bool,
}

impl SentGuard<'_> {
    /// The message was handed to the channel to be written.
    pub(crate) fn written(&self) {
        if !self.written.swap(true, Ordering::Relaxed) {
            self.instruments.in_flight().increment(1.0);
        }
    }

    /// The broker answered (or the channel failed): counts the message, when it was
    /// written, with `outcome`.
    pub(crate) fn finish(mut self, outcome: Option<ErrorKind>) {
        self.finished = true;
        self.end(outcome_label(outcome));
    }

    /// The channel could not write the message after all (it was closed): not a sent
    /// message.
    pub(crate) fn not_sent(mut self) {
        self.finished = true;
        if self.written.swap(false, Ordering::Relaxed) {
            self.instruments.in_flight().decrement(1.0);
        }
    }

    fn end(&self, outcome: &'static str) {
        if self.written.load(Ordering::Relaxed) {
            self.instruments.in_flight().decrement(1.0);
            self.instruments.sent(self.event_type, outcome);
        }
    }
}

impl Drop for SentGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.end(ErrorKind::Timeout.as_str());
        }
    }
}
