//! Declaring the broker topology events flow through: the events exchange, where
//! unroutable events are kept, and consumers' queues with their dead letters.
//!
//! [`Topology`] declares, idempotently (declaring twice changes nothing):
//!
//! - the **events exchange** (durable topic), with the very declaration the publisher
//!   uses (`transport/exchange.rs` owns its arguments, so the two never disagree);
//! - the **unrouted** exchange and queue, both `<exchange>.unrouted`: a fanout exchange
//!   and a durable queue bounded in length and age ([`UnroutedQueue`]), where events no
//!   queue is bound for are kept and counted instead of lost (see
//!   [`alternate_exchange_policy`] to make it the exchange's alternate exchange for
//!   every publisher);
//! - optionally the **archive** `<exchange>.archive` ([`ArchiveStream`]): a durable
//!   stream bound for every event (or the configured patterns), kept by age and size,
//!   replayable (see [*Replaying events*](crate::guide::replay));
//! - each **consumer queue** ([`ConsumerQueue`]): a durable quorum queue bound by
//!   patterns, its dead-letter exchange and `<queue>.dlq`, an `x-delivery-limit`,
//!   dead-lettering at least once ([`DeadLetterStrategy`]: a dead letter whose target is
//!   missing waits in the queue and is retried, instead of being dropped), and
//!   optionally a delayed-retry queue.
//!
//! # Arguments or policies
//!
//! x-arguments are frozen when a queue is declared: declaring it again with other
//! arguments fails with `406 PRECONDITION_FAILED` ([`TopologyErrorKind::Conflict`], the
//! message saying which argument differs), and the only way to change them is to delete
//! the queue, losing its messages. RabbitMQ therefore recommends policies for
//! dead-lettering and limits: they can be changed at any time and apply to existing
//! queues. But policies are set with `rabbitmqctl` or the management API, not over AMQP.
//! So both are supported: [`DeadLettering::Arguments`] (the default: one AMQP
//! connection is enough, good for simple set-ups and temporary queues) and
//! [`DeadLettering::Policy`], where the queue is declared without those arguments and
//! [`Topology::policies`] gives the `rabbitmqctl set_policy …` command lines to apply.
//! An argument wins over a policy of the same key, and only one policy applies to a
//! queue: fold other policy keys you need into the same definition. A queue declared
//! before dead-lettering became at least once (its arguments lack
//! `x-dead-letter-strategy` and `x-overflow`, and declaring it with them fails with 406)
//! takes them from a policy: [`DeadLetterStrategy::AtLeastOnceByPolicy`].
//!
//! # Example
//! ```no_run
//! use fitviz_events::{PublisherConfig, topology::{ConsumerQueue, Topology}};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = PublisherConfig::from_env()?;
//! let topology = Topology::from_config(&config)
//!     .consumer_queue(ConsumerQueue::new("notifications").bind("workout.*").bind("booking.*"));
//! let connection = fitviz_events::topology::connect(&config).await?;
//! let report = topology.declare(&connection).await?; // twice: same report, no error
//! println!("{}", serde_json::to_string(&report)?);
//! for policy in topology.policies() {
//!     println!("{}", policy.command_line("/"));
//! }
//! # Ok(()) }
//! ```
//!
//! Building a topology needs no broker:
//! ```
//! use fitviz_events::topology::{ConsumerQueue, DeadLettering, Topology};
//!
//! let topology = Topology::new("fitviz.events")
//!     .consumer_queue(ConsumerQueue::new("crm").bind("membership.*").dead_lettering(DeadLettering::Policy));
//! let policies = topology.policies();
//! assert_eq!(policies.len(), 2); // the queue's dead-lettering and the alternate exchange
//! assert_eq!(policies[0].name, "crm.dead-letter");
//! assert_eq!(policies[1].definition["alternate-exchange"], "fitviz.events.unrouted");
//! ```

mod archive;
pub mod dead_letters;
mod error;
mod policy;
mod queue;
mod replay_report;

pub use self::{
    archive::ArchiveStream,
    error::{TopologyError, TopologyErrorKind},
    policy::{Policy, alternate_exchange_policy},
    queue::{ConsumerQueue, DeadLetterStrategy, DeadLettering},
};
pub use crate::transport::{UnroutedQueue, archive_name, unrouted_name};

use std::time::Duration;

