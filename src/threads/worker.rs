//! What a worker thread does with one client (threads mode): pick a backend, connect,
//! run both copy directions (one here, one on a copy thread), log the summary.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::balancer::Lease;
use crate::fds;
use crate::outcome::panic_message;
use crate::outcome::{Outcome, Summary};
use crate::reload::{Current, InForce};
use crate::threads::conn::Connection;
use crate::threads::pool::Pool;
use crate::threads::registry::Ticket;
use crate::threads::relay::{
    Direction, DirectionEnd, DirectionResult, RelaySettings, copy_direction,
};

/// How long a worker waits for room in the copy pool's queue (see [`relay_both`]).
const COPY_WAIT: Duration = Duration::from_secs(10);

/// A job for the copy pool: run one direction of one connection.
pub type CopyJob = Box<dyn FnOnce() + Send>;

/// A client the accept loop has accepted, on its way to a worker.
#[derive(Debug)]
pub struct Accepted {
    /// The client socket.
    pub client: TcpStream,
    /// The client's address.
    pub addr: SocketAddr,
    /// Its place in the open-connection registry (and its id).
    pub ticket: Ticket,
    /// When it was accepted: the summary's duration counts from here.
    pub accepted_at: Instant,
}

/// What every worker shares.
pub struct Context {
    /// The configuration in force: each client takes the one in force when a worker
    /// picks it up (backends, timeouts), and keeps it to its end.
    pub current: Arc<Current>,
    /// Where the client → backend direction goes to run on another thread.
    pub copiers: Pool<CopyJob>,
}

/// Serves one client from accept to close and logs its summary line.
pub fn serve(ctx: &Context, job: Accepted) {
    let id = job.ticket.id();
    let now = ctx.current.get();
    let connected = connect_backend(&now, &job.ticket);
    // `lease` counts this connection on its backend until it is dropped, however the
    // connection ends (a panic unwinds through it too).
    let Ok((backend, lease)) = connected else {
        let outcome = connected.err().unwrap_or(Outcome::ConnectFailed);
        ctx.current.stats().unserved(outcome);
        let summary = Summary {
            id,
            client: job.addr,
            backend: "-".into(),
            up: 0,
            down: 0,
            duration: job.accepted_at.elapsed(),
            outcome,
        };
        summary.log();
        return;
    };
    let stats = now.stats_of(&lease);
    stats.connected();
    let relay = RelaySettings::of(&now.config);
    for socket in [&job.client, &backend] {
        // Small writes go out at once (no Nagle delay). Set here, not in the accept loop,
        // which must do as little as possible per client. A latency hint only: failing to
        // set it is harmless.
        let _ = socket.set_nodelay(true);
        // A blocked write wakes up every tick to check for a cut (see `relay`). Setting
        // it on a live socket cannot fail in practice; if it did, that connection would
        // only lose its check.
        let _ = socket.set_write_timeout(Some(relay.write_tick()));
    }
    let conn = Arc::new(Connection::new(
        id,
        job.client,
        job.addr,
        backend,
        lease.backend().name.clone(),
        job.accepted_at,
        Arc::clone(&stats),
        relay,
    ));
    drop(now); // A reload may free it; the connection keeps what it needs.
    job.ticket.attach(Arc::clone(&conn));
    relay_both(ctx, &conn);
    stats.closed(conn.cut_reason().unwrap_or(Outcome::Eof));
    drop(lease); // Counted no more before its line is logged.
    // The summary is an info line: not even built (a `String` copy) below that level.
    if log::log_enabled!(log::Level::Info) {
        conn.summary().log();
    }
}

/// Tries the balancer's backends in order, each once; marks each failure down. Returns
/// the socket and its [`Lease`] (which counts the connection on its backend until it is
/// dropped). `Err` is the connection's outcome: `ConnectFailed`, or `Shutdown` if the
/// drain's cut abandoned the connect (the backend is not to blame then).
fn connect_backend(now: &InForce, ticket: &Ticket) -> Result<(TcpStream, Lease), Outcome> {
    let id = ticket.id();
    let timeout = now.config.connect_timeout;
    for lease in now.balancer.plan() {
        match connect(timeout, ticket, &lease.backend().addr) {
            Ok(stream) => {
                now.balancer.connected(&lease);
                return Ok((stream, lease));
            }
            Err(_) if ticket.is_cut() => return Err(Outcome::Shutdown),
            Err(e) => {
                now.stats_of(&lease).connect_failed();
                if !now.balancer.connect_failed(id, &lease, &e) {
                    return Err(Outcome::ConnectFailed);
                }
            }
        }
    }
    Err(Outcome::ConnectFailed)
}

