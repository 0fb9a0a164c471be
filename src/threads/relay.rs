//! The copy loop: moves bytes one way (client → backend or back) until EOF or an error.
//!
//! [`copy_direction`] is a plain blocking function; it does not care which thread runs it.
//! Threads mode runs the two directions of a connection on two threads at once. The idle
//! timeout is not checked here: a blocked `read` cannot notice time passing (short of a
//! socket timeout that wakes every thread every tick), so the registry's idle check
//! cuts idle connections from its own thread ([`Connection::cut_if_idle`]).
//!
//! Why not `std::io::copy`: we want a configurable buffer size, byte counts, the idle
//! check and a log line when a slow reader holds us up. It is the same loop otherwise: a
//! blocking write cannot lose data, it waits until the kernel takes every byte, so a slow
//! reader simply slows the thread that writes to it (backpressure for free).

use std::cell::Cell;
use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::outcome::Outcome;
use crate::threads::conn::Connection;

/// A write that blocks longer than this is logged at debug level (a slow reader).
pub const SLOW_WRITE: Duration = Duration::from_millis(100);

/// The longest a blocked write sleeps before it checks for a cut: well inside the 1 s
/// the drain gives cut connections to log their summaries. Only blocked writes wake.
pub const WRITE_TICK: Duration = Duration::from_millis(250);

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client → backend (the request).
    Up,
    /// Backend → client (the response).
    Down,
}

impl Direction {
    /// The socket this direction reads from and the one it writes to.
    pub fn ends(self, conn: &Connection) -> (&TcpStream, &TcpStream) {
        match self {
            Direction::Up => (&conn.client, &conn.backend),
            Direction::Down => (&conn.backend, &conn.client),
        }
    }

    /// The outcome when reading (`reading = true`) or writing fails in this direction.
    pub fn failure(self, reading: bool) -> Outcome {
        match (self, reading) {
            (Direction::Up, true) | (Direction::Down, false) => Outcome::ClientReset,
            (Direction::Up, false) | (Direction::Down, true) => Outcome::BackendReset,
        }
    }

    /// `0` for up, `1` for down: an index into per-direction state.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The opposite direction.
    pub fn other(self) -> Direction {
        match self {
            Direction::Up => Direction::Down,
            Direction::Down => Direction::Up,
        }
    }

    fn writes_to(self) -> &'static str {
        match self {
            Direction::Up => "backend",
            Direction::Down => "client",
        }
    }
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectionEnd {
    /// The source sent EOF; the destination got `shutdown(Write)`.
    Eof,
    /// The connection was cut for this reason, by this direction or the other one.
    Cut(Outcome),
}

/// What one direction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectionResult {
    /// Bytes written to the destination.
    pub bytes: u64,
    /// How it ended.
    pub end: DirectionEnd,
}

/// Settings for the copy loop, from the config.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// Bytes per read.
    pub buffer_size: usize,
    /// Cut the connection after this long with no bytes either way.
    pub idle_timeout: Option<Duration>,
    /// Cut the connection if no byte moved either way this long after it was accepted.
    pub client_timeout: Option<Duration>,
}

impl RelaySettings {
    /// The copy-loop settings of `config`.
    pub fn of(config: &crate::config::Config) -> RelaySettings {
        RelaySettings {
            buffer_size: config.buffer_size,
            idle_timeout: config.idle_timeout,
            client_timeout: config.client_timeout,
        }
    }

    /// How often the idle check runs: a quarter of the shorter of `idle_timeout` and
    /// `client_timeout`, between 50 ms and 1 s (so a connection is cut at most that long
    /// after its time is up). `None` without either timeout.
    pub fn tick(&self) -> Option<Duration> {
        let shortest = match (self.idle_timeout, self.client_timeout) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        Some((shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)))
    }

    /// The socket write timeout: [`RelaySettings::tick`], at most [`WRITE_TICK`]. A
    /// blocked write must wake now and then to notice that the connection was cut (a cut
    /// that resets its peer cannot wake it, see [`Connection::cut`]); a write that makes
    /// progress never times out.
    pub fn write_tick(&self) -> Duration {
        self.tick().unwrap_or(WRITE_TICK).min(WRITE_TICK)
    }
}

