//! A small FitViz API in Axum that publishes events from its handlers.
//!
//! - a toy auth middleware sets the request's `OrganizationId` from `X-Organization-Id`;
//! - `EventPublishLayer` gives every handler a `Publisher` bound to that organization
//!   and to the `x-request-id` (the events' correlation id);
//! - `POST /workouts` publishes and waits for the broker's confirm (`?` maps errors to
//!   422 / 503 / 500), `POST /bookings` publishes detached, `POST /payments` uses the
//!   JSON path;
//! - observability (see the README's *Observability*): `GET /metrics` in the Prometheus
//!   text format, `GET /ready` (200, or 503 with the reasons while the publisher cannot
//!   publish: not connected, blocked by the broker, circuit open), `GET /live` (always
//!   200: it never looks at the broker), `GET /health` (the circuit breaker's and the
//!   connection's state, always 200); a tower-http `TraceLayer` opens a span per request,
//!   and with `--features opentelemetry` that span continues an incoming W3C
//!   `traceparent`, so the events a request publishes carry its trace id;
//! - SIGTERM (how containers and systemd stop a service) or Ctrl-C shuts down gracefully:
//!   requests in progress finish, then `publisher.close()` flushes the detached queue.
//!
//! ```sh
//! cargo run --example axum_app            # listens on 127.0.0.1:3000, or $PORT
//! cargo run --example axum_app --features opentelemetry   # ... and continues traceparent
//! curl -X POST -H 'X-Organization-Id: org-1' -H 'content-type: application/json' \
//!      localhost:3000/workouts -d '{"workout_id":"w-1","member_id":"m-1","workout_type":"run","duration_minutes":30}'
//! curl localhost:3000/metrics
//! ```
//!
//! Events are published with `mandatory`: an event no queue is bound for comes back
//! and is kept in the bounded `fitviz.events.unrouted` queue (or, with
//! `FITVIZ_EVENTS_UNROUTABLE=error`, is an HTTP 500). In production the notification service binds its queue; so
//! that the demo works on its own, the app binds `fitviz.events.axum_app` while it runs,
//! where you can see the events (`rabbitmqadmin get queue=fitviz.events.axum_app` or any
//! consumer). That queue holds at most 1,000 events (`x-max-length`), is deleted when the
//! app stops, and should the app be killed, the broker removes it a minute later
//! (`x-expires`; the app renews it while it runs).

mod common;

use axum::{
    Json, Router,
    extract::Request,
    http::{StatusCode, header::CONTENT_TYPE},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use common::{DemoQueue, shutdown_signal};
use fitviz_events::testing::Example;
use fitviz_events::{
    Event, EventPublisher, OrganizationId, PublishError, PublisherConfig,
    events::{BookingConfirmed, WorkoutCreated},
    http::{EventPublishLayer, Publisher},
};
use serde::Deserialize;
use serde_json::{Value, json};

/// The routes a probe or a scraper calls, without an organization.
const UNAUTHENTICATED: &[&str] = &["/health", "/live", "/ready", "/metrics"];

/// Stand-in for real authentication: trusts the `X-Organization-Id` header, but only
/// a valid one ([`OrganizationId::parse`]): an invalid value is answered 400 naming the
/// header before any handler runs, a missing one 401 (except on the probe and metrics
/// routes).
async fn toy_auth(mut request: Request, next: Next) -> Response {
    let header = request.headers().get("x-organization-id");
    match header.map(|v| std::str::from_utf8(v.as_bytes()).map(OrganizationId::parse)) {
        Some(Ok(Ok(org))) => {
            request.extensions_mut().insert(org);
            next.run(request).await
        }
        Some(Ok(Err(invalid))) => (
            StatusCode::BAD_REQUEST,
            format!("invalid X-Organization-Id header: {}", invalid.reason()),
        )
            .into_response(),
        Some(Err(_)) => (
            StatusCode::BAD_REQUEST,
            "invalid X-Organization-Id header: is not UTF-8",
        )
            .into_response(),
        None if UNAUTHENTICATED.contains(&request.uri().path()) => next.run(request).await,
        None => (StatusCode::UNAUTHORIZED, "missing X-Organization-Id header").into_response(),
    }
}

#[derive(Deserialize)]
struct NewWorkout {
    workout_id: String,
    title: Option<String>,
    member_id: Option<String>,
    workout_type: Option<String>,
    duration_minutes: Option<u32>,
    calories: Option<u32>,
}

async fn create_workout(
    publisher: Publisher,
    Json(body): Json<NewWorkout>,
) -> Result<(StatusCode, Json<Value>), PublishError> {
    let event = WorkoutCreated {
        workout_id: body.workout_id,
        title: body.title,
        member_id: body.member_id,
        workout_type: body.workout_type,
        duration_minutes: body.duration_minutes,
        calories: body.calories,
        started_at: Some(chrono::Utc::now()),
    };
    let receipt = publisher.publish(event).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "event_id": receipt.event_id })),
    ))
}

