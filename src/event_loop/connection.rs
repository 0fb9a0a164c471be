//! One proxied connection in mio mode: the client socket, the backend (connecting, then
//! connected), the two [`Pipe`]s, and the clock for its timeouts.
//!
//! A connection never blocks and owns no thread: it is a record in the loop's map, and
//! the loop calls it when one of its sockets has an event or a deadline passes. While
//! idle it holds two sockets and a few counters, nothing else (no buffers).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

use super::connect::{Connecting, Step};
use super::pipe::{Fault, Pipe, Pumped};
use crate::balancer::Lease;
use crate::outcome::{Outcome, Summary};
use crate::reload::InForce;
use crate::stats::BackendStats;
use std::sync::Arc;

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

/// What a connection's sockets are registered for: readable, writable, and on Linux
/// urgent data (`EPOLLPRI`), which a read stops short at (see [`Pipe::pump`]).
pub fn interest() -> Interest {
    let interest = Interest::READABLE | Interest::WRITABLE;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let interest = interest | Interest::PRIORITY;
    interest
}

/// The config values a connection needs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Bytes queued per direction before its source is paused.
    pub max_buffered: usize,
    /// Close a connection with no bytes moving for this long; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Close a connection on which no byte moved either way this long after it was
    /// accepted.
    pub client_timeout: Option<Duration>,
}

/// What the loop lends a connection while it runs.
pub struct Ctx<'a> {
    /// Where sockets are registered for events.
    pub registry: &'a Registry,
    /// The configuration in force (backends, balancer, counters) for new connections.
    pub in_force: &'a Arc<InForce>,
    /// The config values in force, for new connections.
    pub settings: Settings,
    /// The loop's one read buffer, shared by every connection.
    pub buf: &'a mut [u8],
    /// The time of this turn of the loop.
    pub now: Instant,
}

/// Where the backend side of a connection is.
#[derive(Debug)]
enum Backend {
    /// The connect is under way.
    Connecting(Connecting),
    /// Connected to the lease's backend (the lease counts the connection on it until
    /// the connection is dropped), with the backend's counters.
    Connected(TcpStream, Lease, Arc<BackendStats>),
    /// No backend: every connect failed (the connection is about to close).
    Failed,
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
    /// The backend socket and how far its connect got.
    backend: Backend,
    /// Client → backend.
    up: Pipe,
    /// Backend → client.
    down: Pipe,
    /// When the client was accepted.
    started: Instant,
    /// When a byte last moved either way (for the idle timeout).
    last_active: Instant,
    /// The first peer that reset or vanished: the connection ends once the bytes that
    /// peer sent before are delivered (see [`Conn::fail`]).
    failed: Option<Side>,
    /// The config values in force when it was accepted (a reload does not change them).
    settings: Settings,
    /// Bytes up and down already added to the backend's counters.
    counted: [u64; 2],
}

impl Conn {
    /// Registers the accepted `client` and starts connecting to a backend. The connection
    /// is returned even if that failed, so the caller closes and logs it like any other.
    pub fn start(
        id: u64,
        mut client: TcpStream,
        client_addr: SocketAddr,
        ctx: &mut Ctx,
    ) -> (Conn, Result<(), Outcome>) {
        let registered = ctx
            .registry
            .register(&mut client, token(id, Side::Client), interest());
        let connecting = match registered {
            Ok(()) => Connecting::start(id, ctx),
            Err(e) => {
                log::warn!("conn {id}: cannot register the client: {e}");
                Err(Outcome::ClientReset)
            }
        };
        let (backend, result) = match connecting {
            Ok(connecting) => (Backend::Connecting(connecting), Ok(())),
            Err(outcome) => (Backend::Failed, Err(outcome)),
        };
        let conn = Conn {
            id,
            client,
            client_addr,
            backend,
            up: Pipe::new("client -> backend"),
            down: Pipe::new("backend -> client"),
            started: ctx.now,
            last_active: ctx.now,
            failed: None,
            settings: ctx.settings,
            counted: [0, 0],
        };
        (conn, result)
    }

    /// Handles one event for this connection's `side`. `Ok(true)` asks the loop to call
    /// [`Conn::pump`] again soon (a source still has bytes after its turn).
    pub fn on_event(&mut self, side: Side, event: &Event, ctx: &mut Ctx) -> Result<bool, Outcome> {
        let closed = event.is_read_closed();
        let urgent = event.is_priority();
        let readable = event.is_readable() || closed || urgent;
        if matches!(self.backend, Backend::Connecting(_)) {
            match side {
                Side::Backend => {
                    self.step_connect(ctx, false)?;
                    let connected = matches!(self.backend, Backend::Connected(..));
                    if readable && connected {
                        // A greeting came with the connect.
                        self.down.on_readable(closed, urgent);
                    }
                }
                // Read once connected.
                Side::Client if readable => self.up.on_readable(closed, urgent),
                Side::Client => {}
            }
            return self.pump(ctx);
        }
        if event.is_error() {
            self.check_error(side);
        }
        if readable {
            match side {
                Side::Client => self.up.on_readable(closed, urgent),
                Side::Backend => self.down.on_readable(closed, urgent),
            }
        }
        if event.is_writable() || event.is_write_closed() {
            self.flush(side, ctx)?;
        }
        self.pump(ctx)
    }

