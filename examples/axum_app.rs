//! A small FitViz API in Axum that publishes events from its handlers.
//!
//! - a toy auth middleware sets the request's `OrganizationId` from `X-Organization-Id`;
//! - `EventPublishLayer` gives every handler a `Publisher` bound to that organization
//!   and to the `x-request-id` (the events' correlation id);
//! - `POST /workouts` publishes and waits for the broker's confirm (`?` maps errors to
//!   422 / 503 / 500), `POST /bookings` publishes detached, `POST /payments` uses the
//!   JSON path, `GET /health` reports the circuit breaker's state;
//! - SIGTERM (how containers and systemd stop a service) or Ctrl-C shuts down gracefully:
//!   requests in progress finish, then `publisher.close()` flushes the detached queue.
//!
//! ```sh
//! cargo run --example axum_app            # listens on 127.0.0.1:3000, or $PORT
//! curl -X POST -H 'X-Organization-Id: org-1' -H 'content-type: application/json' \
//!      localhost:3000/workouts -d '{"workout_id":"w-1","member_id":"m-1","workout_type":"run","duration_minutes":30}'
//! ```
//!
//! Events are published with `mandatory`: an event no queue is bound for comes back as
//! unroutable (HTTP 500). In production the notification service binds its queue; so
//! that the demo works on its own, the app binds `fitviz.events.axum_app` while it runs,
//! where you can see the events (`rabbitmqadmin get queue=fitviz.events.axum_app` or any
//! consumer). That queue holds at most 1,000 events (`x-max-length`), is deleted when the
//! app stops, and should the app be killed, the broker removes it a minute later
//! (`x-expires`; the app renews it while it runs).

use axum::{
    Json, Router,
    extract::Request,
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use fitviz_events::testing::Example;
use fitviz_events::{
    Event, EventPublisher, OrganizationId, PublishError, PublisherConfig,
    events::{BookingConfirmed, WorkoutCreated},
    http::{EventPublishLayer, Publisher},
};
use serde::Deserialize;
use serde_json::{Value, json};

/// Stand-in for real authentication: trusts the `X-Organization-Id` header.
async fn toy_auth(mut request: Request, next: Next) -> Response {
    match request
        .headers()
        .get("x-organization-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
    {
        Some(org) => {
            let org = OrganizationId::from(org);
            request.extensions_mut().insert(org);
            next.run(request).await
        }
        None if request.uri().path() == "/health" => next.run(request).await,
        None => (StatusCode::UNAUTHORIZED, "missing X-Organization-Id").into_response(),
    }
}

#[derive(Deserialize)]
struct NewWorkout {
    workout_id: String,
    member_id: String,
    workout_type: String,
    duration_minutes: u32,
    calories: Option<u32>,
}

async fn create_workout(
    publisher: Publisher,
    Json(body): Json<NewWorkout>,
) -> Result<(StatusCode, Json<Value>), PublishError> {
    let event = WorkoutCreated {
        workout_id: body.workout_id,
        member_id: body.member_id,
        workout_type: body.workout_type,
        duration_minutes: body.duration_minutes,
        calories: body.calories,
        started_at: chrono::Utc::now(),
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
    Json(json!({
        "status": "ok",
        "event_bus": publisher.breaker_state().map(|s| s.as_str()),
        "queued_events": publisher.queued(),
    }))
}

/// The demo queue: bound to every event type, bounded, and short-lived. Each operation
/// uses a connection of its own, so nothing is held open between them.
struct DemoQueue {
    name: &'static str,
    url: String,
    exchange: String,
}

impl DemoQueue {
    /// How often [`declare`](Self::declare) runs again to renew the `x-expires` lease
    /// (publishing to a queue does not count as using it).
    const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

    fn new(name: &'static str, config: &PublisherConfig) -> Self {
        Self {
            name,
            url: config.url.expose_secret().to_owned(),
            exchange: config.exchange.clone(),
        }
    }

    async fn on_channel<T>(
        &self,
        op: impl AsyncFnOnce(&lapin::Channel) -> Result<T, lapin::Error>,
    ) -> Result<T, lapin::Error> {
        let properties = lapin::ConnectionProperties::default().with_connection_name(
            format!("fitviz-events example {} (demo queue)", self.name).into(),
        );
        let connection = lapin::Connection::connect(&self.url, properties).await?;
        let result = match connection.create_channel().await {
            Ok(channel) => {
                let result = op(&channel).await;
                let _ = channel.close(200, "done".into()).await;
                result
            }
            Err(e) => Err(e),
        };
        let _ = connection.close(200, "done".into()).await;
        result
    }

    /// Declares the queue and binds it to every event type; run again, renews its lease.
    async fn declare(&self) -> Result<(), lapin::Error> {
        use lapin::{
            options::{QueueBindOptions, QueueDeclareOptions},
            types::{AMQPValue, FieldTable},
        };
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(1_000));
        args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
        self.on_channel(async |channel| {
            channel
                .queue_declare(self.name.into(), QueueDeclareOptions::default(), args)
                .await?;
            channel
                .queue_bind(
                    self.name.into(),
                    self.exchange.as_str().into(),
                    "#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        })
        .await
    }

    /// Deletes the queue; returns how many events it held.
    async fn delete(&self) -> Result<u32, lapin::Error> {
        self.on_channel(async |channel| {
            channel
                .queue_delete(self.name.into(), Default::default())
                .await
        })
        .await
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut sigterm = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received: shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received: shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C received: shutting down");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = PublisherConfig::from_env()?;
    let publisher = EventPublisher::connect(config.clone()).await?;
    let demo_queue = std::sync::Arc::new(DemoQueue::new("fitviz.events.axum_app", &config));
    demo_queue.declare().await?;
    let renew = tokio::spawn({
        let demo_queue = demo_queue.clone();
        async move {
            loop {
                tokio::time::sleep(DemoQueue::RENEW_EVERY).await;
                if let Err(error) = demo_queue.declare().await {
                    tracing::warn!(%error, "could not renew the demo queue");
                }
            }
        }
    });

    let app = Router::new()
        .route("/workouts", post(create_workout))
        .route("/bookings", post(confirm_booking))
        .route("/payments/failed", post(payment_failed))
        .route("/health", get(health))
        .with_state(publisher.clone())
        .layer(EventPublishLayer::new(publisher.clone()))
        .layer(middleware::from_fn(toy_auth));

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
        Ok(events) => tracing::info!(queue = demo_queue.name, events, "demo queue deleted"),
        Err(error) => {
            tracing::warn!(queue = demo_queue.name, %error, "demo queue not deleted; it expires within a minute")
        }
    }
    Ok(())
}
