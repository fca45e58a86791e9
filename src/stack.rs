//! The map of the publish stack: every layer an event passes, outermost first, and what
//! each needs from the layers outside it. This is the one place the order is written;
//! the [`EventPublisher`](crate::EventPublisher)'s builder composes exactly this (a test
//! reads the composed service's type and compares it with [`PUBLISH`]), and every other
//! page links here.
//!
//! | # | stage | module | part | what it does | what it needs from the layers outside it | event context: writes / reads |
//! |---|---|---|---|---|---|---|
//! | 1 | telemetry | [`telemetry`](crate::telemetry) | front | the producer span, the duration and outcome metrics — outermost, so they cover validation too | nothing | writes the metric type and the span; takes the spawner's span |
//! | 2 | validation | [`validate`](crate::validate) | front | checks the type name, ids, headers and the data against the schema registry (skipped with `validation = false`) | nothing | — |
//! | 3 | organization | [`organization`](crate::organization) | front | gives the event its organization id: its own, the request's (put there by [`http::EventPublishLayer`](crate::http::EventPublishLayer)), or the builder's source; refuses a missing or mismatched one | a valid event | reads the request scope |
//! | 4 | envelope | [`envelope`](crate::envelope) | front | stamps source, schema version and correlation id | the event's organization | takes the request scope |
//! | 5 | deadline | [`timeout`](crate::timeout) | delivery | bounds the whole publish by `publish_timeout`, retries included | a complete event | — |
//! | 6 | fair share | [`fairness`](crate::fairness) | delivery | caps each organization's share of the publishes in flight, held across retries | the organization id | — |
//! | 7 | retry | [`retry`](crate::retry) | delivery | tries a retryable failure again with exponential backoff and jitter, the same `event_id` | the overall deadline outside it, so backoff never outlives the publish | reads the metric type |
//! | 8 | circuit breaker | [`circuit_breaker`](crate::circuit_breaker) | delivery | counts broker failures per attempt (a lost connection once) and refuses at once while open | the retry outside it: `CircuitOpen` is not retryable, so the retry stops at once | — |
//! | 9 | attempt deadline | [`timeout`](crate::timeout) | delivery | bounds one attempt (over AMQP: a backstop at `publish_timeout`; the transport bounds its own waits) | nothing | — |
//! | 10 | transport | [`transport`](crate::transport) | delivery | publishes on a pooled confirm-mode channel and resolves with the broker's answer for this event | an encoded-ready event: validated, stamped, with its organization | reads the metric type and the span (its encoder: the span) |
//!
//! The last column is the event's context, the one way layers hand each other data on
//! an event (crate-internal, `src/event/context.rs`, where each part names its writer and
//! readers): the **request scope** (the request's organization and correlation id, put
//! on the event by the HTTP integration's [`Publisher`](crate::http::Publisher) before
//! stage 1), the **metric type** (the event's `event_type` metric label) and the **span**
//! (the producer span; before stage 1, for a detached event, the span
//! [`spawn`](crate::EventPublisher::spawn) was called under). A layer not named there
//! neither writes nor reads it. What the publisher takes from the transport itself (its
//! metrics, its frame-size check) comes through
//! [`PublishTransport`](crate::transport::PublishTransport).
//!
//! The **front** (1–4) runs once per event, before [`publish`](crate::EventPublisher::publish)
//! delivers it or [`spawn`](crate::EventPublisher::spawn) queues it; the **delivery**
//! (5–10) publishes it, for `spawn` from a background worker (in its own producer span).
//! [`build_with_delivery`](crate::EventPublisherBuilder::build_with_delivery) replaces
//! 5–10 with a stack of your own behind the same front.
//!
//! Events encoded earlier take two other ways in.
//! [`encode`](crate::EventPublisher::encode) runs the front (2–4) and the transport's
//! encoder, and stops: the [`EncodedEvent`](crate::EncodedEvent) is stored (the outbox)
//! and later sent by [`publish_encoded`](crate::EventPublisher::publish_encoded) through
//! 1 and 5–10 — the transport sends its stored bytes instead of encoding (the event
//! context's *encoding*). Dead letters moved back
//! ([`dead_letters::replay`](crate::topology::dead_letters::replay)) take the same way,
//! as messages received from the broker (tracked by their `message_id` whatever its
//! form; a copy no queue takes fails, whatever the unroutable policy).
//! [`publish_encoded_in_order`](crate::EventPublisher::publish_encoded_in_order)
//! keeps an order the delivery stack cannot (round-robin lanes, retries with jitter): it
//! goes from the publisher to the transport's ordered path (`transport/sequence.rs`: one
//! lane per key, written in order, no retry — its caller retries from the first failure),
//! refused while the breaker (8) is open and bounded by the publish deadline (5).
//!
//! ```
//! use fitviz_events::stack::{PUBLISH, Part, Stage};
//!
//! let names: Vec<&str> = PUBLISH.iter().map(|stage| stage.name()).collect();
//! assert_eq!(names, [
//!     "telemetry", "validation", "organization", "envelope",
//!     "deadline", "fair share", "retry", "circuit breaker", "attempt deadline", "transport",
//! ]);
//! assert_eq!(PUBLISH.iter().filter(|stage| stage.part() == Part::Front).count(), 4);
//! assert_eq!(PUBLISH.last(), Some(&Stage::Transport));
//! ```

