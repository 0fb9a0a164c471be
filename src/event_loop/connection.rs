//! One proxied connection in mio mode: the client socket, the backend socket (connecting
//! or connected), the two [`Pipe`]s, and the clock for its timeouts.
//!
//! A connection never blocks and never owns a thread: it is a record in the loop's map,
//! and the loop calls it when one of its sockets has an event or a deadline passes. While
//! idle it holds two sockets and a few counters, nothing else (no buffers).

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::pipe::{Fault, Pipe};
use crate::balancer::Balancer;
use crate::outcome::{Outcome, Summary};

/// Which socket of a connection an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The accepted client socket.
    Client,
    /// The socket to the backend.
    Backend,
}

/// The token of connection `id`'s `side`: `2 id` for the client, `2 id + 1` for the
/// backend. Ids count up from 1 and are never reused, so a late event for a closed
/// connection (even one from the same batch of events) finds nothing in the map: the safe
/// twin of the C's `maxevents = 1` and its deferred free list.
pub fn token(id: u64, side: Side) -> Token {
    Token(2 * id as usize + (side == Side::Backend) as usize)
}

/// The connection id and side a [`token`] stands for.
pub fn from_token(token: Token) -> (u64, Side) {
    let side = if token.0.is_multiple_of(2) {
        Side::Client
    } else {
        Side::Backend
    };
    ((token.0 / 2) as u64, side)
}

/// The config values a connection needs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Bytes queued per direction before its source is paused.
    pub max_buffered: usize,
    /// How long one backend connect may take.
    pub connect_timeout: Duration,
    /// Close a connection with no bytes moving for this long; `None` = never.
    pub idle_timeout: Option<Duration>,
}

/// What the loop lends a connection while it runs.
pub struct Ctx<'a> {
    /// Where sockets are registered for events.
    pub registry: &'a Registry,
    /// Picks backends; told which ones fail.
    pub balancer: &'a Balancer,
    /// The config values.
    pub settings: Settings,
    /// The loop's one read buffer, shared by every connection.
    pub buf: &'a mut [u8],
    /// The time of this turn of the loop.
    pub now: Instant,
}

/// One client ↔ backend pair.
#[derive(Debug)]
pub struct Conn {
    /// The connection number: its tokens and its log lines.
    id: u64,
    /// The accepted client.
    client: TcpStream,
    /// The client's address, for the summary line.
    client_addr: SocketAddr,
    /// The backend socket, connecting or connected.
    backend: Option<TcpStream>,
    /// Which backend `backend` is (an index into the balancer).
    backend_index: usize,
    /// Backends to try next if this connect fails, the next one last.
    to_try: Vec<usize>,
    /// While connecting: when the current attempt gives up. `None` once connected.
    connect_deadline: Option<Instant>,
    /// Client → backend.
    up: Pipe,
    /// Backend → client.
    down: Pipe,
    /// When the client was accepted.
    started: Instant,
    /// When a byte last moved either way (for the idle timeout).
    last_active: Instant,
}

impl Conn {
    /// Registers the accepted `client` and starts connecting to the first backend.
    pub fn start(
        id: u64,
        mut client: TcpStream,
        client_addr: SocketAddr,
        ctx: &mut Ctx,
    ) -> (Conn, Result<(), Outcome>) {
        let registered = ctx.registry.register(
            &mut client,
            token(id, Side::Client),
            Interest::READABLE | Interest::WRITABLE,
        );
        let mut to_try = ctx.balancer.plan();
        to_try.reverse();
        let mut conn = Conn {
            id,
            client,
            client_addr,
            backend: None,
            backend_index: 0,
            to_try,
            connect_deadline: None,
            up: Pipe::new("client -> backend"),
            down: Pipe::new("backend -> client"),
            started: ctx.now,
            last_active: ctx.now,
        };
        let result = match registered {
            Ok(()) => conn.connect_next(ctx),
            Err(e) => {
                log::warn!("conn {id}: cannot register the client: {e}");
                Err(Outcome::ClientReset)
            }
        };
        (conn, result)
    }

