//! Axum integration (feature `axum`): the [`Publisher`] extractor and an
//! `IntoResponse` for [`PublishError`] so handlers can use `?`.
//!
//! The status of each [`ErrorKind`] is [`status_of`] (the table on [`ErrorKind`] lists it,
//! with retryability and what the broker may have stored). The body is JSON:
//! `{"error": <code>, "message": …, "outcome": "not sent" | "refused" | "unknown"}`, plus
//! `"violations": [{"field": …, "message": …}]` for `Validation` (422) and the `"event_id"`
//! to publish again with when the outcome is unknown ([`PublishError::delivery`]). A 503
//! carries `Retry-After`.
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

use crate::{
    error::{Delivery, ErrorKind, PublishError},
    http::Publisher,
};

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

/// The HTTP status and the `error` code of each [`ErrorKind`] (the table on [`ErrorKind`]
/// lists the same, and a test holds them together).
pub fn status_of(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::Validation => (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
        ErrorKind::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        ErrorKind::CircuitOpen
        | ErrorKind::Timeout
        | ErrorKind::Connection
        | ErrorKind::PoolTimeout
        | ErrorKind::Blocked
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
        // The broker refuses this service's publishes: a deployment problem (permissions,
        // a missing or different exchange) the client cannot fix and retrying will not
        // cure, so a 500, not a 503 with Retry-After.
        ErrorKind::AccessRefused => (StatusCode::INTERNAL_SERVER_ERROR, "access_refused"),
        ErrorKind::NotFound => (StatusCode::INTERNAL_SERVER_ERROR, "not_found"),
        ErrorKind::PreconditionFailed => (StatusCode::INTERNAL_SERVER_ERROR, "precondition_failed"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "publish_failed"),
    }
}

impl IntoResponse for PublishError {
    fn into_response(self) -> Response {
        let (status, code) = status_of(self.kind());
        let delivery = self.delivery();
        let mut body = serde_json::json!({
            "error": code,
            "message": self.to_string(),
            "outcome": delivery.as_str(),
        });
        if delivery == Delivery::Unknown
            && let Some(id) = self.event_id()
        {
            body["event_id"] = id.to_string().into();
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
        assert_eq!(body["outcome"], "not sent", "{body}");
        assert!(body.get("event_id").is_none(), "{body}");
    }

    /// The table of error kinds on `ErrorKind` is the code's: status, retryability and what
    /// the broker may have stored, row by row, for every kind.
    #[tokio::test]
    async fn the_readme_error_table_matches_the_code() {
        let readme = include_str!("../docs/reference/error-kinds.md");
        let table = readme
            .split("| kind | HTTP | retried | stored by the broker? |")
            .nth(1)
            .expect("docs/reference/error-kinds.md has the error-kind table");
        let rows: Vec<Vec<String>> = table
            .lines()
            .skip(2)
            .take_while(|line| line.starts_with('|'))
            .map(|line| {
                line.trim_matches('|')
                    .split('|')
                    .map(|cell| cell.trim().trim_matches('`').to_owned())
                    .collect()
            })
            .collect();
        assert_eq!(rows.len(), ErrorKind::ALL.len(), "one row per kind");
        for (row, kind) in rows.iter().zip(ErrorKind::ALL) {
            assert_eq!(
                row[0],
                format!("{kind:?}"),
                "kinds in the order of ErrorKind::ALL"
            );
            let (status, _) = status_of(kind);
            assert!(
                row[1].starts_with(status.as_str()),
                "{kind:?}: the table says {}, code {status}",
                row[1]
            );
            assert_eq!(row[2] == "yes", kind.is_retryable(), "{kind:?} retried");
            assert!(
                row[3].starts_with(kind.delivery().as_str()),
                "{kind:?}: the table says {}, code {}",
                row[3],
                kind.delivery().as_str()
            );
            let (response_status, body) =
                respond(PublishError::new(kind, "x").for_event(Uuid::now_v7())).await;
            assert_eq!(response_status, status, "{kind:?}");
            assert_eq!(body["outcome"], kind.delivery().as_str(), "{kind:?}");
        }
    }
}
