//! HTTP integration for any Tower-based stack: [`EventPublishLayer`] puts a
//! request-scoped [`Publisher`] into each request's extensions, bound to that
//! request's organization id and request id.
//!
//! The organization id comes from an [`OrganizationId`] your auth middleware inserted
//! into the request extensions (or from a closure over [`http::request::Parts`]); the
//! request id from the `x-request-id` header (set by tower-http's request-id
//! middleware or a gateway) becomes the events' correlation id. The request's
//! organization is authoritative: an event that names another one is rejected with
//! [`ErrorKind::OrganizationMismatch`](crate::ErrorKind::OrganizationMismatch) unless
//! overrides are allowed. The [`Publisher`] only carries the request's scope; the
//! publisher's [organization](crate::organization) and
//! [envelope](crate::envelope) layers apply it, as for every other event.
//!
//! # Example
//! ```
//! use fitviz_events::{EventPublisher, OrganizationId, PublisherConfig, events::WorkoutCreated};
//! use fitviz_events::http::{EventPublishLayer, Publisher};
//! use fitviz_events::testing::{Example, MemorySink};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let sink = MemorySink::new();
//! let publisher = EventPublisher::builder(PublisherConfig::default())
//!     .build_with_transport(sink.clone());
//! let app = ServiceBuilder::new()
//!     .layer(EventPublishLayer::new(publisher))
//!     .service(service_fn(|req: http::Request<()>| async move {
//!         let publisher = req.extensions().get::<Publisher>().unwrap().clone();
//!         publisher.publish(WorkoutCreated::example()).await.unwrap();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(()))
//!     }));
//! let mut req = http::Request::new(());
//! req.extensions_mut().insert(OrganizationId::from("org-1"));
//! req.headers_mut().insert("x-request-id", "req-9".parse().unwrap());
//! app.oneshot(req).await.unwrap();
//! assert_eq!(sink.published()[0].organization_id().unwrap().as_str(), "org-1");
//! assert_eq!(sink.published()[0].correlation_id(), Some("req-9"));
//! # }
//! ```

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{Request, request::Parts};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    error::PublishError,
    event::{Event, OrganizationId, Receipt, RequestScope},
    publisher::EventPublisher,
};

/// The request header whose value becomes the events' correlation id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

type OrganizationFn = dyn Fn(&Parts) -> Option<OrganizationId> + Send + Sync;

/// Adds a request-scoped [`Publisher`] to every request; see the [module docs](self).
#[derive(Clone)]
pub struct EventPublishLayer {
    publisher: EventPublisher,
    organization: Option<Arc<OrganizationFn>>,
    allow_override: bool,
}

impl fmt::Debug for EventPublishLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventPublishLayer")
            .field("publisher", &self.publisher)
            .field("custom_organization", &self.organization.is_some())
            .field("allow_override", &self.allow_override)
            .finish()
    }
}

impl EventPublishLayer {
    /// A layer publishing through `publisher`, taking the organization id from the
    /// [`OrganizationId`] request extension.
    pub fn new(publisher: EventPublisher) -> Self {
        Self {
            publisher,
            organization: None,
            allow_override: false,
        }
    }

    /// Takes the organization id from the request some other way (a claims
    /// extension, a header set by a trusted gateway).
    #[must_use]
    pub fn organization_from<F>(mut self, extract: F) -> Self
    where
        F: Fn(&Parts) -> Option<OrganizationId> + Send + Sync + 'static,
    {
        self.organization = Some(Arc::new(extract));
        self
    }

    /// Lets events name an organization other than the request's (back-office jobs).
    #[must_use]
    pub fn allow_organization_override(mut self, allow: bool) -> Self {
        self.allow_override = allow;
        self
    }

    fn scoped<B>(&self, request: Request<B>) -> Request<B> {
        let (mut parts, body) = request.into_parts();
        let organization = match &self.organization {
            Some(extract) => extract(&parts),
            None => parts.extensions.get::<OrganizationId>().cloned(),
        };
        let correlation_id = parts
            .headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 255)
            .map(Arc::from);
        parts.extensions.insert(Publisher {
            inner: self.publisher.clone(),
            scope: Arc::new(RequestScope {
                organization,
                correlation_id,
                allow_override: self.allow_override,
            }),
        });
        Request::from_parts(parts, body)
    }
}

impl<S> Layer<S> for EventPublishLayer {
    type Service = EventPublish<S>;

    fn layer(&self, inner: S) -> EventPublish<S> {
        EventPublish {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service built by [`EventPublishLayer`].
#[derive(Clone, Debug)]
pub struct EventPublish<S> {
    inner: S,
    layer: EventPublishLayer,
}

impl<S, B> Service<Request<B>> for EventPublish<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> S::Future {
        self.inner.call(self.layer.scoped(request))
    }
}

/// A publisher bound to one request: its organization id and correlation id are
/// stamped on every event. Take it from the request extensions, or with the axum
/// extractor (feature `axum`).
#[derive(Clone)]
pub struct Publisher {
    inner: EventPublisher,
    scope: Arc<RequestScope>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("organization", &self.scope.organization)
            .field("correlation_id", &self.scope.correlation_id)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// The request's organization id, if it has one.
    pub fn organization_id(&self) -> Option<&OrganizationId> {
        self.scope.organization.as_ref()
    }

    /// The request's correlation id, if it has one.
    pub fn correlation_id(&self) -> Option<&str> {
        self.scope.correlation_id.as_deref()
    }

    /// The shared publisher behind this request's handle.
    pub fn publisher(&self) -> &EventPublisher {
        &self.inner
    }

    /// `event`, carrying this request's scope.
    fn scope(&self, event: impl Into<Event>) -> Event {
        let mut event = event.into();
        event.scope = Some(self.scope.clone());
        event
    }

    /// Publishes and waits for the broker's confirm; see [`EventPublisher::publish`].
    ///
    /// # Errors
    /// As [`EventPublisher::publish`], plus
    /// [`ErrorKind::OrganizationMismatch`](crate::ErrorKind::OrganizationMismatch).
    pub async fn publish(&self, event: impl Into<Event>) -> Result<Receipt, PublishError> {
        self.inner.publish(self.scope(event)).await
    }

    /// Publishes a JSON payload under `event_type`; see [`EventPublisher::publish_json`].
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn publish_json(
        &self,
        event_type: impl Into<String>,
        data: serde_json::Value,
    ) -> Result<Receipt, PublishError> {
        self.publish(Event::from_json(event_type.into(), data))
            .await
    }

    /// Publishes and returns whether it was confirmed; never fails the request.
    pub async fn try_publish(&self, event: impl Into<Event>) -> bool {
        self.inner.try_publish(self.scope(event)).await
    }

    /// Validates now and publishes in the background; see [`EventPublisher::spawn`].
    ///
    /// # Errors
    /// As [`EventPublisher::spawn`], plus
    /// [`ErrorKind::OrganizationMismatch`](crate::ErrorKind::OrganizationMismatch).
    pub async fn spawn(&self, event: impl Into<Event>) -> Result<(), PublishError> {
        self.inner.spawn(self.scope(event)).await
    }
}
