//! One event loop: its `Poll`, its listening socket, its connections and its deadlines.
//! Each turn waits for events, accepts, lets connections move what they can, and acts on
//! passed deadlines (see the module doc of [`super`]).

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::TcpListener;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use mio::event::Event;
use mio::{Events, Poll, Token};

use super::connection::{self, Conn, Ctx, Settings};
use super::listener::Listener;
use super::shared::Shared;
use super::timers::{self, Timers};
use crate::config::Config;
use crate::outcome::{Outcome, panic_message};
use crate::reload::InForce;
use crate::shutdown::Shutdown;

/// The listener's token. Connections use 2 and up (see [`connection::token`]).
pub(super) const LISTENER: Token = Token(0);
/// The token of the loop's waker (Ctrl-C, a place freed under the connection limit).
pub(super) const WAKER: Token = Token(1);
/// Events taken from the kernel per `poll` call.
pub(super) const EVENTS_PER_POLL: usize = 1024;
/// How often a loop stores its gauges for the stats page (a walk over its connections);
/// with the stats page on, an idle loop wakes this often to do so.
const PUBLISH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Everything one loop owns.
pub(super) struct EventLoop {
    /// Which loop this is (0 to `loops - 1`), for its thread name and debug lines.
    pub(super) index: usize,
    /// What the loops share: balancer, connection count and limit, ids, wakers, drain.
    pub(super) shared: Arc<Shared>,
    /// The kernel's readiness queue (epoll on Linux).
    pub(super) poll: Poll,
    /// The listening socket and its back-off.
    pub(super) listener: Listener,
    /// The open connections by id; ids are never reused.
    pub(super) conns: HashMap<u64, Conn>,
    /// The config values a connection needs.
    pub(super) settings: Settings,
    /// The one read buffer (`buffer_size` bytes) every connection reads into.
    pub(super) buf: Vec<u8>,
    /// Connections whose sources still had bytes when their turn ended.
    pub(super) again: Vec<u64>,
    /// Deadlines: connections, accept back-off, drain.
    pub(super) timers: Timers,
    /// Whether accepting stopped at the connection limit: once a connection closes (in
    /// any loop), the waiting clients must be accepted without a new event (the listener
    /// is edge-triggered).
    pub(super) at_limit: bool,
    /// Whether this loop's listener was closed and counted in the [`DrainLog`].
    pub(super) closed: bool,
    /// The configuration in force for new connections, and the reload it came from.
    pub(super) in_force: (Arc<InForce>, u64),
    /// When this loop's gauges for the stats page are next stored.
    pub(super) publish_at: Instant,
}

impl EventLoop {
    pub(super) fn new(
        index: usize,
        poll: Poll,
        listener: TcpListener,
        config: &Config,
        shared: Arc<Shared>,
    ) -> io::Result<EventLoop> {
        let listener = Listener::new(listener, poll.registry(), LISTENER)?;
        let in_force = (shared.current.get(), shared.current.generation());
        Ok(EventLoop {
            index,
            shared,
            poll,
            listener,
            conns: HashMap::new(),
            settings: Settings {
                max_buffered: config.max_buffered,
                idle_timeout: config.idle_timeout,
                client_timeout: config.client_timeout,
            },
            buf: vec![0; config.buffer_size.max(1)],
            again: Vec::new(),
            timers: Timers::new(config.drain_timeout),
            at_limit: false,
            closed: false,
            in_force,
            publish_at: Instant::now(),
        })
    }

    /// Once per turn: takes up a reload (one atomic load when there was none), and now
    /// and then stores this loop's gauges for the stats page.
    fn refresh(&mut self, now: Instant) {
        let generation = self.shared.current.generation();
        if generation != self.in_force.1 {
            let in_force = self.shared.current.get();
            let config = &in_force.config;
            self.settings = Settings {
                max_buffered: config.max_buffered,
                idle_timeout: config.idle_timeout,
                client_timeout: config.client_timeout,
            };
            self.buf.resize(config.buffer_size.max(1), 0);
            self.in_force = (in_force, generation);
        }
        if now >= self.publish_at {
            self.publish_at = now + PUBLISH_EVERY;
            let gauge = &self.shared.gauges[self.index];
            let (mut queued, mut paused) = (0, 0);
            for conn in self.conns.values() {
                let (q, p) = conn.backlog();
                queued += q;
                paused += p;
            }
            gauge.conns.store(self.conns.len(), Ordering::Relaxed);
            gauge.queued.store(queued, Ordering::Relaxed);
            gauge.paused.store(paused, Ordering::Relaxed);
        }
    }

