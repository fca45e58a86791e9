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
//! # Checked before any handler runs
//!
//! - **Organization from a header.** [`EventPublishLayer::organization_header`] reads
//!   the organization from a request header (set by a trusted gateway) and checks it
//!   with [`OrganizationId::parse`]. A request whose header is invalid (empty,
//!   whitespace-only, control or invisible format characters, over 255 bytes, not
//!   UTF-8, …) or that is given more than once (a second `X-Organization-Id` is never
//!   silently ignored: which one names the tenant would be ambiguous) is answered
//!   **400 Bad Request** at once, with a JSON body naming the header — 400 and not 422
//!   because it is the request's framing that is wrong (like a malformed
//!   `Authorization` header), not the content of an entity the handler would process;
//!   422 stays the answer for an event that breaks its schema. A request without the
//!   header passes with no organization (events then need one of their own, or fail
//!   with [`ErrorKind::MissingOrganization`](crate::ErrorKind::MissingOrganization)).
//! - **Request id.** An `x-request-id` that is not a valid correlation id
//!   ([`check_correlation_id`]: printable, no surrounding
//!   whitespace, at most 255 bytes) is *ignored*, not an error: the request id is
//!   advisory tracing data set by clients and proxies, and refusing a request over it
//!   would let a proxy's quirk fail the business operation. The events then carry no
//!   correlation id. (An invalid id passed explicitly to
//!   [`Event::with_correlation_id`] is a validation error.)
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
//! req.extensions_mut().insert(OrganizationId::parse("org-1").unwrap());
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

use futures_util::future::{Either, Ready, ready};
use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, header, request::Parts,
};
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    error::PublishError,
    event::context::RequestScope,
    event::{Event, OrganizationId, Receipt, check_correlation_id},
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

    /// Reads the organization id from the request header `name` (for example
    /// `x-organization-id`, set by a trusted gateway) and answers a request whose
    /// header is invalid with **400** before any handler runs; see the
    /// [module docs](self#checked-before-any-handler-runs).
    ///
    /// Only the header decides the request's organization: a request without it has
    /// none, even if an [`OrganizationId`] extension was inserted before this layer.
    ///
    /// The returned layer needs the inner service to answer `http::Response<B>` with a
    /// body `B: From<String>` (axum's `Body`, `String`, `Full<Bytes>`, …) to build that
    /// response; the plain [`EventPublishLayer`] works with any response type.
    ///
    /// # Example
    /// ```
    /// use fitviz_events::{EventPublisher, PublisherConfig};
    /// use fitviz_events::http::{EventPublishLayer, Publisher};
    /// use fitviz_events::testing::MemorySink;
    /// use tower::{ServiceBuilder, ServiceExt, service_fn};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let publisher = EventPublisher::builder(PublisherConfig::default())
    ///     .build_with_transport(MemorySink::new());
    /// let app = ServiceBuilder::new()
    ///     .layer(EventPublishLayer::new(publisher).organization_header("x-organization-id"))
    ///     .service(service_fn(|req: http::Request<()>| async move {
    ///         let org = req.extensions().get::<Publisher>().unwrap().organization_id().cloned();
    ///         Ok::<_, std::convert::Infallible>(http::Response::new(format!("{org:?}")))
    ///     }));
    /// let bad = http::Request::builder().header("x-organization-id", "   ").body(()).unwrap();
    /// let response = app.clone().oneshot(bad).await.unwrap();
    /// assert_eq!(response.status(), 400);
    /// assert!(response.body().contains("x-organization-id"));
    /// let good = http::Request::builder().header("x-organization-id", "org-1").body(()).unwrap();
    /// assert_eq!(app.oneshot(good).await.unwrap().body(), "Some(\"org-1\")");
    /// # }
    /// ```
    ///
    /// # Panics
    /// When `name` is not a valid header name.
    pub fn organization_header(self, name: &str) -> OrganizationHeaderLayer {
        let header = HeaderName::try_from(name).expect("a valid header name");
        OrganizationHeaderLayer {
            header,
            publish: self,
        }
    }

    fn scoped<B>(&self, request: Request<B>) -> Request<B> {
        let (mut parts, body) = request.into_parts();
        let organization = match &self.organization {
            Some(extract) => extract(&parts),
            None => parts.extensions.get::<OrganizationId>().cloned(),
        };
        // An invalid request id is ignored, not an error (see the module docs).
        let correlation_id = parts
            .headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
            .filter(|v| check_correlation_id(v).is_ok())
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

/// [`EventPublishLayer`] taking the organization from a request header; made by
/// [`EventPublishLayer::organization_header`].
#[derive(Clone, Debug)]
pub struct OrganizationHeaderLayer {
    header: HeaderName,
    publish: EventPublishLayer,
}

impl OrganizationHeaderLayer {
    /// The organization in `headers`: `Ok(None)` when the header is absent, the
    /// checked id when valid, the 400 answer's message when not — or when the header is
    /// given more than once (which one would be the tenant is ambiguous: a proxy that
    /// appends instead of replacing, or a client smuggling a second value).
    fn organization(&self, headers: &HeaderMap) -> Result<Option<OrganizationId>, String> {
        let mut values = headers.get_all(&self.header).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let reason = if values.next().is_some() {
            "is given more than once".to_owned()
        } else {
            match std::str::from_utf8(value.as_bytes()) {
                Ok(text) => match OrganizationId::parse(text) {
                    Ok(org) => return Ok(Some(org)),
                    Err(invalid) => invalid.reason().to_owned(),
                },
                Err(_) => "is not UTF-8".to_owned(),
            }
        };
        let message = format!("invalid {} header: {reason}", self.header);
        Err(serde_json::json!({
            "error": "invalid_header",
            "header": self.header.as_str(),
            "message": message,
        })
        .to_string())
    }
}

impl<S> Layer<S> for OrganizationHeaderLayer {
    type Service = OrganizationHeader<S>;

    fn layer(&self, inner: S) -> OrganizationHeader<S> {
        OrganizationHeader {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service built by [`OrganizationHeaderLayer`].
#[derive(Clone, Debug)]
pub struct OrganizationHeader<S> {
    inner: S,
    layer: OrganizationHeaderLayer,
}

impl<S, B, ResBody> Service<Request<B>> for OrganizationHeader<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: From<String>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<Response<ResBody>, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.layer.organization(request.headers()) {
            Ok(organization) => {
                if let Some(org) = organization {
                    request.extensions_mut().insert(org);
                } else {
                    // Only the header decides: never an extension someone else set.
                    request.extensions_mut().remove::<OrganizationId>();
                }
                let request = self.layer.publish.scoped(request);
                Either::Left(self.inner.call(request))
            }
            Err(body) => {
                let mut response = Response::new(ResBody::from(body));
                *response.status_mut() = StatusCode::BAD_REQUEST;
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                Either::Right(ready(Ok(response)))
            }
        }
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
        event.context_mut().set_request(self.scope.clone());
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

    /// [`publish_json`](Self::publish_json) returning whether it was confirmed — the
    /// original library's `app.extensions['event_publisher'].publish(event_type, data)`
    /// in a Flask view; never fails the request.
    pub async fn try_publish_json(
        &self,
        event_type: impl Into<String>,
        data: serde_json::Value,
    ) -> bool {
        self.try_publish(Event::from_json(event_type.into(), data))
            .await
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
