//! [`TelemetryLayer`]: the producer span and the duration of each publish, around the
//! whole delivery stack (so once per publish, whatever its retries).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::{Span, field::Empty};

use super::{Instruments, MetricType, TypeLabels};
use crate::{
    error::PublishError,
    event::{Event, Receipt},
    schema::SchemaRegistry,
};

/// Runs each publish in an OpenTelemetry-style producer span and records its
/// duration and outcome (see the [module docs](super)). The
/// [`EventPublisher`](crate::EventPublisher) puts it around its delivery stack; the
/// transport adds what only it knows (body size, broker node, sent messages).
///
/// # Example
/// ```
/// use fitviz_events::{telemetry::TelemetryLayer, testing::MemorySink};
/// use tower::ServiceBuilder;
///
/// let service = ServiceBuilder::new()
///     .layer(TelemetryLayer::new("fitviz.events"))
///     .service(MemorySink::counting());
/// # let _ = service;
/// ```
#[derive(Clone)]
pub struct TelemetryLayer {
    instruments: Arc<Instruments>,
    labels: TypeLabels,
}

impl fmt::Debug for TelemetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryLayer")
            .field("exchange", &self.instruments.exchange())
            .finish()
    }
}

impl TelemetryLayer {
    /// Telemetry for publishes to `exchange` (the `messaging.destination.name`), with
    /// the built-in event types as the `event_type` labels.
    pub fn new(exchange: &str) -> Self {
        Self::with_instruments(Arc::new(Instruments::new(exchange)))
    }

    pub(crate) fn with_instruments(instruments: Arc<Instruments>) -> Self {
        Self {
            instruments,
            labels: TypeLabels::new(&SchemaRegistry::builtin()),
        }
    }

    /// Takes the `event_type` labels from `registry`: a registered type is its own
    /// label, every other one is [`OTHER_EVENT_TYPE`](super::OTHER_EVENT_TYPE).
    #[must_use]
    pub fn registry(mut self, registry: SchemaRegistry) -> Self {
        self.labels = TypeLabels::new(&registry);
        self
    }
}

impl<S> Layer<S> for TelemetryLayer {
    type Service = Telemetry<S>;

    fn layer(&self, inner: S) -> Telemetry<S> {
        self.instruments.use_labels(&self.labels);
        Telemetry {
            inner,
            instruments: self.instruments.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// The service made by [`TelemetryLayer`].
#[derive(Clone)]
pub struct Telemetry<S> {
    inner: S,
    instruments: Arc<Instruments>,
    labels: TypeLabels,
}

impl<S: fmt::Debug> fmt::Debug for Telemetry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The producer span of a publish of `event` to `exchange`, under `parent` when
/// given (a detached event: the span current when it was spawned), else under the
/// current span. Field values are only computed when the span is enabled.
fn producer_span(exchange: &str, event: &Event, parent: Option<&Span>) -> Span {
    macro_rules! span {
        ($($parent:tt)*) => {
            tracing::info_span!(
                target: "fitviz_events::publish",
                $($parent)*
                "publish",
                otel.name = %format_args!("publish {exchange}:{}", event.event_type()),
                otel.kind = "producer",
                otel.status_code = Empty,
                messaging.system = "rabbitmq",
                messaging.operation.name = "publish",
                messaging.operation.type = "send",
                messaging.destination.name = %format_args!("{exchange}:{}", event.event_type()),
                messaging.rabbitmq.destination.routing_key = event.event_type(),
                messaging.message.id = %event.id(),
                messaging.message.conversation_id = event.correlation_id(),
                messaging.message.body.size = Empty,
                server.address = Empty,
                server.port = Empty,
                error.type = Empty,
            )
        };
    }
    match parent {
        Some(parent) => span!(parent: parent,),
        None => span!(),
    }
}

impl<S> Service<Event> for Telemetry<S>
where
    S: Service<Event, Response = Receipt, Error = PublishError>,
{
    type Response = Receipt;
    type Error = PublishError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut event: Event) -> Self::Future {
        let event_type = self.labels.resolve(event.event_type());
        let parent = event.context_mut().take_spawner_span();
        let span = producer_span(self.instruments.exchange(), &event, parent.as_ref());
        // A filtered-out producer span leaves the spawner's span, if any, to carry the
        // trace context (the worker runs under no span of its own).
        let reported = if span.is_disabled() {
            parent
        } else {
            Some(span.clone())
        };
        event.context_mut().set_telemetry(event_type, reported);
        let started = Instant::now();
        // The layers below create their futures (and the first attempt's span) now.
        let inner = if span.is_disabled() {
            self.inner.call(event)
        } else {
            span.in_scope(|| self.inner.call(event))
        };
        ResponseFuture {
            inner,
            span,
            started,
            event_type,
            instruments: self.instruments.clone(),
        }
    }
}

pin_project! {
    /// The response future of [`Telemetry`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        started: Instant,
        event_type: MetricType,
        instruments: Arc<Instruments>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Receipt, PublishError>>,
{
    type Output = Result<Receipt, PublishError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _entered = this.span.enter();
            std::task::ready!(this.inner.poll(cx))
        };
        let kind = result.as_ref().err().map(PublishError::kind);
        if let Some(kind) = kind {
            this.span.record("error.type", kind.as_str());
            this.span.record("otel.status_code", "ERROR");
        }
        this.instruments
            .publish_ended(*this.event_type, kind, this.started.elapsed());
        Poll::Ready(result)
    }
}
