//! The per-event instruments: the duration histogram and the sent-messages counter
//! of each (event type, outcome), registered with the recorder on first use and kept
//! in a table indexed by the event type's label and the outcome — a publish costs two
//! array lookups, not a registration (which builds and hashes the whole key) — and
//! the in-flight confirms gauge.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use metrics::{Counter, Gauge, Histogram, Label, SharedString};

use super::{CONFIRMS_IN_FLIGHT, OTHER_EVENT_TYPE, PUBLISH_DURATION, SENT_MESSAGES};
pub(crate) use crate::event::context::MetricType;
use crate::{error::ErrorKind, schema::SchemaRegistry};

/// `ok` and the error kinds.
const OUTCOMES: usize = ErrorKind::ALL.len() + 1;

/// The index of an outcome in a [`Cell`], and its label.
fn outcome(kind: Option<ErrorKind>) -> (usize, &'static str) {
    match kind {
        None => (0, "ok"),
        Some(kind) => (
            1 + ErrorKind::ALL.iter().position(|k| *k == kind).unwrap_or(0),
            kind.as_str(),
        ),
    }
}

/// The bounded set of `event_type` labels: the registry's types (sorted), then
/// `other`.
#[derive(Clone, Debug)]
pub(crate) struct TypeLabels(Arc<[&'static str]>);

impl TypeLabels {
    pub(crate) fn new(registry: &SchemaRegistry) -> Self {
        let mut names = registry.static_event_types();
        names.push(OTHER_EVENT_TYPE);
        Self(names.into())
    }

    /// The label of `event_type` (a binary search: no hashing on the publish path).
    pub(crate) fn resolve(&self, event_type: &str) -> MetricType {
        let names = &self.0;
        let registered = &names[..names.len() - 1];
        let index = (registered.binary_search(&event_type)).unwrap_or(names.len() - 1);
        MetricType {
            name: names[index],
            index,
        }
    }
}

/// The instruments of one event type, by outcome.
#[derive(Debug, Default)]
struct Cell {
    durations: [OnceLock<Histogram>; OUTCOMES],
    sent: [OnceLock<Counter>; OUTCOMES],
}

#[derive(Debug)]
struct Table {
    labels: TypeLabels,
    cells: Box<[Cell]>,
}

/// The instruments of one publisher (one exchange). Shared by its telemetry layer
/// and its transport.
#[derive(Debug)]
pub(crate) struct Instruments {
    exchange: SharedString,
    table: OnceLock<Table>,
    in_flight: OnceLock<Gauge>,
}

impl Instruments {
    pub(crate) fn new(exchange: &str) -> Self {
        Self {
            exchange: SharedString::from(exchange.to_owned()),
            table: OnceLock::new(),
            in_flight: OnceLock::new(),
        }
    }

    /// Sizes the table for `labels` (the first call wins: a transport serves one
    /// publisher).
    pub(crate) fn use_labels(&self, labels: &TypeLabels) {
        self.table.get_or_init(|| Table {
            cells: labels.0.iter().map(|_| Cell::default()).collect(),
            labels: labels.clone(),
        });
    }

    /// The metric label of `event_type` in this table (`other` before a publisher sized
    /// it, or for an unregistered type).
    pub(crate) fn resolve(&self, event_type: &str) -> MetricType {
        (self.table.get()).map_or_else(MetricType::default, |table| {
            table.labels.resolve(event_type)
        })
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

    /// The cell of `event_type`, when it was resolved by this table's labels.
    fn cell(&self, event_type: MetricType) -> Option<&Cell> {
        let table = self.table.get()?;
        let name = table.labels.0.get(event_type.index)?;
        std::ptr::eq(*name, event_type.name).then(|| &table.cells[event_type.index])
    }

    /// Records a finished publish (all its attempts).
    pub(crate) fn publish_ended(
        &self,
        event_type: MetricType,
        kind: Option<ErrorKind>,
        elapsed: Duration,
    ) {
        let (index, label) = outcome(kind);
        let register =
            || metrics::histogram!(PUBLISH_DURATION, self.labels(event_type.name, label));
        let seconds = elapsed.as_secs_f64();
        match self.cell(event_type) {
            Some(cell) => cell.durations[index].get_or_init(register).record(seconds),
            None => register().record(seconds),
        }
    }

    /// Counts a message written to the broker, with its attempt's outcome.
    fn sent(&self, event_type: MetricType, kind: Option<ErrorKind>) {
        let (index, label) = outcome(kind);
        let register = || metrics::counter!(SENT_MESSAGES, self.labels(event_type.name, label));
        match self.cell(event_type) {
            Some(cell) => cell.sent[index].get_or_init(register).increment(1),
            None => register().increment(1),
        }
    }

    fn in_flight(&self) -> &Gauge {
        self.in_flight.get_or_init(|| {
            metrics::gauge!(CONFIRMS_IN_FLIGHT, "messaging.destination.name" => self.exchange.clone())
        })
    }

    /// A guard for one attempt of an event of `event_type`: see [`SentGuard`].
    pub(crate) fn attempt(&self, event_type: MetricType) -> SentGuard<'_> {
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
    event_type: MetricType,
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
        self.end(outcome);
    }

    /// The channel could not write the message after all (it was closed): not a sent
    /// message.
    pub(crate) fn not_sent(mut self) {
        self.finished = true;
        if self.written.swap(false, Ordering::Relaxed) {
            self.instruments.in_flight().decrement(1.0);
        }
    }

    fn end(&self, outcome: Option<ErrorKind>) {
        if self.written.load(Ordering::Relaxed) {
            self.instruments.in_flight().decrement(1.0);
            self.instruments.sent(self.event_type, outcome);
        }
    }
}

impl Drop for SentGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.end(Some(ErrorKind::Timeout));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_registered_types_and_other() {
        let labels = TypeLabels::new(&SchemaRegistry::builtin());
        let owned = String::from("workout.created");
        let resolved = labels.resolve(&owned);
        assert_eq!(resolved.name, "workout.created");
        assert_eq!(labels.resolve("nobody.knows").name, OTHER_EVENT_TYPE);
        assert_eq!(labels.resolve("other").name, OTHER_EVENT_TYPE);
        assert_eq!(MetricType::default().name, OTHER_EVENT_TYPE);
        assert_eq!(labels.0.len(), 12);
        // Every outcome has its own cell.
        let indexes: std::collections::HashSet<usize> = std::iter::once(None)
            .chain(ErrorKind::ALL.map(Some))
            .map(|k| outcome(k).0)
            .collect();
        assert_eq!(indexes.len(), OUTCOMES);
        assert!(indexes.iter().all(|i| *i < OUTCOMES));
    }

    #[test]
    fn a_label_from_another_table_falls_back_to_registering() {
        let instruments = Instruments::new("x");
        let labels = TypeLabels::new(&SchemaRegistry::builtin());
        instruments.use_labels(&labels);
        let mine = labels.resolve("payment.failed");
        assert!(instruments.cell(mine).is_some());
        let other_table = TypeLabels::new(&SchemaRegistry::empty()).resolve("payment.failed");
        assert_eq!(other_table.name, OTHER_EVENT_TYPE);
        assert!(instruments.cell(other_table).is_none());
        assert!(instruments.cell(MetricType::default()).is_none());
    }
}
