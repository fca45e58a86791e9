//! A consumer's queue: durable quorum queue, bindings, dead letters, delayed retry.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::Serialize;

use super::{
    TopologyError, TopologyErrorKind,
    policy::{Policy, exact},
};

/// Where a consumer queue's dead-lettering settings live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeadLettering {
    /// As x-arguments of the queue (`x-dead-letter-exchange`, `x-delivery-limit`): no
    /// tool but AMQP is needed, but they are frozen — changing them later makes every
    /// declare fail with `406 PRECONDITION_FAILED` until the queue is deleted (losing
    /// its messages). Good for simple set-ups and throw-away queues.
    #[default]
    Arguments,
    /// As a policy ([`ConsumerQueue::policy`]), applied with `rabbitmqctl set_policy`
    /// or the management API: what RabbitMQ recommends, changeable at any time without
    /// re-declaring; the queue is declared without those arguments.
    Policy,
}

/// How reliably a consumer queue hands its dead letters to `<name>.dlx`
/// (`x-dead-letter-strategy`, RabbitMQ 3.10+ quorum queues).
///
/// RabbitMQ dead-letters **at most once** unless told otherwise: a message rejected
/// while the dead-letter exchange is missing, has no queue bound, or its queue does not
/// confirm, is dropped for good. With **at least once** the quorum queue keeps each dead
/// letter (outside its ready messages) until the dead-letter queue has confirmed it, and
/// retries on a timer — the broker's `dead_letter_worker_publisher_confirm_timeout`,
/// 180 s on RabbitMQ 3.10 (measured here: a message rejected while `<name>.dlx` and
/// `<name>.dlq` were deleted, or while no queue was bound to `<name>.dlx`, reached
/// `<name>.dlq` 180.0 s after the rejection, though the DLQ was declared again 2–5 s
/// after it; see `tests/dead_letters.rs`). It needs `x-overflow:
/// reject-publish` (with `drop-head` the broker falls back to at most once), so both are
/// set.
///
/// # A full consumer queue
///
/// [`Topology`](super::Topology) sets no length limit, so the queue is never full and
/// `reject-publish` changes nothing until someone adds one (`max-length` or
/// `max-length-bytes`, by policy). With a limit, a full queue **refuses** new messages
/// instead of dropping (or dead-lettering) its oldest: the broker nacks the publish,
/// which this crate's publisher reports as [`ErrorKind::Nacked`](crate::ErrorKind::Nacked),
/// retried within the publish deadline, then returned (see
/// [*Failure behaviour*](crate::guide::errors)). Dead letters waiting for their target count toward that limit (measured
/// here: with `max-length` 1 and one dead letter waiting, the first publish was acked and
/// the second nacked; with two waiting, the first was nacked; the queue's message count
/// showed 0 meanwhile): a limited queue whose dead-letter queue is gone fills up and then
/// refuses publishes, rather than losing its dead letters.
///
/// # Queues declared before
///
/// x-arguments are frozen: a queue that exists without these two arguments (declared by
/// an earlier version, or with [`AtMostOnce`](Self::AtMostOnce)) makes a declare with
/// [`AtLeastOnce`](Self::AtLeastOnce) fail with `406` naming `x-dead-letter-strategy`.
/// Keep it and its messages with [`AtLeastOnceByPolicy`](Self::AtLeastOnceByPolicy): it
/// is declared with the arguments it has, and [`ConsumerQueue::policy`] gives the
/// `rabbitmqctl set_policy` line that makes it at least once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DeadLetterStrategy {
    /// `x-dead-letter-strategy: at-least-once` and `x-overflow: reject-publish`, as
    /// arguments or in the policy, as [`DeadLettering`] says.
    #[default]
    AtLeastOnce,
    /// At least once, always by policy (`dead-letter-strategy`, `overflow`), the other
    /// settings where [`DeadLettering`] says: for a queue whose arguments were frozen
    /// without them (declared before). Until the policy is applied the queue dead-letters
    /// at most once.
    AtLeastOnceByPolicy,
    /// Neither setting: the broker's default, which drops a dead letter it cannot route
    /// at once (how consumer queues were declared before).
    AtMostOnce,
}

