//! rsp's `mode = "mio"`: every connection served by an event loop, one loop per core.
//!
//! # How it works
//! One [`mio::Poll`] watches the listener, a [`mio::Waker`] (Ctrl-C) and both sockets of
//! every connection. Each turn of the loop waits for events, then: accepts every pending
//! client (module `listener`), lets each connection with an event move what it can
//! (`connection`, `connect`, `pipe`, `queue`), and acts on passed deadlines (`timers`:
//! connect and idle timeouts, the accept back-off, the drain). Nothing ever blocks, so
//! one slow client or dead backend cannot hold up the others. A connection is a record in
//! a map: two sockets and a few counters, no thread, no stack, no buffer while idle; all
//! connections of a loop share one read buffer, since a read is passed on (or queued) at
//! once.
//!
//! # One loop per core
//! A proxy mostly waits, and the work per event is a `read`, a `write` and some
//! bookkeeping, so one loop on one core moves far more bytes than a client and a backend
//! on the same machine produce. But one core is its limit: on a machine with more, many
//! short requests or new connections saturate that one core while the others idle. So
//! rsp runs `loops` event loops (by default one per CPU it may use), each on its own
//! thread with its own `Poll` and its own listening socket, all bound to the same port
//! with `SO_REUSEPORT` ([`crate::listen::listen_many`]): the kernel hands each new client
//! to one of the sockets by a hash of its address and port. The loops share only the
//! balancer (already thread-safe), the count of open connections (the limit from the
//! open-files limit is the process's, not a loop's), the connection ids, the Ctrl-C
//! wake-up and the rate limit of the accept-error log line; a connection stays on the loop that accepted it, so its two directions still
//! need no lock. The trade-off: the kernel spreads connections, not work, and a busy loop
//! cannot hand work to an idle one, so a few heavy connections that happen to share a
//! loop share its core while another loop idles. `loops = 1` is a single loop.
//!
//! # Shutdown
//! Ctrl-C wakes every loop. Each one accepts the clients already queued in its
//! listener's backlog (with `SO_REUSEPORT` each socket has its own backlog, and closing a
//! listener resets what is queued in it; those clients connected before the signal, so
//! they are served like the others), closes its listener and drains its connections. The
//! drain is logged once for the process ([`DrainLog`]): its start when the last listener
//! has closed, its end when every loop is done.

mod connect;
mod connection;
mod listener;
mod pipe;
mod queue;
mod timers;

use std::collections::HashMap;
use std::io::{self, ErrorKind};
use std::net::TcpListener;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::{Events, Poll, Token, Waker};

use crate::balancer::Balancer;
use crate::config::Config;
use crate::outcome::Outcome;
use crate::outcome::panic_message;
use crate::shutdown::{DrainLog, Shutdown};
use connection::{Conn, Ctx, Settings};
use listener::Listener;
use timers::Timers;

/// The listener's token. Connections use 2 and up (see [`connection::token`]).
const LISTENER: Token = Token(0);
/// The token of the loop's waker (Ctrl-C, a place freed under the connection limit).
const WAKER: Token = Token(1);
/// Events taken from the kernel per `poll` call.
const EVENTS_PER_POLL: usize = 1024;

/// Runs the proxy in mio mode until Ctrl-C (or SIGTERM), then drains and returns `Ok`.
/// Errors only if it cannot start (e.g. the listen address is taken), or if an event loop
/// fails (then the other loops drain first).
pub fn run(config: Config) -> io::Result<()> {
    let n = config.loops.max(1);
    let listeners = crate::listen::listen_many(config.listen, n)?;
    let port = listeners[0].local_addr()?.port();
    let mut polls = Vec::with_capacity(n);
    let mut wakers = Vec::with_capacity(n);
    for _ in 0..n {
        let poll = Poll::new()?;
        wakers.push(Waker::new(poll.registry(), WAKER)?);
        polls.push(poll);
    }
    let shared = Arc::new(Shared {
        balancer: Balancer::new(config.backends.clone(), config.backend_retry),
        open: AtomicUsize::new(0),
        max_conns: crate::listen::connection_limit().unwrap_or(usize::MAX),
        limit_logged: AtomicBool::new(false),
        accept_error_logged: Mutex::new(None),
        next_id: AtomicU64::new(1),
        wakers,
        drain: DrainLog::new(n),
        drain_timeout: config.drain_timeout,
        reset_loops: AtomicUsize::new(0),
    });
    let shutdown = Shutdown::new();
    // A second Ctrl-C: every loop resets its connections, and the last one to do so ends
    // the process (see `EventLoop::run`); the handler waits for that, but not forever.
    let exiting = Arc::clone(&shared);
    shutdown.on_second_signal(move || {
        exiting.wake_all();
        thread::sleep(Duration::from_secs(1));
    });
    let waking = Arc::clone(&shared);
    shutdown.install_handler(move || waking.wake_all())?;
    let mut loops = Vec::with_capacity(n);
    for (index, (poll, listener)) in polls.into_iter().zip(listeners).enumerate() {
        loops.push(EventLoop::new(
            index,
            poll,
            listener,
            &config,
            Arc::clone(&shared),
        )?);
    }
    // Loop 0 runs on this thread (so `loops = 1` is one thread, as before), the others on
    // their own.
    let first = loops.remove(0);
    let mut others = Vec::with_capacity(n - 1);
    for event_loop in loops {
        let shutdown = Arc::clone(&shutdown);
        others.push(
            thread::Builder::new()
                .name(format!("rsp-loop-{}", event_loop.index))
                .spawn(move || event_loop.run_to_end(&shutdown))?,
        );
    }
    crate::listen::announce(port);
    let mut result = first.run_to_end(&shutdown);
    for other in others {
        // `run_to_end` catches panics, so `join` fails only if logging itself panicked.
        let done = other
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("an event loop thread panicked")));
        result = result.and(done);
    }
    shared.drain.finish();
    result
}

