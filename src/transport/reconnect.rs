//! The background task that keeps the transport connected.
//!
//! When a connection is lost (or a channel dies), it opens a replacement at once —
//! on another node when the one it used is gone — and reopens a confirm-mode channel
//! for every lane, so the first publish after a blip finds a channel ready instead of
//! paying the handshake. While the broker cannot be reached it tries again with an
//! exponential backoff and jitter (100 ms doubling to 2 s, each delay between half and
//! all of its value), forever, until the transport is closed or dropped: a node that
//! comes back is found within about 2 s.
//!
//! It is the one place that decides the broker is back: every connection it opens
//! (and every unblock) is reported through [`Health`] to whoever listens — the
//! [`EventPublisher`](crate::EventPublisher) lets its circuit breaker probe at once.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use tokio::task::AbortHandle;

use super::{health::Health, pool::ChannelPool};

/// What the task keeps connected: a transport's pool, and the record of its health.
pub(super) trait Transport: Send + Sync + 'static {
    fn pool(&self) -> &ChannelPool;
    fn health(&self) -> &Health;
}

/// The first delay after a failed attempt.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest delay between attempts.
const MAX_DELAY: Duration = Duration::from_secs(2);
/// How often a healthy transport looks at its lanes, for a channel that died without
/// its connection.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Starts the task; it ends when the transport is closed (which aborts it, so that
/// closing never waits for a connection attempt) or its last clone dropped.
pub(super) fn spawn<T: Transport>(transport: &Arc<T>) -> AbortHandle {
    let weak = Arc::downgrade(transport);
    tokio::spawn(run(weak)).abort_handle()
}

async fn run<T: Transport>(weak: Weak<T>) {
    let mut failures: u32 = 0;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if inner.pool().is_closed() {
            return;
        }
        let health = inner.health().clone();
        // Registered before the check, so a loss during it is not missed.
        let lost = health.lost();
        let mut lost = std::pin::pin!(lost);
        lost.as_mut().enable();
        match inner.pool().fill().await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(attempts = failures + 1, "reconnected to the broker");
                }
                failures = 0;
            }
            Err(error) if inner.pool().is_closed() => {
                tracing::debug!(%error, "transport closed while reconnecting");
                return;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                // The first failure is logged by the connection's loss; repeat at
                // warn level only now and then.
                if failures.is_power_of_two() {
                    tracing::warn!(attempts = failures, %error, "could not reconnect to the broker; retrying");
                } else {
                    tracing::debug!(attempts = failures, %error, "could not reconnect to the broker; retrying");
                }
            }
        }
        drop(inner);
        if failures == 0 {
            tokio::select! {
                () = lost => {}
                () = tokio::time::sleep(CHECK_INTERVAL) => {}
            }
        } else {
            tokio::time::sleep(backoff(failures)).await;
        }
    }
}

/// The delay after `failures` failed attempts: `FIRST_DELAY × 2^(failures-1)`, at most
/// `MAX_DELAY`, then a random point between half of it and all of it.
fn backoff(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let full = FIRST_DELAY.saturating_mul(1 << exponent).min(MAX_DELAY);
    let half = full / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        for _ in 0..200 {
            for (failures, full) in [
                (1, 100),
                (2, 200),
                (3, 400),
                (5, 1600),
                (6, 2000),
                (40, 2000),
            ] {
                let delay = backoff(failures);
                let full = Duration::from_millis(full);
                assert!(delay >= full / 2 && delay <= full, "{failures}: {delay:?}");
            }
        }
    }
}