use lapin::{
    Channel, Connection, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde::Serialize;

pub(crate) use self::queue::check_name;
use self::queue::short;
use crate::{config::PublisherConfig, transport::exchange::Exchange};

/// How long closing the declaring channel may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The topology of one events exchange: see the [module docs](self).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[must_use]
pub struct Topology {
    exchange: String,
    unrouted: Option<UnroutedQueue>,
    archive: Option<ArchiveStream>,
    queues: Vec<ConsumerQueue>,
}

/// What [`Topology::declare`] declared (or found declared the same way), in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TopologyReport {
    /// The events exchange.
    pub exchange: String,
    /// `<exchange>.unrouted`, when declared.
    pub unrouted: Option<String>,
    /// `<exchange>.archive`, when declared.
    pub archive: Option<String>,
    /// Each declared exchange, queue and binding, in order.
    pub declared: Vec<Declared>,
    /// Policies to apply (`rabbitmqctl` command lines for the default virtual host).
    pub policies: Vec<String>,
}

/// One declared object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Declared {
    /// `exchange`, `queue` or `binding`.
    pub kind: &'static str,
    /// Its name (for a binding: `queue <- pattern`).
    pub name: String,
}

impl Topology {
    /// The topology of `exchange`, with the unrouted queue ([`UnroutedQueue::default`])
    /// and no consumer queue.
    pub fn new(exchange: impl Into<String>) -> Self {
        Self {
            exchange: exchange.into(),
            unrouted: Some(UnroutedQueue::default()),
            archive: None,
            queues: Vec::new(),
        }
    }

    /// The topology of the exchange `config` publishes to, with the archive stream
    /// ([`ArchiveStream::default`] retention) bound with `config`'s
    /// [`archive`](PublisherConfig::archive) patterns when they are on.
    pub fn from_config(config: &PublisherConfig) -> Self {
        let topology = Self::new(config.exchange.clone());
        match config.archive.is_on() {
            true => topology.archive(ArchiveStream::default().patterns(config.archive.clone())),
            false => topology,
        }
    }

    /// Declares the archive stream `<exchange>.archive` too (see [`ArchiveStream`]).
    pub fn archive(mut self, archive: ArchiveStream) -> Self {
        self.archive = Some(archive);
        self
    }

    /// Declares no archive stream (what a consumer's topology wants: the archive's
    /// retention is frozen when it is first declared, and declaring it again with
    /// [`from_config`](Self::from_config)'s defaults fails when it was declared with
    /// others).
    pub fn without_archive(mut self) -> Self {
        self.archive = None;
        self
    }

    /// The archive stream, when there is one.
    pub fn archive_stream(&self) -> Option<&ArchiveStream> {
        self.archive.as_ref()
    }

    /// Bounds the unrouted queue otherwise.
    pub fn unrouted(mut self, bounds: UnroutedQueue) -> Self {
        self.unrouted = Some(bounds);
        self
    }

    /// Declares no unrouted exchange and queue.
    pub fn without_unrouted(mut self) -> Self {
        self.unrouted = None;
        self
    }

    /// Adds a consumer's queue.
    pub fn consumer_queue(mut self, queue: ConsumerQueue) -> Self {
        self.queues.push(queue);
        self
    }

    /// Checks every name before anything is declared: the exchange (with
    /// `<exchange>.unrouted` when it is declared), each consumer queue (with the `.dlx`,
    /// `.dlq` and `.retry` names derived from it) and binding pattern — 1 to 255 bytes
    /// with the suffixes, no control or white-space character.
    ///
    /// # Errors
    /// [`TopologyErrorKind::Config`] naming the first name that does not fit.
    pub fn check(&self) -> Result<(), TopologyError> {
        let suffix = match self.unrouted {
            Some(_) => unrouted_name(""),
            None => String::new(),
        };
        check_name("exchange", &self.exchange, &suffix)?;
        if let Some(archive) = &self.archive {
            check_name("exchange", &self.exchange, &archive_name(""))?;
            archive.check()?;
        }
        self.queues.iter().try_for_each(ConsumerQueue::check)
    }

    /// The events exchange's name.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The policies equivalent to what arguments cannot change later: each consumer
    /// queue's dead-lettering in [`DeadLettering::Policy`] mode or with
    /// [`DeadLetterStrategy::AtLeastOnceByPolicy`], then the alternate
    /// exchange of the events exchange (when the unrouted queue is declared), which is
    /// only available as a policy here (see [`alternate_exchange_policy`]).
    pub fn policies(&self) -> Vec<Policy> {
        let mut policies: Vec<Policy> = self
            .queues
            .iter()
            .filter_map(ConsumerQueue::policy)
            .collect();
        if self.unrouted.is_some() {
            policies.push(alternate_exchange_policy(&self.exchange));
        }
        policies
    }

