//! The event envelope: what travels to the broker, and the receipt that comes back.

pub(crate) mod context;
mod encoded;
mod organization_id;
mod receipt;

pub(crate) use self::encoded::tracking_id;
pub use self::{
    encoded::EncodedEvent,
    organization_id::{
        InvalidId, MAX_CORRELATION_ID_BYTES, MAX_ORGANIZATION_ID_BYTES, OrganizationId,
        check_correlation_id,
    },
    receipt::{Receipt, Routing},
};

use std::{borrow::Cow, fmt, sync::Arc};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer, ser::SerializeStruct};
use uuid::Uuid;

use self::context::EventContext;
use crate::{
    header::{CustomHeaders, HeaderValue},
    schema::{DomainEvent, DynDomainEvent},
};

/// The payload of an event: a typed [`DomainEvent`] or raw JSON.
#[derive(Clone)]
pub(crate) enum EventData {
    Typed(Arc<dyn DynDomainEvent>),
    Json(Arc<serde_json::Value>),
}

impl fmt::Debug for EventData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventData::Typed(event) => fmt::Debug::fmt(event, f),
            EventData::Json(value) => fmt::Debug::fmt(value, f),
        }
    }
}

impl Serialize for EventData {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            EventData::Typed(event) => erased_serde::serialize(&**event, serializer),
            EventData::Json(value) => value.serialize(serializer),
        }
    }
}

/// One FitViz domain event on its way to the broker.
///
/// Build it from a typed event with [`Event::new`], or from JSON with
/// [`Event::from_json`] (validated against the same schema as the typed struct).
/// Cloning is cheap: the payload is shared.
///
/// # Example
/// ```
/// use fitviz_events::{Event, events::WorkoutCreated, testing::Example};
///
/// let event = Event::new(WorkoutCreated::example())
///     .with_organization("org-42")
///     .with_correlation_id("req-7");
/// assert_eq!(event.event_type(), "workout.created");
/// assert_eq!(event.organization_id().unwrap().as_str(), "org-42");
/// ```
#[derive(Clone, Debug)]
pub struct Event {
    id: Uuid,
    event_type: Cow<'static, str>,
    organization_id: Option<OrganizationId>,
    timestamp: DateTime<Utc>,
    version: Option<u32>,
    source: Option<Arc<str>>,
    correlation_id: Option<Arc<str>>,
    /// Why an id given to [`Event::with_organization`] or [`Event::with_correlation_id`]
    /// was refused; the front of the stack rejects the event with it.
    rejected_organization: Option<InvalidId>,
    rejected_correlation: Option<InvalidId>,
    /// The caller's own AMQP headers and the ones refused; `None` (no allocation) for
    /// an event without any. Shared between clones until one is changed.
    headers: Option<Arc<CustomHeaders>>,
    pub(crate) data: EventData,
    /// What the layers of the stack hand each other (see [`crate::event::context`]); not part
    /// of the envelope.
    context: EventContext,
}

impl Event {
    /// An event from a typed [`DomainEvent`], with a new UUID v7 id and the current time.
    pub fn new<E: DomainEvent>(event: E) -> Self {
        Self::from_parts(
            Cow::Borrowed(E::EVENT_TYPE),
            Some(E::VERSION),
            EventData::Typed(Arc::new(event)),
        )
    }

    /// An event from a type name and a JSON payload — the original library's
    /// `publish(event_type, data, organization_id)`.
    ///
    /// Nothing is checked here; the [validation layer](crate::validate) checks the
    /// type name and validates `data` against the schema registered for it.
    pub fn from_json(event_type: impl Into<Cow<'static, str>>, data: serde_json::Value) -> Self {
        Self::from_parts(event_type.into(), None, EventData::Json(Arc::new(data)))
    }

