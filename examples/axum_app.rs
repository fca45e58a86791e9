//! A small FitViz API in Axum that publishes events from its handlers.
//!
//! - a toy auth middleware sets the request's `OrganizationId` from `X-Organization-Id`;
//! - `EventPublishLayer` gives every handler a `Publisher` bound to that organization
//!   and to the `x-request-id` (the events' correlation id);
//! - `POST /workouts` publishes and waits for the broker's confirm (`?` maps errors to
//!   422 / 503 / 500), `POST /bookings` publishes detached, `POST /payments` uses the
//!   JSON path;
//! - observability (see docs/observability.md): `GET /metrics` in the Prometheus
//!   text format, `GET /ready` (200, or 503 with the reasons while the publisher cannot
//!   publish: not connected, blocked by the broker, circuit open), `GET /live` (always
//!   200: it never looks at the broker), `GET /health` (the circuit breaker's and the
//!   connection's state and counts, always 200); a tower-http `TraceLayer` opens a span
//!   per request, and with `--features opentelemetry` that span continues an incoming W3C
//!   `traceparent`, so the events a request publishes carry its trace id;
//! - the probe and metrics routes need no organization, so they show no secret: `/health`
//!   and `/ready` show states, counts and what is wrong, never the broker's user,
//!   addresses or URL (the last connection error names them: it is in the logs, not in
//!   the answers);
//! - a slow client cannot hold a connection: its request's headers must arrive within
//!   [`HEADER_READ_TIMEOUT`] (also the longest a keep-alive connection stays idle), its
//!   body may not stall for more than [`BODY_READ_TIMEOUT`], and a whole request takes at
//!   most [`REQUEST_TIMEOUT`] (408) — `axum::serve` has no header timeout, so the app
//!   serves its connections with hyper's HTTP/1 builder itself ([`serve`]);
//! - SIGTERM (how containers and systemd stop a service) or Ctrl-C shuts down gracefully:
//!   no new connection is accepted, requests in progress get [`SHUTDOWN_GRACE`] to
//!   finish, the connections still open then are closed, and `publisher.close()` always
//!   runs, flushing the detached queue (for at most the publish deadline,
//!   `FITVIZ_EVENTS_PUBLISH_TIMEOUT_MS`, 15 s by default). From SIGTERM to exit takes at
//!   most the grace plus that deadline (25 s by default) and the demo queue's deletion:
//!   give the container runtime a longer stop timeout (Kubernetes waits 30 s by default;
//!   `docker stop` 10 s unless `--time` or Compose's `stop_grace_period` says more).
//!
//! - the transactional outbox (with `--features outbox-postgres`, when
//!   `FITVIZ_EVENTS_OUTBOX_URL` is set): `POST /workouts/outboxed` (the body of
//!   `/workouts`) inserts the workout row and enqueues its event in one PostgreSQL
//!   transaction and answers 201 with `{"event_id": …}`; a relay runs in-process unless
//!   `FITVIZ_EVENTS_OUTBOX_RELAY=off` (then `fitviz-events outbox relay` does it); detached
//!   events spill to the outbox; `/ready` shows the outbox's lag (`pending`, the oldest
//!   pending row's age) without letting it decide readiness — a lagging relay does not
//!   stop this instance from taking requests, the outbox keeps their events — but is 503
//!   while the outbox's database does not answer (`/workouts/outboxed` cannot work then);
//!
//! `DEMO_HEADER_READ_TIMEOUT_MS`, `DEMO_BODY_READ_TIMEOUT_MS` and `DEMO_SHUTDOWN_GRACE_MS`
//! override the three for a test (`.ci/smoke-examples` shortens them).
//!
//! ```sh
//! cargo run --example axum_app            # listens on 127.0.0.1:3000, or $PORT
//! cargo run --example axum_app --features opentelemetry   # ... and continues traceparent
//! curl -X POST -H 'X-Organization-Id: org-1' -H 'content-type: application/json' \
//!      localhost:3000/workouts -d '{"workout_id":"w-1","member_id":"m-1","workout_type":"run","duration_minutes":30}'
//! curl localhost:3000/metrics
//! FITVIZ_EVENTS_OUTBOX_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --example axum_app --features outbox-postgres   # ... and POST /workouts/outboxed
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

