//! The ordered path: a sequence of [encoded](crate::EncodedEvent) events written in
//! their order on one channel, for the outbox relay, which keeps order per ordering key.
//!
//! The delivery stack cannot keep an order: publishes take lanes round robin, a retry
//! backs off with jitter and may move to another lane, and concurrent publishes reach
//! a channel in whatever order the scheduler polls them. Here a sequence takes the
//! channel of one lane (the same lane for the same key, every time), writes its events
//! one after another — each write driven to the end of its `basic_publish` before the
//! next starts — and then waits for all their confirms at once, so it is pipelined
//! like a batch. AMQP keeps the order of one channel's messages to each queue.
//!
//! Nothing is retried here and nothing moves to another channel: the first event that
//! cannot be written ends the sequence, and every later event is reported not sent, so
//! what reached the broker is always a prefix of the sequence (up to a `basic.nack` in
//! the middle, which RabbitMQ sends only for internal errors). The caller (the relay)
//! retries from the first event that did not succeed, in order. The metrics count each
//! message as the delivery stack's do.

use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream::FuturesOrdered};

use super::{AmqpPublish, MIN_FRAME_MAX, Outcome, header_frame_bytes, outcome_to_result, settle};
use crate::{
    config::UnroutablePolicy,
    error::{ErrorKind, PublishError},
    event::{EncodedEvent, Receipt, Routing},
    transport::channel::Message,
};

impl AmqpPublish {
    /// Publishes `events` in their order on the channel of lane `key % lanes` and
    /// resolves with one outcome per event, in the same order, within `deadline`. See
    /// the [module docs](self).
    pub(crate) async fn publish_in_order(
        &self,
        key: u64,
        events: &[EncodedEvent],
        deadline: Duration,
    ) -> Vec<Result<Receipt, PublishError>> {
        let started = Instant::now();
        match tokio::time::timeout(deadline, self.sequence(key, events, started)).await {
            Ok(results) => results,
            Err(_) => events
                .iter()
                .map(|event| {
                    Err(PublishError::new(
                        ErrorKind::Timeout,
                        format!(
                            "the ordered sequence was not confirmed within {} ms",
                            deadline.as_millis()
                        ),
                    )
                    .mark_maybe_delivered()
                    .for_event(event.id()))
                })
                .collect(),
        }
    }

    async fn sequence(
        &self,
        key: u64,
        events: &[EncodedEvent],
        started: Instant,
    ) -> Vec<Result<Receipt, PublishError>> {
        let inner = &self.inner;
        let lanes = inner.pool.lanes() as u64;
        let lane = usize::try_from(key % lanes.max(1)).unwrap_or(0);
        // The first event gets the error; the others were not sent because of it.
        let all = |error: PublishError| -> Vec<Result<Receipt, PublishError>> {
            let mut error = Some(error);
            (events.iter())
                .map(|event| {
                    Err(error
                        .take()
                        .unwrap_or_else(|| not_sent_behind(None))
                        .for_event(event.id()))
                })
                .collect()
        };
        let channel = match inner.pool.channel_at(lane).await {
            Ok(channel) => channel,
            Err(error) => return all(error),
        };
        let generation = channel.generation();
        if channel.is_blocked() {
            return all(PublishError::new(
                ErrorKind::Blocked,
                "the broker has blocked the connection: the sequence was not sent",
            ));
        }
        // The confirms of what is written are awaited while the rest is written: a write
        // waiting for a permit (`max_in_flight` on the channel) needs them to come back.
        let mut confirms = FuturesOrdered::new();
        let mut outcomes = Vec::with_capacity(events.len());
        let mut ended: Option<PublishError> = None;
        for event in events {
            let header_bytes = header_frame_bytes(event.properties());
            if header_bytes > MIN_FRAME_MAX && header_bytes > channel.frame_max() {
                ended = Some(PublishError::too_large(
                    "the event's properties and headers (the content header frame)",
                    Some(header_bytes),
                    channel.frame_max(),
                ));
                break;
            }
            let message = Message {
                event_id: event.id(),
                exchange: event.exchange_name().clone(),
                routing_key: event.routing_key_name().clone(),
                body: event.body().to_vec(),
                properties: event.properties().clone(),
            };
            let sent = inner
                .instruments
                .attempt(inner.instruments.resolve(event.routing_key()));
            let written = {
                let write = channel.write(message, &sent, true);
                let mut write = std::pin::pin!(write);
                loop {
                    tokio::select! {
                        biased;
                        written = &mut write => break written,
                        Some(outcome) = confirms.next(), if !confirms.is_empty() => {
                            outcomes.push(outcome);
                        }
                    }
                }
            };
            match written {
                Ok(write) => confirms.push_back(async {
                    let outcome = write.confirm().await;
                    match &outcome {
                        Ok(outcome) => settle(&channel, sent, outcome),
                        Err(_) => sent.finish(Some(ErrorKind::Timeout)),
                    }
                    outcome
                }),
                Err(error) => {
                    sent.not_sent();
                    ended = Some(error);
                    break;
                }
            }
        }
        while let Some(outcome) = confirms.next().await {
            outcomes.push(outcome);
        }
        let written = outcomes.len();
        let mut outcomes = outcomes.into_iter();
        let mut results = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let id = event.id();
            let result = match outcomes.next() {
                Some(Ok(Outcome::Unroutable { .. }))
                    if inner.unroutable_policy_of(event) == UnroutablePolicy::Ignore =>
                {
                    Ok(Receipt::new(id, started.elapsed()).with_routing(Routing::Dropped))
                }
                Some(Ok(Outcome::Unroutable { .. }))
                    if inner.unroutable_policy_of(event) == UnroutablePolicy::AlternateExchange =>
                {
                    self.keep(&event.to_event(), started).await
                }
                Some(Ok(outcome)) => {
                    let result = outcome_to_result(
                        outcome,
                        generation,
                        (id, event.routing_key()),
                        event.exchange(),
                        started,
                    );
                    if !inner.archive.is_on() {
                        result
                    } else {
                        let key = (event.exchange_name() == inner.exchange.name())
                            .then(|| event.routing_key());
                        self.archived(result, key, generation).await
                    }
                }
                Some(Err(error)) => Err(error),
                // The event that could not be written ends the sequence with its error.
                None if index == written && ended.is_some() => {
                    Err(ended.take().unwrap_or_else(PublishError::shutdown))
                }
                None => Err(not_sent_behind(Some(generation))),
            };
            results.push(result.map_err(|e| e.for_event(id)));
        }
        results
    }
}

/// The error of an event not sent because one ahead of it in the sequence was not.
fn not_sent_behind(generation: Option<u64>) -> PublishError {
    let error = PublishError::new(
        ErrorKind::Connection,
        "not sent: an event ahead of it in the ordered sequence was not sent",
    );
    match generation {
        Some(generation) => error.on_connection(generation),
        None => error,
    }
}
