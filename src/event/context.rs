//! [`EventContext`]: what the layers of the stack hand each other on an [`Event`], and
//! the one way they do it.
//!
//! An event carries, besides its envelope and payload, a context that no consumer sees
//! (it is not serialized, not sent, not compared): data one layer learns and a layer
//! further in needs. Each datum is one part of [`EventContext`], and each part says who
//! writes it and who reads it — the [map of the stack](crate::stack) lists the same per
//! stage. Nothing else passes between layers on an event.
//!
//! | part | written by | read by |
//! |---|---|---|
//! | [request scope](EventContext::request) | the HTTP integration's [`Publisher`](crate::http::Publisher) | the [organization](crate::organization) layer (the request's organization, whether it may be overridden); taken by the [envelope](crate::envelope) layer (the correlation id) |
//! | [metric type](EventContext::metric_type) | the [telemetry](crate::telemetry) layer | the [retry](crate::retry) layer (the retries counter), the [transport](crate::transport) (the sent-messages metrics) |
//! | [encoding](EventContext::encoded) | [`EventPublisher::publish_encoded`](crate::EventPublisher::publish_encoded) (an event encoded earlier, e.g. stored in the outbox) | the [transport](crate::transport), which sends those bytes instead of encoding the event |
//! | [span](EventContext::span) | [`EventPublisher::spawn`](crate::EventPublisher::spawn) (the spawner's span), then the [telemetry](crate::telemetry) layer (the producer span) | the transport (body size, broker address), its encoder (the W3C trace context, feature `opentelemetry`) |
//!
//! A struct rather than a type map (`http::Extensions`): the parts are known, so the
//! context costs no allocation and no lookup per event, and the compiler checks that
//! a reader asks for a part that exists.

use std::sync::Arc;

use tracing::Span;

use super::{encoded::EncodedEvent, organization_id::OrganizationId};

/// What the layers of the stack hand each other on an event; see the [module
/// docs](self). One field of [`Event`](crate::Event), reached with `Event::context` and
/// `Event::context_mut`; cloned with the event.
#[derive(Clone, Debug, Default)]
pub(crate) struct EventContext {
    /// Written by [`Publisher`](crate::http::Publisher); read by the organization
    /// layer; taken by the envelope layer.
    request: Option<Arc<RequestScope>>,
    /// Written by `EventPublisher::spawn` and the telemetry layer; read by the retry
    /// layer, the transport and its encoder.
    telemetry: TelemetryContext,
    /// Written by `EventPublisher::publish_encoded`; read by the transport.
    encoded: Option<EncodedEvent>,
}

/// What the request an event is published in adds to it: the request's organization
/// (authoritative unless overrides are allowed) and its correlation id.
///
/// Written by the [HTTP integration](crate::http) (its [`Publisher`](crate::http::Publisher)
/// puts its request's scope on every event); read by the
/// [organization layer](crate::organization); taken by the [envelope
/// layer](crate::envelope), which stamps the correlation id, so the delivery stack never
/// sees it.
#[derive(Clone, Debug, Default)]
pub(crate) struct RequestScope {
    pub(crate) organization: Option<OrganizationId>,
    pub(crate) correlation_id: Option<Arc<str>>,
    pub(crate) allow_override: bool,
}

/// What the telemetry layer learns about an event and the layers inside it report to.
#[derive(Clone, Debug, Default)]
struct TelemetryContext {
    /// Written by the telemetry layer; read by the retry layer and the transport.
    metric_type: MetricType,
    /// Before the telemetry layer: for a detached event, the span current when it was
    /// spawned (written by `EventPublisher::spawn`; taken by the telemetry layer as the
    /// parent of the producer span). After it: the producer span, or the spawner's span
    /// when the producer span is filtered out (read by the transport and its encoder).
    span: Option<Span>,
}

/// The `event_type` label of an event's metrics: a registered type or
/// [`OTHER_EVENT_TYPE`](crate::telemetry::OTHER_EVENT_TYPE), and its place in the table of
/// labels that resolved it (set by the telemetry layer).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MetricType {
    pub(crate) name: &'static str,
    pub(crate) index: usize,
}

impl Default for MetricType {
    fn default() -> Self {
        Self {
            name: "other",
            index: usize::MAX,
        }
    }
}

impl EventContext {
    /// Writer: the HTTP integration's `Publisher`. Puts the request's scope on the event.
    pub(crate) fn set_request(&mut self, scope: Arc<RequestScope>) {
        self.request = Some(scope);
    }

    /// Reader: the organization layer. The scope of the request the event is published
    /// in, until the envelope layer takes it.
    pub(crate) fn request(&self) -> Option<&RequestScope> {
        self.request.as_deref()
    }

    /// Reader: the envelope layer, last. Takes the request's scope off the event.
    pub(crate) fn take_request(&mut self) -> Option<Arc<RequestScope>> {
        self.request.take()
    }

    /// Writer: `EventPublisher::spawn`. The span the event was spawned under, the
    /// parent of its producer span.
    pub(crate) fn set_spawner_span(&mut self, span: Span) {
        self.telemetry.span = Some(span);
    }

    /// Reader: the telemetry layer. Takes the spawner's span, if any, to open the
    /// producer span under it.
    pub(crate) fn take_spawner_span(&mut self) -> Option<Span> {
        self.telemetry.span.take()
    }

    /// Writer: the telemetry layer. The event's metric label, and the span the layers
    /// inside report to (the producer span, or the spawner's when it is filtered out).
    pub(crate) fn set_telemetry(&mut self, metric_type: MetricType, span: Option<Span>) {
        self.telemetry = TelemetryContext { metric_type, span };
    }

    /// Readers: the retry layer and the transport. The event's `event_type` metric
    /// label ([`OTHER_EVENT_TYPE`](crate::telemetry::OTHER_EVENT_TYPE) before the
    /// telemetry layer).
    pub(crate) fn metric_type(&self) -> MetricType {
        self.telemetry.metric_type
    }

    /// Readers: the transport and its encoder. The span that stands for the publish
    /// (see [`set_telemetry`](Self::set_telemetry)).
    pub(crate) fn span(&self) -> Option<&Span> {
        self.telemetry.span.as_ref()
    }

    /// Writer: `EventPublisher::publish_encoded` (through `EncodedEvent::to_event`). The
    /// event was encoded before: the transport sends these bytes as they are.
    pub(crate) fn set_encoded(&mut self, encoded: EncodedEvent) {
        self.encoded = Some(encoded);
    }

    /// Reader: the transport. The encoding to send instead of encoding the event.
    pub(crate) fn encoded(&self) -> Option<&EncodedEvent> {
        self.encoded.as_ref()
    }
}
