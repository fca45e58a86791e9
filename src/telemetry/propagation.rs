//! The W3C trace context in the message headers (feature `opentelemetry`).
//!
//! The producer span's OpenTelemetry context — as `tracing-opentelemetry` 0.34 keeps
//! it — is written into the headers by the global text-map propagator of
//! `opentelemetry` 0.33. Both are per crate version: an application whose
//! subscriber layer or propagator comes from another version would see nothing
//! injected, so that case is reported, never silent: [`check_trace_propagation`] at
//! start-up, a warning (once) on the first publish that cannot inject.

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
};

use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry::{propagation::Injector, trace::TraceContextExt};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header the W3C trace context travels in.
const TRACEPARENT: &str = "traceparent";

struct Headers<'a>(&'a mut FieldTable);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` (a trace without vendor state) is left out.
        if !value.is_empty() {
            self.0
                .insert(key.into(), AMQPValue::LongString(LongString::from(value)));
        }
    }
}

/// Why the trace context would not reach the messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TracePropagationError {
    /// The subscriber gives spans no OpenTelemetry context: no `tracing-opentelemetry`
    /// 0.34 layer is installed (one of another version does not count).
    NoOpenTelemetryLayer,
    /// The global text-map propagator of `opentelemetry` 0.33 wrote no `traceparent`:
    /// none was set (the default propagator writes nothing), or it was set through
    /// another version of `opentelemetry`.
    NoPropagator,
}

impl fmt::Display for TracePropagationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoOpenTelemetryLayer => {
                "spans have no OpenTelemetry context: install a tracing-opentelemetry 0.34 layer (for opentelemetry 0.33) in the tracing subscriber"
            }
            Self::NoPropagator => {
                "the global propagator wrote no traceparent: set one with opentelemetry 0.33's global::set_text_map_propagator (a propagator set through another opentelemetry version is not seen)"
            }
        })
    }
}

impl std::error::Error for TracePropagationError {}

/// Checks, under the current subscriber, that a publish would carry the trace
/// context: spans get an OpenTelemetry context and the global propagator writes a
/// `traceparent`. Call it at start-up, after setting up tracing.
///
/// # Errors
/// What is missing: see [`TracePropagationError`].
///
/// # Example
/// ```
/// // Nothing is installed here: the check says so instead of injecting nothing.
/// assert!(fitviz_events::telemetry::check_trace_propagation().is_err());
/// ```
pub fn check_trace_propagation() -> Result<(), TracePropagationError> {
    let mut span = tracing::info_span!(target: "fitviz_events::publish", "trace_propagation_check");
    if span.is_disabled() {
        // Producer spans filtered out: publishes inject the caller's span instead.
        span = Span::current();
    }
    let mut headers = FieldTable::default();
    try_inject(&span, &mut headers)
}

fn try_inject(span: &Span, headers: &mut FieldTable) -> Result<(), TracePropagationError> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return Err(TracePropagationError::NoOpenTelemetryLayer);
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut Headers(headers));
    });
    if headers.contains_key(TRACEPARENT) {
        Ok(())
    } else {
        Err(TracePropagationError::NoPropagator)
    }
}

/// Warned once per process, for each reason.
static WARNED: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

/// Writes the trace context of `span` (the producer span; the current span when the
/// producer span is filtered out) into `headers`. Without a subscriber nothing is
/// traced and nothing is written, silently; with one that cannot give a context, a
/// warning is logged once.
pub(crate) fn inject(span: Option<&Span>, headers: &mut FieldTable) {
    let current;
    let span = match span {
        Some(span) => span,
        None => {
            current = Span::current();
            if current.is_disabled() {
                return;
            }
            &current
        }
    };
    if let Err(error) = try_inject(span, headers) {
        let index = match error {
            TracePropagationError::NoOpenTelemetryLayer => 0,
            TracePropagationError::NoPropagator => 1,
        };
        if !WARNED[index].swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "events are published without trace context");
        }
    }
}
