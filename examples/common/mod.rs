//! Shared by the examples (not an example itself: cargo builds only `examples/*.rs`):
//! a bounded, expiring demo queue, a shutdown signal, and the observability set-up of
//! `axum_app` (Prometheus recorder, tracing with OpenTelemetry, the HTTP request span
//! that continues an incoming W3C `traceparent`), which `tests/trace_http.rs` uses too.

#![allow(dead_code, reason = "each example uses part of it")]

use std::{sync::Arc, time::Duration};

use fitviz_events::PublisherConfig;
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// A demo queue, so that an example's events are routable: bound to the example's event
/// types, holding at most 1,000 events (`x-max-length`), deleted on exit, and removed by
/// the broker a minute after last use (`x-expires`) should the example stop early — a
/// leftover queue bound to the shared exchange would slow every later run. Each operation
/// uses a short connection of its own, so closing the publisher's connections (what a
/// resilience test does) cannot break the set-up or the clean-up.
pub struct DemoQueue {
    name: String,
    binding: String,
    /// The broker's URLs (a cluster's nodes): each operation uses the first that answers.
    urls: Vec<String>,
    exchange: String,
    connection_name: String,
    max_length: i32,
    quorum: bool,
}

impl DemoQueue {
    /// How often a long-running example declares the queue again to renew its
    /// `x-expires` lease (publishing to a queue does not count as using it).
    pub const RENEW_EVERY: Duration = Duration::from_secs(20);
    /// Bound on each operation.
    const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

    /// A queue `name` bound to `binding` (a topic pattern) on `config`'s exchange; nothing
    /// is declared yet.
    pub fn new(name: impl Into<String>, binding: &str, config: &PublisherConfig) -> Self {
        let name = name.into();
        Self {
            connection_name: format!("fitviz-events example {name} (demo queue)"),
            name,
            binding: binding.to_owned(),
            urls: config.amqp_uris(),
            exchange: config.exchange.clone(),
            max_length: 1_000,
            quorum: false,
        }
    }

    /// Holds at most `max_length` events (1,000 unless set).
    pub fn with_max_length(mut self, max_length: i32) -> Self {
        self.max_length = max_length;
        self
    }

    /// A quorum queue (`x-queue-type=quorum`: replicated on every node of a cluster)
    /// instead of a classic one.
    pub fn quorum(mut self, quorum: bool) -> Self {
        self.quorum = quorum;
        self
    }

    /// Names the connections its operations open.
    pub fn with_connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = name.into();
        self
    }

    /// [`new`](Self::new), then [`declare`](Self::declare).
    pub async fn declare_new(
        name: impl Into<String>,
        binding: &str,
        config: &PublisherConfig,
    ) -> Result<Self, Error> {
        let queue = Self::new(name, binding, config);
        queue.declare().await?;
        Ok(queue)
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Declares the queue and binds it; run again, renews its lease.
    pub async fn declare(&self) -> Result<(), Error> {
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(self.max_length));
        if self.quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.on_channel(async |channel| {
            channel
                .queue_declare(self.name.as_str().into(), options, args)
                .await?;
            channel
                .queue_bind(
                    self.name.as_str().into(),
                    self.exchange.as_str().into(),
                    self.binding.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        })
        .await
    }

    /// Declares the queue again every [`RENEW_EVERY`](Self::RENEW_EVERY), until aborted.
    pub fn renew_in_background(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let queue = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Self::RENEW_EVERY).await;
                if let Err(error) = queue.declare().await {
                    eprintln!("could not renew demo queue {}: {error}", queue.name);
                }
            }
        })
    }

    /// Deletes the queue, trying twice; returns how many events it held.
    pub async fn delete(&self) -> Result<u32, Error> {
        let mut result = Ok(0);
        for _ in 0..2 {
            result = self
                .on_channel(async |channel| {
                    channel
                        .queue_delete(self.name.as_str().into(), QueueDeleteOptions::default())
                        .await
                })
                .await;
            if result.is_ok() {
                break;
            }
        }
        result
    }

    async fn on_channel<T>(
        &self,
        op: impl AsyncFnOnce(&Channel) -> Result<T, lapin::Error>,
    ) -> Result<T, Error> {
        let run = async {
            let properties = ConnectionProperties::default()
                .with_connection_name(self.connection_name.as_str().into());
            let mut connected = None;
            for url in &self.urls {
                match Connection::connect(url, properties.clone()).await {
                    Ok(connection) => {
                        connected = Some(Ok(connection));
                        break;
                    }
                    Err(e) => connected = Some(Err(e)),
                }
            }
            let connection = connected.expect("at least one broker URL")?;
            let result = match connection.create_channel().await {
                Ok(channel) => {
                    let result = op(&channel).await;
                    // Closed before the connection: a channel still closing when the
                    // connection closes makes lapin log an error.
                    let _ = channel.close(200, "done".into()).await;
                    result
                }
                Err(e) => Err(e),
            };
            let _ = connection.close(200, "done".into()).await;
            result
        };
        Ok(tokio::time::timeout(Self::OPERATION_TIMEOUT, run).await??)
    }
}

/// Resolves on SIGTERM (how containers and systemd stop a service) or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                tokio::select! {
                    _ = sigterm.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Installs the Prometheus recorder as the global `metrics` recorder and describes the
