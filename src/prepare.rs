//! The one service of the front's layers ([`validate`](crate::validate),
//! [`organization`](crate::organization), [`envelope`](crate::envelope)): each checks or
//! stamps the event and then calls the inner service, or rejects the event before it.
//! Each layer is a [`PrepareEvent`]; [`Prepare`] is the service they build, as
//! tower-http's `ValidateRequestHeader` serves every `ValidateRequest`.
//!
//! # Example: a front layer of your own
//! ```
//! use fitviz_events::{Event, PublishError, schema::ValidationError};
//! use fitviz_events::prepare::{Prepare, PrepareEvent};
//! use fitviz_events::testing::MemorySink;
//!
//! /// Refuses `test.*` events in production.
//! #[derive(Clone)]
//! struct NoTestEvents;
//!
//! impl PrepareEvent for NoTestEvents {
//!     fn prepare(&self, event: &mut Event) -> Result<(), PublishError> {
//!         if event.event_type().starts_with("test.") {
//!             let why = "is a test event, refused in production";
//!             return Err(ValidationError::single(event.event_type(), "event_type", why).into());
//!         }
//!         Ok(())
//!     }
//! }
//!
//! let service = Prepare::new(MemorySink::new(), NoTestEvents);
//! # let _ = service;
//! ```

use std::task::{Context, Poll};

use tower_service::Service;

use crate::{error::PublishError, event::Event, future::ResponseFuture};

/// What a front layer does to an event before the layers inside it see it: check it,
/// or fill in what it lacks. An error rejects the event: the inner service is not
/// called and the caller gets the error at once.
pub trait PrepareEvent: Clone {
    /// Checks or stamps `event`.
    ///
    /// # Errors
    /// The error the event is rejected with.
    fn prepare(&self, event: &mut Event) -> Result<(), PublishError>;
}

/// The service a front layer builds: `P` prepares each event, then `S` gets it.
#[derive(Clone, Debug)]
pub struct Prepare<S, P> {
    inner: S,
    prepare: P,
}

impl<S, P> Prepare<S, P> {
    /// `inner` behind `prepare`.
    pub fn new(inner: S, prepare: P) -> Self {
        Self { inner, prepare }
    }
}

impl<S, P> Service<Event> for Prepare<S, P>
where
    S: Service<Event, Error = PublishError>,
    P: PrepareEvent,
{
    type Response = S::Response;
    type Error = PublishError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), PublishError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut event: Event) -> Self::Future {
        match self.prepare.prepare(&mut event) {
            Ok(()) => ResponseFuture::inner(self.inner.call(event)),
            Err(error) => ResponseFuture::rejected(error),
        }
    }
}
