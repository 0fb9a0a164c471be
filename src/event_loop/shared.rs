//! What every event loop of the process shares: the configuration in force (balancer), the count of open
//! connections under the limit from the open-files limit, the connection ids, one waker per
//! loop, the drain's log lines. Everything else belongs to one loop ([`super::one_loop`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

use crate::reload::Current;
use crate::shutdown::DrainLog;
use crate::stats::LoopGauge;

/// What every loop shares.
pub(super) struct Shared {
    /// The configuration in force (balancer, counters, settings), swapped by a reload.
    pub(super) current: Arc<Current>,
    /// One per loop: what the stats page shows of it.
    pub(super) gauges: Vec<LoopGauge>,
    /// Whether the stats page is on: then each loop stores its gauges now and then.
    pub(super) gauges_wanted: bool,
    /// Connections open in all loops (reserved just before `accept`).
    pub(super) open: AtomicUsize,
    /// The most connections open at once in the process (`listen::connection_limit`):
    /// each needs two fds. `usize::MAX` if unknown.
    pub(super) max_conns: usize,
    /// Whether "At the connection limit" was logged last (not yet "Below … again").
    pub(super) limit_logged: AtomicBool,
    /// When an accept error was last logged: at most one line a second for the process.
    pub(super) accept_error_logged: Mutex<Option<Instant>>,
    /// The id the next client gets (the summary line's `conn N`), unique in the process.
    pub(super) next_id: AtomicU64,
    /// One per loop: Ctrl-C, and a connection closing at the limit, wake them all.
    pub(super) wakers: Vec<Waker>,
    /// The drain's two log lines.
    pub(super) drain: DrainLog,
    /// How long the drain may last.
    pub(super) drain_timeout: Duration,
    /// Each loop reports here once, when it ends: how many connections it cut after a
    /// second Ctrl-C (0 if it ended with its drain). The signal handler counts the reports.
    pub(super) ended: (Sender<usize>, Receiver<usize>),
}

impl Shared {
    /// Wakes every loop; each then checks the shutdown flag and the connection limit.
    pub(super) fn wake_all(&self) {
        for waker in &self.wakers {
            if let Err(e) = waker.wake() {
                log::error!("cannot wake an event loop: {e}");
            }
        }
    }

    /// Takes a place under the connection limit for a client about to be accepted;
    /// `false` at the limit. Add first, then check: two loops cannot both take the last
    /// place. Giving back a place not taken wakes nobody: the count was at the limit, so
    /// the release that takes it below will see that and wake the loops.
    pub(super) fn reserve(&self) -> bool {
        if self.open.fetch_add(1, Ordering::SeqCst) < self.max_conns {
            return true;
        }
        self.open.fetch_sub(1, Ordering::SeqCst);
        false
    }

    /// Gives a place back (a connection closed, or no client was waiting after all). At
    /// the limit another loop may be waiting for a place with clients in its backlog and
    /// no event to come (its listener is edge-triggered): wake them all to look.
    pub(super) fn release(&self) {
        if self.open.fetch_sub(1, Ordering::SeqCst) >= self.max_conns {
            self.wake_all();
        }
    }

    /// Logs reaching the connection limit, or getting below it again: once for the
    /// process, not once per loop that notices.
    pub(super) fn log_limit(&self, reached: bool) {
        if self.limit_logged.swap(reached, Ordering::SeqCst) != reached {
            crate::listen::log_connection_limit(self.max_conns, reached);
        }
    }

    /// Connections open in all loops.
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// A loop is done, having cut `cut` connections after a second Ctrl-C.
    pub(super) fn loop_ended(&self, cut: usize) {
        let _ = self.ended.0.try_send(cut); // room for one report per loop
    }

    /// The second Ctrl-C (on the signal handler's thread): wakes every loop to reset its
    /// connections, and waits until `deadline` for every loop to report (a loop that had
    /// already finished its drain reported then). Returns how many connections were cut.
    pub(super) fn cut_everywhere(&self, deadline: Instant) -> usize {
        self.wake_all();
        let mut cut = 0;
        for _ in 0..self.wakers.len() {
            match self.ended.1.recv_deadline(deadline) {
                Ok(n) => cut += n,
                Err(_) => break,
            }
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event_loop::one_loop::WAKER;
    use mio::{Events, Poll};

    fn shared(max_conns: usize, poll: &Poll) -> Shared {
        Shared {
            current: crate::reload::Current::new(
                crate::config::Config::with_defaults(([127, 0, 0, 1], 0).into(), Vec::new()),
                None,
                crate::stats::Stats::new(None),
            ),
            gauges: Vec::new(),
            gauges_wanted: false,
            open: AtomicUsize::new(0),
            max_conns,
            limit_logged: AtomicBool::new(false),
            accept_error_logged: Mutex::new(None),
            next_id: AtomicU64::new(1),
            wakers: vec![Waker::new(poll.registry(), WAKER).unwrap()],
            drain: DrainLog::new(1),
            drain_timeout: Duration::from_secs(1),
            ended: crossbeam_channel::bounded(1),
        }
    }

    /// Whether the loop's waker fired within 1 s (generous: nothing else runs here).
    fn woken(poll: &mut Poll) -> bool {
        let mut events = Events::with_capacity(4);
        poll.poll(&mut events, Some(Duration::from_secs(1)))
            .unwrap();
        events.iter().any(|e| e.token() == WAKER)
    }

    #[test]
    fn the_connection_limit_is_shared_and_a_freed_place_wakes_the_loops() {
        let mut poll = Poll::new().unwrap();
        let shared = shared(2, &poll);
        assert!(shared.reserve() && shared.reserve());
        assert!(!shared.reserve(), "a third place under a limit of 2");
        assert_eq!(shared.open(), 2);
        shared.release(); // From the limit: a loop may be waiting with clients queued.
        assert!(
            woken(&mut poll),
            "no wake-up when a place was freed at the limit"
        );
        shared.release(); // Below the limit: nobody can be waiting.
        assert!(!woken(&mut poll), "a wake-up below the limit");
        assert_eq!(shared.open(), 0);
    }
}