/// publisher's metrics; `GET /metrics` answers with [`PrometheusHandle::render`].
///
/// Call it **before** the publisher is built: the publisher registers its per-event
/// instruments on first use and keeps them, so a recorder installed later misses them.
/// `messaging.client.operation.duration` gets the OpenTelemetry-advised buckets
/// ([`DURATION_BUCKETS`](fitviz_events::telemetry::DURATION_BUCKETS)), so it renders as
/// a histogram (`_bucket` series) rather than a summary. Spawns the recorder's upkeep
/// (which keeps the histograms bounded): call it inside a Tokio runtime.
pub fn install_prometheus() -> Result<metrics_exporter_prometheus::PrometheusHandle, Error> {
    use fitviz_events::telemetry;
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(telemetry::PUBLISH_DURATION.to_owned()),
            telemetry::DURATION_BUCKETS,
        )?
        .install_recorder()?;
    telemetry::describe_metrics();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Sets up `tracing` for the examples: logs to stderr, filtered by `RUST_LOG` (default
/// `info`); with the `opentelemetry` feature also an OpenTelemetry layer over an
/// [`SdkTracerProvider`](opentelemetry_sdk::trace::SdkTracerProvider) without an
/// exporter (spans get real trace and span ids, which is all the headers need; plug
/// your exporter in with [`init_tracing_with`]) and the W3C trace-context propagator
/// as the global propagator. Then logs whether events will carry the trace context
/// ([`check_trace_propagation`](fitviz_events::telemetry::check_trace_propagation)).
pub fn init_tracing() {
    #[cfg(feature = "opentelemetry")]
    init_tracing_with(opentelemetry_sdk::trace::SdkTracerProvider::builder().build());
    #[cfg(not(feature = "opentelemetry"))]
    {
        use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
        tracing_subscriber::registry().with(log_layer()).init();
        tracing::info!(
            "trace propagation: off (build with --features opentelemetry to continue incoming traceparent headers into the events)"
        );
    }
}

/// [`init_tracing`] with spans going to `provider` (its exporter: OTLP, stdout, or an
/// in-memory one in tests).
#[cfg(feature = "opentelemetry")]
pub fn init_tracing_with(provider: opentelemetry_sdk::trace::SdkTracerProvider) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::{Layer as _, layer::SubscriberExt, util::SubscriberInitExt};

    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    // Filtered on its own: `RUST_LOG=warn` quiets the logs, not the traces (a span
    // filtered out has no trace context to put in the messages).
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("fitviz-events-example"))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    tracing_subscriber::registry()
        .with(log_layer())
        .with(otel)
        .init();
    match fitviz_events::telemetry::check_trace_propagation() {
        Ok(()) => tracing::info!(
            "trace propagation: on (an incoming traceparent is continued into the events' headers)"
        ),
        Err(error) => tracing::warn!(%error, "trace propagation: off"),
    }
}

/// The log output: stderr, filtered by `RUST_LOG` (default `info`), with lapin's frame
/// dumps kept out at any level: they carry the broker password
/// ([`LAPIN_FRAME_LOGS_OFF`](fitviz_events::telemetry::LAPIN_FRAME_LOGS_OFF)).
fn log_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::{EnvFilter, Layer as _};
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    for directive in fitviz_events::telemetry::LAPIN_FRAME_LOGS_OFF {
        filter = filter.add_directive(directive.parse().expect("a valid directive"));
    }
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter)
}

/// The tower-http trace layer of `axum_app`: one INFO span per request, made by
/// [`make_request_span`].
pub type HttpTraceLayer = tower_http::trace::TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    fn(&axum::extract::Request) -> tracing::Span,
>;

/// [`HttpTraceLayer`]: put it outermost, so the request span covers every other layer.
/// A 5xx answer is logged at WARN (tower-http's default is ERROR): a 503 from `/ready`
/// or from a handler while the broker is away is an expected state, which the
/// publisher already reports.
pub fn http_trace_layer() -> HttpTraceLayer {
    tower_http::trace::TraceLayer::new_for_http()
        .make_span_with(make_request_span as fn(&axum::extract::Request) -> tracing::Span)
        .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::WARN))
}

/// The request's span (`request`, INFO, an OpenTelemetry server span named after the
/// method and the matched route). With the `opentelemetry` feature, when the request
/// carries a W3C `traceparent` the span continues that trace: its parent is the caller's
/// span, taken from the headers by the global propagator. The events a handler publishes
/// are children of this span, so they carry the same trace id.
pub fn make_request_span(request: &axum::extract::Request) -> tracing::Span {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or(request.uri().path(), |matched| matched.as_str());
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{} {route}", request.method()),
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = request.uri().path(),
    );
    #[cfg(feature = "opentelemetry")]
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        // Fails only when the span is disabled or has no OpenTelemetry layer: then
        // there is no trace to continue.
        let _ = span.set_parent(parent);
    }
    span
}

/// Reads the trace context from HTTP headers, for the OpenTelemetry propagator.
#[cfg(feature = "opentelemetry")]
pub struct HeaderExtractor<'a>(pub &'a axum::http::HeaderMap);

#[cfg(feature = "opentelemetry")]
impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}
