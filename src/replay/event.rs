//! [`ArchivedEvent`]: one event read back from the archive, with its offset.

use chrono::{DateTime, Utc};
use lapin::{
    message::Delivery,
    types::{AMQPValue, ShortString},
};
use uuid::Uuid;

use super::ReplayTarget;
use crate::{
    error::PublishError,
    event::{EncodedEvent, Receipt},
    header::HEADER_REPLAYED_FROM,
    publisher::EventPublisher,
    schema::{SchemaRegistry, ValidationError},
};

/// An event read from the archive: its offset in the stream, its envelope decoded, and
/// the message as it was published (for republishing it unchanged).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ArchivedEvent {
    /// Its offset in the archive stream: offsets grow in the order the broker stored
    /// the events (contiguous within a segment; see the [module docs](super)).
    pub offset: u64,
    /// `event_id` (also the message's `message_id`).
    pub event_id: Uuid,
    /// `event_type` (also the routing key it was published with).
    pub event_type: String,
    /// `version` of `data`'s schema, when the envelope has one.
    pub version: Option<u32>,
    /// `organization_id`, when the event has one.
    pub organization_id: Option<String>,
    /// `timestamp`: when the event happened, by its publisher's clock.
    pub timestamp: DateTime<Utc>,
    /// Whether it is a copy republished by a replay (it carries the `replayed_from`
    /// header); a replay skips those unless told otherwise.
    pub replayed: bool,
    /// The whole envelope, as JSON.
    pub envelope: serde_json::Value,
    /// `data` validated against the schema of its type and version in the replay's
    /// registry ([`Replay::registry`](super::Replay::registry), the built-in one by
    /// default): `None` when the registry does not know the type. Events that fail are
    /// yielded all the same — the archive holds what was published — for the consumer
    /// to decide.
    pub validation: Option<Result<(), ValidationError>>,
    message: EncodedEvent,
}

impl ArchivedEvent {
    /// Decodes a delivery from the archive stream at `offset`; `Err` says why it is not
    /// one of this crate's JSON envelopes.
    pub(super) fn decode(offset: u64, delivery: &Delivery) -> Result<Self, String> {
        let envelope: serde_json::Value = serde_json::from_slice(&delivery.data)
            .map_err(|e| format!("the body is not JSON: {e}"))?;
        let field = |name: &str| {
            envelope
                .get(name)
                .ok_or_else(|| format!("the envelope has no `{name}`"))
        };
        let text = |name: &str| {
            field(name)?
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("`{name}` is not a string"))
        };
        let event_id = Uuid::parse_str(&text("event_id")?)
            .map_err(|e| format!("`event_id` is not a UUID: {e}"))?;
        let event_type = text("event_type")?;
        let timestamp = DateTime::parse_from_rfc3339(&text("timestamp")?)
            .map_err(|e| format!("`timestamp` is not RFC 3339: {e}"))?
            .with_timezone(&Utc);
        let version = envelope
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .and_then(|v| u32::try_from(v).ok());
        let organization_id = envelope
            .get("organization_id")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let headers = delivery.properties.headers().as_ref();
        let replayed = headers.is_some_and(|h| h.inner().contains_key(HEADER_REPLAYED_FROM));
        let message = EncodedEvent::from_message(
            delivery.exchange.clone(),
            delivery.routing_key.clone(),
            delivery.properties.clone(),
            delivery.data.clone(),
        );
        Ok(Self {
            offset,
            event_id,
            event_type,
            version,
            organization_id,
            timestamp,
            replayed,
            envelope,
            validation: None,
            message,
        })
    }

    /// `data`, the payload.
    pub fn data(&self) -> &serde_json::Value {
        self.envelope
            .get("data")
            .unwrap_or(&serde_json::Value::Null)
    }

    /// Validates `data` against the schema of its type and version in `registry`;
    /// `None` when the registry does not know the type.
    pub fn validate(&self, registry: &SchemaRegistry) -> Option<Result<(), ValidationError>> {
        registry.validate_json_with(
            &self.event_type,
            self.version,
            self.data(),
            crate::schema::UnknownFields::Forward,
        )
    }

    /// `data` converted to the newest version `registry` knows, through its registered
    /// upcasts: that version and payload.
    ///
    /// # Errors
    /// As [`SchemaRegistry::upcast`].
    pub fn upcast(
        &self,
        registry: &SchemaRegistry,
    ) -> Result<(u32, serde_json::Value), ValidationError> {
        let version = self.version.unwrap_or(1);
        registry.upcast(&self.event_type, version, self.data().clone())
    }

    /// The copy [`republish`](Self::republish) sends to `to`: the same body, `message_id`
    /// and properties, with the `replayed_from` header (this event's offset) added.
    pub fn copy_to(&self, to: &ReplayTarget) -> EncodedEvent {
        let (exchange, routing_key) = match to {
            ReplayTarget::Queue(queue) => {
                (ShortString::from(""), ShortString::from(queue.as_str()))
            }
            ReplayTarget::Exchange => (
                self.message.exchange_name().clone(),
                self.message.routing_key_name().clone(),
            ),
        };
        let properties = self.message.properties().clone();
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(
            HEADER_REPLAYED_FROM.into(),
            AMQPValue::LongLongInt(i64::try_from(self.offset).unwrap_or(i64::MAX)),
        );
        EncodedEvent::from_message(
            exchange,
            routing_key,
            properties.with_headers(headers),
            self.message.body().to_vec(),
        )
    }

    /// Publishes a copy of this event ([`copy_to`](Self::copy_to)) through `publisher`'s
    /// delivery stack — deadline, retry, breaker, confirm — and resolves with the
    /// broker's answer. A copy no queue takes fails with
    /// [`ErrorKind::Unroutable`](crate::ErrorKind::Unroutable), whatever the publisher's
    /// unroutable policy.
    ///
    /// # Errors
    /// As [`EventPublisher::publish_encoded`].
    pub async fn republish(
        &self,
        publisher: &EventPublisher,
        to: &ReplayTarget,
    ) -> Result<Receipt, PublishError> {
        publisher.publish_encoded(self.copy_to(to)).await
    }
}