impl DeadLetterStrategy {
    /// Whether the queue dead-letters at least once (once its policy, if any, applies).
    pub fn is_at_least_once(self) -> bool {
        self != Self::AtMostOnce
    }
}

/// A consumer's queue, declared by [`Topology`](super::Topology): a durable quorum queue
/// bound to the events exchange by patterns (`workout.*`), with a dead-letter exchange
/// `<name>.dlx` (fanout) and its queue `<name>.dlq`, an `x-delivery-limit` (a message
/// redelivered more often is dead-lettered), dead-lettering at least once
/// ([`DeadLetterStrategy`]) and optionally a delayed-retry queue `<name>.retry`.
///
/// Dead letters: a message the consumer rejects (`basic.reject`/`nack` with
/// `requeue=false`) or that exceeds the delivery limit goes to `<name>.dlq`, with an
/// `x-death` header saying from which queue, why and how often; see
/// [`dead_letters`](super::dead_letters) to list and replay them.
///
/// Delayed retry ([`retry_delay`](Self::retry_delay)): `<name>.retry` is a queue whose
/// messages expire after the delay and are then dead-lettered back to `<name>` (through
/// the default exchange). A consumer that wants to try a message again later publishes
/// it to `<name>.retry` (default exchange, routing key the queue's name) and acks the
/// original; the `x-death` entry of `<name>.retry` counts the retries.
///
/// # Example
/// ```
/// use std::time::Duration;
/// use fitviz_events::topology::ConsumerQueue;
///
/// let queue = ConsumerQueue::new("notifications")
///     .bind("workout.*")
///     .bind("booking.*")
///     .delivery_limit(5)
///     .retry_delay(Duration::from_secs(30));
/// assert_eq!(queue.dlq_name(), "notifications.dlq");
/// assert_eq!(queue.retry_queue_name(), Some("notifications.retry".to_owned()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[must_use]
pub struct ConsumerQueue {
    name: String,
    bindings: Vec<String>,
    delivery_limit: Option<u32>,
    dead_lettering: DeadLettering,
    dead_letter_strategy: DeadLetterStrategy,
    #[serde(with = "opt_millis")]
    retry_delay: Option<Duration>,
    #[serde(with = "opt_millis")]
    expires: Option<Duration>,
}