    /// Moves the connect on after an event (or a tick): still waiting, connected, or
    /// every backend failed. Bytes the client sent while we waited are not lost: their
    /// readable event was recorded in the pipe (see [`Conn::on_event`]), and so is one
    /// that comes later (edge-triggered events report every new arrival).
    fn step_connect(&mut self, ctx: &mut Ctx, ticked: bool) -> Result<(), Outcome> {
        let Backend::Connecting(connecting) = std::mem::replace(&mut self.backend, Backend::Failed)
        else {
            return Ok(());
        };
        let step = match ticked {
            true => connecting.on_tick(self.id, ctx)?,
            false => connecting.on_event(self.id, ctx)?,
        };
        self.backend = match step {
            Step::Waiting(connecting) => Backend::Connecting(connecting),
            Step::Connected(stream, lease, stats) => {
                self.last_active = ctx.now;
                Backend::Connected(stream, lease, stats)
            }
        };
        Ok(())
    }

    /// An error event: if the socket really has a pending error (a reset), that side
    /// failed ([`Conn::fail`]), even if reading from it is paused.
    fn check_error(&mut self, side: Side) {
        let socket = match (side, &self.backend) {
            (Side::Client, _) => &self.client,
            (Side::Backend, Backend::Connected(stream, ..)) => stream,
            (Side::Backend, _) => return,
        };
        match socket.take_error() {
            Ok(Some(e)) | Err(e) => self.fail(side, &e),
            Ok(None) => {}
        }
    }

    /// `side` is writable: writes the queue headed there.
    fn flush(&mut self, side: Side, ctx: &mut Ctx) -> Result<(), Outcome> {
        let Backend::Connected(backend, ..) = &self.backend else {
            return Ok(());
        };
        let other_done = match side {
            Side::Client => self.up.is_done(),
            Side::Backend => self.down.is_done(),
        };
        let (pipe, dst, source) = match side {
            Side::Client => (&mut self.down, &self.client, Side::Backend),
            Side::Backend => (&mut self.up, backend, Side::Client),
        };
        match pipe.flush(dst, self.settings.max_buffered, self.id, other_done) {
            Ok(true) => self.last_active = ctx.now,
            Ok(false) => {}
            Err(fault) => self.fault(source, fault),
        }
        self.count_bytes();
        Ok(())
    }

    /// Adds the bytes delivered since the last call to the backend's counters: one
    /// atomic add per direction that moved.
    fn count_bytes(&mut self) {
        let Backend::Connected(_, _, stats) = &self.backend else {
            return;
        };
        for (i, delivered) in [self.up.delivered(), self.down.delivered()]
            .into_iter()
            .enumerate()
        {
            if delivered > self.counted[i] {
                stats.add_bytes(i == 0, delivered - self.counted[i]);
                self.counted[i] = delivered;
            }
        }
    }

    /// Bytes queued both ways, and how many directions are paused (stats page).
    pub fn backlog(&self) -> (usize, usize) {
        let ((up, up_paused), (down, down_paused)) = (self.up.backlog(), self.down.backlog());
        (up + down, usize::from(up_paused) + usize::from(down_paused))
    }

    /// Moves bytes both ways as far as the sockets allow. `Ok(true)`: call again soon.
    pub fn pump(&mut self, ctx: &mut Ctx) -> Result<bool, Outcome> {
        let Backend::Connected(backend, ..) = &self.backend else {
            return Ok(false);
        };
        let max = self.settings.max_buffered;
        let last = self.down.is_done();
        let up = self
            .up
            .pump(&self.client, backend, ctx.buf, max, self.id, last);
        let up = up.unwrap_or_else(|f| {
            self.fault(Side::Client, f);
            Pumped::default()
        });
        // Read the backend even if the client just failed: a reset backend's last bytes
        // are still in its socket (see `Conn::fail`).
        let Backend::Connected(backend, ..) = &self.backend else {
            return Ok(false);
        };
        let last = self.up.is_done();
        let down = self
            .down
            .pump(backend, &self.client, ctx.buf, max, self.id, last);
        let down = down.unwrap_or_else(|f| {
            self.fault(Side::Backend, f);
            Pumped::default()
        });
        if up.moved || down.moved {
            self.last_active = ctx.now;
            self.count_bytes();
        }
        Ok(up.more || down.more)
    }

    /// A `fault` in the pipe reading from `source`: the side it names failed.
    fn fault(&mut self, source: Side, fault: Fault) {
        match fault {
            Fault::Source(e) => self.fail(source, &e),
            Fault::Dest(e) if source == Side::Client => self.fail(Side::Backend, &e),
            Fault::Dest(e) => self.fail(Side::Client, &e),
        }
    }