async fn confirm_booking(
    publisher: Publisher,
    Json(body): Json<Value>,
) -> Result<StatusCode, PublishError> {
    let mut booking = BookingConfirmed::example();
    if let Some(id) = body["booking_id"].as_str() {
        booking.booking_id = id.to_owned();
    }
    // Validated now; published in the background.
    publisher.spawn(Event::new(booking)).await?;
    Ok(StatusCode::ACCEPTED)
}

async fn payment_failed(
    publisher: Publisher,
    Json(body): Json<Value>,
) -> Result<StatusCode, PublishError> {
    publisher.publish_json("payment.failed", body).await?;
    Ok(StatusCode::CREATED)
}

async fn health(
    axum::extract::State(publisher): axum::extract::State<EventPublisher>,
) -> Json<Value> {
    let connection = publisher.connection_state().map(|c| {
        json!({
            "connected": c.connected,
            "node": c.node,
            "blocked": c.blocked,
            "last_error": c.last_error,
        })
    });
    Json(json!({
        "status": "ok",
        "event_bus": publisher.breaker_state().map(|s| s.as_str()),
        "connection": connection,
        "queued_events": publisher.queued(),
    }))
}

/// Readiness: can this instance publish now? 503 with the reasons when it cannot, so
/// that the load balancer sends the requests to another instance meanwhile.
async fn ready(axum::extract::State(publisher): axum::extract::State<EventPublisher>) -> Response {
    match publisher.readiness() {
        Ok(()) => (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response(),
        Err(not_ready) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "reasons": not_ready.reasons })),
        )
            .into_response(),
    }
}

/// Liveness: the process answers. Never looks at the broker: a broker outage must not
/// get every instance restarted.
async fn live() -> &'static str {
    "ok"
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    common::init_tracing();
    // Before the publisher is built: it registers its instruments on first use.
    let metrics = common::install_prometheus()?;
    let config = PublisherConfig::from_env()?;
    let publisher = EventPublisher::connect(config.clone()).await?;
    let demo_queue =
        std::sync::Arc::new(DemoQueue::declare_new("fitviz.events.axum_app", "#", &config).await?);
    let renew = demo_queue.renew_in_background();

    let app = Router::new()
        .route("/workouts", post(create_workout))
        .route("/bookings", post(confirm_booking))
        .route("/payments/failed", post(payment_failed))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/live", get(live))
        .route(
            "/metrics",
            get(move || {
                std::future::ready(
                    (
                        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        metrics.render(),
                    )
                        .into_response(),
                )
            }),
        )
        .with_state(publisher.clone())
        .layer(EventPublishLayer::new(publisher.clone()))
        .layer(middleware::from_fn(toy_auth))
        // Outermost: the request span covers the auth and the publish.
        .layer(common::http_trace_layer());

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    // Flush the detached queue: an event accepted just before the signal is published.
    let report = publisher.close().await;
    tracing::info!(
        published = report.published,
        unsent = report.unsent.len(),
        "event publisher closed"
    );
    renew.abort();
    match demo_queue.delete().await {
        Ok(events) => tracing::info!(queue = demo_queue.name(), events, "demo queue deleted"),
        Err(error) => {
            tracing::warn!(queue = demo_queue.name(), %error, "demo queue not deleted; it expires within a minute")
        }
    }
    Ok(())
}
