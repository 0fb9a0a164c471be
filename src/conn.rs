//! One proxied connection in threads mode: the two sockets and what both copy threads share.
//!
//! The two directions run on two threads and share one [`Connection`] through an `Arc`.
//! std implements `Read` and `Write` for `&TcpStream`, so both threads use the same two
//! sockets without `try_clone` (which would `dup()` each fd: four fds per connection
//! instead of two) and without a `Mutex` (which would let a thread blocked in `read` hold
//! the lock the other thread needs to `write`).

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    /// Why the connection was cut ([`Outcome::to_code`]), `0` while nobody cut it. The
    /// first cause wins: the error on one side, not the shutdown it causes on the other.
    cut_reason: AtomicU8,
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
            cut_reason: AtomicU8::new(0),
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

    /// Adds `n` bytes to the client → backend count (`up = true`) or the other one.
    pub fn count(&self, up: bool, n: u64) {
        let counter = if up { &self.up } else { &self.down };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Ends the connection now for `reason`: records the reason (unless another was
    /// recorded first) and shuts down both sockets both ways, which wakes the other thread
    /// from a blocked `read` (it sees EOF) or `write` (it sees an error).
    pub fn cut(&self, reason: Outcome) {
        let _ = self.cut_reason.compare_exchange(
            0,
            reason.to_code(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        // Errors only mean the socket is already shut down or reset: nothing left to do.
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.backend.shutdown(Shutdown::Both);
    }

    /// Why the connection was cut, if it was.
    pub fn cut_reason(&self) -> Option<Outcome> {
        Outcome::from_code(self.cut_reason.load(Ordering::SeqCst))
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
