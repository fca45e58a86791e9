//! What a publish does when its confirm is late: ask the connection whether the broker
//! is still there, and wait on if it is.
//!
//! A confirm can be late for two reasons that look the same from a waiting publish:
//! - **the broker is alive and holding confirms**: a quorum queue confirms only once a
//!   majority has the message, and after the node of its leader goes away RabbitMQ 3.10
//!   holds confirms until a new leader is elected (measured here: up to ~10 s after a
//!   `kill -9`). Unconfirmed here means *not yet*, not *lost*: the confirm comes, and
//!   sending the event again would only add a duplicate and load on a cluster that is
//!   electing;
//! - **the connection is a black hole**: the socket is open but nothing comes back (a
//!   silent partition, a hung node). lapin notices only after two missed heartbeats
//!   (20 s by default), longer than a publish may wait.
//!
//! So after `confirm_timeout` without a confirm, [`await_confirm`] asks the connection
//! for a round trip (`basic.qos` on an idle channel of that connection, opened on first
//! use), bounded by [`check_timeout`]. An answer means the broker is alive: the publish
//! keeps waiting for the confirm it already has in flight, and asks again after another
//! `confirm_timeout`; the caller's deadline (`publish_timeout`) bounds the whole wait.
//! No answer means the connection is dead to us: the attempt fails with
//! [`ErrorKind::Timeout`](crate::ErrorKind::Timeout) (outcome unknown), which the retry
//! retries and the circuit breaker counts.
//!
//! One round trip answers every publish of the connection that was already waiting when
//! it started: [`Liveness::answered_since`] runs at most one check at a time per
//! connection and shares its answer, so a stall with hundreds of confirms in flight costs
//! a handful of round trips, not one per publish.

use std::{
    future::Future,
    pin::pin,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::Duration,
};

use lapin::{Channel, Connection, options::BasicQosOptions};
use tokio::time::Instant;

/// The longest a liveness round trip may take before the connection is judged dead.
pub(crate) const MAX_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a liveness round trip may take: `confirm_timeout`, at most
/// [`MAX_CHECK_TIMEOUT`]. A loopback round trip takes well under a millisecond and a
/// busy broker answers an idle channel within milliseconds, so two seconds without an
/// answer is a connection that does not carry traffic.
pub(crate) fn check_timeout(confirm_timeout: Duration) -> Duration {
    confirm_timeout.min(MAX_CHECK_TIMEOUT)
}

/// The answer of one round trip.
#[derive(Clone, Copy, Debug)]
struct Check {
    /// When the round trip was sent.
    started: Instant,
    /// Whether the broker answered within the bound.
    answered: bool,
}

/// Liveness checks of one connection; shared by its channels.
pub(crate) struct Liveness {
    connection: Weak<Connection>,
    /// The idle channel the round trips go over, opened on first use.
    channel: Mutex<Option<Channel>>,
    /// The last check's answer.
    last: Mutex<Option<Check>>,
    /// Held while a check runs: one at a time per connection.
    checking: tokio::sync::Mutex<()>,
    /// The connection's node, for the log.
    node: Arc<str>,
}

impl std::fmt::Debug for Liveness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Liveness")
            .field("node", &self.node)
            .field("last", &*lock(&self.last))
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Liveness {
    pub(crate) fn new(connection: &Arc<Connection>, node: Arc<str>) -> Self {
        Self {
            connection: Arc::downgrade(connection),
            channel: Mutex::new(None),
            last: Mutex::new(None),
            checking: tokio::sync::Mutex::new(()),
            node,
        }
    }

    /// Whether the broker answered a round trip on this connection that was sent at or
    /// after `since`, within `bound`: the answer of a check already made, or of one made
    /// now (one at a time; whoever waited for another's check uses its answer).
    pub(crate) async fn answered_since(&self, since: Instant, bound: Duration) -> bool {
        if let Some(answered) = self.known_since(since) {
            return answered;
        }
        let _checking = self.checking.lock().await;
        if let Some(answered) = self.known_since(since) {
            return answered;
        }
        let started = Instant::now();
        let answered = tokio::time::timeout(bound, self.round_trip())
            .await
            .unwrap_or(false);
        let previous = lock(&self.last).replace(Check { started, answered });
        // One line when a stall starts or its verdict changes, not one per check.
        let news = previous.is_none_or(|p| p.answered != answered || started - p.started > bound);
        if news && answered {
            tracing::info!(
                node = %self.node,
                "confirms are late but the broker answers on the connection: waiting for them \
                 (a quorum queue electing a new leader holds confirms until it has one)"
            );
        } else if news {
            tracing::warn!(
                node = %self.node,
                bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX),
                "confirms are late and the broker did not answer a round trip on the connection: \
                 it is treated as dead (publishes waiting on it time out)"
            );
        }
        answered
    }

    fn known_since(&self, since: Instant) -> Option<bool> {
        let last = (*lock(&self.last))?;
        (last.started >= since).then_some(last.answered)
    }

    /// One round trip: `basic.qos` on the idle channel (opening it first is a round trip
    /// too). `false` when the connection is gone or the channel fails.
    async fn round_trip(&self) -> bool {
        let channel = lock(&self.channel)
            .clone()
            .filter(|c| c.status().connected());
        let channel = match channel {
            Some(channel) => channel,
            None => {
                let Some(connection) = self.connection.upgrade() else {
                    return false;
                };
                match connection.create_channel().await {
                    Ok(channel) => {
                        *lock(&self.channel) = Some(channel);
                        return true;
                    }
                    Err(_) => return false,
                }
            }
        };
        channel
            .basic_qos(0, BasicQosOptions::default())
            .await
            .is_ok()
    }
}