/// Connects to `addr`. If the process is out of fds (the client we just accepted took
/// the last one), waits for one to free up, trying again every [`fds::RETRY`] for up to
/// `connect_timeout`: the client then waits a little instead of being dropped at once.
/// The socket is registered with the ticket while it connects, so the drain's cut can
/// abandon the connect.
fn connect(timeout: Duration, ticket: &Ticket, addr: &SocketAddr) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let mut logged = false;
    loop {
        match connect_once(ticket, addr, timeout) {
            Err(e) if fds::out_of_fds(&e) && Instant::now() + fds::RETRY < deadline => {
                if !logged {
                    logged = true;
                    fds::log_waiting(ticket.id());
                }
                thread::sleep(fds::RETRY);
            }
            result => return result,
        }
    }
}

/// One connect to `addr`, like `TcpStream::connect_timeout`, with the socket registered
/// with `ticket` meanwhile (socket2 makes the socket before connecting it; std cannot).
fn connect_once(ticket: &Ticket, addr: &SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Arc::new(Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?);
    // Urgent bytes stay in the stream, in order (see `listen::listen`).
    socket.set_out_of_band_inline(true)?;
    if ticket.connecting(&socket).is_err() {
        return Err(io::Error::other("shutting down: connect abandoned"));
    }
    let result = socket.connect_timeout(&(*addr).into(), timeout);
    ticket.connected();
    result?;
    let socket =
        Arc::try_unwrap(socket).map_err(|_| io::Error::other("connect: socket still shared"))?;
    Ok(socket.into())
}

/// Runs backend → client on a copy thread and client → backend here; returns when both
/// have ended.
///
/// Why this way round: the client → backend direction usually ends last (the server
/// closes first, then the client, as with HTTP's `Connection: close`), so when it ends
/// here the copy thread's result is mostly there already and the worker does not have to
/// sleep and be woken for it.
fn relay_both(ctx: &Context, conn: &Arc<Connection>) {
    let settings = conn.settings;
    // A one-place channel for the copy thread's result. If the job is dropped unrun, its
    // sender goes with it and `recv` says so instead of waiting forever.
    let (giver, taker) = crossbeam_channel::bounded::<DirectionResult>(1);
    let down_conn = Arc::clone(conn);
    let job: CopyJob = Box::new(move || {
        let _ = giver.send(guarded(&down_conn, Direction::Down, settings));
    });
    // The copy pool has as many threads and queue places as there are workers, so there
    // is always room: waiting is only a safeguard.
    if ctx.copiers.submit_timeout(job, COPY_WAIT).is_err() {
        log::error!("conn {}: no copy thread for the backend's bytes", conn.id);
        conn.cut(Outcome::InternalError);
        return;
    }
    guarded(conn, Direction::Up, settings);
    // The copy job always hands its result over, unless it was dropped unrun: then the
    // sockets are cut so nothing is left half-open.
    if taker.recv().is_err() {
        conn.cut(Outcome::InternalError);
    }
}

/// [`copy_direction`], but a panic cuts the connection (so the other direction wakes up)
/// and is logged instead of unwinding further.
fn guarded(conn: &Connection, direction: Direction, settings: RelaySettings) -> DirectionResult {
    match catch_unwind(AssertUnwindSafe(|| {
        copy_direction(conn, direction, settings)
    })) {
        Ok(result) => result,
        Err(panic) => {
            log::error!(
                "conn {}: {direction:?} copy panicked: {}",
                conn.id,
                panic_message(&*panic)
            );
            conn.cut(Outcome::InternalError);
            DirectionResult {
                bytes: 0,
                end: DirectionEnd::Cut(Outcome::InternalError),
            }
        }
    }
}
