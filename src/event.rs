//! The event envelope: what travels to the broker, and the receipt that comes back.

use std::{borrow::Cow, fmt, sync::Arc, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer, ser::SerializeStruct};
use uuid::Uuid;

use crate::schema::{DomainEvent, DynDomainEvent};

/// The tenant an event belongs to.
///
/// Put one into the request extensions (your auth middleware does this) and the
/// HTTP integration stamps it on every event of that request.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrganizationId(Arc<str>);

impl OrganizationId {
    /// Wraps an organization id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for OrganizationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for OrganizationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for OrganizationId {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for OrganizationId {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

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

/// What the request an event is published in adds to it: the request's organization
/// (authoritative unless overrides are allowed) and its correlation id. Set by the
/// [HTTP integration](crate::http); read by the organization and envelope layers.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestScope {
    pub(crate) organization: Option<OrganizationId>,
    pub(crate) correlation_id: Option<Arc<str>>,
    pub(crate) allow_override: bool,
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
    pub(crate) data: EventData,
    /// The request this event is published in, until the envelope is stamped.
    pub(crate) scope: Option<Arc<RequestScope>>,
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
            data,
            scope: None,
        }
    }

    /// Sets the organization id.
    #[must_use]
    pub fn with_organization(mut self, organization_id: impl Into<OrganizationId>) -> Self {
        self.organization_id = Some(organization_id.into());
        self
    }

    /// Sets the correlation id (for example the HTTP request id).
    #[must_use]
    pub fn with_correlation_id(mut self, correlation_id: impl Into<Arc<str>>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Sets the source application name (by default the publisher's configured source).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<Arc<str>>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Sets the schema version explicitly (typed events carry their own).
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

    /// The organization id, once known.
    pub fn organization_id(&self) -> Option<&OrganizationId> {
        self.organization_id.as_ref()
    }

    /// When the event happened (UTC).
    pub fn timestamp(&self) -> DateTime<Utc> {
        self.timestamp
    }

    /// The schema version; `1` until a schema says otherwise.
    pub fn version(&self) -> u32 {
        self.version.unwrap_or(1)
    }

    pub(crate) fn has_version(&self) -> bool {
        self.version.is_some()
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

/// Proof that the broker confirmed an event.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The id of the confirmed event.
    pub event_id: Uuid,
    /// Time from handing the event to the transport until the broker's confirm.
    pub elapsed: Duration,
}

impl Receipt {
    /// A receipt for `event_id` confirmed after `elapsed`.
    pub fn new(event_id: Uuid, elapsed: Duration) -> Self {
        Self { event_id, elapsed }
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