impl ConsumerQueue {
    /// The queue `name`, with no bindings yet, a delivery limit of 5 and dead-lettering
    /// at least once, by arguments.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            bindings: Vec::new(),
            delivery_limit: Some(5),
            dead_lettering: DeadLettering::Arguments,
            dead_letter_strategy: DeadLetterStrategy::AtLeastOnce,
            retry_delay: None,
            expires: None,
        }
    }

    /// Binds the queue to the events exchange with `pattern` (a topic binding key:
    /// `workout.*`, `booking.confirmed`, `#`).
    pub fn bind(mut self, pattern: impl Into<String>) -> Self {
        self.bindings.push(pattern.into());
        self
    }

    /// How often a message may be delivered (requeued) before it is dead-lettered;
    /// `None`: the broker's default (none on RabbitMQ 3.x, 20 on 4.x).
    pub fn delivery_limit(mut self, limit: impl Into<Option<u32>>) -> Self {
        self.delivery_limit = limit.into();
        self
    }

    /// Where the dead-lettering settings live (arguments or a policy).
    pub fn dead_lettering(mut self, mode: DeadLettering) -> Self {
        self.dead_lettering = mode;
        self
    }

    /// How reliably dead letters reach `<name>.dlq` (default: at least once; see
    /// [`DeadLetterStrategy`], also for a queue declared before).
    pub fn dead_letter_strategy(mut self, strategy: DeadLetterStrategy) -> Self {
        self.dead_letter_strategy = strategy;
        self
    }

    /// Declares `<name>.retry`, whose messages go back to the queue after `delay`.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = Some(delay);
        self
    }

    /// Deletes the queues (and the dead-letter exchange, auto-deleted) after `idle` with
    /// no consumer (`x-expires`): for demo and temporary consumers, so that nothing
    /// unbounded is left bound to a shared exchange.
    pub fn expires(mut self, idle: Duration) -> Self {
        self.expires = Some(idle);
        self
    }

    /// Checks the queue's name (with the `.dlx`, `.dlq` and `.retry` names derived from
    /// it) and its binding patterns before anything is declared.
    pub(crate) fn check(&self) -> Result<(), TopologyError> {
        let suffix = match self.retry_delay {
            Some(_) => ".retry",
            None => ".dlq",
        };
        check_name("consumer queue", &self.name, suffix)?;
        for pattern in &self.bindings {
            check_name(
                &format!("binding pattern of queue `{}`", self.name),
                pattern,
                "",
            )?;
        }
        Ok(())
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The binding patterns.
    pub fn bindings(&self) -> &[String] {
        &self.bindings
    }

    /// `<name>.dlq`: the dead-letter queue.
    pub fn dlq_name(&self) -> String {
        format!("{}.dlq", self.name)
    }

    /// `<name>.dlx`: the dead-letter exchange (fanout) `<name>.dlq` is bound to.
    pub fn dlx_name(&self) -> String {
        format!("{}.dlx", self.name)
    }

    /// `<name>.retry`, when a retry delay is set.
    pub fn retry_queue_name(&self) -> Option<String> {
        self.retry_delay.map(|_| format!("{}.retry", self.name))
    }

    /// The policy holding the dead-lettering settings (`dead-letter-exchange`,
    /// `delivery-limit`, and for at least once `dead-letter-strategy` and `overflow`),
    /// with [`DeadLettering::Policy`] or [`DeadLetterStrategy::AtLeastOnceByPolicy`];
    /// `None` when arguments hold them all. (Where a queue also has some of them as
    /// arguments, the arguments win: the policy adds the others.)
    pub fn policy(&self) -> Option<Policy> {
        let needed = self.dead_lettering == DeadLettering::Policy
            || self.dead_letter_strategy == DeadLetterStrategy::AtLeastOnceByPolicy;
        needed.then(|| {
            let mut definition = serde_json::Map::new();
            definition.insert("dead-letter-exchange".into(), self.dlx_name().into());
            if let Some(limit) = self.delivery_limit {
                definition.insert("delivery-limit".into(), limit.into());
            }
            if self.dead_letter_strategy.is_at_least_once() {
                definition.insert("dead-letter-strategy".into(), "at-least-once".into());
                definition.insert("overflow".into(), "reject-publish".into());
            }
            Policy {
                name: format!("{}.dead-letter", self.name),
                pattern: exact(&self.name),
                apply_to: "queues",
                definition: definition.into(),
                priority: 10,
            }
        })
    }

    /// The main queue's arguments.
    pub(crate) fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("quorum"));
        if self.dead_lettering == DeadLettering::Arguments {
            args.insert("x-dead-letter-exchange".into(), string(&self.dlx_name()));
            if let Some(limit) = self.delivery_limit {
                args.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(limit.into()),
                );
            }
            if self.dead_letter_strategy == DeadLetterStrategy::AtLeastOnce {
                args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
                args.insert("x-overflow".into(), string("reject-publish"));
            }
        }
        self.add_expires(&mut args);
        args
    }

    /// The dead-letter queue's arguments: a quorum queue without a delivery limit, so
    /// that listing it (get, then requeue) never drops a message.
    pub(crate) fn dlq_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("quorum"));
        self.add_expires(&mut args);
        args
    }

    /// The retry queue's arguments: its messages expire after the delay and go back to
    /// the main queue through the default exchange.
    pub(crate) fn retry_arguments(&self) -> Option<FieldTable> {
        let delay = self.retry_delay?;
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(millis(delay)),
        );
        args.insert("x-dead-letter-exchange".into(), string(""));
        args.insert("x-dead-letter-routing-key".into(), string(&self.name));
        self.add_expires(&mut args);
        Some(args)
    }

    pub(crate) fn is_temporary(&self) -> bool {
        self.expires.is_some()
    }

    fn add_expires(&self, args: &mut FieldTable) {
        if let Some(idle) = self.expires {
            args.insert("x-expires".into(), AMQPValue::LongLongInt(millis(idle)));
        }
    }
}

