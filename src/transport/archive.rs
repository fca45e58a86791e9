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

/// The archive's patterns and, per connection generation, whether the archive exists.
#[derive(Debug)]
pub(super) struct ArchiveCheck {
    patterns: ArchivePatterns,
    /// `(generation + 1) << 1 | exists` of the last check (the newest connection it
    /// covers); 0 before any.
    checked: AtomicU64,
}

impl ArchiveCheck {
    pub(super) fn new(patterns: ArchivePatterns) -> Self {
        Self {
            patterns,
            checked: AtomicU64::new(0),
        }
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
        // Checked on this connection or a newer one (the pool's connections are numbered
        // in the order they opened): the answer holds.
        let checked = self.checked.load(Ordering::Relaxed);
        if checked >> 1 > generation {
            return checked & 1 == 1;
        }
        let name = archive_name(exchange);
        let looked = pool
            .with_admin_channel(async |admin| {
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
            })
            .await;
        match looked {
            Ok((Ok(_), checked_on)) => {
                self.record(checked_on.max(generation), true);
                true
            }
            Ok((Err(error), checked_on)) => {
                tracing::warn!(
                    archive = %name,
                    %error,
                    "the archive is configured but does not exist: receipts say `routed`, not `archived` (declare it: `fitviz-events archive declare`)"
                );
                self.record(checked_on.max(generation), false);
                false
            }
            // No connection to look on: claim nothing.
            Err(_) => false,
        }
    }

    fn record(&self, generation: u64, exists: bool) {
        self.checked.store(
            ((generation + 1) << 1) | u64::from(exists),
            Ordering::Relaxed,
        );
    }
}