/// The confirm was late and the connection did not answer: the attempt has failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unanswered {
    /// How long the publish waited for its confirm.
    pub(crate) waited: Duration,
}

/// Waits for `confirm`. Every `confirm_timeout` without it, asks `answered_since` (the
/// connection's [`Liveness::answered_since`], with the moment the wait ran out) whether
/// the broker still answers; keeps waiting while it does, and gives up when it does not.
/// A confirm that arrives during a check wins.
pub(crate) async fn await_confirm<T, Check, CheckFuture>(
    confirm: impl Future<Output = T>,
    confirm_timeout: Duration,
    mut answered_since: Check,
) -> Result<T, Unanswered>
where
    Check: FnMut(Instant) -> CheckFuture,
    CheckFuture: Future<Output = bool>,
{
    let started = Instant::now();
    let mut confirm = pin!(confirm);
    loop {
        if let Ok(outcome) = tokio::time::timeout(confirm_timeout, confirm.as_mut()).await {
            return Ok(outcome);
        }
        let check = answered_since(Instant::now());
        tokio::select! {
            biased;
            outcome = confirm.as_mut() => return Ok(outcome),
            answered = check => if !answered {
                return Err(Unanswered { waited: started.elapsed() });
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    const CONFIRM: Duration = Duration::from_secs(5);

    /// A check that answers (or not) after `takes`, counting its calls.
    fn check(
        answers: bool,
        takes: Duration,
        calls: &AtomicUsize,
    ) -> impl FnMut(Instant) -> std::pin::Pin<Box<dyn Future<Output = bool>>> + '_ {
        move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(takes).await;
                answers
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_confirm_in_time_needs_no_check() {
        let calls = AtomicUsize::new(0);
        let confirm = async {
            tokio::time::sleep(CONFIRM - Duration::from_millis(1)).await;
            7
        };
        let result = await_confirm(confirm, CONFIRM, check(false, Duration::ZERO, &calls)).await;
        assert_eq!(result, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_live_broker_is_waited_for_past_the_confirm_timeout() {
        // An election: the confirm comes after 12 s; the broker answers every check.
        let calls = AtomicUsize::new(0);
        let confirm = async {
            tokio::time::sleep(Duration::from_secs(12)).await;
            "acked"
        };
        let started = Instant::now();
        let result = await_confirm(
            confirm,
            CONFIRM,
            check(true, Duration::from_millis(1), &calls),
        )
        .await;
        assert_eq!(result, Ok("acked"));
        assert_eq!(started.elapsed(), Duration::from_secs(12));
        // Checked at 5 s and at ~10 s.
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_connection_fails_after_the_confirm_timeout_and_the_check() {
        let calls = AtomicUsize::new(0);
        let bound = check_timeout(CONFIRM);
        let started = Instant::now();
        let result = await_confirm(
            std::future::pending::<()>(),
            CONFIRM,
            check(false, bound, &calls),
        )
        .await;
        assert_eq!(
            result,
            Err(Unanswered {
                waited: CONFIRM + bound
            })
        );
        assert_eq!(started.elapsed(), CONFIRM + MAX_CHECK_TIMEOUT);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_confirm_during_the_check_wins() {
        let calls = AtomicUsize::new(0);
        let confirm = async {
            tokio::time::sleep(CONFIRM + Duration::from_millis(500)).await;
            1
        };
        let result = await_confirm(
            confirm,
            CONFIRM,
            check(false, Duration::from_secs(2), &calls),
        )
        .await;
        assert_eq!(result, Ok(1));
    }

    #[test]
    fn the_check_bound_is_the_confirm_timeout_up_to_two_seconds() {
        assert_eq!(
            check_timeout(Duration::from_millis(300)),
            Duration::from_millis(300)
        );
        assert_eq!(check_timeout(Duration::from_secs(5)), MAX_CHECK_TIMEOUT);
    }

    /// Checks are shared: a check started after a waiter's `since` answers it, and
    /// only one runs at a time. No connection: every round trip fails at once.
    #[tokio::test(start_paused = true)]
    async fn one_check_answers_every_waiter_that_was_waiting_before_it() {
        let liveness = Liveness {
            connection: Weak::new(),
            channel: Mutex::new(None),
            last: Mutex::new(None),
            checking: tokio::sync::Mutex::new(()),
            node: Arc::from("127.0.0.1:1"),
        };
        let since = Instant::now();
        assert!(!liveness.answered_since(since, Duration::from_secs(1)).await);
        let checked_at = lock(&liveness.last).unwrap().started;
        // A waiter whose wait ran out before that check uses its answer...
        assert!(!liveness.answered_since(since, Duration::from_secs(1)).await);
        assert_eq!(lock(&liveness.last).unwrap().started, checked_at);
        // ...one whose wait ran out later gets a new check.
        tokio::time::advance(Duration::from_millis(10)).await;
        let later = Instant::now();
        assert!(!liveness.answered_since(later, Duration::from_secs(1)).await);
        assert!(lock(&liveness.last).unwrap().started >= later);
    }
}
