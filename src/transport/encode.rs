//! Encoding an [`Event`] into an AMQP message: the JSON body and the properties
//! (the wire contract with consumers; see [the guide](crate::guide::wire_contract)).

use std::io;

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::{
    error::PublishError,
    event::{Event, check_event_type},
    header::{HEADER_ORGANIZATION_ID, HEADER_SCHEMA_VERSION, HeaderValue},
    schema::ValidationError,
};

fn short(event_type: &str, field: &str, value: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(value).map_err(|_| {
        PublishError::validation(ValidationError::single(
            event_type,
            field,
            "is longer than 255 bytes",
        ))
    })
}

/// The error a [`Limited`] writer reports once the limit is passed.
#[derive(Debug)]
struct OverLimit;

impl std::fmt::Display for OverLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("over the body size limit")
    }
}

impl std::error::Error for OverLimit {}

/// A `Vec` that refuses to grow past `limit` bytes, so that an oversized payload is
/// never encoded in full (a 140 MB event costs no 140 MB buffer).
struct Limited {
    buf: Vec<u8>,
    limit: usize,
}

impl io::Write for Limited {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.buf.len() + bytes.len() > self.limit {
            return Err(io::Error::other(OverLimit));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Counts what is written, refusing to go past `limit`; writes nowhere.
struct Counting {
    written: usize,
    limit: usize,
}

impl io::Write for Counting {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.written += bytes.len();
        if self.written > self.limit {
            return Err(io::Error::other(OverLimit));
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Checks that the body of `event` is at most `max_body_bytes` long without keeping
/// it: for the detached queue, so that `spawn` reports an oversized event to its
/// caller instead of the worker dropping it later.
///
/// # Errors
/// [`ErrorKind::TooLarge`](crate::error::ErrorKind::TooLarge) when it is longer. A
/// payload that cannot be encoded at all is left to [`encode`] to report.
pub(crate) fn check_body_size(event: &Event, max_body_bytes: usize) -> Result<(), PublishError> {
    let mut counting = Counting {
        written: 0,
        limit: max_body_bytes,
    };
    match serde_json::to_writer(&mut counting, event) {
        Err(e) if e.is_io() => Err(too_large(event, max_body_bytes)),
        _ => Ok(()),
    }
}

fn too_large(event: &Event, max_body_bytes: usize) -> PublishError {
    PublishError::too_large("the encoded event", None, max_body_bytes).for_event(event.id())
}

/// Bytes of a content header frame besides its properties: frame header (7), class id
/// (2), weight (2), body size (8), property flags (2), frame end (1).
const HEADER_FRAME_OVERHEAD: usize = 7 + 2 + 2 + 8 + 2 + 1;

/// The size of the content header frame that carries `properties` (all of them,
/// headers included): it must fit the connection's negotiated `frame_max`, or the
/// broker closes the whole connection (`FRAME_ERROR`), failing every publish on it.
/// Exact for the properties [`encode`] sets, custom headers included (long strings,
/// long-long ints, booleans, doubles); other header values count as a long string of
/// their `Debug` text (an over-estimate).
pub(crate) fn header_frame_bytes(properties: &BasicProperties) -> usize {
    fn short(s: Option<&ShortString>) -> usize {
        s.map_or(0, |s| 1 + s.as_str().len())
    }
    let mut size = HEADER_FRAME_OVERHEAD
        + short(properties.content_type().as_ref())
        + short(properties.content_encoding().as_ref())
        + short(properties.correlation_id().as_ref())
        + short(properties.reply_to().as_ref())
        + short(properties.expiration().as_ref())
        + short(properties.message_id().as_ref())
        + short(properties.kind().as_ref())
        + short(properties.user_id().as_ref())
        + short(properties.app_id().as_ref())
        + short(properties.cluster_id().as_ref())
        + properties.delivery_mode().map_or(0, |_| 1)
        + properties.priority().map_or(0, |_| 1)
        + properties.timestamp().map_or(0, |_| 8);
    if let Some(headers) = properties.headers() {
        size += 4;
        for (key, value) in headers {
            size += 1 + key.as_str().len() + 1;
            size += match value {
                AMQPValue::LongString(s) => 4 + s.as_bytes().len(),
                AMQPValue::ShortString(s) => 1 + s.as_str().len(),
                AMQPValue::LongLongInt(_) | AMQPValue::Timestamp(_) | AMQPValue::Double(_) => 8,
                AMQPValue::LongInt(_) | AMQPValue::LongUInt(_) | AMQPValue::Float(_) => 4,
                AMQPValue::Boolean(_) | AMQPValue::ShortShortInt(_) => 1,
                other => 4 + format!("{other:?}").len(),
            };
        }
    }
    size
}

/// A custom header's value as it goes on the wire.
fn amqp_value(value: &HeaderValue) -> AMQPValue {
    match value {
        HeaderValue::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes())),
        HeaderValue::Int(i) => AMQPValue::LongLongInt(*i),
        HeaderValue::Bool(b) => AMQPValue::Boolean(*b),
        HeaderValue::Float(f) => AMQPValue::Double(*f),
    }
}

/// Encodes the body and AMQP properties of `event`, refusing a body longer than
/// `max_body_bytes`.
///
/// # Errors
/// [`ErrorKind::Validation`](crate::error::ErrorKind::Validation) when the event type
/// is not a valid routing key, the payload cannot be encoded, or a property value is
/// longer than AMQP allows; [`ErrorKind::TooLarge`](crate::error::ErrorKind::TooLarge)
/// when the body is longer than `max_body_bytes`.
pub(crate) fn encode(
    event: &Event,
    max_body_bytes: usize,
) -> Result<(Vec<u8>, BasicProperties), PublishError> {
    let event_type = event.event_type();
    check_event_type(event_type).map_err(|why| {
        PublishError::validation(ValidationError::single(event_type, "event_type", why))
    })?;
    let mut body = Limited {
        buf: Vec::with_capacity(384.min(max_body_bytes)),
        limit: max_body_bytes,
    };
    if let Err(e) = serde_json::to_writer(&mut body, event) {
        if e.is_io() {
            return Err(too_large(event, max_body_bytes));
        }
        return Err(PublishError::validation(ValidationError::single(
            event_type,
            "data",
            format!("cannot be encoded as json: {e}"),
        )));
    }
    let body = body.buf;
    let mut headers = FieldTable::default();
    // The caller's own first: the library's, inserted after, would win a clash (the
    // reserved names make one impossible).
    for (name, value) in event.headers() {
        headers.insert(name.into(), amqp_value(value));
    }
    if let Some(org) = event.organization_id() {
        headers.insert(
            HEADER_ORGANIZATION_ID.into(),
            AMQPValue::LongString(LongString::from(org.as_str())),
        );
    }
    headers.insert(
        HEADER_SCHEMA_VERSION.into(),
        AMQPValue::LongLongInt(i64::from(event.version())),
    );
    #[cfg(feature = "opentelemetry")]
    crate::telemetry::inject(event.context().span(), &mut headers);
    let timestamp = u64::try_from(event.timestamp().timestamp()).unwrap_or(0);
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_message_id(event.id().to_string().into())
        .with_timestamp(timestamp)
        .with_type(short(event_type, "event_type", event_type)?)
        .with_headers(headers);
    if let Some(source) = event.source() {
        properties = properties.with_app_id(short(event_type, "source", source)?);
    }
    if let Some(correlation_id) = event.correlation_id() {
        properties =
            properties.with_correlation_id(short(event_type, "correlation_id", correlation_id)?);
    }
    Ok((body, properties))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn event_of(bytes: usize) -> Event {
        Event::from_json(
            "thing.happened",
            serde_json::json!({ "blob": "x".repeat(bytes) }),
        )
        .with_organization("org-1")
    }

    #[test]
    fn a_body_over_the_limit_is_too_large_and_not_retryable() {
        let event = event_of(10);
        let (body, _) = encode(&event, 1 << 20).unwrap();
        // Exactly at the limit passes, one byte less fails.
        assert_eq!(encode(&event, body.len()).unwrap().0, body);
        let err = encode(&event, body.len() - 1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert!(!err.is_retryable() && !err.is_broker_failure());
        assert_eq!(err.event_id(), Some(event.id()));
        assert!(err.to_string().contains("exceeds the limit of"), "{err}");

        let huge = event_of(4 << 20);
        assert_eq!(
            encode(&huge, 1 << 20).unwrap_err().kind(),
            ErrorKind::TooLarge
        );

        assert!(check_body_size(&event, body.len()).is_ok());
        let err = check_body_size(&event, body.len() - 1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TooLarge);
        assert_eq!(
            err.to_string(),
            format!(
                "the encoded event exceeds the limit of {} bytes (event {})",
                body.len() - 1,
                event.id()
            )
        );
    }

    #[test]
    fn the_header_frame_size_counts_every_property_and_header() {
        let small = event_of(1).with_correlation_id("r");
        let (_, props) = encode(&small, 1 << 20).unwrap();
        let base = header_frame_bytes(&props);
        // content type, message id (uuid), type, delivery mode, timestamp, headers.
        assert!(base > HEADER_FRAME_OVERHEAD + 36 && base < 300, "{base}");
        let long_org = "o".repeat(255);
        let long = event_of(1)
            .with_correlation_id("r")
            .with_organization(long_org.as_str());
        let (_, props) = encode(&long, 1 << 20).unwrap();
        assert_eq!(header_frame_bytes(&props), base + 255 - "org-1".len());
        // With checked ids and no custom headers the content header always fits the
        // smallest frame_max (custom headers can make it larger: the transport checks).
        let widest = event_of(1)
            .with_correlation_id("c".repeat(255))
            .with_organization(long_org.as_str())
            .with_source("s".repeat(255));
        let (_, props) = encode(&widest, 1 << 20).unwrap();
        assert!(header_frame_bytes(&props) < 4096);
    }

    /// The properties as lapin writes them (property flags included).
    fn lapin_bytes(properties: &BasicProperties) -> Vec<u8> {
        let write = lapin::protocol::basic::gen_properties::<Vec<u8>>(properties);
        write(Vec::new().into()).unwrap().into_inner().0
    }

    #[test]
    fn the_header_frame_size_is_exact_for_custom_headers_of_every_type() {
        let plain = event_of(1).with_correlation_id("r").with_source("svc");
        let headers = [
            ("s", HeaderValue::from("gold")),
            ("empty", HeaderValue::from("")),
            ("utf8", HeaderValue::from("żółw 🐢")),
            ("long", HeaderValue::from("v".repeat(70_000))),
            ("i", HeaderValue::from(i64::MIN)),
            ("b", HeaderValue::from(true)),
            ("f", HeaderValue::from(-0.5)),
        ];
        let mut events = vec![plain.clone()];
        let mut all = plain.clone();
        for (name, value) in headers.clone() {
            events.push(plain.clone().with_header(name, value.clone()));
            all = all.with_header(name, value);
        }
        events.push(all);
        for event in &events {
            let (_, props) = encode(event, 1 << 20).unwrap();
            // The frame's own bytes besides the properties: all of the overhead but the
            // two bytes of property flags, which lapin writes with the properties.
            assert_eq!(
                header_frame_bytes(&props),
                HEADER_FRAME_OVERHEAD - 2 + lapin_bytes(&props).len(),
                "{:?}",
                event.headers().map(|(name, _)| name).collect::<Vec<_>>()
            );
        }
        // Each type adds its name (short string), a type byte and its value.
        let base = header_frame_bytes(&encode(&plain, 1 << 20).unwrap().1);
        let grew =
            |i: usize| header_frame_bytes(&encode(&events[i + 1], 1 << 20).unwrap().1) - base;
        assert_eq!(grew(0), (1 + 1) + 1 + (4 + 4));
        assert_eq!(grew(3), (1 + 4) + 1 + (4 + 70_000));
        assert_eq!(grew(4), (1 + 1) + 1 + 8);
        assert_eq!(grew(5), (1 + 1) + 1 + 1);
        assert_eq!(grew(6), (1 + 1) + 1 + 8);
    }

    #[test]
    fn custom_headers_travel_with_their_types_next_to_the_library_headers() {
        let event = event_of(1)
            .with_header("tier", "gold")
            .with_header("count", 42)
            .with_header("replay", false)
            .with_header("ratio", 0.25);
        let (_, props) = encode(&event, 1 << 20).unwrap();
        let headers = props.headers().as_ref().unwrap().inner();
        assert_eq!(
            headers.get("tier"),
            Some(&AMQPValue::LongString("gold".into()))
        );
        assert_eq!(headers.get("count"), Some(&AMQPValue::LongLongInt(42)));
        assert_eq!(headers.get("replay"), Some(&AMQPValue::Boolean(false)));
        assert_eq!(headers.get("ratio"), Some(&AMQPValue::Double(0.25)));
        assert_eq!(
            headers.get(HEADER_ORGANIZATION_ID),
            Some(&AMQPValue::LongString("org-1".into()))
        );
        assert_eq!(
            headers.get(HEADER_SCHEMA_VERSION),
            Some(&AMQPValue::LongLongInt(1))
        );
        assert_eq!(headers.len(), 6);
        // Refused headers are not encoded (the organization layer reports them).
        let refused = event_of(1)
            .with_header("x-death", 1)
            .with_header("CC", "a.b");
        let (_, props) = encode(&refused, 1 << 20).unwrap();
        assert_eq!(props.headers().as_ref().unwrap().inner().len(), 2);
    }
}
