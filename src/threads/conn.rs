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
use crate::threads::relay::RelaySettings;

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
    /// Why it was cut and what is in flight, behind one lock: see [`CutState`].
    state: Mutex<CutState>,
    /// The backend's counters (bytes are added to them as they move).
    pub stats: std::sync::Arc<BackendStats>,
    /// The settings in force when it was accepted (a reload does not change them).
    pub settings: RelaySettings,
}

/// What a cut needs to know to choose between a FIN and a reset, and the cut itself.
/// One mutex, because each check must happen in the same step as the action it guards:
/// a half-close (FIN) must never slip in after a cut chose to reset a side, and a write
/// must never start unseen while a cut decides that nothing is in flight.
#[derive(Debug, Default)]
struct CutState {
    /// Why the connection was cut, `None` while nobody cut it. The first cause wins: the
    /// error on one side, not the shutdown it causes on the other.
    reason: Option<Outcome>,
    /// Writes under way (0, 1 or 2: one per direction), from [`Connection::begin_write`]
    /// to [`Connection::end_write`]. A write under way has bytes on their way.
    writing: u8,
    /// Directions that passed their EOF on ([`Connection::half_close`]).
    eofs: u8,
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
            state: Mutex::new(CutState::default()),
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

    /// Cuts the connection with [`Outcome::ClientTimeout`] if the client has sent nothing
    /// (no byte passed on to the backend) within `limit` of being accepted; returns
    /// whether it did. The registry's idle check calls this for every connection.
    pub fn cut_if_silent(&self, limit: Duration) -> bool {
        let silent = self.up.load(Ordering::Relaxed) == 0 && self.started.elapsed() >= limit;
        if silent {
            self.cut(Outcome::ClientTimeout);
        }
        silent
    }

    /// Adds `n` bytes to the client → backend count (`up = true`) or the other one.
    pub fn count(&self, up: bool, n: u64) {
        let counter = if up { &self.up } else { &self.down };
        counter.fetch_add(n, Ordering::Relaxed);
        self.stats.add_bytes(up, n);
    }

    /// Ends the connection now for `reason`: records the reason (unless another was
    /// recorded first) and wakes the other thread from a blocked `read`.
    ///
    /// A cut never lets a cut-off transfer look complete: both peers get a reset
    /// (`SO_LINGER` 0), not a FIN, whenever bytes may still be on their way. That is:
    /// - one side reset or vanished ([`Outcome::ClientReset`], [`Outcome::BackendReset`]):
    ///   the other side is reset too;
    /// - Ctrl-C's drain timeout ([`Outcome::Shutdown`]) or a bug
    ///   ([`Outcome::InternalError`]): rsp cannot tell a pause between requests from a
    ///   pause inside one, so both sides are reset;
    /// - the idle timeout ([`Outcome::IdleTimeout`]): both sides are reset if a write is
    ///   under way (a peer that stopped reading) or one direction has ended and the other
    ///   has not (a half-closed transfer). Only a connection idle with nothing in flight
    ///   (an idle keep-alive) is closed with a FIN each way, as HAProxy and nginx do.
    ///   The client timeout ([`Outcome::ClientTimeout`]) follows the same rule.
    pub fn cut(&self, reason: Outcome) {
        let mut state = self.lock_state();
        let reason = *state.reason.get_or_insert(reason);
        // Errors below only mean the socket is already shut down or reset: nothing to do.
        match reason {
            Outcome::ClientReset => pass_reset(&self.client, &self.backend),
            Outcome::BackendReset => pass_reset(&self.backend, &self.client),
            Outcome::IdleTimeout | Outcome::ClientTimeout
                if state.writing == 0 && state.eofs == 0 =>
            {
                let _ = self.client.shutdown(Shutdown::Both);
                let _ = self.backend.shutdown(Shutdown::Both);
            }
            _ => {
                reset(&self.client);
                reset(&self.backend);
            }
        }
    }

    /// Passes an EOF on: `shutdown(Write)` on `to` (half-close, a FIN), unless the
    /// connection was cut; then returns the cut's reason and sends nothing.
    pub fn half_close(&self, to: &TcpStream) -> Result<(), Outcome> {
        let mut state = self.lock_state();
        if let Some(reason) = state.reason {
            return Err(reason);
        }
        state.eofs += 1;
        // Fails only if `to` is already shut down or reset: nothing left to tell it.
        let _ = to.shutdown(Shutdown::Write);
        Ok(())
    }

    /// Marks a write as under way until [`Connection::end_write`], so that a cut meanwhile
    /// resets both sides (see [`Connection::cut`]). Returns the cut's reason if the
    /// connection was cut already: then the caller must not write, and should call
    /// [`Connection::cut`] before `end_write` (its bytes are lost: a reset, not a FIN).
    /// Two uncontended lock operations per chunk: nothing next to the `read` and `write`.
    pub fn begin_write(&self) -> Result<(), Outcome> {
        let mut state = self.lock_state();
        state.writing += 1;
        state.reason.map_or(Ok(()), Err)
    }

    /// Ends what [`Connection::begin_write`] began.
    pub fn end_write(&self) {
        let mut state = self.lock_state();
        state.writing = state.writing.saturating_sub(1);
    }

    /// Why the connection was cut, if it was.
    pub fn cut_reason(&self) -> Option<Outcome> {
        self.lock_state().reason
    }

    fn lock_state(&self) -> MutexGuard<'_, CutState> {
        // Each update is a single field change, never half-done: a poisoned lock is fine.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The summary line's data, as of now; the outcome is `eof` unless it was cut.
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

/// `failed` reset or vanished: shut it down, and reset its peer `other` (see [`reset`]).
fn pass_reset(failed: &TcpStream, other: &TcpStream) {
    let _ = failed.shutdown(Shutdown::Both);
    reset(other);
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
        conn.cut(Outcome::ClientReset);
        conn.cut(Outcome::BackendReset);
        assert_eq!(reader.join().unwrap(), 0);
        assert_eq!(conn.cut_reason(), Some(Outcome::ClientReset));
        assert_eq!(conn.summary().outcome, Outcome::ClientReset);
    }
}
