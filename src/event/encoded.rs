//! [`EncodedEvent`]: an event as it goes on the wire — through the front and the
//! encoder already, so that it can be stored and sent later byte for byte.

use std::{fmt, sync::Arc};

use lapin::{
    BasicProperties,
    types::{AMQPValue, ShortString},
};
use uuid::Uuid;

use super::{Event, EventData, OrganizationId};
use crate::{error::PublishError, header::HEADER_ORGANIZATION_ID};

/// An event encoded for the broker: its exchange, routing key, AMQP properties (message
/// id, type, headers, …) and body, exactly as they will be sent.
///
/// Made by [`EventPublisher::encode`](crate::EventPublisher::encode), which runs the same
/// front as `publish` (validation, organization, envelope, size limits); sent by
/// [`EventPublisher::publish_encoded`](crate::EventPublisher::publish_encoded) through
/// the delivery stack, unchanged — every attempt, and every re-publish after a crash,
/// carries the same bytes and the same `message_id`. The [outbox](crate::guide) stores
/// one per row ([`properties_bytes`](Self::properties_bytes), [`body`](Self::body)) and
/// reads it back with [`from_stored`](Self::from_stored).
///
/// Cloning is cheap: the encoded parts are shared.
///
/// ```
/// use fitviz_events::{EncodedEvent, Event, EventPublisher, PublisherConfig, events::WorkoutCreated};
/// use fitviz_events::testing::{Example, MemorySink};
///
/// # tokio_test_runtime(async {
/// let publisher = EventPublisher::builder(PublisherConfig::default()).build_with_transport(MemorySink::new());
/// let encoded = publisher.encode(Event::new(WorkoutCreated::example()).with_organization("org-42")).await?;
/// assert_eq!(encoded.routing_key(), "workout.created");
/// let stored = EncodedEvent::from_stored(encoded.exchange(), encoded.routing_key(), &encoded.properties_bytes(), encoded.body().to_vec())?;
/// assert_eq!(stored, encoded);
/// # Ok::<(), fitviz_events::PublishError>(()) });
/// # fn tokio_test_runtime<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, PartialEq)]
pub struct EncodedEvent {
    inner: Arc<Encoded>,
}

#[derive(PartialEq)]
struct Encoded {
    id: Uuid,
    /// Whether a copy no queue takes is an error whatever the publisher's
    /// [`UnroutablePolicy`](crate::config::UnroutablePolicy): set for messages that are
    /// not this publisher's events (a dead letter moved back), which must not be kept in
    /// its `<exchange>.unrouted` or dropped.
    unroutable_is_error: bool,
    exchange: ShortString,
    routing_key: ShortString,
    organization_id: Option<OrganizationId>,
    properties: BasicProperties,
    body: Vec<u8>,
}

impl fmt::Debug for EncodedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EncodedEvent")
            .field("id", &self.inner.id)
            .field("exchange", &self.inner.exchange.as_str())
            .field("routing_key", &self.inner.routing_key.as_str())
            .field("organization_id", &self.inner.organization_id)
            .field("body_bytes", &self.inner.body.len())
            .finish()
    }
}

impl EncodedEvent {
    /// From the encoder: `properties` carry the event's id as `message_id`.
    pub(crate) fn new(
        event: &Event,
        exchange: ShortString,
        properties: BasicProperties,
        body: Vec<u8>,
    ) -> Self {
        Self {
            inner: Arc::new(Encoded {
                id: event.id(),
                unroutable_is_error: false,
                exchange,
                routing_key: ShortString::from(event.event_type()),
                organization_id: event.organization_id().cloned(),
                properties,
                body,
            }),
        }
    }

