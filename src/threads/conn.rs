//! One proxied connection in threads mode: the two sockets and what both copy threads share.
//!
//! The two directions run on two threads and share one [`Connection`] through an `Arc`.
//! std implements `Read` and `Write` for `&TcpStream`, so both threads use the same two
//! sockets without `try_clone` (which would `dup()` each fd: four fds per connection
//! instead of two) and without a `Mutex` (which would let a thread blocked in `read` hold
//! the lock the other thread needs to `write`).

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use socket2::SockRef;

use crate::outcome::{Outcome, Summary};
use crate::stats::BackendStats;
use crate::threads::relay::{Direction, DirectionEnd, RelaySettings};

/// The shared state of one client ↔ backend pair.
#[derive(Debug)]
pub struct Connection {
    /// The connection number, shown in every log line about it.
    pub id: u64,
    /// The accepted client socket.
    pub client: TcpStream,
    /// The socket connected to the chosen backend.
    pub backend: TcpStream,
    /// The client's address, for the summary line.
    pub client_addr: SocketAddr,
    /// The backend's name from the config, for the summary line.
    pub backend_name: String,
    /// When the client was accepted; all times below count from here.
    started: Instant,
    /// Milliseconds from `started` to the last byte moved either way. One atomic shared by
    /// both directions: traffic one way keeps the whole connection alive.
    last_activity_ms: AtomicU64,
    /// Bytes copied client → backend so far.
    up: AtomicU64,
    /// Bytes copied backend → client so far.
    down: AtomicU64,
    /// How it ends, behind one lock: see [`EndState`].
    state: Mutex<EndState>,
    /// The backend's counters (bytes are added to them as they move).
    pub stats: std::sync::Arc<BackendStats>,
    /// The settings in force when it was accepted (a reload does not change them).
    pub settings: RelaySettings,
}

/// What the end of a connection depends on, behind one mutex, because each check must
/// happen in the same step as the action it guards: a half-close (FIN) must never slip in
/// after a cut chose to reset a side, and a write must never start unseen while a cut
/// decides whether a byte moved.
#[derive(Debug, Default)]
struct EndState {
    /// Why the connection ended, `None` while nothing went wrong. The first cause wins:
    /// the error on one side, not the shutdown it causes on the other.
    reason: Option<Outcome>,
    /// The sockets were reset or shut down for good (rsp's own cut, or a peer's reset
    /// passed on): nothing more is written either way. A peer's reset recorded but not
    /// yet passed on (the bytes it sent before it are still being delivered) is a
    /// `reason` without `stopped`.
    stopped: bool,
    /// A write was begun, either way: a byte moved, so a cut is now a reset (see
    /// [`Outcome::ends`]), and `client_timeout` no longer applies.
    moved: bool,
    /// Writes under way, per direction ([`Direction::index`]), from
    /// [`Connection::begin_write`] to [`Connection::end_write`].
    writing: [bool; 2],
    /// Directions that passed their EOF on ([`Connection::source_ended`]).
    eof: [bool; 2],
}

impl Connection {
    /// A connection accepted at `started`, between `client` and `backend`.
    #[allow(clippy::too_many_arguments)] // the two sockets, their names, clock, counters, settings
    pub fn new(
        id: u64,
        client: TcpStream,
        client_addr: SocketAddr,
        backend: TcpStream,
        backend_name: String,
        started: Instant,
        stats: std::sync::Arc<BackendStats>,
        settings: RelaySettings,
    ) -> Connection {
        let conn = Connection {
            id,
            client,
            backend,
            client_addr,
            backend_name,
            started,
            last_activity_ms: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            state: Mutex::new(EndState::default()),
            stats,
            settings,
        };
        conn.touch();
        conn
    }

    /// Records that bytes moved just now.
    pub fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_activity_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since bytes last moved either way.
    pub fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Cuts the connection with [`Outcome::IdleTimeout`] if no byte moved for `limit`;
    /// returns whether it did. The registry's idle check calls this for every connection.
    pub fn cut_if_idle(&self, limit: Duration) -> bool {
        let idle = self.idle_for() >= limit;
        if idle {
            self.cut(Outcome::IdleTimeout);
        }
        idle
    }

