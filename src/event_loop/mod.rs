//! rsp's `mode = "mio"`: every connection served by one event loop on the main thread.
//!
//! # How it works
//! One [`mio::Poll`] watches the listener, a [`mio::Waker`] (Ctrl-C) and both sockets of
//! every connection. Each turn of the loop waits for events, then: accepts every pending
//! client (module `listener`), lets each connection with an event move what it can
//! (`connection`, `connect`, `pipe`, `queue`), and acts on passed deadlines (`timers`:
//! connect and idle timeouts, the accept back-off, the drain). Nothing ever blocks, so
//! one slow client or dead backend cannot hold up the others. A connection is a record in
//! a map: two sockets and a few counters, no thread, no stack, no buffer while idle; all
//! connections share one read buffer, since a read is passed on (or queued) at once.
//!
//! # Why one thread is enough
//! A proxy mostly waits. The work per event is a `read` and a `write` (a copy through
//! the kernel) and some bookkeeping, so one core moves far more bytes than a client and a
//! backend on the same machine produce, and 10,000 idle connections cost nothing but
//! memory. One thread also means no locks and no races between the two directions of a
//! connection. Its limit is one core: if the proxy did CPU-heavy work per byte (TLS,
//! compression) it would saturate first.
//!
//! # What SO_REUSEPORT with N loops would add
//! N threads, each with its own `Poll` and its own listening socket bound to the same port
//! with `SO_REUSEPORT`: the kernel spreads new connections over the N listeners, so N
//! cores work, and the loops share nothing but the balancer (already thread-safe). A
//! connection stays on the loop that accepted it, so one busy loop cannot hand work to an
//! idle one. std cannot set `SO_REUSEPORT`; `socket2` (already used for the listen
//! backlog) can.

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
use std::sync::Arc;
use std::time::Instant;

use mio::event::Event;
use mio::{Events, Poll, Token, Waker};

use crate::balancer::Balancer;
use crate::config::Config;
use crate::outcome::Outcome;
use crate::outcome::panic_message;
use crate::shutdown::Shutdown;
use connection::{Conn, Ctx, Settings};
use listener::Listener;
use timers::Timers;

/// The listener's token. Connections use 2 and up (see [`connection::token`]).
const LISTENER: Token = Token(0);
/// The token of the waker the Ctrl-C handler uses.
const WAKER: Token = Token(1);
/// Events taken from the kernel per `poll` call.
const EVENTS_PER_POLL: usize = 1024;

/// Runs the proxy in mio mode until Ctrl-C (or SIGTERM), then drains and returns `Ok`.
/// Errors only if it cannot start (e.g. the listen address is taken).
pub fn run(config: Config) -> io::Result<()> {
    let listener = crate::listen::listen(config.listen)?;
    let port = listener.local_addr()?.port();
    let mut event_loop = EventLoop::new(listener, &config)?;
    let shutdown = Shutdown::new();
    let waker = Arc::new(Waker::new(event_loop.poll.registry(), WAKER)?);
    shutdown.install_handler(move || {
        if let Err(e) = waker.wake() {
            log::error!("cannot wake the event loop: {e}");
        }
    })?;
    crate::listen::announce(port);
    event_loop.run(&shutdown)
}

/// Everything the loop owns.
struct EventLoop {
    /// The kernel's readiness queue (epoll on Linux).
    poll: Poll,
    /// The listening socket and its back-off.
    listener: Listener,
    /// The open connections by id; ids are never reused.
    conns: HashMap<u64, Conn>,
    /// The id the next client gets (the summary line's `conn N`).
    next_id: u64,
    /// Round robin with failover, shared code with threads mode.
    balancer: Balancer,
    /// The config values a connection needs.
    settings: Settings,
    /// The one read buffer (`buffer_size` bytes) every connection reads into.
    buf: Vec<u8>,
    /// Connections whose sources still had bytes when their turn ended.
    again: Vec<u64>,
    /// Deadlines: connections, accept back-off, drain.
    timers: Timers,
    /// The most connections open at once (`listen::connection_limit`): each needs two
    /// fds. `usize::MAX` if unknown.
    max_conns: usize,
    /// Whether accepting stopped at `max_conns`: once a connection closes, the waiting
    /// clients must be accepted without a new event (the listener is edge-triggered).
    at_limit: bool,
}