/// What every loop shares.
struct Shared {
    /// Round robin with failover, shared code with threads mode.
    balancer: Balancer,
    /// Connections open in all loops (reserved just before `accept`).
    open: AtomicUsize,
    /// The most connections open at once in the process (`listen::connection_limit`):
    /// each needs two fds. `usize::MAX` if unknown.
    max_conns: usize,
    /// Whether "At the connection limit" was logged last (not yet "Below … again").
    limit_logged: AtomicBool,
    /// When an accept error was last logged: at most one line a second for the process.
    accept_error_logged: Mutex<Option<Instant>>,
    /// The id the next client gets (the summary line's `conn N`), unique in the process.
    next_id: AtomicU64,
    /// One per loop: Ctrl-C, and a connection closing at the limit, wake them all.
    wakers: Vec<Waker>,
    /// The drain's two log lines.
    drain: DrainLog,
    /// How long the drain may last.
    drain_timeout: Duration,
    /// Loops that have reset their connections after a second Ctrl-C.
    reset_loops: AtomicUsize,
}

impl Shared {
    /// Wakes every loop; each then checks the shutdown flag and the connection limit.
    fn wake_all(&self) {
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
    fn reserve(&self) -> bool {
        if self.open.fetch_add(1, Ordering::SeqCst) < self.max_conns {
            return true;
        }
        self.open.fetch_sub(1, Ordering::SeqCst);
        false
    }

    /// Gives a place back (a connection closed, or no client was waiting after all). At
    /// the limit another loop may be waiting for a place with clients in its backlog and
    /// no event to come (its listener is edge-triggered): wake them all to look.
    fn release(&self) {
        if self.open.fetch_sub(1, Ordering::SeqCst) >= self.max_conns {
            self.wake_all();
        }
    }

    /// Logs reaching the connection limit, or getting below it again: once for the
    /// process, not once per loop that notices.
    fn log_limit(&self, reached: bool) {
        if self.limit_logged.swap(reached, Ordering::SeqCst) != reached {
            crate::listen::log_connection_limit(self.max_conns, reached);
        }
    }

    /// Connections open in all loops.
    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// Everything one loop owns.
struct EventLoop {
    /// Which loop this is (0 to `loops - 1`), for its thread name and debug lines.
    index: usize,
    /// What the loops share: balancer, connection count and limit, ids, wakers, drain.
    shared: Arc<Shared>,
    /// The kernel's readiness queue (epoll on Linux).
    poll: Poll,
    /// The listening socket and its back-off.
    listener: Listener,
    /// The open connections by id; ids are never reused.
    conns: HashMap<u64, Conn>,
    /// The config values a connection needs.
    settings: Settings,
    /// The one read buffer (`buffer_size` bytes) every connection reads into.
    buf: Vec<u8>,
    /// Connections whose sources still had bytes when their turn ended.
    again: Vec<u64>,
    /// Deadlines: connections, accept back-off, drain.
    timers: Timers,
    /// Whether accepting stopped at the connection limit: once a connection closes (in
    /// any loop), the waiting clients must be accepted without a new event (the listener
    /// is edge-triggered).
    at_limit: bool,
    /// Whether this loop's listener was closed and counted in the [`DrainLog`].
    closed: bool,
}

impl EventLoop {
    fn new(
        index: usize,
        poll: Poll,
        listener: TcpListener,
        config: &Config,
        shared: Arc<Shared>,
    ) -> io::Result<EventLoop> {
        let listener = Listener::new(listener, poll.registry(), LISTENER)?;
        Ok(EventLoop {
            index,
            shared,
            poll,
            listener,
            conns: HashMap::new(),
            settings: Settings {
                max_buffered: config.max_buffered,
                connect_timeout: config.connect_timeout,
                idle_timeout: config.idle_timeout,
                client_timeout: config.client_timeout,
            },
            buf: vec![0; config.buffer_size.max(1)],
            again: Vec::new(),
            timers: Timers::new(config.drain_timeout),
            at_limit: false,
            closed: false,
        })
    }

    /// [`EventLoop::run`], and if it fails or panics (a bug outside any one connection):
    /// logs it and stops the whole process, as one loop failing would when it was the
    /// only one; this loop's connections are cut, the others drain.
    fn run_to_end(mut self, shutdown: &Shutdown) -> io::Result<()> {
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
        result
    }

    /// The loop: wait for events or the next deadline, handle them, repeat until the
    /// drain after Ctrl-C is over.
    fn run(&mut self, shutdown: &Shutdown) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            let timeout = match self.again.is_empty() {
                true => self
                    .timers
                    .poll_timeout(self.listener.deadline(), Instant::now()),
                false => Some(std::time::Duration::ZERO), // Work left over: just peek.
            };
            match self.poll.poll(&mut events, timeout) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            let now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    WAKER => {} // Ctrl-C, or a place freed at the limit: both checked below.
                    token => self.on_event(token, event, now),
                }
            }
            self.run_again(now);
            if shutdown.is_exiting() {
                for id in self.conns.keys().copied().collect::<Vec<_>>() {
                    self.close(id, Outcome::Shutdown); // a reset each way
                }
                // The last loop to reset its connections ends the process; the others
                // wait for it (or for the signal handler's own exit, a second later).
                if self.shared.reset_loops.fetch_add(1, Ordering::SeqCst) + 1
                    == self.shared.wakers.len()
                {
                    std::process::exit(crate::shutdown::SECOND_SIGNAL_EXIT_CODE);
                }
                loop {
                    thread::park();
                }
            }
            if shutdown.is_stopping() && !self.timers.draining() {
                self.stop_accepting(now);
                self.timers.begin_drain(now);
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
            if self.timers.drain_over(self.conns.len(), now) {
                self.shared.drain.cut(self.conns.len());
                self.cut_all();
                return Ok(());
            }
        }
    }

    /// Shutdown: accepts the clients queued in the listener's backlog (they connected
    /// before the signal; closing the listener would reset them), then closes it, and
    /// counts it closed in the [`DrainLog`]. Once every loop's is closed the port refuses
    /// new clients and the drain's start is logged.
    fn stop_accepting(&mut self, now: Instant) {
        if !self.closed {
            self.accept_all(now);
            self.close_listener();
        }
    }

    /// Closes the listener (once) and counts it closed in the [`DrainLog`].
    fn close_listener(&mut self) {
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
    fn parts(&mut self, now: Instant) -> (&mut HashMap<u64, Conn>, Ctx<'_>) {
        let ctx = Ctx {
            registry: self.poll.registry(),
            balancer: &self.shared.balancer,
            settings: self.settings,
            buf: &mut self.buf,
            now,
        };
        (&mut self.conns, ctx)
    }

    /// Accepts every pending client (edge-triggered: until `WouldBlock`), or as many as
    /// fit under the connection limit; the rest wait in the listen backlog.
    fn accept_all(&mut self, now: Instant) {
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
    fn on_event(&mut self, token: Token, event: &Event, now: Instant) {
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
    fn run_again(&mut self, now: Instant) {
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
    fn after(&mut self, id: u64, result: Result<bool, Outcome>) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        match result {
            Err(outcome) => self.close(id, outcome),
            Ok(_) if conn.is_done() => self.close(id, Outcome::Eof),
            Ok(more) => {
                self.timers.schedule(conn.deadline(&self.settings));
                if more {
                    self.again.push(id);
                }
            }
        }
    }

    /// Runs every connection's passed deadlines and schedules the next check.
    fn check_deadlines(&mut self, now: Instant) {
        let (conns, mut ctx) = self.parts(now);
        let mut ended = Vec::new();
        let mut next = None;
        for (&id, conn) in conns.iter_mut() {
            if conn.deadline(&ctx.settings).is_some_and(|d| d <= now)
                && let Err(outcome) = isolated(id, || conn.on_tick(&mut ctx)).and_then(|r| r)
            {
                ended.push((id, outcome));
                continue;
            }
            next = timers::earliest(next, conn.deadline(&ctx.settings));
        }
        self.timers.ticked(next, now);
        for (id, outcome) in ended {
            self.close(id, outcome);
        }
    }

    /// Closes connection `id` and logs its summary line.
    fn close(&mut self, id: u64, outcome: Outcome) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        conn.close(outcome, self.poll.registry(), &self.shared.balancer)
            .log();
        self.shared.release();
    }

    /// The drain time is over (or the loop failed): closes every connection still open.
    fn cut_all(&mut self) {
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

    fn shared(max_conns: usize, poll: &Poll) -> Shared {
        Shared {
            balancer: Balancer::new(Vec::new(), Duration::from_secs(1)),
            open: AtomicUsize::new(0),
            max_conns,
            limit_logged: AtomicBool::new(false),
            accept_error_logged: Mutex::new(None),
            next_id: AtomicU64::new(1),
            wakers: vec![Waker::new(poll.registry(), WAKER).unwrap()],
            drain: DrainLog::new(1),
            drain_timeout: Duration::from_secs(1),
            reset_loops: AtomicUsize::new(0),
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

    #[test]
    fn a_panic_becomes_an_internal_error() {
        assert_eq!(isolated(1, || 7), Ok(7));
        let result: Result<(), Outcome> = isolated(2, || panic!("a bug"));
        assert_eq!(result, Err(Outcome::InternalError));
    }
}
