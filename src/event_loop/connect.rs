//! The non-blocking connect to a backend, with failover to the next one.
//!
//! `mio::net::TcpStream::connect` returns at once with the handshake under way (C's
//! `EINPROGRESS`), so a slow or dead backend never stalls the loop (the C's part 2 used a
//! blocking `connect`, which did). The socket turns writable when the handshake ends,
//! either way: then `take_error()` says whether it failed, and `peer_addr()` whether it
//! is really connected (a wake-up may come early). An attempt still pending at
//! `connect_timeout` is given up. Every failure marks that backend down in the shared
//! [`Balancer`](crate::balancer::Balancer) and moves on to the next backend in the plan;
//! the client only notices if every backend fails.
//!
//! Running out of file descriptors is our problem, not the backend's: the backend is not
//! marked down, and the connect is tried again every [`fds::RETRY`] (until
//! `connect_timeout`) as other connections close and free theirs.

use std::io::{self, ErrorKind};
use std::sync::Arc;
use std::time::Instant;

use mio::Registry;
use mio::net::TcpStream;

use super::connection::{Ctx, Side, interest, token};
use crate::balancer::{Lease, Plan};
use crate::fds;
use crate::outcome::Outcome;
use crate::reload::InForce;
use crate::stats::BackendStats;

/// A backend connect under way.
#[derive(Debug)]
pub struct Connecting {
    /// The socket of the current attempt; `None` while waiting for a free fd.
    stream: Option<TcpStream>,
    /// Which backend it is, counted on it while the attempt lasts.
    lease: Lease,
    /// When the current backend is given up.
    deadline: Instant,
    /// While out of fds: when to try again.
    retry_at: Option<Instant>,
    /// Backends to try after this one.
    to_try: Plan,
    /// The configuration in force when the client came: its balancer made the plan, and
    /// keeps it whatever a reload does meanwhile.
    now: Arc<InForce>,
}

/// What became of a connect after an event or a tick.
#[derive(Debug)]
pub enum Step {
    /// Still under way (maybe with the next backend).
    Waiting(Connecting),
    /// Connected to the lease's backend, with its counters.
    Connected(TcpStream, Lease, Arc<BackendStats>),
}

impl Connecting {
    /// Starts connection `id`'s connect to the first backend of a fresh balancer plan.
    /// Fails with [`Outcome::ConnectFailed`] if no backend can even be tried.
    pub fn start(id: u64, ctx: &mut Ctx) -> Result<Connecting, Outcome> {
        let now = Arc::clone(ctx.in_force);
        Connecting::next(id, now.balancer.plan(), now, ctx)
    }

    /// Starts a connect to the next backend in `to_try` that accepts one.
    fn next(
        id: u64,
        mut to_try: Plan,
        mut now: Arc<InForce>,
        ctx: &mut Ctx,
    ) -> Result<Connecting, Outcome> {
        while let Some(lease) = to_try.next() {
            let mut connecting = Connecting {
                stream: None,
                lease,
                deadline: ctx.now + now.config.connect_timeout,
                retry_at: None,
                to_try,
                now,
            };
            match connecting.open(id, ctx) {
                Ok(()) => return Ok(connecting),
                Err(e) => failed(id, &connecting.lease, &e, &connecting.now)?,
            }
            (to_try, now) = (connecting.to_try, connecting.now);
        }
        Err(Outcome::ConnectFailed)
    }

    /// Opens the socket and starts the handshake, or, out of fds, plans a retry.
    fn open(&mut self, id: u64, ctx: &mut Ctx) -> io::Result<()> {
        let addr = self.lease.backend().addr;
        let opened = TcpStream::connect(addr).and_then(|mut stream| {
            // Urgent bytes are passed on in order like any others (see `listen::listen`).
            socket2::SockRef::from(&stream).set_out_of_band_inline(true)?;
            let registry = ctx.registry;
            registry.register(&mut stream, token(id, Side::Backend), interest())?;
            Ok(stream)
        });
        match opened {
            Ok(stream) => {
                self.stream = Some(stream);
                self.retry_at = None;
                Ok(())
            }
            Err(e) if fds::out_of_fds(&e) && ctx.now + fds::RETRY < self.deadline => {
                if self.retry_at.is_none() {
                    fds::log_waiting(id);
                }
                self.retry_at = Some(ctx.now + fds::RETRY);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// When [`Connecting::on_tick`] has something to do: a retry or the timeout.
    pub fn deadline(&self) -> Instant {
        self.retry_at.unwrap_or(self.deadline)
    }

    /// The socket had an event: the handshake finished, failed, or is not done yet.
    pub fn on_event(mut self, id: u64, ctx: &mut Ctx) -> Result<Step, Outcome> {
        let Some(stream) = self.stream.take() else {
            return Ok(Step::Waiting(self)); // A late event from a socket already given up.
        };
        let result = match stream.take_error() {
            Ok(None) => stream.peer_addr(),
            Ok(Some(e)) | Err(e) => Err(e),
        };
        if let Err(e) = result {
            self.stream = Some(stream);
            return match e.kind() {
                ErrorKind::NotConnected => Ok(Step::Waiting(self)), // Not done yet.
                _ => self.give_up(id, &e, ctx),
            };
        }
        self.now.balancer.connected(&self.lease);
        let _ = stream.set_nodelay(true); // A latency hint; failing is harmless.
        let stats = self.now.stats_of(&self.lease);
        stats.connected();
        Ok(Step::Connected(stream, self.lease, stats))
    }

    /// A deadline passed: retries a connect that lacked an fd, gives up one that took too
    /// long (and tries the next backend).
    pub fn on_tick(mut self, id: u64, ctx: &mut Ctx) -> Result<Step, Outcome> {
        if ctx.now < self.deadline() {
            return Ok(Step::Waiting(self));
        }
        if self.stream.is_none() {
            return match self.open(id, ctx) {
                Ok(()) => Ok(Step::Waiting(self)),
                Err(e) => self.give_up(id, &e, ctx),
            };
        }
        let e = io::Error::new(ErrorKind::TimedOut, "connect timed out");
        self.give_up(id, &e, ctx)
    }

    /// This attempt failed with `error`: closes it, tries the next backend.
    fn give_up(mut self, id: u64, error: &io::Error, ctx: &mut Ctx) -> Result<Step, Outcome> {
        if let Some(mut stream) = self.stream.take() {
            let _ = ctx.registry.deregister(&mut stream);
        }
        failed(id, &self.lease, error, &self.now)?;
        Connecting::next(id, self.to_try, self.now, ctx).map(Step::Waiting)
    }

    /// Stops waiting: deregisters the socket (dropping `self` closes it).
    pub fn close(mut self, registry: &Registry) {
        if let Some(mut stream) = self.stream.take() {
            let _ = registry.deregister(&mut stream);
        }
    }
}

/// Reports a failed attempt on `lease`'s backend to the balancer (which logs it and skips
/// the backend) and counts it. `Err` when the connection should give up rather than try
/// the next backend (out of fds: another backend would fail alike).
fn failed(id: u64, lease: &Lease, error: &io::Error, now: &InForce) -> Result<(), Outcome> {
    now.stats_of(lease).connect_failed();
    match now.balancer.connect_failed(id, lease, error) {
        true => Ok(()),
        false => Err(Outcome::ConnectFailed),
    }
}