    /// Starts a non-blocking connect to the next backend in the plan. It finishes when the
    /// socket becomes writable ([`Conn::check_connect`]) or times out ([`Conn::on_tick`]).
    fn connect_next(&mut self, ctx: &mut Ctx) -> Result<(), Outcome> {
        while let Some(index) = self.to_try.pop() {
            let addr = ctx.balancer.backend(index).addr;
            let started = TcpStream::connect(addr).and_then(|mut stream| {
                let interest = Interest::READABLE | Interest::WRITABLE;
                let tok = token(self.id, Side::Backend);
                ctx.registry.register(&mut stream, tok, interest)?;
                Ok(stream)
            });
            match started {
                Ok(stream) => {
                    self.backend = Some(stream);
                    self.backend_index = index;
                    self.connect_deadline = Some(ctx.now + ctx.settings.connect_timeout);
                    return Ok(());
                }
                Err(e) => self.connect_failed(index, &e, ctx),
            }
        }
        Err(Outcome::ConnectFailed)
    }

    /// Logs a failed connect, marks that backend down, drops its socket.
    fn connect_failed(&mut self, index: usize, error: &io::Error, ctx: &mut Ctx) {
        let name = &ctx.balancer.backend(index).name;
        log::warn!(
            "conn {}: cannot connect to backend {name}: {error}",
            self.id
        );
        ctx.balancer.mark_down(index);
        if let Some(mut stream) = self.backend.take() {
            let _ = ctx.registry.deregister(&mut stream);
        }
        self.connect_deadline = None;
    }

    /// The backend socket had an event while connecting: finished, failed, or not yet.
    fn check_connect(&mut self, ctx: &mut Ctx) -> Result<(), Outcome> {
        let Some(stream) = &self.backend else {
            return Ok(());
        };
        let result = match stream.take_error() {
            Ok(None) => stream.peer_addr(),
            Ok(Some(e)) | Err(e) => Err(e),
        };
        match result {
            Ok(_) => {
                self.connect_deadline = None;
                ctx.balancer.mark_up(self.backend_index);
                // The client may have sent bytes while we waited; try both sides now.
                self.up.readable = true;
                self.down.readable = true;
                self.last_active = ctx.now;
                Ok(())
            }
            // A wake-up before the handshake is done: keep waiting.
            Err(e) if e.kind() == ErrorKind::NotConnected => Ok(()),
            Err(e) => {
                self.connect_failed(self.backend_index, &e, ctx);
                self.connect_next(ctx)
            }
        }
    }

    /// Handles one event for this connection's `side`. `Ok(true)` asks the loop to call
    /// [`Conn::pump`] again soon (a source still has bytes after its turn).
    pub fn on_event(&mut self, side: Side, event: &Event, ctx: &mut Ctx) -> Result<bool, Outcome> {
        if self.connect_deadline.is_some() {
            if side == Side::Backend {
                self.check_connect(ctx)?;
            } else if event.is_readable() || event.is_read_closed() {
                self.up.readable = true; // Read once the backend is connected.
            }
            if self.connect_deadline.is_some() {
                return Ok(false);
            }
        } else {
            if event.is_error() {
                self.check_error(side)?;
            }
            let readable = event.is_readable() || event.is_read_closed();
            let writable = event.is_writable() || event.is_write_closed();
            match side {
                Side::Client => self.up.readable |= readable,
                Side::Backend => self.down.readable |= readable,
            }
            if writable {
                self.flush(side, ctx)?;
            }
        }
        self.pump(ctx)
    }

    /// An error event: if the socket really has a pending error (a reset), end here,
    /// even if that side's reading is paused.
    fn check_error(&self, side: Side) -> Result<(), Outcome> {
        let socket = match side {
            Side::Client => Some(&self.client),
            Side::Backend => self.backend.as_ref(),
        };
        match socket.map(|s| s.take_error()) {
            Some(Ok(Some(e)) | Err(e)) => Err(self.failed(side, &e)),
            _ => Ok(()),
        }
    }

