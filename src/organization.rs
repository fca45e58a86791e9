//! Middleware that stamps the organization id on events.
//!
//! In the [publish stack](crate::stack) it is stage 3: it needs a valid event (stage 2)
//! and reads the request scope the HTTP integration put on it.
//!
//! This is the one place an event's organization is decided:
//!
//! 0. an event given an invalid organization or correlation id (see
//!    [`OrganizationId`]) or a refused custom header (see
//!    [`Event::with_header`]) is rejected with [`ErrorKind::Validation`] naming
//!    `organization_id`, `correlation_id` or `headers.<name>` — before anything else,
//!    and whether the validation layer is on or not, so an invalid id never reaches the
//!    transport;
//! 1. published through a request's [`Publisher`](crate::http::Publisher), the
//!    request's organization is authoritative: an event naming another one is
//!    rejected with [`ErrorKind::OrganizationMismatch`] unless overrides are allowed,
//!    and an event naming none gets the request's;
//! 2. an event that carries an organization keeps it;
//! 3. otherwise the layer asks its [`GetOrganization`] source (a closure, for example
//!    reading a task-local);
//! 4. an event that still has none is rejected with [`ErrorKind::MissingOrganization`],
//!    unless its type is configured as organization-less.
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
//!     .layer(OrganizationLayer::new(|| OrganizationId::parse("org-1").ok()))
//!     .service(inner);
//! let event = Event::from_json("workout.created", serde_json::json!({}));
//! svc.oneshot(event).await.unwrap();
//! # }
//! ```

use std::{collections::HashSet, fmt, sync::Arc};

use tower_layer::Layer;

use crate::{
    error::{ErrorKind, PublishError},
    event::{Event, OrganizationId},
    prepare::{Prepare, PrepareEvent},
    schema::{ValidationError, Violation},
};

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

    /// Takes missing organization ids from `source` instead, keeping the
    /// organization-less types.
    #[must_use]
    pub fn with_source(mut self, source: impl GetOrganization) -> Self {
        self.source = Arc::new(source);
        self
    }

    /// Decides the organization of `event` (see the [module docs](self)), or explains
    /// why it cannot be published.
    ///
    /// # Errors
    /// [`ErrorKind::Validation`] when the event was given an invalid organization or
    /// correlation id or a refused custom header; [`ErrorKind::OrganizationMismatch`] when the event names another
    /// organization than its request; [`ErrorKind::MissingOrganization`] when none can
    /// be found.
    pub fn stamp(&self, event: &mut Event) -> Result<(), PublishError> {
        let rejected: Vec<Violation> = (event.rejected_ids())
            .map(|invalid| Violation::new(invalid.field(), invalid.reason()))
            .chain((event.rejected_headers()).map(|(field, reason)| Violation::new(field, reason)))
            .collect();
        if !rejected.is_empty() {
            return Err(PublishError::validation(ValidationError::new(
                event.event_type(),
                rejected,
            ))
            .for_event(event.id()));
        }
        let scope = event.context().request();
        let request = scope.and_then(|scope| scope.organization.as_ref());
        match (event.organization_id(), request) {
            (Some(own), Some(request))
                if own != request && !scope.is_some_and(|scope| scope.allow_override) =>
            {
                Err(PublishError::new(
                    ErrorKind::OrganizationMismatch,
                    format!(
                        "event names organization `{own}` but the request belongs to `{request}`; overrides are not allowed"
                    ),
                )
                .for_event(event.id()))
            }
            (Some(_), _) => Ok(()),
            (None, Some(request)) => {
                let request = request.clone();
                event.set_organization(request);
                Ok(())
            }
            (None, None) => {
                if let Some(org) = self.source.organization() {
                    event.set_organization(org);
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
    }
}

impl<S> Layer<S> for OrganizationLayer {
    type Service = Organization<S>;

    fn layer(&self, inner: S) -> Organization<S> {
        Prepare::new(inner, self.clone())
    }
}

impl PrepareEvent for OrganizationLayer {
    fn prepare(&self, event: &mut Event) -> Result<(), PublishError> {
        self.stamp(event)
    }
}

/// The service built by [`OrganizationLayer`].
pub type Organization<S> = Prepare<S, OrganizationLayer>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_organization_wins() {
        let layer = OrganizationLayer::new(|| OrganizationId::parse("from-source").ok());
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

    #[test]
    fn invalid_ids_are_validation_errors_naming_the_field() {
        let layer = OrganizationLayer::new(|| OrganizationId::parse("from-source").ok())
            .organization_less("system.tick");
        for (bad_org, bad_corr, field) in [
            (Some(""), None, "organization_id"),
            (Some("   "), None, "organization_id"),
            (Some("org\0nul"), None, "organization_id"),
            (Some("\u{202e}gro-1"), None, "organization_id"),
            (None, Some("req\r\nx: y"), "correlation_id"),
            (None, Some(""), "correlation_id"),
        ] {
            let mut event = Event::from_json("system.tick", serde_json::json!({}));
            if let Some(org) = bad_org {
                event = event.with_organization(org);
            }
            if let Some(corr) = bad_corr {
                event = event.with_correlation_id(corr);
            }
            let err = layer.stamp(&mut event).unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::Validation,
                "{bad_org:?} {bad_corr:?}"
            );
            assert_eq!(err.validation_error().unwrap().violations()[0].field, field);
            assert!(event.organization_id().is_none());
        }
    }

    #[test]
    fn refused_headers_are_validation_errors_naming_each_header() {
        let layer = OrganizationLayer::default();
        let mut event = Event::from_json("a.b", serde_json::json!({}))
            .with_organization("org-1")
            .with_header("tier", "gold")
            .with_header("X-Death", 1)
            .with_header("traceparent", "00-abc")
            .with_header("CC", "other.key");
        let err = layer.stamp(&mut event).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation);
        assert_eq!(err.event_id(), Some(event.id()));
        let fields: Vec<_> = (err.validation_error().unwrap().violations())
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(
            fields,
            ["headers.X-Death", "headers.traceparent", "headers.CC"]
        );
        assert!(
            err.to_string()
                .contains("headers.X-Death: is reserved by RabbitMQ (x- headers)"),
            "{err}"
        );
        // Ids first, then headers.
        let mut event = Event::from_json("a.b", serde_json::json!({}))
            .with_header("fitviz-x", 1)
            .with_organization("");
        let err = layer.stamp(&mut event).unwrap_err();
        let fields: Vec<_> = (err.validation_error().unwrap().violations())
            .iter()
            .map(|v| v.field.as_str())
            .collect();
        assert_eq!(fields, ["organization_id", "headers.fitviz-x"]);
    }
}