    /// [`EventLoop::run`], and if it fails or panics (a bug outside any one connection):
    /// logs it and stops the whole process, as one loop failing would when it was the
    /// only one; this loop's connections are cut, the others drain.
    pub(super) fn run_to_end(mut self, shutdown: &Shutdown) -> io::Result<()> {
        let result = catch_unwind(AssertUnwindSafe(|| self.run(shutdown)))
            .unwrap_or_else(|panic| Err(io::Error::other(panic_message(&*panic))));
        if let Err(e) = &result {
            log::error!("event loop {} failed: {e}; stopping", self.index);
            shutdown.begin();
            self.shared.wake_all();
            self.close_listener();
            let cut = self.conns.len();
            self.cut_all();
            self.shared.drain.cut(cut);
        }
        self.shared.loop_ended(0);
        result
    }

    /// The loop: wait for events or the next deadline, handle them, repeat until the
    /// drain after Ctrl-C is over.
    pub(super) fn run(&mut self, shutdown: &Shutdown) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            let timeout = match self.again.is_empty() {
                true => self
                    .timers
                    .poll_timeout(self.listener.deadline(), Instant::now()),
                false => Some(std::time::Duration::ZERO), // Work left over: just peek.
            };
            // With the stats page on, wake at least every PUBLISH_EVERY to store gauges.
            let timeout = match self.shared.gauges_wanted {
                true => Some(timeout.map_or(PUBLISH_EVERY, |t| t.min(PUBLISH_EVERY))),
                false => timeout,
            };
            match self.poll.poll(&mut events, timeout) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            let now = Instant::now();
            self.refresh(now);
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    WAKER => {} // Ctrl-C, or a place freed at the limit: both checked below.
                    token => self.on_event(token, event, now),
                }
            }
            self.run_again(now);
            if shutdown.is_exiting() {
                // The second Ctrl-C: a reset each way, then report to the signal handler,
                // which ends the process. Every socket is armed to reset first (a quick
                // pass), in case the handler's deadline ends the process mid-way.
                for conn in self.conns.values() {
                    conn.reset_on_exit();
                }
                let cut = self.conns.len();
                self.cut_all();
                self.shared.loop_ended(cut);
                crate::shutdown::wait_for_exit();
            }
            if shutdown.is_stopping() && !self.timers.draining() {
                self.timers.begin_drain(now);
                self.stop_accepting(now);
            }
            if self.listener.on_tick(self.poll.registry(), now) {
                self.accept_all(now);
            }
            if self.timers.tick_due(now) {
                self.check_deadlines(now);
            }
            if self.at_limit && self.shared.open() < self.shared.max_conns {
                self.accept_all(now); // Connections closed: clients may be waiting.
            }
            if self.timers.draining() && !self.at_limit {
                self.close_listener(); // The backlog is served (see `stop_accepting`).
            }
            // An open listener still has clients queued at the limit: not over yet.
            let waiting = self.conns.len() + usize::from(!self.closed);
            if self.timers.drain_over(waiting, now) {
                self.close_listener();
                self.shared.drain.cut(self.conns.len());
                self.cut_all();
                return Ok(());
            }
        }
    }

    /// Shutdown: accepts the clients queued in the listener's backlog (they connected
    /// before the signal; closing the listener would reset them), then closes it, and
    /// counts it closed in the [`DrainLog`]. Once every loop's is closed the port refuses
    /// new clients and the drain's start is logged. At the connection limit the rest of
    /// the backlog is accepted as connections close, and the listener closes when it is
    /// empty (or at the drain's end); meanwhile no new client joins the queue.
    pub(super) fn stop_accepting(&mut self, now: Instant) {
        if !self.closed {
            self.listener.stop_queueing();
            self.accept_all(now);
            if !self.at_limit {
                self.close_listener();
            }
        }
    }

    /// Closes the listener (once) and counts it closed in the [`DrainLog`].
    pub(super) fn close_listener(&mut self) {
        if self.closed {
            return;
        }
        self.listener.close(self.poll.registry());
        self.closed = true;
        let shared = &self.shared;
        shared
            .drain
            .listener_closed(|| shared.open(), shared.drain_timeout);
    }

    /// The connections map and what a connection borrows from the loop, split so both
    /// can be used at once.
    pub(super) fn parts(&mut self, now: Instant) -> (&mut HashMap<u64, Conn>, Ctx<'_>) {
        let ctx = Ctx {
            registry: self.poll.registry(),
            in_force: &self.in_force.0,
            settings: self.settings,
            buf: &mut self.buf,
            now,
        };
        (&mut self.conns, ctx)
    }

    /// Accepts every pending client (edge-triggered: until `WouldBlock`), or as many as
    /// fit under the connection limit; the rest wait in the listen backlog.
    pub(super) fn accept_all(&mut self, now: Instant) {
        let max = self.shared.max_conns;
        if self.at_limit && self.shared.open() < max {
            self.at_limit = false;
            self.shared.log_limit(false);
        }
        loop {
            if !self.shared.reserve() {
                if !self.at_limit {
                    self.at_limit = true;
                    self.shared.log_limit(true);
                }
                return;
            }
            let registry = self.poll.registry();
            let errors_logged = &self.shared.accept_error_logged;
            let Some((client, addr)) = self.listener.accept(registry, errors_logged, now) else {
                self.shared.release();
                return;
            };
            let _ = client.set_nodelay(true); // A latency hint; failing is harmless.
            let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
            log::debug!("conn {id}: accepted from {addr} on loop {}", self.index);
            let (conns, mut ctx) = self.parts(now);
            let started = isolated(id, || Conn::start(id, client, addr, &mut ctx));
            let Ok((conn, started)) = started else {
                // It panicked: the client socket was dropped (closed) unwinding.
                self.shared.release();
                continue;
            };
            conns.insert(id, conn);
            self.after(id, started.map(|()| false));
        }
    }

    /// One event for one socket of a connection.
    pub(super) fn on_event(&mut self, token: Token, event: &Event, now: Instant) {
        let (id, side) = connection::from_token(token);
        let (conns, mut ctx) = self.parts(now);
        // A connection closed earlier (maybe earlier in this same batch): nothing to do.
        let Some(conn) = conns.get_mut(&id) else {
            return;
        };
        let result = isolated(id, || conn.on_event(side, event, &mut ctx)).and_then(|r| r);
        self.after(id, result);
    }

    /// Gives connections whose turn ended with bytes still to read another turn.
    pub(super) fn run_again(&mut self, now: Instant) {
        for id in std::mem::take(&mut self.again) {
            let (conns, mut ctx) = self.parts(now);
            let Some(conn) = conns.get_mut(&id) else {
                continue;
            };
            let result = isolated(id, || conn.pump(&mut ctx)).and_then(|r| r);
            self.after(id, result);
        }
    }

    /// Acts on what a connection's turn returned: close it, or note its next deadline
    /// and whether it wants another turn.
    pub(super) fn after(&mut self, id: u64, result: Result<bool, Outcome>) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        // A connection whose both directions ended (a FIN each way, or a peer's reset
        // once the bytes it sent before are delivered) is closed now.
        match result.and_then(|more| conn.ended().map_or(Ok(more), Err)) {
            Err(outcome) => self.close(id, outcome),
            Ok(more) => {
                self.timers.schedule(conn.deadline());
                if more {
                    self.again.push(id);
                }
            }
        }
    }

    /// Runs every connection's passed deadlines and schedules the next check.
    pub(super) fn check_deadlines(&mut self, now: Instant) {
        let (conns, mut ctx) = self.parts(now);
        let mut ended = Vec::new();
        let mut next = None;
        for (&id, conn) in conns.iter_mut() {
            if conn.deadline().is_some_and(|d| d <= now)
                && let Err(outcome) = isolated(id, || conn.on_tick(&mut ctx)).and_then(|r| r)
            {
                ended.push((id, outcome));
                continue;
            }
            next = timers::earliest(next, conn.deadline());
        }
        self.timers.ticked(next, now);
        for (id, outcome) in ended {
            self.close(id, outcome);
        }
    }

    /// Closes connection `id` and logs its summary line.
    pub(super) fn close(&mut self, id: u64, outcome: Outcome) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let summary = conn.close(outcome, self.poll.registry());
        if summary.backend == "-" {
            self.shared.current.stats().unserved(outcome);
        }
        summary.log();
        self.shared.release();
    }

    /// The drain time is over (or the loop failed): closes every connection still open.
    pub(super) fn cut_all(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id, Outcome::Shutdown);
        }
    }
}

/// Runs `work` for connection `id`, catching a panic: a bug hit by one connection must not
/// end the process (and every other connection with it), as it would on a loop's thread.
/// The panic is logged as an error and comes back as [`Outcome::InternalError`]; the
/// caller then closes the connection, resetting both sides. `AssertUnwindSafe`: after a
/// panic the connection's state is never used again, only closed.
fn isolated<T>(id: u64, work: impl FnOnce() -> T) -> Result<T, Outcome> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|panic| {
        log::error!("conn {id}: panicked: {}", panic_message(&*panic));
        Outcome::InternalError
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error() {
        assert_eq!(isolated(1, || 7), Ok(7));
        let result: Result<(), Outcome> = isolated(2, || panic!("a bug"));
        assert_eq!(result, Err(Outcome::InternalError));
    }
}