    /// `side` is writable: writes the queue headed there.
    fn flush(&mut self, side: Side, ctx: &mut Ctx) -> Result<(), Outcome> {
        let Some(backend) = &self.backend else {
            return Ok(());
        };
        let (pipe, dst, source) = match side {
            Side::Client => (&mut self.down, &self.client, Side::Backend),
            Side::Backend => (&mut self.up, backend, Side::Client),
        };
        let max = ctx.settings.max_buffered;
        match pipe.flush(dst, max, self.id) {
            Ok(true) => self.last_active = ctx.now,
            Ok(false) => {}
            Err(fault) => return Err(self.fault(source, fault)),
        }
        Ok(())
    }

    /// Moves bytes both ways as far as the sockets allow. `Ok(true)`: call again soon.
    pub fn pump(&mut self, ctx: &mut Ctx) -> Result<bool, Outcome> {
        let (Some(backend), None) = (&self.backend, self.connect_deadline) else {
            return Ok(false);
        };
        let max = ctx.settings.max_buffered;
        let up = self.up.pump(&self.client, backend, ctx.buf, max, self.id);
        let up = up.map_err(|f| self.fault(Side::Client, f))?;
        let down = self.down.pump(backend, &self.client, ctx.buf, max, self.id);
        let down = down.map_err(|f| self.fault(Side::Backend, f))?;
        if up.moved || down.moved {
            self.last_active = ctx.now;
        }
        Ok(up.more || down.more)
    }

    /// The outcome of a `fault` in the pipe reading from `source`.
    fn fault(&self, source: Side, fault: Fault) -> Outcome {
        match fault {
            Fault::Source(e) => self.failed(source, &e),
            Fault::Dest(e) if source == Side::Client => self.failed(Side::Backend, &e),
            Fault::Dest(e) => self.failed(Side::Client, &e),
        }
    }

    /// Logs an I/O error on `side` and returns that side's reset outcome.
    fn failed(&self, side: Side, error: &io::Error) -> Outcome {
        log::debug!("conn {}: {side:?} socket failed: {error}", self.id);
        match side {
            Side::Client => Outcome::ClientReset,
            Side::Backend => Outcome::BackendReset,
        }
    }

    /// Whether both directions have passed their EOF on: the connection ended normally.
    pub fn is_done(&self) -> bool {
        self.up.is_done() && self.down.is_done()
    }

    /// When [`Conn::on_tick`] has something to do: the connect or the idle deadline.
    pub fn deadline(&self, settings: &Settings) -> Option<Instant> {
        self.connect_deadline
            .or_else(|| settings.idle_timeout.map(|idle| self.last_active + idle))
    }

    /// Acts on passed deadlines: a connect that took too long moves on to the next
    /// backend; a connection idle for `idle_timeout` ends.
    pub fn on_tick(&mut self, ctx: &mut Ctx) -> Result<(), Outcome> {
        match self.connect_deadline {
            Some(deadline) if ctx.now >= deadline => {
                let e = io::Error::new(ErrorKind::TimedOut, "connect timed out");
                self.connect_failed(self.backend_index, &e, ctx);
                self.connect_next(ctx)
            }
            Some(_) => Ok(()),
            None => match ctx.settings.idle_timeout {
                Some(idle) if ctx.now >= self.last_active + idle => Err(Outcome::IdleTimeout),
                _ => Ok(()),
            },
        }
    }

    /// Deregisters and closes both sockets and returns the summary line's data.
    pub fn close(mut self, outcome: Outcome, registry: &Registry, balancer: &Balancer) -> Summary {
        let _ = registry.deregister(&mut self.client);
        let connected = self.connect_deadline.is_none() && self.backend.is_some();
        if let Some(mut backend) = self.backend.take() {
            let _ = registry.deregister(&mut backend);
        }
        let backend = if connected {
            balancer.backend(self.backend_index).name.clone()
        } else {
            "-".to_string()
        };
        Summary {
            id: self.id,
            client: self.client_addr,
            backend,
            up: self.up.delivered(),
            down: self.down.delivered(),
            duration: self.started.elapsed(),
            outcome,
        }
    }
}