impl EventLoop {
    fn new(listener: TcpListener, config: &Config) -> io::Result<EventLoop> {
        let poll = Poll::new()?;
        let listener = Listener::new(listener, poll.registry(), LISTENER)?;
        Ok(EventLoop {
            poll,
            listener,
            conns: HashMap::new(),
            next_id: 1,
            balancer: Balancer::new(config.backends.clone(), config.backend_retry),
            settings: Settings {
                max_buffered: config.max_buffered,
                connect_timeout: config.connect_timeout,
                idle_timeout: config.idle_timeout,
                client_timeout: config.client_timeout,
            },
            buf: vec![0; config.buffer_size.max(1)],
            again: Vec::new(),
            timers: Timers::new(config.drain_timeout),
            max_conns: crate::listen::connection_limit().unwrap_or(usize::MAX),
            at_limit: false,
        })
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
                    WAKER => {} // Only Ctrl-C wakes us this way; the flag is checked below.
                    token => self.on_event(token, event, now),
                }
            }
            self.run_again(now);
            if shutdown.is_stopping() && !self.timers.draining() {
                self.listener.close(self.poll.registry());
                self.timers.begin_drain(self.conns.len(), now);
            }
            if self.listener.on_tick(self.poll.registry(), now) {
                self.accept_all(now);
            }
            if self.timers.tick_due(now) {
                self.check_deadlines(now);
            }
            if self.at_limit && self.conns.len() < self.max_conns {
                self.accept_all(now); // Connections closed: clients may be waiting.
            }
            if self.timers.drain_over(self.conns.len(), now) {
                if !self.conns.is_empty() {
                    self.cut_all();
                }
                return Ok(());
            }
        }
    }

    /// The connections map and what a connection borrows from the loop, split so both
    /// can be used at once.
    fn parts(&mut self, now: Instant) -> (&mut HashMap<u64, Conn>, Ctx<'_>) {
        let ctx = Ctx {
            registry: self.poll.registry(),
            balancer: &self.balancer,
            settings: self.settings,
            buf: &mut self.buf,
            now,
        };
        (&mut self.conns, ctx)
    }

    /// Accepts every pending client (edge-triggered: until `WouldBlock`), or as many as
    /// fit under `max_conns`; the rest wait in the listen backlog.
    fn accept_all(&mut self, now: Instant) {
        if self.at_limit && self.conns.len() < self.max_conns {
            self.at_limit = false;
            crate::listen::log_connection_limit(self.max_conns, false);
        }
        loop {
            if self.conns.len() >= self.max_conns {
                if !self.at_limit {
                    self.at_limit = true;
                    crate::listen::log_connection_limit(self.max_conns, true);
                }
                return;
            }
            let Some((client, addr)) = self.listener.accept(self.poll.registry(), now) else {
                return;
            };
            let _ = client.set_nodelay(true); // A latency hint; failing is harmless.
            let id = self.next_id;
            self.next_id += 1;
            let (conns, mut ctx) = self.parts(now);
            let started = isolated(id, || Conn::start(id, client, addr, &mut ctx));
            let Ok((conn, started)) = started else {
                continue; // It panicked: the client socket was dropped (closed) unwinding.
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
        conn.close(outcome, self.poll.registry(), &self.balancer)
            .log();
    }

    /// The drain time is over: closes every connection still open.
    fn cut_all(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for &id in &ids {
            self.close(id, Outcome::Shutdown);
        }
        self.timers.log_drain_end(ids.len());
    }
}

/// Runs `work` for connection `id`, catching a panic: a bug hit by one connection must not
/// end the process (and every other connection with it), as it would on this one thread.
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
