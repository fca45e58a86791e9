//! [`PublishTransport`]: what a publisher takes from its transport besides the service
//! itself, through one typed interface ([`TransportParts`]).

use std::sync::Arc;

use tower::util::{BoxCloneSyncService, ServiceFn};
use tower_service::Service;

use super::{AmqpPublish, HeaderCheck};
use crate::{
    error::PublishError,
    event::{Event, Receipt},
    telemetry::Instruments,
};

/// A transport an [`EventPublisher`](crate::EventPublisher) can be built over with
/// [`build_with_transport`](crate::EventPublisherBuilder::build_with_transport): a
/// `Service<Event>` that also says what it shares with the publisher
/// ([`parts`](Self::parts)).
///
/// [`AmqpPublish`] shares its per-event metrics, its check of an event's properties
/// against the negotiated AMQP frame size (so that [`spawn`](crate::EventPublisher::spawn)
/// refuses an event the worker could not send) and the fact that it bounds its own
/// waits. [`MemorySink`](crate::testing::MemorySink), [`tower::service_fn`] closures and
/// [`BoxCloneSyncService`]s share nothing: the publisher uses its own metrics, no frame
/// check, and `confirm_timeout` as the attempt deadline.
///
/// A transport of your own implements it with the default, in one line, or — when it
/// wraps an `AmqpPublish` — forwards the inner transport's parts:
///
/// ```
/// use std::{future::Ready, task::{Context, Poll}};
/// use fitviz_events::{Event, PublishError, Receipt, transport::{PublishTransport, TransportParts}};
/// use tower::Service;
///
/// #[derive(Clone)]
/// struct Discard;
///
/// impl Service<Event> for Discard {
///     type Response = Receipt;
///     type Error = PublishError;
///     type Future = Ready<Result<Receipt, PublishError>>;
///     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
///         Poll::Ready(Ok(()))
///     }
///     fn call(&mut self, event: Event) -> Self::Future {
///         std::future::ready(Ok(Receipt::new(event.id(), Default::default())))
///     }
/// }
///
/// impl PublishTransport for Discard {}
/// # let _ = Discard.parts();
/// ```
pub trait PublishTransport: Service<Event, Response = Receipt, Error = PublishError> {
    /// What the transport shares with the publisher built over it; by default nothing.
    fn parts(&self) -> TransportParts {
        TransportParts::default()
    }
}

/// What a [`PublishTransport`] shares with the publisher built over it. Opaque: only
/// the library's transports fill it in; a transport of your own returns the default, or
/// the parts of a library transport it wraps.
///
/// Each part is optional, and the publisher falls back on its own when one is missing.
/// The parts today: the per-event metrics, the content-header frame check for detached
/// events, and whether the transport bounds its own waits (then the attempt deadline is
/// only a backstop at `publish_timeout`). An encoder (the body's format) is meant to join
/// them here.
#[derive(Clone, Debug, Default)]
pub struct TransportParts {
    /// The per-event metrics, shared with the publisher's telemetry layer; `None`: the
    /// publisher makes its own.
    pub(crate) instruments: Option<Arc<Instruments>>,
    /// Checks an event's content header against the negotiated frame size, before
    /// `spawn` queues it; `None`: no check before queueing.
    pub(crate) header_check: Option<HeaderCheck>,
    /// The transport bounds its waits for a channel, a connection and a late confirm
    /// itself: the attempt deadline is `publish_timeout`, a backstop, rather than
    /// `confirm_timeout`.
    pub(crate) bounds_own_waits: bool,
}

impl PublishTransport for AmqpPublish {
    fn parts(&self) -> TransportParts {
        TransportParts {
            instruments: Some(self.instruments()),
            header_check: Some(self.header_check()),
            bounds_own_waits: true,
        }
    }
}

impl<F> PublishTransport for ServiceFn<F> where
    ServiceFn<F>: Service<Event, Response = Receipt, Error = PublishError>
{
}

impl PublishTransport for BoxCloneSyncService<Event, Receipt, PublishError> {}