thread_local! {
    /// This thread's copy buffer, kept from one connection to the next: pool threads serve
    /// many connections, so it is allocated once per thread rather than twice per
    /// connection (allocating and zeroing two 16 KiB buffers was ~3 % of the CPU per new
    /// connection, measured with perf).
    static BUFFER: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Copies `direction` of `conn` until EOF or an error. On EOF the destination gets
/// `shutdown(Write)` (half-close: the other direction keeps going). On an error it cuts
/// the whole connection.
pub fn copy_direction(
    conn: &Connection,
    direction: Direction,
    settings: RelaySettings,
) -> DirectionResult {
    let mut buf = BUFFER.take();
    let result = copy_with(conn, direction, settings, &mut buf);
    BUFFER.set(buf);
    result
}

/// [`copy_direction`] with `buf` as the buffer (allocated on the first byte if need be).
fn copy_with(
    conn: &Connection,
    direction: Direction,
    settings: RelaySettings,
    buf: &mut Vec<u8>,
) -> DirectionResult {
    let (from, to) = direction.ends(conn);
    let size = settings.buffer_size.max(1);
    let mut bytes = 0u64;
    let end = loop {
        let n = match read_some(from, buf, size) {
            // The source's end (an EOF, or a reset once its bytes are read) is passed on
            // unless the connection was cut meanwhile (then the cut decided).
            Ok(0) => break conn.source_ended(direction, false),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => match after_timeout(conn, settings) {
                Some(reason) => break DirectionEnd::Cut(reason),
                None => continue,
            },
            Err(_) => break conn.source_ended(direction, true),
        };
        conn.touch();
        // While the write is marked as under way, a cut resets both peers (bytes are on
        // their way), and a 0-byte read the other way checks whether this write's peer
        // was reset (see `Connection::source_ended`).
        let written = match conn.begin_write(direction) {
            Ok(()) => write_chunk(conn, direction, to, &buf[..n], settings, &mut bytes),
            Err(reason) => Err(Stop::Cut(reason)),
        };
        let end = match written {
            Ok(()) => None,
            Err(Stop::Cut(reason)) => Some(DirectionEnd::Cut(reason)),
            Err(Stop::Failed) => Some(conn.dest_failed(direction)),
        };
        conn.end_write(direction);
        if let Some(end) = end {
            break end;
        }
    };
    DirectionResult { bytes, end }
}

/// Why [`write_chunk`] stopped.
enum Stop {
    /// Writing failed: the destination reset or vanished.
    Failed,
    /// The connection was stopped (cut, or a reset passed on) for this reason.
    Cut(Outcome),
}

/// Reads up to `size` bytes into `buf`. A thread without a buffer yet (a fresh one) first
/// waits for a byte to arrive (`peek`), and only then allocates one: a connection that
/// never sends anything (thousands of idle clients) costs no buffer memory at all.
fn read_some(mut from: &TcpStream, buf: &mut Vec<u8>, size: usize) -> io::Result<usize> {
    if buf.len() < size {
        if from.peek(&mut [0u8; 1])? == 0 {
            return Ok(0); // EOF (or a cut): no buffer needed.
        }
        *buf = vec![0u8; size];
    }
    from.read(&mut buf[..size])
}

/// Writes all of `chunk`, like `write_all`, but counts and touches the activity clock
/// after every partial write (a slow reader that takes bytes is not idle), checks for
/// idleness on write timeouts, and at debug level logs a write that blocked longer than
/// [`SLOW_WRITE`].
///
/// Every byte the socket took is counted at once, in `bytes` and in the connection's
/// summary, even if the rest of the chunk never goes: the summary says exactly what rsp
/// handed to each peer's socket, whichever way the connection ends.
fn write_chunk(
    conn: &Connection,
    direction: Direction,
    mut to: &TcpStream,
    mut chunk: &[u8],
    settings: RelaySettings,
    bytes: &mut u64,
) -> Result<(), Stop> {
    // Timed only when the debug line can be seen: two clock reads per chunk otherwise
    // spent for nothing at the default level.
    let started = log::log_enabled!(log::Level::Debug).then(Instant::now);
    while !chunk.is_empty() {
        match to.write(chunk) {
            Ok(0) => return Err(Stop::Failed),
            Ok(n) => {
                chunk = &chunk[n..];
                *bytes += n as u64;
                conn.count(direction == Direction::Up, n as u64);
                conn.touch();
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                if let Some(reason) = after_timeout(conn, settings) {
                    return Err(Stop::Cut(reason));
                }
            }
            Err(_) => return Err(Stop::Failed),
        }
    }
    let blocked = started.map_or(Duration::ZERO, |t| t.elapsed());
    if blocked > SLOW_WRITE {
        log::debug!(
            "conn {}: write to {} blocked for {} ms (slow reader)",
            conn.id,
            direction.writes_to(),
            blocked.as_millis()
        );
    }
    Ok(())
}

/// After a write timeout: why to stop, or `None` to keep waiting. Stop if the connection
/// was stopped meanwhile (a cut that resets this socket's peer cannot wake a blocked
/// write, only its timeout can), or if it has been idle for `idle_timeout` (a reader that
/// takes nothing at all). A peer's reset not yet passed on does not stop it: this write
/// may be delivering that peer's last bytes.
fn after_timeout(conn: &Connection, settings: RelaySettings) -> Option<Outcome> {
    if let Some(reason) = conn.stopped() {
        return Some(reason);
    }
    let limit = settings.idle_timeout?;
    conn.cut_if_idle(limit);
    conn.stopped()
}

/// A socket timeout shows up as `WouldBlock` (EAGAIN) on Unix, `TimedOut` elsewhere.
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Shutdown, TcpListener};
    use std::sync::Arc;

    /// Returns (connection, client peer, backend peer): the test plays both peers.
    fn connection(settings: RelaySettings) -> (Arc<Connection>, TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client_peer = TcpStream::connect(addr).unwrap();
        let (client, client_addr) = listener.accept().unwrap();
        let backend = TcpStream::connect(addr).unwrap();
        let (backend_peer, _) = listener.accept().unwrap();
        for s in [&client, &backend] {
            s.set_write_timeout(Some(settings.write_tick())).unwrap();
        }
        let stats = Arc::new(crate::stats::BackendStats::for_test());
        let conn = Connection::new(
            1,
            client,
            client_addr,
            backend,
            "b".into(),
            Instant::now(),
            stats,
            settings,
        );
        (Arc::new(conn), client_peer, backend_peer)
    }

    fn run_both(conn: &Arc<Connection>, s: RelaySettings) -> (DirectionResult, DirectionResult) {
        let c = conn.clone();
        let up = std::thread::spawn(move || copy_direction(&c, Direction::Up, s));
        let down = copy_direction(conn, Direction::Down, s);
        (up.join().unwrap(), down)
    }

    #[test]
    fn half_close_is_passed_on_and_bytes_are_counted() {
        let s = RelaySettings {
            buffer_size: 3,
            idle_timeout: None,
            client_timeout: None,
        };
        let (conn, mut client, mut backend) = connection(s);
        let backend_side = std::thread::spawn(move || {
            let mut request = Vec::new();
            backend.read_to_end(&mut request).unwrap(); // ends at the client's half-close
            backend.write_all(b"response").unwrap();
            request
        });
        client.write_all(b"request").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let (up, down) = run_both(&conn, s);
        let mut response = Vec::new();
        client.read_to_end(&mut response).unwrap();
        assert_eq!(backend_side.join().unwrap(), b"request");
        assert_eq!(response, b"response");
        assert_eq!((up.bytes, up.end), (7, DirectionEnd::Eof));
        assert_eq!((down.bytes, down.end), (8, DirectionEnd::Eof));
        assert_eq!(conn.summary().outcome, Outcome::Eof);
    }

    #[test]
    fn an_idle_connection_is_cut() {
        let s = RelaySettings {
            buffer_size: 64,
            idle_timeout: Some(Duration::from_millis(200)),
            client_timeout: None,
        };
        let (conn, _client, _backend) = connection(s);
        let started = Instant::now();
        let checker = {
            let conn = conn.clone(); // the registry's idle check, for this one connection
            std::thread::spawn(move || {
                while !conn.cut_if_idle(Duration::from_millis(200)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        run_both(&conn, s);
        checker.join().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(conn.summary().outcome, Outcome::IdleTimeout);
    }

    /// What the backend peer sees until its socket fails: it writes a response, then
    /// reads (and, after an EOF, writes a byte now and then) until a read or a write fails
    /// or 10 s pass. Returns the first error, or `Ok` if none came in time.
    ///
    /// Why not "the next read is a reset": when the client vanishes, its FIN can reach rsp
    /// first and be passed on as a half-close, so the backend may read a clean EOF before
    /// the reset that follows; which comes first depends on scheduling. What rsp
    /// guarantees is that a reset does come, on a read or on a write after the EOF.
    fn backend_until_reset(mut backend: TcpStream) -> io::Result<()> {
        // 10 s: generous for a busy 2-core machine; the reset normally comes in < 10 ms.
        let deadline = Instant::now() + Duration::from_secs(10);
        let chunk = [b'x'; 64 * 1024];
        (0..64).try_for_each(|_| backend.write_all(&chunk))?;
        backend.set_read_timeout(Some(Duration::from_millis(100)))?;
        while Instant::now() < deadline {
            match backend.read(&mut [0u8; 1]) {
                // EOF (a passed-on half-close): the reset shows on a later write.
                Ok(0) => {
                    backend.write_all(b"y")?;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(_) => {}
                Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    #[test]
    fn a_vanished_client_cuts_both_directions() {
        let s = RelaySettings {
            buffer_size: 4096,
            idle_timeout: None,
            client_timeout: None,
        };
        let (conn, client, backend) = connection(s);
        drop(client); // the client goes away before the response
        let backend_side = std::thread::spawn(move || backend_until_reset(backend));
        let (_up, down) = run_both(&conn, s);
        assert_eq!(down.end, DirectionEnd::Cut(Outcome::ClientReset));
        assert_eq!(conn.summary().outcome, Outcome::ClientReset);
        drop(conn); // closing the sockets resets the backend, as the client vanished
        let result = backend_side.join().unwrap().map_err(|e| e.kind());
        // A write fails with a reset (or, after one, a broken pipe); a read with a reset.
        assert!(
            matches!(
                result,
                Err(ErrorKind::ConnectionReset | ErrorKind::BrokenPipe)
            ),
            "the backend saw {result:?} within 10 s, not a reset"
        );
    }
}