    /// An encoded event read back from storage: the exchange and routing key it was
    /// encoded for, its AMQP properties as [`properties_bytes`](Self::properties_bytes)
    /// wrote them, and its body.
    ///
    /// # Errors
    /// [`ErrorKind::Validation`](crate::ErrorKind::Validation) when the properties do
    /// not parse, carry no `message_id` that is a UUID, or a name is longer than 255
    /// bytes.
    pub fn from_stored(
        exchange: &str,
        routing_key: &str,
        properties: &[u8],
        body: Vec<u8>,
    ) -> Result<Self, PublishError> {
        let invalid = |why: String| {
            PublishError::validation(crate::schema::ValidationError::single(
                routing_key,
                "properties",
                why,
            ))
        };
        let name = |what: &str, value: &str| {
            ShortString::try_new(value)
                .map_err(|_| invalid(format!("the {what} is longer than 255 bytes")))
        };
        let (rest, properties) = lapin::protocol::basic::parse_properties(properties)
            .map_err(|e| invalid(format!("do not parse as AMQP basic properties: {e}")))?;
        if !rest.is_empty() {
            return Err(invalid(format!(
                "have {} bytes after the AMQP basic properties",
                rest.len()
            )));
        }
        let id = (properties.message_id().as_ref())
            .and_then(|id| Uuid::parse_str(id.as_str()).ok())
            .ok_or_else(|| invalid("carry no message_id that is a UUID".to_owned()))?;
        let organization_id = organization_of(&properties);
        Ok(Self {
            inner: Arc::new(Encoded {
                id,
                unroutable_is_error: false,
                exchange: name("exchange", exchange)?,
                routing_key: name("routing key", routing_key)?,
                organization_id,
                properties,
                body,
            }),
        })
    }

    /// A message received from the broker (a dead letter), to be published again
    /// unchanged to `exchange` with `routing_key`. Its `message_id` need not be a UUID,
    /// or be there at all: the id is its [`tracking_id`]. A copy no queue takes is an
    /// error, whatever the publisher's unroutable policy.
    pub(crate) fn from_message(
        exchange: ShortString,
        routing_key: ShortString,
        properties: BasicProperties,
        body: Vec<u8>,
    ) -> Self {
        Self {
            inner: Arc::new(Encoded {
                id: tracking_id(properties.message_id().as_ref().map(ShortString::as_str)),
                unroutable_is_error: true,
                exchange,
                routing_key,
                organization_id: organization_of(&properties),
                properties,
                body,
            }),
        }
    }

    /// The event id, also the message's `message_id`. (For a message that is not one of
    /// this crate's events — a dead letter moved back whose `message_id` is not a UUID —
    /// a name-based UUID derived from its `message_id`.)
    pub fn id(&self) -> Uuid {
        self.inner.id
    }

    /// The exchange it is published to.
    pub fn exchange(&self) -> &str {
        self.inner.exchange.as_str()
    }

    /// The routing key: the event type.
    pub fn routing_key(&self) -> &str {
        self.inner.routing_key.as_str()
    }

    /// The organization id it carries in its `organization_id` header, if any.
    pub fn organization_id(&self) -> Option<&OrganizationId> {
        self.inner.organization_id.as_ref()
    }

    /// The body, as it goes on the wire.
    pub fn body(&self) -> &[u8] {
        &self.inner.body
    }

    /// The AMQP basic properties (headers included) in their wire encoding, for
    /// storage; [`from_stored`](Self::from_stored) reads them back.
    pub fn properties_bytes(&self) -> Vec<u8> {
        let write = lapin::protocol::basic::gen_properties::<Vec<u8>>(&self.inner.properties);
        match write(Vec::new().into()) {
            Ok(written) => written.into_inner().0,
            // Writing to a Vec cannot fail.
            Err(_) => Vec::new(),
        }
    }

    pub(crate) fn properties(&self) -> &BasicProperties {
        &self.inner.properties
    }

    /// Whether a copy no queue takes must fail the publish (see [`from_message`](Self::from_message)).
    pub(crate) fn unroutable_is_error(&self) -> bool {
        self.inner.unroutable_is_error
    }

    pub(crate) fn exchange_name(&self) -> &ShortString {
        &self.inner.exchange
    }