    /// Declares everything on a channel of its own on `connection` (a refused declare
    /// closes the channel it was made on, never the connection). Idempotent.
    ///
    /// # Errors
    /// [`TopologyErrorKind::Conflict`] when something exists with other arguments (406),
    /// naming it and the argument; [`TopologyErrorKind::Connection`] when the broker
    /// cannot be reached; [`TopologyErrorKind::AccessRefused`] (403).
    pub async fn declare(&self, connection: &Connection) -> Result<TopologyReport, TopologyError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| TopologyError::broker("opening a channel", e))?;
        let result = self.declare_on(&channel).await;
        if channel.status().connected() {
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                channel.close(200, "topology declared".into()),
            )
            .await;
        }
        result
    }

    /// [`declare`](Self::declare) on `channel`; a refused declare closes it.
    ///
    /// # Errors
    /// As [`declare`](Self::declare).
    pub async fn declare_on(&self, channel: &Channel) -> Result<TopologyReport, TopologyError> {
        self.check()?;
        let mut declared = Vec::new();
        let exchange = Exchange::new(&self.exchange, true)?;
        exchange
            .declare_on(channel)
            .await
            .map_err(|e| TopologyError::broker(&format!("exchange `{}`", self.exchange), e))?;
        declared.push(Declared {
            kind: "exchange",
            name: self.exchange.clone(),
        });
        let unrouted = match &self.unrouted {
            Some(bounds) => {
                (bounds.declare(channel, &self.exchange, false).await)
                    .map_err(|(what, e)| TopologyError::broker(&what, e))?;
                let name = unrouted_name(&self.exchange);
                declared.push(Declared {
                    kind: "exchange",
                    name: name.clone(),
                });
                declared.push(Declared {
                    kind: "queue",
                    name: name.clone(),
                });
                Some(name)
            }
            None => None,
        };
        let archive = match &self.archive {
            Some(stream) => {
                let name = archive_name(&self.exchange);
                declare_one(channel, &name, stream.arguments()).await?;
                declared.push(Declared {
                    kind: "queue",
                    name: name.clone(),
                });
                for pattern in stream.bindings().patterns() {
                    bind(channel, &name, &self.exchange, pattern).await?;
                    declared.push(Declared {
                        kind: "binding",
                        name: format!("{name} <- {pattern}"),
                    });
                }
                Some(name)
            }
            None => None,
        };
        for queue in &self.queues {
            declare_queue(channel, &self.exchange, queue, &mut declared).await?;
        }
        Ok(TopologyReport {
            exchange: self.exchange.clone(),
            unrouted,
            archive,
            declared,
            policies: self
                .policies()
                .iter()
                .map(|p| p.command_line("/"))
                .collect(),
        })
    }
}

async fn declare_queue(
    channel: &Channel,
    exchange: &str,
    queue: &ConsumerQueue,
    declared: &mut Vec<Declared>,
) -> Result<(), TopologyError> {
    let dlx = queue.dlx_name();
    let dlq = queue.dlq_name();
    channel
        .exchange_declare(
            short(&dlx)?,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                auto_delete: queue.is_temporary(),
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| TopologyError::broker(&format!("exchange `{dlx}`"), e))?;
    declared.push(Declared {
        kind: "exchange",
        name: dlx.clone(),
    });
    declare_one(channel, &dlq, queue.dlq_arguments()).await?;
    declared.push(Declared {
        kind: "queue",
        name: dlq.clone(),
    });
    bind(channel, &dlq, &dlx, "").await?;
    if let (Some(retry), Some(args)) = (queue.retry_queue_name(), queue.retry_arguments()) {
        declare_one(channel, &retry, args).await?;
        declared.push(Declared {
            kind: "queue",
            name: retry,
        });
    }
    declare_one(channel, queue.name(), queue.arguments()).await?;
    declared.push(Declared {
        kind: "queue",
        name: queue.name().to_owned(),
    });
    for pattern in queue.bindings() {
        bind(channel, queue.name(), exchange, pattern).await?;
        declared.push(Declared {
            kind: "binding",
            name: format!("{} <- {pattern}", queue.name()),
        });
    }
    Ok(())
}

