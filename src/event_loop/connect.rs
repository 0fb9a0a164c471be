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

use std::io::{self, ErrorKind};
use std::time::Instant;

use mio::net::TcpStream;
use mio::{Interest, Registry};

use super::connection::{Ctx, Side, token};
use crate::outcome::Outcome;

/// A backend connect under way.
#[derive(Debug)]
pub struct Connecting {
    /// The socket of the current attempt.
    stream: TcpStream,
    /// Which backend it is (an index into the balancer).
    index: usize,
    /// When the current attempt is given up.
    deadline: Instant,
    /// Backends to try after this one, the next one last.
    to_try: Vec<usize>,
}

/// What became of a connect after an event or a timeout.
#[derive(Debug)]
pub enum Step {
    /// Still under way (maybe with the next backend).
    Waiting(Connecting),
    /// Connected to backend `index` (the second field).
    Connected(TcpStream, usize),
}

impl Connecting {
    /// Starts connection `id`'s connect to the first backend of a fresh balancer plan.
    /// Fails with [`Outcome::ConnectFailed`] if no backend can even be tried.
    pub fn start(id: u64, ctx: &mut Ctx) -> Result<Connecting, Outcome> {
        let mut to_try = ctx.balancer.plan();
        to_try.reverse();
        Connecting::next(id, to_try, ctx)
    }

    /// Starts a connect to the next backend in `to_try` that accepts one.
    fn next(id: u64, mut to_try: Vec<usize>, ctx: &mut Ctx) -> Result<Connecting, Outcome> {
        while let Some(index) = to_try.pop() {
            let addr = ctx.balancer.backend(index).addr;
            let opened = TcpStream::connect(addr).and_then(|mut stream| {
                let interest = Interest::READABLE | Interest::WRITABLE;
                ctx.registry
                    .register(&mut stream, token(id, Side::Backend), interest)?;
                Ok(stream)
            });
            match opened {
                Ok(stream) => {
                    let deadline = ctx.now + ctx.settings.connect_timeout;
                    return Ok(Connecting {
                        stream,
                        index,
                        deadline,
                        to_try,
                    });
                }
                Err(e) => failed(id, index, &e, ctx),
            }
        }
        Err(Outcome::ConnectFailed)
    }

    /// When this attempt is given up ([`Connecting::time_out`]).
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The socket had an event: the handshake finished, failed, or is not done yet.
    pub fn on_event(self, id: u64, ctx: &mut Ctx) -> Result<Step, Outcome> {
        let result = match self.stream.take_error() {
            Ok(None) => self.stream.peer_addr(),
            Ok(Some(e)) | Err(e) => Err(e),
        };
        match result {
            Ok(_) => {
                ctx.balancer.mark_up(self.index);
                let _ = self.stream.set_nodelay(true); // A latency hint; failing is harmless.
                Ok(Step::Connected(self.stream, self.index))
            }
            Err(e) if e.kind() == ErrorKind::NotConnected => Ok(Step::Waiting(self)),
            Err(e) => self.give_up(id, &e, ctx),
        }
    }

    /// The deadline passed: gives this backend up and tries the next.
    pub fn time_out(self, id: u64, ctx: &mut Ctx) -> Result<Step, Outcome> {
        let e = io::Error::new(ErrorKind::TimedOut, "connect timed out");
        self.give_up(id, &e, ctx)
    }

    /// This attempt failed with `error`: closes it, tries the next backend.
    fn give_up(mut self, id: u64, error: &io::Error, ctx: &mut Ctx) -> Result<Step, Outcome> {
        let _ = ctx.registry.deregister(&mut self.stream);
        failed(id, self.index, error, ctx);
        Connecting::next(id, self.to_try, ctx).map(Step::Waiting)
    }

    /// Stops waiting: deregisters the socket (dropping `self` closes it).
    pub fn close(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.stream);
    }
}

/// Logs a failed attempt on backend `index` and marks it down.
fn failed(id: u64, index: usize, error: &io::Error, ctx: &mut Ctx) {
    let name = &ctx.balancer.backend(index).name;
    log::warn!("conn {id}: backend {name} failed: {error}; skipping it for a while");
    ctx.balancer.mark_down(index);
}