    pub(crate) fn routing_key_name(&self) -> &ShortString {
        &self.inner.routing_key
    }

    /// The event the delivery stack carries for it: its id, type and organization (what
    /// the layers read), and this encoding (what the transport sends).
    pub(crate) fn to_event(&self) -> Event {
        // The event type: the `type` property (this crate's events carry it), else the
        // routing key (a dead letter moved back to its queue has the queue's name there).
        let event_type = (self.inner.properties.kind().as_ref())
            .unwrap_or(&self.inner.routing_key)
            .as_str();
        let mut event = Event::from_parts(
            event_type.to_owned().into(),
            None,
            EventData::Json(Arc::new(serde_json::Value::Null)),
        );
        event.id = self.inner.id;
        event.organization_id = self.inner.organization_id.clone();
        event.context_mut().set_encoded(self.clone());
        event
    }
}

/// The organization id a message carries in its `organization_id` header, if any.
fn organization_of(properties: &BasicProperties) -> Option<OrganizationId> {
    (properties.headers().as_ref())
        .and_then(|headers| headers.inner().get(HEADER_ORGANIZATION_ID))
        .and_then(|value| match value {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        })
        .and_then(|org| OrganizationId::parse(org).ok())
}

/// The namespace of the name-based ids [`tracking_id`] gives messages whose
/// `message_id` is not a UUID (a fixed random UUID of this crate's).
const TRACKING_NAMESPACE: Uuid = Uuid::from_u128(0x6b1f_3c2e_9d4a_4e8b_a6f0_52c7_e1d9_0b34);

/// The id under which a message's confirm and `basic.return` are matched on a channel
/// (the confirm tracker's key): its `message_id` when that is a UUID (this crate's
/// events), else a name-based UUID (v5) of it, else one fixed id for messages without
/// one. The same `message_id` always gives the same id, on the publish and in the
/// broker's `basic.return`, so a return is attributed exactly. Two messages with the
/// same tracking id (a collision, or two messages without an id) are never in flight
/// on one channel together — the tracker holds the second back until the first is
/// settled — so a collision costs pipelining, never a wrong outcome.
pub(crate) fn tracking_id(message_id: Option<&str>) -> Uuid {
    match message_id {
        Some(id) => {
            Uuid::parse_str(id).unwrap_or_else(|_| Uuid::new_v5(&TRACKING_NAMESPACE, id.as_bytes()))
        }
        None => Uuid::new_v5(&TRACKING_NAMESPACE, b"\0no message_id"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_ids_are_the_uuid_or_a_stable_name_based_id() {
        let uuid = Uuid::now_v7();
        assert_eq!(tracking_id(Some(&uuid.to_string())), uuid);
        let a = tracking_id(Some("evt-1"));
        assert_eq!(a, tracking_id(Some("evt-1")), "stable");
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, tracking_id(Some("evt-2")));
        assert_ne!(a, tracking_id(None));
        assert_eq!(tracking_id(None), tracking_id(None));
    }

    #[test]
    fn a_message_keeps_its_bytes_and_takes_its_type_from_the_type_property() {
        let properties = BasicProperties::default()
            .with_message_id("evt-7".into())
            .with_type("workout.created".into());
        let message = EncodedEvent::from_message(
            ShortString::from(""),
            ShortString::from("fitviz.q"),
            properties.clone(),
            b"{}".to_vec(),
        );
        assert_eq!(message.id(), tracking_id(Some("evt-7")));
        assert_eq!(message.routing_key(), "fitviz.q");
        assert_eq!(message.properties(), &properties);
        assert!(message.unroutable_is_error());
        assert_eq!(message.to_event().event_type(), "workout.created");
        let untyped = EncodedEvent::from_message(
            ShortString::from(""),
            ShortString::from("fitviz.q"),
            BasicProperties::default(),
            Vec::new(),
        );
        assert_eq!(untyped.to_event().event_type(), "fitviz.q");
        assert_eq!(untyped.id(), tracking_id(None));
    }
}