    /// `side` reset or vanished (an error reading, writing or on an error event). What it
    /// sent before is not lost: the pipe reading from it reads on to the end and delivers
    /// it, and only then does [`Conn::ended`] end the connection with the reset passed on.
    /// The pipe writing to it is abandoned: its bytes have nowhere to go.
    fn fail(&mut self, side: Side, error: &io::Error) {
        log::debug!("conn {}: {side:?} socket failed: {error}", self.id);
        self.failed.get_or_insert(side);
        let (from_it, to_it) = match side {
            Side::Client => (&mut self.up, &mut self.down),
            Side::Backend => (&mut self.down, &mut self.up),
        };
        from_it.source_failed();
        to_it.abandon();
    }

    /// How the connection ends, once it has: `eof` when both directions passed their EOF
    /// on; a peer's reset once the bytes it sent before are delivered (or cannot be, the
    /// other peer failed too). `None` while bytes still move.
    pub fn ended(&self) -> Option<Outcome> {
        let (outcome, from_it) = match self.failed {
            None if self.up.is_done() && self.down.is_done() => return Some(Outcome::Eof),
            None => return None,
            Some(Side::Client) => (Outcome::ClientReset, &self.up),
            Some(Side::Backend) => (Outcome::BackendReset, &self.down),
        };
        from_it.is_done().then_some(outcome)
    }

    /// Whether a byte has moved on this connection, either way: from then on a cut is a
    /// reset and `client_timeout` no longer applies.
    fn moved(&self) -> bool {
        self.up.read() > 0 || self.down.read() > 0
    }

    /// When [`Conn::on_tick`] has something to do: the connect, the idle or the client
    /// deadline.
    pub fn deadline(&self) -> Option<Instant> {
        let settings = &self.settings;
        match &self.backend {
            Backend::Connecting(connecting) => Some(connecting.deadline()),
            Backend::Connected(..) => {
                let idle = settings.idle_timeout.map(|idle| self.last_active + idle);
                super::timers::earliest(idle, self.client_deadline(settings))
            }
            Backend::Failed => None,
        }
    }

    /// When a connection on which no byte has moved yet is closed; `None` once one has
    /// (either way: a server that speaks first keeps it open).
    fn client_deadline(&self, settings: &Settings) -> Option<Instant> {
        let limit = settings.client_timeout.filter(|_| !self.moved())?;
        Some(self.started + limit)
    }

    /// Acts on a passed deadline: a connect that took too long moves on to the next
    /// backend; a client silent for `client_timeout`, or a connection idle for
    /// `idle_timeout`, ends.
    pub fn on_tick(&mut self, ctx: &mut Ctx) -> Result<(), Outcome> {
        match self.deadline() {
            Some(deadline) if ctx.now >= deadline => match self.backend {
                Backend::Connecting(_) => self.step_connect(ctx, true),
                _ if self
                    .client_deadline(&self.settings)
                    .is_some_and(|t| ctx.now >= t) =>
                {
                    Err(Outcome::ClientTimeout)
                }
                _ => Err(Outcome::IdleTimeout),
            },
            _ => Ok(()),
        }
    }

    /// Closes both sockets and returns the summary line's data. Each socket is reset or
    /// closed as [`Outcome::ends`] says: a peer's reset is passed on as a reset, rsp's own
    /// cut (a timeout, the drain, a panic) resets both peers once a byte has moved
    /// (`SO_LINGER` 0 makes `close()` send an RST and drop unsent bytes), anything else
    /// is a FIN.
    ///
    /// The byte counts are what each peer's socket took (read minus still queued).
    ///
    /// The two sockets are not deregistered: epoll forgets a socket when its last fd is
    /// closed, and these fds are never `dup`ed, so dropping them is enough (and saves two
    /// `epoll_ctl` calls per connection, a tenth of its syscalls). A late event for a
    /// token of ours finds no connection in the map and is ignored.
    /// A connection that reached a backend is counted closed in its counters.
    pub fn close(mut self, outcome: Outcome, registry: &Registry) -> Summary {
        self.count_bytes();
        let ends = outcome.ends(self.moved());
        if ends.client {
            reset_on_close(&self.client);
        }
        let backend = match self.backend {
            Backend::Connected(stream, lease, stats) => {
                if ends.backend {
                    reset_on_close(&stream);
                }
                stats.closed(outcome);
                lease.backend().name.clone()
            }
            Backend::Connecting(connecting) => {
                connecting.close(registry);
                "-".to_string()
            }
            Backend::Failed => "-".to_string(),
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

/// Makes the coming close of `socket` send an RST instead of a FIN (`SO_LINGER` 0; unsent
/// data is dropped). Failing only means the socket is already gone.
fn reset_on_close(socket: &TcpStream) {
    let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
}

impl Conn {
    /// The second Ctrl-C, before the loop closes its connections one by one: from now
    /// on even the process's exit (which may come first) resets both peers, never a FIN.
    pub fn reset_on_exit(&self) {
        reset_on_close(&self.client);
        if let Backend::Connected(stream, ..) = &self.backend {
            reset_on_close(stream);
        }
    }
}
