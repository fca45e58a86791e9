//! Where events no queue is bound for are kept: the `<exchange>.unrouted` exchange
//! (fanout) and its bounded queue of the same name. Declared here, by the transport
//! that keeps events there, and by [`Topology`](crate::topology::Topology) through it.

use std::time::Duration;

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
};
use serde::Serialize;

use crate::config::UNROUTED_SUFFIX;

/// The declaration that failed, and why.
pub(crate) type DeclareError = (String, lapin::Error);

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn short(name: &str) -> lapin::types::ShortString {
    lapin::types::ShortString::from(name)
}

/// The bounds of the `<exchange>.unrouted` queue: the newest `max_length` events, none
/// older than `max_age` (the oldest are dropped first). Frozen at declare time like
/// every x-argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct UnroutedQueue {
    /// `x-max-length`: at most this many events are kept (10,000 by default).
    pub max_length: u32,
    /// `x-message-ttl`: an event is dropped after this long (7 days by default).
    #[serde(serialize_with = "as_millis")]
    pub max_age: Duration,
}

impl Default for UnroutedQueue {
    fn default() -> Self {
        Self {
            max_length: 10_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// `<exchange>.unrouted`: the name of both the exchange and the queue.
pub fn unrouted_name(exchange: &str) -> String {
    format!("{exchange}{UNROUTED_SUFFIX}")
}

impl UnroutedQueue {
    pub(crate) fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(self.max_length.into()),
        );
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(millis(self.max_age)),
        );
        args
    }

    /// Declares (or, `passive`, checks) the unrouted exchange and queue of `exchange`
    /// and binds them.
    pub(crate) async fn declare(
        &self,
        channel: &Channel,
        exchange: &str,
        passive: bool,
    ) -> Result<(), DeclareError> {
        let name = unrouted_name(exchange);
        channel
            .exchange_declare(
                short(&name),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    passive,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| (format!("exchange `{name}`"), e))?;
        channel
            .queue_declare(
                short(&name),
                QueueDeclareOptions {
                    durable: true,
                    passive,
                    ..Default::default()
                },
                if passive {
                    FieldTable::default()
                } else {
                    self.arguments()
                },
            )
            .await
            .map_err(|e| (format!("queue `{name}`"), e))?;
        if !passive {
            channel
                .queue_bind(
                    short(&name),
                    short(&name),
                    short(""),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| (format!("binding queue `{name}`"), e))?;
        }
        Ok(())
    }
}
