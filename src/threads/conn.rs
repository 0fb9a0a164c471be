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
    /// Why the connection was cut, `None` while nobody cut it. The first cause wins: the
    /// error on one side, not the shutdown it causes on the other. A mutex rather than an
    /// atomic because [`Connection::half_close`] must check it and shut a socket down as
    /// one step: a half-close (FIN) must never slip in after a cut chose to reset a side.
    cut_reason: Mutex<Option<Outcome>>,
}

impl Connection {
    /// A connection accepted at `started`, between `client` and `backend`.
    pub fn new(
        id: u64,
        client: TcpStream,
        client_addr: SocketAddr,
        backend: TcpStream,
        backend_name: String,
        started: Instant,
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
            cut_reason: Mutex::new(None),
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
    }

    /// Ends the connection now for `reason`: records the reason (unless another was
    /// recorded first) and wakes the other thread from a blocked `read` (it sees EOF).
    ///
    /// When one side reset or vanished ([`Outcome::ClientReset`], [`Outcome::BackendReset`])
    /// the other side is reset too, never closed cleanly: a truncated transfer must not
    /// look complete to the peer that is still there. Any other cut (idle timeout, Ctrl-C's
    /// drain timeout) shuts both sockets down both ways, which sends each peer a FIN.
    pub fn cut(&self, reason: Outcome) {
        let mut recorded = self.lock_reason();
        let reason = *recorded.get_or_insert(reason);
        // Errors below only mean the socket is already shut down or reset: nothing to do.
        match reason {
            Outcome::ClientReset => pass_reset(&self.client, &self.backend),
            Outcome::BackendReset => pass_reset(&self.backend, &self.client),
            Outcome::InternalError => {
                reset(&self.client);
                reset(&self.backend);
            }
            _ => {
                let _ = self.client.shutdown(Shutdown::Both);
                let _ = self.backend.shutdown(Shutdown::Both);
            }
        }
    }

    /// Passes an EOF on: `shutdown(Write)` on `to` (half-close, a FIN), unless the
    /// connection was cut; then returns the cut's reason and sends nothing.
    pub fn half_close(&self, to: &TcpStream) -> Result<(), Outcome> {
        let recorded = self.lock_reason();
        if let Some(reason) = *recorded {
            return Err(reason);
        }
        // Fails only if `to` is already shut down or reset: nothing left to tell it.
        let _ = to.shutdown(Shutdown::Write);
        Ok(())
    }

    /// Why the connection was cut, if it was.
    pub fn cut_reason(&self) -> Option<Outcome> {
        *self.lock_reason()
    }

    fn lock_reason(&self) -> MutexGuard<'_, Option<Outcome>> {
        // The guarded value is a plain `Option`, never half-written: a poisoned lock is fine.
        self.cut_reason.lock().unwrap_or_else(|e| e.into_inner())
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