use std::{pin::pin, time::Duration};

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
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

/// How long a client may take to send a request's headers, from when the server starts
/// reading them: on a new connection, and after each response of a keep-alive connection
/// (so an idle keep-alive connection is closed after this long too). Hyper then closes
/// the connection. `DEMO_HEADER_READ_TIMEOUT_MS` overrides it.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request body may stall: tower-http's `RequestBodyTimeoutLayer` fails the
/// body when no byte of it arrived for this long (the handler answers 400 and the
/// connection is closed). It bounds each wait, not the whole body: [`REQUEST_TIMEOUT`]
/// does. `DEMO_BODY_READ_TIMEOUT_MS` overrides it.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a request may take, its body and its publish included: tower-http's
/// `TimeoutLayer` answers 408 then, so a client trickling its body a byte at a time
/// cannot hold a request forever. Raised to the publish deadline plus
/// [`BODY_READ_TIMEOUT`] when that is longer, so it does not cut a publish short.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// After SIGTERM or Ctrl-C, how long the open connections get to finish their requests
/// before they are closed; the publisher is closed (and the detached events flushed)
/// after, whatever the clients do. `DEMO_SHUTDOWN_GRACE_MS` overrides it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// `default`, or the milliseconds in the environment variable `name`.
fn millis_from_env(name: &str, default: Duration) -> Result<Duration, String> {
    match std::env::var(name) {
        Ok(ms) => ms
            .parse()
            .map(Duration::from_millis)
            .map_err(|error| format!("{name}: {error} (milliseconds expected), got `{ms}`")),
        Err(_) => Ok(default),
    }
}

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

impl NewWorkout {
    /// The event of a workout created now.
    fn created(self) -> WorkoutCreated {
        WorkoutCreated {
            workout_id: self.workout_id,
            title: self.title,
            member_id: self.member_id,
            workout_type: self.workout_type,
            duration_minutes: self.duration_minutes,
            calories: self.calories,
            started_at: Some(chrono::Utc::now()),
        }
    }
}