async fn declare_one(channel: &Channel, name: &str, args: FieldTable) -> Result<(), TopologyError> {
    channel
        .queue_declare(
            short(name)?,
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .map(drop)
        .map_err(|e| TopologyError::broker(&format!("queue `{name}`"), e))
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    pattern: &str,
) -> Result<(), TopologyError> {
    channel
        .queue_bind(
            short(queue)?,
            short(exchange)?,
            short(pattern)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| {
            TopologyError::broker(
                &format!("binding queue `{queue}` to `{exchange}` with `{pattern}`"),
                e,
            )
        })
}

/// Opens a connection to `config`'s broker (the first node that answers, TLS as
/// configured) for declaring the topology or working on dead letters; the broker shows
/// it as `<source>.admin`.
///
/// # Errors
/// [`TopologyErrorKind::Config`] for an invalid config, [`TopologyErrorKind::Connection`]
/// when no node answers.
pub async fn connect(config: &PublisherConfig) -> Result<Connection, TopologyError> {
    let name = format!(
        "{}.admin",
        config.connection_name.as_deref().unwrap_or(&config.source)
    );
    Ok(crate::transport::open_connection(config, &name).await?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn refused(topology: &Topology) -> String {
        let err = topology.check().unwrap_err();
        assert_eq!(err.kind(), TopologyErrorKind::Config, "{err}");
        err.to_string()
    }

    /// Every name is checked with the suffixes the crate adds, before any I/O
    /// (issue 19: these panicked in lapin's `ShortString::from`).
    #[test]
    fn names_are_checked_with_their_suffixes() {
        let e = |n: usize| "e".repeat(n);
        let q = |n: usize| "q".repeat(n);
        assert!(Topology::new(e(246)).check().is_ok());
        assert!(refused(&Topology::new(e(247))).contains("`<name>.unrouted` must fit in 255"));
        assert!(Topology::new(e(255)).without_unrouted().check().is_ok());
        assert!(refused(&Topology::new(e(256)).without_unrouted()).contains("more than 255"));
        assert!(refused(&Topology::new("")).contains("exchange `` is empty"));

        let with = |queue: ConsumerQueue| Topology::new("fitviz.events").consumer_queue(queue);
        assert!(with(ConsumerQueue::new(q(251))).check().is_ok());
        assert!(refused(&with(ConsumerQueue::new(q(252)))).contains("`<name>.dlq` must fit"));
        let retry = |n| ConsumerQueue::new(q(n)).retry_delay(Duration::from_secs(1));
        assert!(with(retry(249)).check().is_ok());
        assert!(refused(&with(retry(250))).contains("`<name>.retry` must fit"));
        assert!(refused(&with(ConsumerQueue::new(""))).contains("consumer queue `` is empty"));
        for bad in ["a b", "tab\there", "nl\n", "nbsp\u{a0}"] {
            let text = refused(&with(ConsumerQueue::new(bad)));
            assert!(text.contains("control or white-space"), "{text}");
        }
        let bound = |pattern: &str| ConsumerQueue::new("orders").bind(pattern);
        assert!(with(bound("workout.*")).check().is_ok());
        assert!(refused(&with(bound(&q(256)))).contains("binding pattern of queue `orders`"));
        assert!(refused(&with(bound(""))).contains("is empty"));
        // A long name is shortened in the message.
        assert!(refused(&with(ConsumerQueue::new(q(300)))).len() < 200);
    }

    proptest::proptest! {
        /// Whatever the names, checking them never panics, and what it accepts fits
        /// AMQP with every suffix (so declaring cannot panic in lapin).
        #[test]
        fn checking_any_names_never_panics(
            exchange in proptest::prelude::any::<String>(),
            queue in "\\PC{0,300}",
            pattern in proptest::prelude::any::<String>(),
        ) {
            let topology = Topology::new(exchange.clone())
                .consumer_queue(ConsumerQueue::new(queue.clone()).bind(pattern.clone()));
            if topology.check().is_ok() {
                proptest::prop_assert!(unrouted_name(&exchange).len() <= 255);
                proptest::prop_assert!(queue.len() + ".dlq".len() <= 255);
                proptest::prop_assert!(!pattern.is_empty() && pattern.len() <= 255);
            }
        }
    }
}