pub(crate) fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// An AMQP name; the names given to the broker were checked first ([`check_name`]), so
/// this never fails on them, and a name from a message (a dead letter's `x-death`) that
/// is too long is an error, not a panic.
pub(crate) fn short(name: &str) -> Result<ShortString, TopologyError> {
    ShortString::try_new(name).map_err(|_| {
        TopologyError::new(
            TopologyErrorKind::Config,
            format!(
                "`{}…` ({} bytes) is longer than the 255 bytes an AMQP name may have",
                name.chars().take(32).collect::<String>(),
                name.len()
            ),
        )
    })
}

/// Checks a name the crate is given (`what`: ``queue `…` ``, "binding pattern") before
/// any I/O: 1 to `255 - suffix` bytes (`suffix`: the longest of the names the crate
/// derives from it, such as `.dlq`), without control characters or white space.
pub(crate) fn check_name(what: &str, name: &str, suffix: &str) -> Result<(), TopologyError> {
    let max = 255 - suffix.len();
    let shown = || match name.chars().count() > 64 {
        true => format!("{}…", name.chars().take(64).collect::<String>()),
        false => name.to_owned(),
    };
    let reason = if name.is_empty() {
        "is empty".to_owned()
    } else if name.len() > max {
        let derived = match suffix {
            "" => String::new(),
            _ => format!(" (`<name>{suffix}` must fit in 255)"),
        };
        format!("has {} bytes, more than {max}{derived}", name.len())
    } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        "contains a control or white-space character".to_owned()
    } else {
        return Ok(());
    };
    Err(TopologyError::new(
        TopologyErrorKind::Config,
        format!("{what} `{}` {reason}", shown()),
    ))
}

mod opt_millis {
    use std::time::Duration;

    use serde::Serializer;

    pub(super) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => serializer.serialize_some(&(d.as_millis() as u64)),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(args: &FieldTable, key: &str) -> Option<String> {
        match args.inner().get(key) {
            Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into()),
            _ => None,
        }
    }

    /// Consumer queues dead-letter at least once by default (issue 19): as arguments,
    /// or in the policy; a queue declared before keeps its arguments and gets the
    /// strategy from the policy.
    #[test]
    fn dead_letters_are_at_least_once_by_default_as_arguments_or_policy() {
        let queue = ConsumerQueue::new("orders");
        let args = queue.arguments();
        assert_eq!(
            text(&args, "x-dead-letter-strategy").as_deref(),
            Some("at-least-once")
        );
        assert_eq!(text(&args, "x-overflow").as_deref(), Some("reject-publish"));
        assert_eq!(queue.policy(), None);
        // The DLQ itself has neither (nor a delivery limit): nothing dead-letters from it.
        let dlq = queue.dlq_arguments();
        assert!(!dlq.inner().contains_key("x-dead-letter-strategy"));
        assert!(!dlq.inner().contains_key("x-delivery-limit"));

        let by_policy = queue.clone().dead_lettering(DeadLettering::Policy);
        assert!(!by_policy.arguments().inner().contains_key("x-overflow"));
        let definition = by_policy.policy().expect("a policy").definition;
        assert_eq!(definition["dead-letter-strategy"], "at-least-once");
        assert_eq!(definition["overflow"], "reject-publish");
        assert_eq!(definition["dead-letter-exchange"], "orders.dlx");

        // Declared before: the old arguments, the strategy by policy.
        let before = queue
            .clone()
            .dead_letter_strategy(DeadLetterStrategy::AtLeastOnceByPolicy);
        let args = before.arguments();
        assert_eq!(
            text(&args, "x-dead-letter-exchange").as_deref(),
            Some("orders.dlx")
        );
        assert!(!args.inner().contains_key("x-dead-letter-strategy"));
        assert!(!args.inner().contains_key("x-overflow"));
        let definition = before.policy().expect("a policy").definition;
        assert_eq!(definition["dead-letter-strategy"], "at-least-once");
        assert_eq!(definition["overflow"], "reject-publish");

        let at_most_once = queue.dead_letter_strategy(DeadLetterStrategy::AtMostOnce);
        assert!(!at_most_once.arguments().inner().contains_key("x-overflow"));
        assert_eq!(at_most_once.policy(), None);
        let policy = at_most_once
            .dead_lettering(DeadLettering::Policy)
            .policy()
            .unwrap();
        assert!(policy.definition.get("dead-letter-strategy").is_none());
    }
}