/// One layer of the publish stack.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The producer span and the metrics ([`crate::telemetry`]).
    Telemetry,
    /// Schema and field checks ([`crate::validate`]).
    Validation,
    /// The organization id ([`crate::organization`]).
    Organization,
    /// Source, schema version, correlation id ([`crate::envelope`]).
    Envelope,
    /// The whole publish's deadline ([`crate::timeout`]).
    Deadline,
    /// Each organization's share of the publishes in flight ([`crate::fairness`]).
    FairShare,
    /// Retries with backoff ([`crate::retry`]).
    Retry,
    /// The circuit breaker ([`crate::circuit_breaker`]).
    CircuitBreaker,
    /// One attempt's deadline ([`crate::timeout`]).
    AttemptDeadline,
    /// The confirmed publish ([`crate::transport`]).
    Transport,
}

/// Which part of the stack a stage belongs to.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// Runs once per event, before it is published or queued (telemetry wraps it too).
    Front,
    /// Publishes the event; replaceable with `build_with_delivery`.
    Delivery,
}

/// The default stack, outermost first.
pub const PUBLISH: [Stage; 10] = [
    Stage::Telemetry,
    Stage::Validation,
    Stage::Organization,
    Stage::Envelope,
    Stage::Deadline,
    Stage::FairShare,
    Stage::Retry,
    Stage::CircuitBreaker,
    Stage::AttemptDeadline,
    Stage::Transport,
];

impl Stage {
    /// The stage's name, as the table above writes it.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Telemetry => "telemetry",
            Stage::Validation => "validation",
            Stage::Organization => "organization",
            Stage::Envelope => "envelope",
            Stage::Deadline => "deadline",
            Stage::FairShare => "fair share",
            Stage::Retry => "retry",
            Stage::CircuitBreaker => "circuit breaker",
            Stage::AttemptDeadline => "attempt deadline",
            Stage::Transport => "transport",
        }
    }

    /// The front or the delivery.
    pub fn part(self) -> Part {
        match self {
            Stage::Telemetry | Stage::Validation | Stage::Organization | Stage::Envelope => {
                Part::Front
            }
            _ => Part::Delivery,
        }
    }
}

/// The stages a composed service's type nests, outermost first, read from its type
/// name (`Telemetry<Validate<Organization<…>>>`): how the builder's test checks that
/// what it composes is [`PUBLISH`]. An optional layer (`Either<A, B>`) is followed into
/// `A`; tower's `Retry<Policy, S>` into `S`; the front's `Prepare<S, Layer>` into `S`,
/// its stage named by `Layer`; any other layer into its first parameter.
#[cfg(test)]
pub(crate) fn stages_of(type_name: &str) -> Vec<Stage> {
    /// The type's last path segment and its generic parameters, as text.
    fn split(ty: &str) -> (&str, Vec<&str>) {
        let ty = ty.trim();
        let Some(open) = ty.find('<') else {
            return (ty.rsplit("::").next().unwrap_or(ty), Vec::new());
        };
        let head = &ty[..open];
        let inner = &ty[open + 1..ty.len() - 1];
        let (mut params, mut depth, mut from) = (Vec::new(), 0, 0);
        for (at, c) in inner.char_indices() {
            match c {
                '<' => depth += 1,
                '>' => depth -= 1,
                ',' if depth == 0 => {
                    params.push(&inner[from..at]);
                    from = at + 1;
                }
                _ => {}
            }
        }
        params.push(&inner[from..]);
        (head.rsplit("::").next().unwrap_or(head), params)
    }
    let mut stages = Vec::new();
    let mut ty = type_name;
    loop {
        let (name, params) = split(ty);
        let (stage, inner) = match name {
            "Telemetry" => (Some(Stage::Telemetry), params.first()),
            "Either" => (None, params.first()),
            // The front's layers share one service, `Prepare<S, Layer>`.
            "Prepare" => {
                let layer = params.last().map(|p| split(p).0);
                let stage = match layer {
                    Some("ValidationLayer") => Stage::Validation,
                    Some("OrganizationLayer") => Stage::Organization,
                    Some("EnvelopeLayer") => Stage::Envelope,
                    other => panic!("an unknown front layer `{other:?}` in {type_name}"),
                };
                (Some(stage), params.first())
            }
            "Timeout" if stages.contains(&Stage::Deadline) => {
                (Some(Stage::AttemptDeadline), params.first())
            }
            "Timeout" => (Some(Stage::Deadline), params.first()),
            "FairShare" => (Some(Stage::FairShare), params.first()),
            "Retry" => (Some(Stage::Retry), params.last()),
            "CircuitBreaker" => (Some(Stage::CircuitBreaker), params.first()),
            "MemorySink" | "AmqpPublish" => (Some(Stage::Transport), None),
            other => panic!("an unknown layer `{other}` in {type_name}"),
        };
        stages.extend(stage);
        match inner {
            Some(inner) => ty = inner,
            None => return stages,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_read_from_a_type_name_outermost_first() {
        let name = "a::Telemetry<tower::util::either::Either<p::Prepare<p::Prepare<p::Prepare<e::Timeout<f::FairShare<tower::retry::Retry<g::Policy, h::CircuitBreaker<e::Timeout<t::MemorySink>>>>>, d::EnvelopeLayer>, c::OrganizationLayer>, b::ValidationLayer>, p::Prepare<x, c::OrganizationLayer>>>";
        assert_eq!(stages_of(name), PUBLISH);
        assert_eq!(
            stages_of("a::Retry<b::Timeout<t::AmqpPublish>>"),
            [Stage::Retry, Stage::Deadline, Stage::Transport]
        );
    }

    #[test]
    #[should_panic(expected = "an unknown layer `Mystery`")]
    fn an_unknown_layer_is_not_skipped() {
        stages_of("a::Retry<b::Mystery<t::AmqpPublish>>");
    }
}