    fn from_parts(event_type: Cow<'static, str>, version: Option<u32>, data: EventData) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type,
            organization_id: None,
            timestamp: Utc::now(),
            version,
            source: None,
            correlation_id: None,
            rejected_organization: None,
            rejected_correlation: None,
            headers: None,
            data,
            context: EventContext::default(),
        }
    }

    /// Sets the organization id: an [`OrganizationId`], or a `&str` / `String` checked
    /// by the same rule.
    ///
    /// This stays infallible so events can be built in one expression; an invalid id is
    /// not stored but remembered, and publishing the event fails with
    /// [`ErrorKind::Validation`](crate::ErrorKind::Validation) naming `organization_id`
    /// (the [organization layer](crate::organization) refuses it before any I/O, whether
    /// validation is on or not). [`organization_id`](Self::organization_id) is then
    /// `None`. To handle a bad id at once, use [`OrganizationId::parse`] and pass the
    /// result.
    #[must_use]
    pub fn with_organization<T>(mut self, organization_id: T) -> Self
    where
        T: TryInto<OrganizationId>,
        T::Error: Into<InvalidId>,
    {
        match organization_id.try_into() {
            Ok(id) => {
                self.organization_id = Some(id);
                self.rejected_organization = None;
            }
            Err(invalid) => {
                self.organization_id = None;
                self.rejected_organization = Some(invalid.into());
            }
        }
        self
    }

    /// Sets the correlation id (for example the HTTP request id).
    ///
    /// Checked like an organization id (see [`check_correlation_id`]): an invalid one is
    /// not stored, and publishing the event fails with
    /// [`ErrorKind::Validation`](crate::ErrorKind::Validation) naming `correlation_id`.
    #[must_use]
    pub fn with_correlation_id(mut self, correlation_id: impl Into<Arc<str>>) -> Self {
        let correlation_id = correlation_id.into();
        match check_correlation_id(&correlation_id) {
            Ok(()) => {
                self.correlation_id = Some(correlation_id);
                self.rejected_correlation = None;
            }
            Err(invalid) => {
                self.correlation_id = None;
                self.rejected_correlation = Some(invalid);
            }
        }
        self
    }

    /// Why the ids given to this event were refused: the organization's, then the
    /// correlation id's.
    pub(crate) fn rejected_ids(&self) -> impl Iterator<Item = InvalidId> {
        (self.rejected_organization.iter())
            .chain(&self.rejected_correlation)
            .cloned()
    }

    /// Adds an AMQP header of your own to the message: a string, an integer, a boolean
    /// or a float (see [`HeaderValue`]). Setting a name again replaces its value; names
    /// are case-sensitive, as in AMQP. The headers travel next to the library's own, in
    /// the message properties, not in the JSON body.
    ///
    /// A name must be 1 to [`MAX_HEADER_NAME_BYTES`](crate::header::MAX_HEADER_NAME_BYTES) (128)
    /// bytes of ASCII letters, digits, `-`, `_` and `.`, and is refused, whatever its
    /// case, when it is one of the [`RESERVED_HEADERS`](crate::header::RESERVED_HEADERS) (the
    /// library's own `organization_id` and `schema_version`; `traceparent`, `tracestate`
    /// and `baggage`, which tracing will add; RabbitMQ's `CC` and `BCC`, which add
    /// routing keys) or starts with one of the
    /// [`RESERVED_HEADER_PREFIXES`](crate::header::RESERVED_HEADER_PREFIXES) (`fitviz`, kept for
    /// the library; `x-`, RabbitMQ's: `x-death`, `x-delay`, `x-match`, …). An event
    /// carries at most [`MAX_CUSTOM_HEADERS`](crate::header::MAX_CUSTOM_HEADERS) (64) of them.
    /// [`check_header_name`](crate::header::check_header_name) checks a name alone.
    ///
    /// Like [`with_organization`](Self::with_organization) this stays infallible: a
    /// refused header is not stored but remembered, and publishing (or spawning) the
    /// event fails with [`ErrorKind::Validation`](crate::ErrorKind::Validation) naming
    /// `headers.<name>` (a name that breaks the character or length rule is shown
    /// quoted, escaped and cut short), before any I/O.
    ///
    /// Values have no limit of their own: all the properties and headers together must
    /// fit the connection's negotiated AMQP frame size (RabbitMQ's default `frame_max`
    /// is 131072 bytes), which the transport checks before sending — a larger event
    /// fails with [`ErrorKind::TooLarge`](crate::ErrorKind::TooLarge) and the connection
    /// stays open.
    ///
    /// # Example
    /// ```
    /// use fitviz_events::{Event, header::HeaderValue, events::WorkoutCreated, testing::Example};
    ///
    /// let event = Event::new(WorkoutCreated::example())
    ///     .with_organization("org-42")
    ///     .with_header("tenant-tier", "gold")
    ///     .with_header("priority", 3)
    ///     .with_header("replay", false);
    /// assert_eq!(event.header("priority"), Some(&HeaderValue::Int(3)));
    /// assert_eq!(event.headers().count(), 3);
    /// ```
    #[must_use]
    pub fn with_header(mut self, name: impl AsRef<str>, value: impl Into<HeaderValue>) -> Self {
        Arc::make_mut(self.headers.get_or_insert_with(Arc::default))
            .set(name.as_ref(), value.into());
        self
    }

    /// The custom headers set with [`with_header`](Self::with_header) and accepted,
    /// as `(name, value)`, in the order first set (refused ones are not here).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &HeaderValue)> {
        self.headers.iter().flat_map(|headers| headers.iter())
    }

    /// The value of the custom header `name` (case-sensitive), if set and accepted.
    pub fn header(&self, name: &str) -> Option<&HeaderValue> {
        self.headers()
            .find_map(|(n, value)| (n == name).then_some(value))
    }

    /// `(headers.<name>, reason)` for each custom header refused by
    /// [`with_header`](Self::with_header).
    pub(crate) fn rejected_headers(&self) -> impl Iterator<Item = (&str, &'static str)> {
        self.headers.iter().flat_map(|headers| headers.rejected())
    }

    /// Sets the source application name (by default the publisher's configured source).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Arc<str>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Names the schema version of a JSON event's `data`: the [validation
    /// layer](crate::validate) checks `data` against that version's schema, and the
    /// envelope's `version` field and `schema_version` header carry it. Without it a JSON
    /// event is sent as the version its publisher pins for the type (see
    /// [`SchemaRegistry`](crate::SchemaRegistry)). Typed events carry their own
    /// ([`DomainEvent::VERSION`]).
    ///
    /// ```
    /// use fitviz_events::Event;
    ///
    /// let event = Event::from_json("workout.created", serde_json::json!({"workout_id": "w-1"}))
    ///     .with_version(2);
    /// assert_eq!(event.version(), 2);
    /// ```
    #[must_use]
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = Some(version);
        self
    }

    /// The event id (UUID v7); kept across retries so consumers can de-duplicate.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The event type, e.g. `workout.created`; also the routing key.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The organization id, once known (`None` when the one given was invalid).
    pub fn organization_id(&self) -> Option<&OrganizationId> {
        self.organization_id.as_ref()
    }

    /// When the event happened (UTC).
    pub fn timestamp(&self) -> DateTime<Utc> {
        self.timestamp
    }

    /// The schema version: a typed event's own, the one given with
    /// [`with_version`](Self::with_version), or — once the envelope is stamped — the one
    /// its publisher pins for the type; `1` until then.
    pub fn version(&self) -> u32 {
        self.version.unwrap_or(1)
    }

    pub(crate) fn has_version(&self) -> bool {
        self.version.is_some()
    }

    /// The version given to the event (a typed event's own, or [`with_version`](Self::with_version)'s).
    pub(crate) fn explicit_version(&self) -> Option<u32> {
        self.version
    }

    pub(crate) fn set_version(&mut self, version: Option<u32>) {
        self.version = version;
    }

    /// The source application name, if set.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// The correlation id, if set.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// The payload as JSON.
    pub fn data_json(&self) -> serde_json::Value {
        match &self.data {
            EventData::Json(value) => (**value).clone(),
            EventData::Typed(_) => serde_json::to_value(&self.data).unwrap_or_default(),
        }
    }

    pub(crate) fn set_organization(&mut self, organization_id: OrganizationId) {
        self.organization_id = Some(organization_id);
    }

    pub(crate) fn set_source_if_absent(&mut self, source: &Arc<str>) {
        if self.source.is_none() {
            self.source = Some(source.clone());
        }
    }

    pub(crate) fn set_correlation_id_if_absent(&mut self, correlation_id: Option<&Arc<str>>) {
        if self.correlation_id.is_none() {
            self.correlation_id = correlation_id.cloned();
        }
    }

    /// What the layers of the stack hand each other on this event: the one way they
    /// do (see [`crate::event::context`] for which layer writes and reads each part).
    pub(crate) fn context(&self) -> &EventContext {
        &self.context
    }

    /// The [context](Self::context), for the layer that writes a part of it.
    pub(crate) fn context_mut(&mut self) -> &mut EventContext {
        &mut self.context
    }

    /// Encodes the JSON body that goes on the wire (the contract with consumers).
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut buf = Vec::with_capacity(384);
        serde_json::to_writer(&mut buf, self)?;
        Ok(buf)
    }
}

