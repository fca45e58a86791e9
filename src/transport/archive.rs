//! What the transport knows of the archive stream `<exchange>.archive`: its name, and
//! whether it exists on the current connection, so that receipts say
//! [`Routing::Archived`](crate::Routing::Archived) only when it does.

use std::sync::atomic::{AtomicU64, Ordering};

use lapin::{options::QueueDeclareOptions, types::FieldTable};

use super::pool::ChannelPool;
use crate::config::{ARCHIVE_SUFFIX, ArchivePatterns};

/// `<exchange>.archive`: the name of the archive stream.
pub fn archive_name(exchange: &str) -> String {
    format!("{exchange}{ARCHIVE_SUFFIX}")
}

/// How long the check of the archive may take.
const CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether the broker answered `404 NOT_FOUND`.
fn is_not_found(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(e) if e.get_id() == 404)
}

/// The archive's patterns and, per connection generation, whether the archive exists.
#[derive(Debug)]
pub(super) struct ArchiveCheck {
    patterns: ArchivePatterns,
    /// `(generation + 1) << 1 | exists` of the last check (the newest connection it
    /// covers); 0 before any.
    checked: AtomicU64,
    /// Held while a check runs: the publishes that need one meanwhile wait for its
    /// answer instead of each opening a channel of their own.
    checking: tokio::sync::Mutex<()>,
}

impl ArchiveCheck {
    pub(super) fn new(patterns: ArchivePatterns) -> Self {
        Self {
            patterns,
            checked: AtomicU64::new(0),
            checking: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether any event is archived: when not, receipts need no look at the archive
    /// (the per-event path skips it).
    pub(super) fn is_on(&self) -> bool {
        self.patterns.is_on()
    }

    /// Whether an event of `event_type`, confirmed on a connection of `generation`
    /// without a return, is in the archive: its type matches the patterns and the
    /// archive exists (checked with a passive declare, again whenever a publish goes
    /// over a connection newer than the last check).
    pub(super) async fn holds(
        &self,
        pool: &ChannelPool,
        exchange: &str,
        event_type: &str,
        generation: u64,
    ) -> bool {
        if !self.patterns.matches(event_type) {
            return false;
        }
        if let Some(exists) = self.known(generation) {
            return exists;
        }
        let _checking = self.checking.lock().await;
        // Answered while this one waited?
        if let Some(exists) = self.known(generation) {
            return exists;
        }
        let name = archive_name(exchange);
        let look = pool.with_admin_channel(async |admin| {
            admin
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
        });
        // The event is confirmed already: a slow answer must not hold its receipt.
        let looked = tokio::time::timeout(CHECK_TIMEOUT, look).await;
        match looked {
            Ok(Ok((Ok(_), checked_on))) => {
                self.record(checked_on.max(generation), true);
                true
            }
            Ok(Ok((Err(error), checked_on))) if is_not_found(&error) => {
                tracing::warn!(
                    archive = %name,
                    %error,
                    "the archive is configured but does not exist: receipts say `routed`, not `archived` (declare it: `fitviz-events archive declare`)"
                );
                self.record(checked_on.max(generation), false);
                false
            }
            // No answer (no connection, another error, too slow): claim nothing, and
            // look again next time.
            other => {
                tracing::debug!(archive = %name, answer = ?other.map(|r| r.map(|(r, _)| r.map(drop))), "could not check the archive");
                false
            }
        }
    }

    /// The answer of a check on this connection or a newer one (the pool's connections
    /// are numbered in the order they opened).
    fn known(&self, generation: u64) -> Option<bool> {
        let checked = self.checked.load(Ordering::Relaxed);
        (checked >> 1 > generation).then_some(checked & 1 == 1)
    }

    fn record(&self, generation: u64, exists: bool) {
        self.checked.store(
            ((generation + 1) << 1) | u64::from(exists),
            Ordering::Relaxed,
        );
    }
}
