//! Axum integration (feature `axum`): the [`Publisher`] extractor and an
//! `IntoResponse` for [`PublishError`] so handlers can use `?`.
//!
//! | error | status | body |
//! |---|---|---|
//! | `Validation` | 422 | `{"error": "validation", "message": …, "violations": [{"field": …, "message": …}]}` |
//! | `TooLarge` | 413 | `{"error": "too_large", "message": …}` |
//! | `CircuitOpen`, `Timeout`, `Connection`, `PoolTimeout`, `QueueFull`, `Shutdown` | 503 with `Retry-After` | `{"error": "event_bus_unavailable", "message": …}` |
//! | anything else | 500 | `{"error": "<kind>", "message": …}` |
//!
//! When the outcome is unknown ([`PublishError::maybe_delivered`]: an attempt may have
//! reached the broker), the body also has `"outcome": "unknown"` and the `"event_id"`
//! to publish again with.
//!
//! Messages never contain credentials.
//!
//! # Example
//! ```
//! use axum::{Router, routing::post};
//! use fitviz_events::{PublishError, events::WorkoutCreated, http::Publisher, testing::Example};
//!
//! async fn create_workout(publisher: Publisher) -> Result<&'static str, PublishError> {
//!     publisher.publish(WorkoutCreated::example()).await?;
//!     Ok("created")
//! }
//!
//! let app: Router = Router::new().route("/workouts", post(create_workout));
//! ```

use axum_core::{
    extract::{FromRequestParts, OptionalFromRequestParts},
    response::{IntoResponse, Response},
};
use http::{HeaderValue, StatusCode, header, request::Parts};

use crate::{error::ErrorKind, error::PublishError, http::Publisher};

/// The rejection when no [`EventPublishLayer`](crate::http::EventPublishLayer) ran for the request.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct MissingPublisherLayer;

/// Body of the [`MissingPublisherLayer`] rejection.
pub const MISSING_LAYER_MESSAGE: &str = "Missing request extension: fitviz_events::http::Publisher was not found. \
Perhaps you forgot to add `.layer(EventPublishLayer::new(publisher))` to your router?";

impl IntoResponse for MissingPublisherLayer {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, MISSING_LAYER_MESSAGE).into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Publisher {
    type Rejection = MissingPublisherLayer;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Publisher>()
            .cloned()
            .ok_or(MissingPublisherLayer)
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Publisher {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Publisher>().cloned())
    }
}

/// Seconds a client should wait before retrying when the event bus is unavailable.
pub const RETRY_AFTER_SECS: u32 = 5;

impl IntoResponse for PublishError {
    fn into_response(self) -> Response {
        let (status, code) = match self.kind() {
            ErrorKind::Validation => (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
            ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ErrorKind::CircuitOpen
            | ErrorKind::Timeout
            | ErrorKind::Connection
            | ErrorKind::PoolTimeout
            | ErrorKind::QueueFull
            | ErrorKind::Shutdown => (StatusCode::SERVICE_UNAVAILABLE, "event_bus_unavailable"),
            ErrorKind::MissingOrganization => {
                (StatusCode::INTERNAL_SERVER_ERROR, "missing_organization")
            }
            ErrorKind::OrganizationMismatch => {
                (StatusCode::INTERNAL_SERVER_ERROR, "organization_mismatch")
            }
            ErrorKind::Unroutable => (StatusCode::INTERNAL_SERVER_ERROR, "unroutable"),
            ErrorKind::Nacked => (StatusCode::INTERNAL_SERVER_ERROR, "nacked"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "publish_failed"),
        };
        let mut body = serde_json::json!({ "error": code, "message": self.to_string() });
        if self.maybe_delivered() {
            body["outcome"] = "unknown".into();
            if let Some(id) = self.event_id() {
                body["event_id"] = id.to_string().into();
            }
        }
        if let Some(validation) = self.validation_error() {
            body["violations"] = validation
                .violations()
                .iter()
                .map(|v| serde_json::json!({ "field": v.field, "message": v.message }))
                .collect();
        }
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body.to_string(),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use uuid::Uuid;

    use super::*;

    async fn respond(error: PublishError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn an_unknown_outcome_says_so_and_names_the_event() {
        let id = Uuid::now_v7();
        let mut error = PublishError::circuit_open().for_event(id);
        error.set_outcome_unknown();
        let (status, body) = respond(error).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["outcome"], "unknown");
        assert_eq!(body["event_id"], id.to_string());
        assert!(!body["message"].as_str().unwrap().contains("event not sent"));

        let (_, body) = respond(PublishError::circuit_open().for_event(id)).await;
        assert!(body.get("outcome").is_none(), "{body}");
    }
}
