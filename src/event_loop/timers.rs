//! The loop's clock: when to wake up even if no socket has an event.
//!
//! A poll timeout is computed from the nearest deadline: a connection's connect or idle
//! timeout, the end of an accept back-off, the end of the drain after Ctrl-C. There is no
//! timer per connection: when the nearest connection deadline passes, one scan over all
//! connections handles every deadline that has passed and finds the next one. Scans are
//! at least [`MIN_TICK`] apart, so a timeout fires up to that much late, and thousands of
//! connections with deadlines close together cost one scan per tick, not one each.

use std::time::{Duration, Instant};

/// The shortest time between two scans of the connections for passed deadlines.
pub const MIN_TICK: Duration = Duration::from_millis(100);

/// The earlier of two optional instants.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The next scan and the drain.
#[derive(Debug)]
pub struct Timers {
    /// When to scan the connections next; `None` when no connection has a deadline.
    next_scan: Option<Instant>,
    /// How long the drain may last (from the config).
    drain_timeout: Duration,
    /// Set once Ctrl-C was seen: when the connections still open are cut. (The drain's
    /// log lines are the whole process's, [`crate::shutdown::DrainLog`].)
    drain: Option<Instant>,
}

impl Timers {
    /// No deadlines yet; a drain will last at most `drain_timeout`.
    pub fn new(drain_timeout: Duration) -> Timers {
        Timers {
            next_scan: None,
            drain_timeout,
            drain: None,
        }
    }

    /// Makes sure a scan happens by `deadline` (if any).
    pub fn schedule(&mut self, deadline: Option<Instant>) {
        self.next_scan = earliest(self.next_scan, deadline);
    }

    /// Whether a scan is due.
    pub fn tick_due(&self, now: Instant) -> bool {
        self.next_scan.is_some_and(|t| now >= t)
    }

    /// A scan just ran at `now` and found `next` as the nearest deadline.
    pub fn ticked(&mut self, next: Option<Instant>, now: Instant) {
        self.next_scan = next.map(|t| t.max(now + MIN_TICK));
    }

    /// How long `poll` may sleep: until the nearest of the next scan, the drain's end and
    /// `other` (the accept back-off). `None` = until an event comes.
    pub fn poll_timeout(&self, other: Option<Instant>, now: Instant) -> Option<Duration> {
        earliest(earliest(self.next_scan, self.drain), other)
            .map(|t| t.saturating_duration_since(now))
    }

    /// Whether the drain has begun.
    pub fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// Ctrl-C: starts the drain; it lasts at most `drain_timeout`.
    pub fn begin_drain(&mut self, now: Instant) {
        self.drain = Some(now + self.drain_timeout);
    }

    /// Whether the loop should end: every connection finished (`open` is 0), or the drain
    /// time is up (then the caller cuts the ones left).
    pub fn drain_over(&self, open: usize, now: Instant) -> bool {
        self.drain
            .is_some_and(|deadline| open == 0 || now >= deadline)
    }
}