    /// Cuts the connection with [`Outcome::ClientTimeout`] if no byte has moved either way
    /// (a server that speaks first is a live connection) within `limit` of being
    /// accepted; returns whether it did. The registry's idle check calls this for every
    /// connection.
    pub fn cut_if_silent(&self, limit: Duration) -> bool {
        let mut state = self.lock_state();
        let silent = !state.moved && !state.stopped && self.started.elapsed() >= limit;
        if silent {
            self.cut_locked(&mut state, Outcome::ClientTimeout);
        }
        silent
    }

    /// Adds `n` bytes to the client → backend count (`up = true`) or the other one.
    pub fn count(&self, up: bool, n: u64) {
        let counter = if up { &self.up } else { &self.down };
        counter.fetch_add(n, Ordering::Relaxed);
        self.stats.add_bytes(up, n);
    }

    /// rsp ends the connection on its own, now, for `reason` (a timeout, the drain's
    /// deadline, a panic): records the reason (unless another was recorded first), closes
    /// both sides as [`Outcome::ends`] says (a reset each way once a byte moved, else a
    /// FIN) and wakes both threads: a blocked `read` at once, a blocked `write` at its
    /// next write-timeout tick.
    pub fn cut(&self, reason: Outcome) {
        let mut state = self.lock_state();
        self.cut_locked(&mut state, reason);
    }

    fn cut_locked(&self, state: &mut EndState, reason: Outcome) {
        // Stopped already, or ended cleanly both ways (its worker is about to log it):
        // nothing left to cut.
        if state.stopped || state.eof == [true, true] {
            return;
        }
        state.reason.get_or_insert(reason);
        state.stopped = true;
        let ends = reason.ends(state.moved);
        for (socket, reset_it) in [(&self.client, ends.client), (&self.backend, ends.backend)] {
            match reset_it {
                true => reset(socket),
                // Fails only if the socket is already shut down or reset: nothing to do.
                false => drop(socket.shutdown(Shutdown::Both)),
            }
        }
    }

    /// `direction`'s source ended: a 0-byte read (`error = false`) or a failed one. Every
    /// byte it sent before is written already (writes block), so its end is passed on now:
    /// a FIN (`shutdown(Write)`, a half-close) after an EOF, a reset after a reset.
    ///
    /// A 0-byte read is a reset too if the other direction's write to the same peer
    /// failed: that write took the socket's error, so the read saw only the end. Either
    /// it recorded the failure already, or it is still in its write: then the socket
    /// says so itself (a reset socket has no peer address any more).
    ///
    /// If the connection was stopped meanwhile, nothing is sent: the stop decided.
    pub fn source_ended(&self, direction: Direction, error: bool) -> DirectionEnd {
        let mut state = self.lock_state();
        if state.stopped {
            return DirectionEnd::Cut(state.reason.unwrap_or(Outcome::InternalError));
        }
        let (from, to) = direction.ends(self);
        let failure = direction.failure(true);
        let other = direction.other().index();
        let reset = error
            || state.reason == Some(failure)
            || (state.writing[other] && from.peer_addr().is_err());
        if reset {
            self.pass_reset_locked(&mut state, failure);
            return DirectionEnd::Cut(state.reason.unwrap_or(failure));
        }
        state.eof[direction.index()] = true;
        // Fails only if `to` is already shut down or reset: nothing left to tell it.
        let _ = to.shutdown(Shutdown::Write);
        DirectionEnd::Eof
    }

    /// Writing `direction`'s destination failed: that peer reset or vanished. Its bytes
    /// still readable are not lost: the other direction reads them to the end, delivers
    /// them, and then passes the reset on ([`Connection::source_ended`]); only if it
    /// has ended already is the reset passed on here. `shutdown(Read)` on the failed
    /// socket makes sure its reader does not wait for more (its queued bytes stay
    /// readable).
    pub fn dest_failed(&self, direction: Direction) -> DirectionEnd {
        let mut state = self.lock_state();
        let failure = direction.failure(false);
        if !state.stopped {
            state.reason.get_or_insert(failure);
            let (_, to) = direction.ends(self);
            let _ = to.shutdown(Shutdown::Read);
            if state.eof[direction.other().index()] {
                self.pass_reset_locked(&mut state, failure);
            }
        }
        DirectionEnd::Cut(state.reason.unwrap_or(failure))
    }

