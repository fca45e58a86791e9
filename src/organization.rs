//! Middleware that stamps the organization id on events.
//!
//! An event that already carries an organization keeps it. Otherwise the layer asks
//! its [`GetOrganization`] source (a closure, for example reading a task-local or
//! the request extensions). An event that still has none is rejected with
//! [`crate::ErrorKind::MissingOrganization`], unless
//! its type is configured as organization-less.
//!
//! # Example
//! ```
//! use fitviz_events::{Event, ErrorKind, OrganizationId, Receipt, PublishError};
//! use fitviz_events::organization::OrganizationLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let inner = service_fn(|e: Event| async move {
//!     assert_eq!(e.organization_id().unwrap().as_str(), "org-1");
//!     Ok::<_, PublishError>(Receipt::new(e.id(), Default::default()))
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(OrganizationLayer::new(|| Some(OrganizationId::from("org-1"))))
//!     .service(inner);
//! let event = Event::from_json("workout.created", serde_json::json!({}));
//! svc.oneshot(event).await.unwrap();
//! # }
//! ```

use std::{
    collections::HashSet,
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::{Either, Ready, ready};
use tower_layer::Layer;
use tower_service::Service;

use crate::{Event, OrganizationId, PublishError, error::ErrorKind};

/// Where the organization id of an event comes from when the event has none.
pub trait GetOrganization: Send + Sync + 'static {
    /// The current organization id, if any.
    fn organization(&self) -> Option<OrganizationId>;
}

impl<F> GetOrganization for F
where
    F: Fn() -> Option<OrganizationId> + Send + Sync + 'static,
{
    fn organization(&self) -> Option<OrganizationId> {
        self()
    }
}

/// A source that never has an organization: events must carry their own.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoOrganizationSource;

impl GetOrganization for NoOrganizationSource {
    fn organization(&self) -> Option<OrganizationId> {
        None
    }
}

/// Stamps organization ids; see the [module docs](self).
#[derive(Clone)]
pub struct OrganizationLayer {
    source: Arc<dyn GetOrganization>,
    organization_less: Arc<HashSet<String>>,
}

impl fmt::Debug for OrganizationLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OrganizationLayer")
            .field("organization_less", &self.organization_less)
            .finish_non_exhaustive()
    }
}

impl Default for OrganizationLayer {
    fn default() -> Self {
        Self::new(NoOrganizationSource)
    }
}

impl OrganizationLayer {
    /// Takes missing organization ids from `source`.
    pub fn new(source: impl GetOrganization) -> Self {
        Self {
            source: Arc::new(source),
            organization_less: Arc::default(),
        }
    }

    /// Lets events of `event_type` through without an organization id
    /// (system-wide events that belong to no tenant).
    #[must_use]
    pub fn organization_less(mut self, event_type: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.organization_less).insert(event_type.into());
        self
    }

    pub(crate) fn copy_exemptions_from(&mut self, other: &OrganizationLayer) {
        self.organization_less = other.organization_less.clone();
    }

    /// Stamps `event`, or explains why it cannot be published.
    ///
    /// # Errors
    /// [`ErrorKind::MissingOrganization`] when no organization id can be found.
    pub fn stamp(&self, event: &mut Event) -> Result<(), PublishError> {
        if event.organization_id().is_some() {
            return Ok(());
        }
        if let Some(org) = self.source.organization() {
            event.set_organization_if_absent(&org);
            return Ok(());
        }
        if self.organization_less.contains(event.event_type()) {
            return Ok(());
        }
        Err(PublishError::new(
            ErrorKind::MissingOrganization,
            format!(
                "event `{}` has no organization id: set one on the event, configure an organization source, or declare the type organization-less",
                event.event_type()
            ),
        )
        .for_event(event.id()))
    }
}

impl<S> Layer<S> for OrganizationLayer {
    type Service = Organization<S>;

    fn layer(&self, inner: S) -> Organization<S> {
        Organization {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service built by [`OrganizationLayer`].
#[derive(Clone, Debug)]
pub struct Organization<S> {
    inner: S,
    layer: OrganizationLayer,
}

impl<S> Service<Event> for Organization<S>
where
    S: Service<Event, Error = PublishError>,
{
    type Response = S::Response;
    type Error = PublishError;
    type Future = Either<Ready<Result<S::Response, PublishError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut event: Event) -> Self::Future {
        match self.layer.stamp(&mut event) {
            Ok(()) => Either::Right(self.inner.call(event)),
            Err(error) => Either::Left(ready(Err(error))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_organization_wins() {
        let layer = OrganizationLayer::new(|| Some(OrganizationId::from("from-source")));
        let mut event = Event::from_json("a.b", serde_json::json!({})).with_organization("own");
        layer.stamp(&mut event).unwrap();
        assert_eq!(event.organization_id().unwrap().as_str(), "own");
    }

    #[test]
    fn missing_organization_is_an_error_unless_exempt() {
        let layer = OrganizationLayer::default().organization_less("system.tick");
        let mut event = Event::from_json("a.b", serde_json::json!({}));
        let err = layer.stamp(&mut event).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingOrganization);
        assert!(
            err.to_string().contains("`a.b` has no organization id"),
            "{err}"
        );
        let mut tick = Event::from_json("system.tick", serde_json::json!({}));
        layer.stamp(&mut tick).unwrap();
        assert!(tick.organization_id().is_none());
    }
}
