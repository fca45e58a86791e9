//! What the publisher does with an event no queue is bound for.

use std::fmt;

use serde::{Deserialize, Deserializer, de};

use super::error::got;

/// What `<exchange>.unrouted` adds to the exchange's name (the configuration leaves room
/// for it: AMQP names hold at most 255 bytes).
pub(crate) const UNROUTED_SUFFIX: &str = ".unrouted";

/// What happens to an event the broker returns because no queue is bound for its
/// routing key (`FITVIZ_EVENTS_UNROUTABLE`).
///
/// | policy | the publish | the event |
/// |---|---|---|
/// | `alternate-exchange` (default) | `Ok`, [`Receipt::routing`](crate::Receipt::routing) = [`Routing::Kept`](crate::Routing::Kept) | republished, with a confirm, to `<exchange>.unrouted` and kept in its bounded queue |
/// | `error` | [`ErrorKind::Unroutable`](crate::ErrorKind::Unroutable) (HTTP 500) | returned by the broker: not stored |
/// | `ignore` | `Ok`, [`Routing::Dropped`](crate::Routing::Dropped) | returned by the broker: not stored |
///
/// **Why `alternate-exchange` is the default.** Publishing before any consumer has bound
/// its queue (a new event type, a consumer not deployed yet) is normal in pub/sub and not
/// the caller's fault, so it should not fail a request; but dropping the event
/// (`ignore`) loses what a consumer joining later, or an operator, may need. Kept, it
/// can be inspected and replayed (`topology::dead_letters`), and the queue's length
/// counts them; its bounds (10,000 events, 7 days) cap the cost.
///
/// **How.** The events exchange is *not* given a broker-side alternate exchange:
/// with one, the broker routes an unroutable message there and does not return it, so
/// the publisher could not tell "routed to a consumer's queue" from "kept". Instead the
/// publisher publishes with `mandatory = true` as before and, when the broker returns
/// the event, publishes it again (same `message_id`, with a confirm) to the fanout
/// exchange `<exchange>.unrouted`, which it declares (checks, with
/// `declare_exchange = false`) the first time on each connection, with the queue of the
/// same name. That costs a second round trip, only for unroutable events. Other
/// publishers (other languages) get the same effect from the broker-side alternate
/// exchange policy ([`topology::alternate_exchange_policy`](crate::topology::alternate_exchange_policy));
/// with that policy set, this publisher's receipts say `routed` for events the alternate
/// exchange kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum UnroutablePolicy {
    /// Keep the event in `<exchange>.unrouted`; the receipt says [`Kept`](crate::Routing::Kept).
    #[default]
    AlternateExchange,
    /// Fail the publish with [`ErrorKind::Unroutable`](crate::ErrorKind::Unroutable).
    Error,
    /// Succeed without storing the event; the receipt says [`Dropped`](crate::Routing::Dropped).
    Ignore,
}

impl UnroutablePolicy {
    /// The name in the configuration: `alternate-exchange`, `error` or `ignore`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AlternateExchange => "alternate-exchange",
            Self::Error => "error",
            Self::Ignore => "ignore",
        }
    }
}

impl fmt::Display for UnroutablePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for UnroutablePolicy {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value.to_ascii_lowercase().as_str() {
            "alternate-exchange" => Ok(Self::AlternateExchange),
            "error" => Ok(Self::Error),
            "ignore" => Ok(Self::Ignore),
            _ => Err(got(
                "expected `alternate-exchange`, `error` or `ignore`",
                value,
            )),
        }
    }
}

impl<'de> Deserialize<'de> for UnroutablePolicy {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = UnroutablePolicy;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`alternate-exchange`, `error` or `ignore`")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<UnroutablePolicy, E> {
                value.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(Visitor)
    }
}
