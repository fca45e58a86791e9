//! [`CircuitBreakerLayer`]: the configuration, and the breaker its services share.

use std::{sync::Arc, time::Duration};

use tower_layer::Layer;

use super::{
    service::CircuitBreaker,
    state::{Breaker, BreakerHandle},
};

/// Opens the circuit on a failing broker; see the [module docs](super).
///
/// Cloning the layer, or building several services from it, shares one breaker.
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer {
    breaker: Arc<Breaker>,
}

impl CircuitBreakerLayer {
    /// A breaker that opens after `failure_threshold` consecutive broker failures
    /// (0 is treated as 1) and stays open for `open_for` before letting a probe
    /// through. Any `open_for` works: zero probes at once, and one so long that its
    /// end lies beyond what the clock can represent ([`Duration::MAX`]) never does.
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Self {
            breaker: Arc::new(Breaker::new(failure_threshold, open_for)),
        }
    }

    /// A handle on this layer's breaker, to report its state.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle::new(self.breaker.clone())
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreaker<S>;

    fn layer(&self, inner: S) -> CircuitBreaker<S> {
        CircuitBreaker::new(inner, self.breaker.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        circuit_breaker::{
            state::BreakerState,
            test_support::{Backend, OPEN_FOR, assert_refused, publish},
        },
        error::ErrorKind,
    };

    #[test]
    fn every_service_from_one_layer_shares_the_breaker() {
        let layer = CircuitBreakerLayer::new(2, OPEN_FOR);
        let (a, b) = (Backend::default(), Backend::default());
        a.then_fail(ErrorKind::Connection, 2);
        let mut svc_a = layer.layer(a.clone());
        let mut svc_b = layer.clone().layer(b.clone());
        publish(&mut svc_a).unwrap_err();
        publish(&mut svc_a).unwrap_err();
        assert_refused(publish(&mut svc_b));
        assert_eq!(b.calls(), 0);
        assert_eq!(svc_b.handle().state(), BreakerState::Open);
        assert_eq!(layer.handle().state(), BreakerState::Open);
    }

    #[test]
    fn a_zero_threshold_is_one_and_open_for_is_kept() {
        let handle = CircuitBreakerLayer::new(0, Duration::MAX).handle();
        assert_eq!(handle.failure_threshold(), 1);
        assert_eq!(handle.open_for(), Duration::MAX);
        let backend = Backend::default();
        let mut svc = CircuitBreakerLayer::new(0, Duration::MAX).layer(backend.clone());
        backend.then_fail(ErrorKind::Timeout, 1);
        publish(&mut svc).unwrap_err();
        assert_eq!(svc.handle().state(), BreakerState::Open);
        assert!(format!("{:?}", svc.handle()).contains("Open"));
        assert_refused(publish(&mut svc));
    }
}