struct Millis<'a>(&'a DateTime<Utc>);

impl Serialize for Millis<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Event", 8)?;
        s.serialize_field("event_id", &self.id)?;
        s.serialize_field("event_type", &*self.event_type)?;
        s.serialize_field(
            "organization_id",
            &self.organization_id.as_ref().map(|o| o.as_str()),
        )?;
        s.serialize_field("timestamp", &Millis(&self.timestamp))?;
        s.serialize_field("version", &self.version())?;
        s.serialize_field("source", &self.source.as_deref())?;
        s.serialize_field("correlation_id", &self.correlation_id.as_deref())?;
        s.serialize_field("data", &self.data)?;
        s.end()
    }
}

/// Checks an event type: lowercase ASCII `noun.verb` segments of `[a-z0-9_]`,
/// separated by dots, at least two segments, at most 255 bytes (it is the routing key).
pub fn check_event_type(event_type: &str) -> Result<(), &'static str> {
    if event_type.is_empty() {
        return Err("is empty");
    }
    if event_type.len() > 255 {
        return Err("is longer than 255 bytes");
    }
    let mut segments = 0;
    for segment in event_type.split('.') {
        segments += 1;
        if segment.is_empty() {
            return Err("has an empty segment (expected lowercase `noun.verb`)");
        }
        if !segment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err("may only contain lowercase ascii letters, digits, `_` and `.`");
        }
        if !segment.as_bytes()[0].is_ascii_lowercase() {
            return Err("segments must start with a lowercase letter");
        }
    }
    if segments < 2 {
        return Err("must be dotted `noun.verb`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_rules() {
        assert!(check_event_type("workout.created").is_ok());
        assert!(check_event_type("class_session.rescheduled.v2").is_ok());
        for bad in [
            "",
            "workout",
            "Workout.created",
            "workout..created",
            ".x",
            "x.",
            "a.b c",
            "ü.x",
            "1x.y",
        ] {
            assert!(check_event_type(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(check_event_type(&format!("a.{}", "b".repeat(254))).is_err());
        assert!(check_event_type(&format!("a.{}", "b".repeat(253))).is_ok());
    }

    #[test]
    fn json_body_contract() {
        let event = Event::from_json("workout.created", serde_json::json!({"x": 1}))
            .with_organization("org-42")
            .with_source("svc");
        let body: serde_json::Value =
            serde_json::from_slice(&event.to_json_bytes().unwrap()).unwrap();
        assert_eq!(body["event_id"], event.id().to_string());
        assert_eq!(body["event_type"], "workout.created");
        assert_eq!(body["organization_id"], "org-42");
        assert_eq!(body["version"], 1);
        assert_eq!(body["source"], "svc");
        assert_eq!(body["correlation_id"], serde_json::Value::Null);
        assert_eq!(body["data"], serde_json::json!({"x": 1}));
        let ts = body["timestamp"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && ts.len() == "2026-11-27T15:00:00.123Z".len(),
            "{ts}"
        );
    }
}
