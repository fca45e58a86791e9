//! [`LogLimiter`]: logs a burst of identical failures once, with a count.
//!
//! A caller looping on a failing publish (an open breaker, a closed publisher, a
//! broker that is down) would otherwise write one warning per call — hundreds of
//! thousands of lines a second. Each log site asks its limiter before it logs; a line
//! is identified by a key (the error kind and the event type, say):
//!
//! - the first occurrence of a key is logged at once ([`admit`](LogLimiter::admit)
//!   returns `Some(0)`);
//! - later occurrences within the interval after the last logged line are counted and
//!   not logged (`None`);
//! - the first occurrence after the interval is logged with the number suppressed since
//!   the last logged line (`Some(n)`, logged as the field `suppressed`), and starts a new
//!   interval.
//!
//! So a steady burst costs at most one line per key and interval, and no failure goes
//! uncounted: the suppressed count is reported by the next line of that key (a burst that
//! stops inside an interval leaves its last count unreported until the key recurs).
//!
//! Lock-light: the keys are hashed into a few shards, each a small map behind a
//! `std::sync::Mutex` held for one lookup; no allocation after a key's first line, no
//! task, no timer. Memory is bounded: a shard holds at most [`PER_SHARD`] keys, drops
//! keys idle for an interval when it is full, and counts any further keys together under
//! one overflow key. Time is tokio's clock, so tests can pause it.

use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher, Hash, RandomState},
    sync::Mutex,
    time::Duration,
};

use tokio::time::Instant;

/// The default interval: at most one line per key every five seconds.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(5);

const SHARDS: usize = 8;
/// Keys one shard tracks before it drops idle ones.
const PER_SHARD: usize = 64;
/// Where the keys of a full shard are counted together.
const OVERFLOW: u64 = u64::MAX;

/// Rate-limits repeated log lines; see the [module docs](self).
pub(crate) struct LogLimiter {
    interval: Duration,
    hasher: RandomState,
    shards: [Mutex<HashMap<u64, Entry>>; SHARDS],
}

/// One key's state: when its last line was logged and how many were suppressed since.
struct Entry {
    logged: Instant,
    suppressed: u64,
}

impl fmt::Debug for LogLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogLimiter")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(LOG_INTERVAL)
    }
}

impl LogLimiter {
    /// At most one line per key every `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    /// Whether to log a line with `key` now: `Some(n)` — log it, mentioning the `n` lines
    /// of this key suppressed since the last one — or `None` — skip it (it is counted).
    pub(crate) fn admit(&self, key: impl Hash) -> Option<u64> {
        let hash = self.hasher.hash_one(key) & !(1 << 63); // never OVERFLOW
        let shard = &self.shards[(hash as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let key = if map.contains_key(&hash) || self.make_room(&mut map, now) {
            hash
        } else {
            OVERFLOW
        };
        match map.get_mut(&key) {
            None => {
                map.insert(
                    key,
                    Entry {
                        logged: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
            Some(entry) if now.duration_since(entry.logged) >= self.interval => {
                entry.logged = now;
                Some(std::mem::take(&mut entry.suppressed))
            }
            Some(entry) => {
                entry.suppressed += 1;
                None
            }
        }
    }

    /// Whether a shard has room for a new key, dropping idle keys when it is full.
    fn make_room(&self, map: &mut HashMap<u64, Entry>, now: Instant) -> bool {
        let tracked = || map.len() - usize::from(map.contains_key(&OVERFLOW));
        if tracked() < PER_SHARD {
            return true;
        }
        map.retain(|_, entry| now.duration_since(entry.logged) < self.interval);
        map.len() - usize::from(map.contains_key(&OVERFLOW)) < PER_SHARD
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::advance;

    use super::*;

    const EVERY: Duration = Duration::from_secs(5);

    #[tokio::test(start_paused = true)]
    async fn the_first_line_is_logged_then_one_summary_per_interval() {
        let log = LogLimiter::new(EVERY);
        assert_eq!(log.admit(("open", "workout.created")), Some(0));
        for _ in 0..1000 {
            assert_eq!(log.admit(("open", "workout.created")), None);
        }
        advance(EVERY - Duration::from_millis(1)).await;
        assert_eq!(log.admit(("open", "workout.created")), None);
        advance(Duration::from_millis(1)).await;
        assert_eq!(log.admit(("open", "workout.created")), Some(1001));
        // A new interval starts with that line.
        assert_eq!(log.admit(("open", "workout.created")), None);
        advance(EVERY).await;
        assert_eq!(log.admit(("open", "workout.created")), Some(1));
        // Quiet for an interval: the next line is logged at once with nothing suppressed.
        advance(EVERY * 3).await;
        assert_eq!(log.admit(("open", "workout.created")), Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn keys_are_limited_apart() {
        let log = LogLimiter::new(EVERY);
        assert_eq!(log.admit(("open", "workout.created")), Some(0));
        assert_eq!(log.admit(("open", "booking.confirmed")), Some(0));
        assert_eq!(log.admit(("shutdown", "workout.created")), Some(0));
        assert_eq!(log.admit(("open", "workout.created")), None);
        assert_eq!(log.admit(("open", "booking.confirmed")), None);
        assert_eq!(log.admit(("shutdown", "workout.created")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_bounded_and_every_line_is_counted() {
        let log = LogLimiter::new(EVERY);
        let keys = SHARDS * PER_SHARD * 4;
        let mut logged = 0;
        let mut reported = 0;
        for round in 0..3 {
            for key in 0..keys {
                if let Some(n) = log.admit(key) {
                    logged += 1;
                    reported += n;
                }
            }
            for shard in &log.shards {
                assert!(
                    shard.lock().unwrap().len() <= PER_SHARD + 1,
                    "round {round}"
                );
            }
        }
        // Far fewer lines than calls (the overflow key gathers the rest) …
        assert!(logged <= SHARDS * (PER_SHARD + 1), "{logged} lines");
        // … and after an interval, each tracked key reports what it suppressed.
        advance(EVERY).await;
        for key in 0..keys {
            if let Some(n) = log.admit(key) {
                logged += 1;
                reported += n;
            }
        }
        assert!(reported > 0);
        assert!(logged as u64 + reported <= (keys * 4) as u64);
    }

    #[test]
    fn works_without_a_runtime() {
        let log = LogLimiter::default();
        assert_eq!(log.admit(1), Some(0));
        assert_eq!(log.admit(1), None);
    }

    #[test]
    fn is_shared_across_threads() {
        let log = std::sync::Arc::new(LogLimiter::new(Duration::from_secs(3600)));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || (0..10_000).filter(|_| log.admit("k").is_some()).count())
            })
            .collect();
        let lines: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(lines, 1, "one line for 40,000 identical failures");
    }
}