    /// Passes the reset of the side that `failure` names on to the other side: shuts the
    /// failed socket down and resets the other one (see [`reset`]).
    fn pass_reset_locked(&self, state: &mut EndState, failure: Outcome) {
        state.reason.get_or_insert(failure);
        state.stopped = true;
        let (failed, other) = match failure {
            Outcome::ClientReset => (&self.client, &self.backend),
            _ => (&self.backend, &self.client),
        };
        let _ = failed.shutdown(Shutdown::Both);
        reset(other);
    }

    /// Marks a write as under way in `direction` until [`Connection::end_write`], so a
    /// cut meanwhile resets both sides. Returns the reason if the connection was stopped:
    /// then the caller must not write (its bytes are lost: the peers get a reset).
    /// Two uncontended lock operations per chunk: nothing next to the `read` and `write`.
    pub fn begin_write(&self, direction: Direction) -> Result<(), Outcome> {
        let mut state = self.lock_state();
        state.writing[direction.index()] = true;
        state.moved = true;
        match state.stopped {
            true => Err(state.reason.unwrap_or(Outcome::InternalError)),
            false => Ok(()),
        }
    }

    /// Ends what [`Connection::begin_write`] began.
    pub fn end_write(&self, direction: Direction) {
        self.lock_state().writing[direction.index()] = false;
    }

    /// Why the connection was stopped (cut, or a reset passed on), if it was: a blocked
    /// write that wakes up gives up then.
    pub fn stopped(&self) -> Option<Outcome> {
        let state = self.lock_state();
        state
            .stopped
            .then(|| state.reason.unwrap_or(Outcome::InternalError))
    }

    /// Why the connection ended badly, if it did.
    pub fn cut_reason(&self) -> Option<Outcome> {
        self.lock_state().reason
    }

    fn lock_state(&self) -> MutexGuard<'_, EndState> {
        // Each update is a few field changes that cannot panic midway: a poisoned lock is
        // fine.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The summary line's data, as of now; the outcome is `eof` unless it ended badly.
    pub fn summary(&self) -> Summary {
        Summary {
            id: self.id,
            client: self.client_addr,
            backend: self.backend_name.clone(),
            up: self.up.load(Ordering::Relaxed),
            down: self.down.load(Ordering::Relaxed),
            duration: self.started.elapsed(),
            outcome: self.cut_reason().unwrap_or(Outcome::Eof),
        }
    }
}

/// Makes the coming close of `socket` a reset: with `SO_LINGER` 0, `close()` sends an RST
/// and drops unsent data. No FIN may go out before it (a FIN would read as a clean end),
/// so instead of `shutdown(Both)` only the read half is shut: that sends nothing and wakes
/// a thread blocked reading it (a blocked writer wakes at its next write-timeout tick).
/// The RST itself goes out when the last `Arc<Connection>` is dropped.
fn reset(socket: &TcpStream) {
    let _ = SockRef::from(socket).set_linger(Some(Duration::ZERO));
    let _ = socket.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[test]
    fn first_cut_reason_wins_and_wakes_a_blocked_reader() {
        let (client, _client_peer) = pair();
        let (backend, _backend_peer) = pair();
        let addr = client.peer_addr().unwrap();
        let conn = std::sync::Arc::new(Connection::new(
            1,
            client,
            addr,
            backend,
            "b".into(),
            Instant::now(),
            std::sync::Arc::new(BackendStats::for_test()),
            RelaySettings {
                buffer_size: 1024,
                idle_timeout: None,
                client_timeout: None,
            },
        ));
        let reader = {
            let conn = conn.clone();
            std::thread::spawn(move || (&conn.client).read(&mut [0u8; 16]).unwrap_or(0))
        };
        conn.cut(Outcome::Shutdown);
        conn.cut(Outcome::IdleTimeout);
        assert_eq!(reader.join().unwrap(), 0);
        assert_eq!(conn.cut_reason(), Some(Outcome::Shutdown));
        assert_eq!(conn.summary().outcome, Outcome::Shutdown);
    }
}
