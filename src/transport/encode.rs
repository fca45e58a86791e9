//! Encoding an [`Event`] into an AMQP message: the JSON body and the properties
//! (the wire contract with consumers; see the README).

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::{
    error::PublishError,
    event::{Event, check_event_type},
    schema::ValidationError,
};

/// AMQP header carrying the event's organization id.
pub const HEADER_ORGANIZATION_ID: &str = "organization_id";
/// AMQP header carrying the event's schema version.
pub const HEADER_SCHEMA_VERSION: &str = "schema_version";

fn short(event_type: &str, field: &str, value: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(value).map_err(|_| {
        PublishError::validation(ValidationError::single(
            event_type,
            field,
            "is longer than 255 bytes",
        ))
    })
}

/// Encodes the body and AMQP properties of `event`.
///
/// # Errors
/// [`ErrorKind::Validation`](crate::error::ErrorKind::Validation) when the event type
/// is not a valid routing key, the payload cannot be encoded, or a property value is
/// longer than AMQP allows.
pub(crate) fn encode(event: &Event) -> Result<(Vec<u8>, BasicProperties), PublishError> {
    let event_type = event.event_type();
    check_event_type(event_type).map_err(|why| {
        PublishError::validation(ValidationError::single(event_type, "event_type", why))
    })?;
    let body = event.to_json_bytes().map_err(|e| {
        PublishError::validation(ValidationError::single(
            event_type,
            "data",
            format!("cannot be encoded as json: {e}"),
        ))
    })?;
    let mut headers = FieldTable::default();
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