async fn create_workout(
    publisher: Publisher,
    Json(body): Json<NewWorkout>,
) -> Result<(StatusCode, Json<Value>), PublishError> {
    let receipt = publisher.publish(body.created()).await?;
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

/// States and counts only: the probe routes need no organization, so they show nothing
/// an attacker could use — not the broker's user, addresses (`node`) or URL, nor the
/// last connection error, which names them (the publisher logs it).
async fn health(
    axum::extract::State(publisher): axum::extract::State<EventPublisher>,
) -> Json<Value> {
    let connection = publisher.connection_state().map(|c| {
        json!({
            "connected": c.connected,
            "blocked": c.blocked.is_some(),
            "failed_attempts": c.failed_attempts,
            "connections_lost": c.connections_lost,
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
/// that the load balancer sends the requests to another instance meanwhile. Each reason
/// up to its first colon: what is wrong ("not connected to the broker"), without the
/// detail, which names the broker's user and address.
async fn ready(axum::extract::State(publisher): axum::extract::State<EventPublisher>) -> Response {
    #[allow(unused_mut)]
    let mut reasons: Vec<String> = match publisher.readiness() {
        Ok(()) => Vec::new(),
        Err(not_ready) => not_ready
            .reasons
            .iter()
            .map(|reason| {
                (reason
                    .split_once(':')
                    .map_or(reason.as_str(), |(what, _)| what))
                .to_owned()
            })
            .collect(),
    };
    #[allow(unused_mut)]
    let mut body = json!({});
    #[cfg(feature = "outbox-postgres")]
    if let Some(outboxed) = outboxed::OUTBOX.get() {
        match outboxed.outbox.status().await {
            Ok(status) => {
                body["outbox"] = json!({
                    "pending": status.pending,
                    "dead": status.dead,
                    "oldest_pending_age_secs": status.oldest_pending_age_secs,
                })
            }
            Err(_) => reasons.push("the outbox's database does not answer".to_owned()),
        }
    }
    if reasons.is_empty() {
        body["status"] = json!("ready");
        (StatusCode::OK, Json(body)).into_response()
    } else {
        body["status"] = json!("not ready");
        body["reasons"] = json!(reasons);
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// `POST /workouts/outboxed`: the workout row and its event in one transaction.
#[cfg(feature = "outbox-postgres")]
mod outboxed {
    use std::sync::OnceLock;

    use axum::{Extension, Json, http::StatusCode, response::IntoResponse, response::Response};
    use fitviz_events::{
        Event, EventPublisher, OrganizationId,
        outbox::{Outbox, OutboxConfig, OutboxError, RelayHandle},
    };
    use serde_json::json;

    use super::NewWorkout;

    /// The outbox, when `FITVIZ_EVENTS_OUTBOX_URL` is set.
    pub(super) static OUTBOX: OnceLock<Outboxed> = OnceLock::new();

    pub(super) struct Outboxed {
        pub(super) outbox: Outbox,
        /// The application's own pool (the outbox's is for the relay).
        pool: deadpool_postgres::Pool,
        table: String,
    }

    /// Sets the outbox up from the environment: migrates it, creates the demo's table,
    /// spills detached events to it and starts a relay unless told not to.
    pub(super) async fn start(
        publisher: &EventPublisher,
    ) -> Result<Option<RelayHandle>, Box<dyn std::error::Error + Send + Sync>> {
        if std::env::var_os("FITVIZ_EVENTS_OUTBOX_URL").is_none() {
            return Ok(None);
        }
        let config = OutboxConfig::from_env()?;
        let outbox = Outbox::new(config.clone(), publisher.clone())?;
        let report = outbox.migrate().await?;
        tracing::info!(schema = %config.schema, version = report.to, "outbox ready");
        let pg: tokio_postgres::Config = config.url.parse()?;
        let manager = deadpool_postgres::Manager::new(pg, tokio_postgres::NoTls);
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(8)
            .build()?;
        let table = format!("{}.demo_workouts", config.schema);
        pool.get()
            .await?
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {table} (workout_id text PRIMARY KEY, \
                 organization_id text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
            ))
            .await?;
        outbox.spill_detached();
        let relay = config.relay.then(|| outbox.start_relay());
        let _ = OUTBOX.set(Outboxed {
            outbox,
            pool,
            table,
        });
        Ok(relay)
    }

    fn failed(status: StatusCode, error: impl std::fmt::Display) -> Response {
        (status, Json(json!({ "error": error.to_string() }))).into_response()
    }

    pub(super) async fn create(
        Extension(organization): Extension<OrganizationId>,
        Json(body): Json<NewWorkout>,
    ) -> Response {
        let Some(outboxed) = OUTBOX.get() else {
            return failed(
                StatusCode::NOT_FOUND,
                "no outbox: FITVIZ_EVENTS_OUTBOX_URL is not set",
            );
        };
        let workout_id = body.workout_id.clone();
        let event = Event::new(body.created()).with_organization(organization.clone());
        let mut client = match outboxed.pool.get().await {
            Ok(client) => client,
            Err(error) => return failed(StatusCode::SERVICE_UNAVAILABLE, error),
        };
        let tx = match client.transaction().await {
            Ok(tx) => tx,
            Err(error) => return failed(StatusCode::SERVICE_UNAVAILABLE, error),
        };
        let insert = format!(
            "INSERT INTO {} (workout_id, organization_id) VALUES ($1, $2)",
            outboxed.table
        );
        if let Err(error) = tx
            .execute(&insert, &[&workout_id, &organization.as_str()])
            .await
        {
            let message = error
                .as_db_error()
                .map_or_else(|| error.to_string(), |db| db.message().to_owned());
            return failed(StatusCode::CONFLICT, message);
        }
        // A deadpool transaction is passed as the tokio-postgres one it wraps.
        let event_id = match outboxed.outbox.enqueue(&tx, event).await {
            Ok(id) => id,
            // The event's own error (validation, …) answers as `publish` would.
            Err(OutboxError::Event(error)) => return error.into_response(),
            Err(error) => return failed(StatusCode::SERVICE_UNAVAILABLE, error),
        };
        if let Err(error) = tx.commit().await {
            return failed(StatusCode::SERVICE_UNAVAILABLE, error);
        }
        // Committed: the in-process relay publishes it now rather than at its next poll.
        outboxed.outbox.notify();
        (StatusCode::CREATED, Json(json!({ "event_id": event_id }))).into_response()
    }
}

/// Liveness: the process answers. Never looks at the broker: a broker outage must not
/// get every instance restarted.
async fn live() -> &'static str {
    "ok"
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, gives the
/// open connections `grace` to finish their requests and closes those still open.
///
/// `axum::serve` sets no header read timeout (hyper has one, but only with a timer) and
/// waits for every connection on shutdown, however long a client keeps one open; this
/// is its accept loop with both, on hyper's HTTP/1 connection (`hyper-util`'s
/// `GracefulShutdown` asks each connection to close once its request is answered).
async fn serve(
    mut listener: tokio::net::TcpListener,
    app: Router,
    header_read_timeout: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            // axum's `Listener::accept` retries on errors (a full file table, ...).
            (stream, _peer) = axum::serve::Listener::accept(&mut listener) => {
                let service = TowerToHyperService::new(app.clone());
                let connection =
                    graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                connections.spawn(async move {
                    if let Err(error) = connection.await {
                        // A header read timeout, a client gone, ...
                        tracing::debug!(%error, "connection closed with an error");
                    }
                });
            }
            // Reaps the finished connections' tasks.
            Some(_) = connections.join_next() => {}
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        connections = graceful.count(),
        ?grace,
        "shutting down: no new connections, the open ones get the grace to finish"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        connections.abort_all();
        let mut closed = 0;
        while let Some(ended) = connections.join_next().await {
            closed += usize::from(ended.is_err_and(|error| error.is_cancelled()));
        }
        tracing::warn!(
            closed,
            "closed the connections still open after the shutdown grace"
        );
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    common::init_tracing();
    let header_read_timeout = millis_from_env("DEMO_HEADER_READ_TIMEOUT_MS", HEADER_READ_TIMEOUT)?;
    let body_read_timeout = millis_from_env("DEMO_BODY_READ_TIMEOUT_MS", BODY_READ_TIMEOUT)?;
    let shutdown_grace = millis_from_env("DEMO_SHUTDOWN_GRACE_MS", SHUTDOWN_GRACE)?;
    // Before the publisher is built: it registers its instruments on first use.
    let metrics = common::install_prometheus()?;
    let config = PublisherConfig::from_env()?;
    let publisher = EventPublisher::connect(config.clone()).await?;
    let demo_queue =
        std::sync::Arc::new(DemoQueue::declare_new("fitviz.events.axum_app", "#", &config).await?);
    let renew = demo_queue.renew_in_background();
    let request_timeout = REQUEST_TIMEOUT.max(config.publish_timeout + body_read_timeout);

    #[cfg(feature = "outbox-postgres")]
    let relay = outboxed::start(&publisher).await?;

    let app = Router::new()
        .route("/workouts", post(create_workout))
        .route("/bookings", post(confirm_booking))
        .route("/payments/failed", post(payment_failed))
        .route("/health", get(health));
    #[cfg(feature = "outbox-postgres")]
    let app = app.route("/workouts/outboxed", post(outboxed::create));
    let app = app
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
        .layer(RequestBodyTimeoutLayer::new(body_read_timeout))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        // Outermost: the request span covers the auth, the publish and a 408.
        .layer(common::http_trace_layer());

    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    serve(
        listener,
        app,
        header_read_timeout,
        shutdown_grace,
        shutdown_signal(),
    )
    .await;

    // The relay first: it finishes its batches while the publisher can still send them.
    #[cfg(feature = "outbox-postgres")]
    if let Some(relay) = relay {
        relay.stop().await;
    }
    // Always, even when a client held its connection past the grace: flush the detached
    // queue, so an event accepted just before the signal is published.
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
