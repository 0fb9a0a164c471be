//! The shared test harness: backends on port 0, proxies started from their real binaries,
//! and the table of which binary has which behaviour.
//!
//! Every lesson and `rsp` print the same banner, `Started.  Listening on port N.`, so one
//! [`Proxy::spawn`] drives them all: it starts the binary, reads its output until the
//! banner (bounded in time), and kills the child when dropped.
//!
//! Each test file uses a different part of this module, hence the `allow(dead_code)`.
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long any child may take to print its banner.
pub const BANNER_TIMEOUT: Duration = Duration::from_secs(20);

/// The body the C project's mock server answered with.
pub const HELLO: &str = "Hello from the mock server";

// ---------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------

/// A backend on 127.0.0.1, port 0, serving each connection on its own thread with `handler`.
/// Dropping it stops accepting (open connections finish on their own).
pub struct Backend {
    pub port: u16,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    /// Starts a backend whose connections are each handled by `handler`.
    pub fn start<F>(handler: F) -> Backend
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test backend");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                accepted2.fetch_add(1, Ordering::SeqCst);
                let handler = handler.clone();
                thread::spawn(move || handler(stream));
            }
        });
        Backend {
            port,
            accepted,
            stop,
        }
    }

    /// The C tests' mock server: reads a request, answers `200` with [`HELLO`].
    pub fn hello() -> Backend {
        Backend::http(|_path| HELLO.as_bytes().to_vec())
    }

    /// An HTTP backend answering every request with `body(path)`, then closing.
    pub fn http<F>(body: F) -> Backend
    where
        F: Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    {
        Backend::start(move |mut stream| {
            let Ok(path) = read_request(&mut stream) else {
                return;
            };
            let _ = write_http_response(&mut stream, &body(&path));
        })
    }

    /// Waits `delay` after the request, then answers [`HELLO`].
    pub fn slow(delay: Duration) -> Backend {
        Backend::http(move |_| {
            thread::sleep(delay);
            HELLO.as_bytes().to_vec()
        })
    }

    /// Answers every request with the C test's large body ([`large_body`]).
    pub fn large() -> Backend {
        let body = Arc::new(large_body());
        Backend::http(move |_| body.to_vec())
    }

    /// Echoes every byte back until the client half-closes, then closes.
    pub fn echo() -> Backend {
        Backend::start(|mut stream| {
            let Ok(mut reader) = stream.try_clone() else {
                return;
            };
            let _ = io::copy(&mut reader, &mut stream);
            let _ = stream.shutdown(Shutdown::Write);
        })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocked accept so the thread sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A port on 127.0.0.1 where nothing listens (bound, then released).
pub fn dead_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Reads an HTTP request head and returns its path.
pub fn read_request(stream: &mut TcpStream) -> io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err(io::Error::other("request head too long"));
        }
    }
    let text = String::from_utf8_lossy(&head);
    Ok(text.split_whitespace().nth(1).unwrap_or("/").to_string())
}

/// Writes a `200 OK` response with `Connection: close` and `body`.
pub fn write_http_response(stream: &mut TcpStream, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// The C test's large response: `"0123456789\n"` × 1 MiB = 11,534,336 bytes.
pub fn large_body() -> Vec<u8> {
    b"0123456789\n".repeat(1024 * 1024)
}

/// `n` pseudo-random bytes (xorshift; the same `seed` gives the same bytes).
pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The sha256 of `data` as hex.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------

/// The read and write timeout of every client socket the tests open.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the proxy on 127.0.0.1:`port` with 10 s read and write timeouts.
pub fn connect(port: u16) -> TcpStream {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("cannot connect to the proxy on 127.0.0.1:{port}: {e}"));
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream
}

/// Names the failure: a socket timeout surfaces as `WouldBlock` ("Resource temporarily
/// unavailable (os error 11)") on Linux, which nobody reads as "timed out"; this says
/// "timed out after 10 s waiting for `what`". Other errors get `what` in front.
pub fn explain(error: io::Error, what: &str) -> io::Error {
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "timed out after {} s waiting for {what}",
                CLIENT_TIMEOUT.as_secs()
            ),
        ),
        _ => io::Error::new(error.kind(), format!("{what}: {error}")),
    }
}

/// Reads until end of file, like `read_to_end`, but a timeout or an error says what it
/// was waiting for and how many bytes had arrived.
pub fn read_all(stream: &mut TcpStream, what: &str) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    match stream.read_to_end(&mut data) {
        Ok(_) => Ok(data),
        Err(e) => Err(explain(
            e,
            &format!(
                "{what} to end (the connection to close); {} bytes had arrived",
                data.len()
            ),
        )),
    }
}

/// Sends `GET path` (HTTP/1.0, `Connection: close`) through the proxy and returns the
/// whole response (head and body), read until the connection closes.
pub fn http_get(port: u16, path: &str) -> io::Result<Vec<u8>> {
    let mut stream = connect(port);
    // One `write_all` of the whole request: `write!` straight onto a socket may send each
    // formatted piece in its own segment, and part 1 reads the request only once.
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| explain(e, "the proxy to take the request"))?;
    read_all(&mut stream, &format!("the response to GET {path}"))
}

/// Sends `GET path` as a plain `curl` does (HTTP/1.1, no `Connection: close`, so the
/// server may keep the connection open), and reads the response as curl does: the head,
/// then `Content-Length` bytes of body. It does not wait for the connection to close.
/// Returns the head and the body.
pub fn curl_get(port: u16, path: &str) -> io::Result<(String, Vec<u8>)> {
    let mut stream = connect(port);
    // One write, as curl does (see `http_get`).
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| explain(e, "the proxy to take the request"))?;
    let mut data = Vec::new();
    let mut buffer = [0u8; 4096];
    // Bounded: every read either adds bytes, ends, or times out after 10 s.
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut buffer).map_err(|e| {
            explain(
                e,
                &format!("the response head ({} bytes had arrived)", data.len()),
            )
        })?;
        if n == 0 {
            return Err(io::Error::other(format!(
                "the connection closed before the end of the response head ({} bytes had arrived)",
                data.len()
            )));
        }
        data.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or_else(|| io::Error::other(format!("no Content-Length in {head:?}")))?;
    let mut body = data[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut buffer).map_err(|e| {
            explain(
                e,
                &format!("the body: {} of {length} bytes had arrived", body.len()),
            )
        })?;
        if n == 0 {
            return Err(io::Error::other(format!(
                "the connection closed after {} of the body's {length} bytes",
                body.len()
            )));
        }
        body.extend_from_slice(&buffer[..n]);
    }
    Ok((head, body))
}

/// Asserts that `got` is `expected`, byte for byte; a failure says how many bytes are
/// missing (or extra) and where the first difference is, never a 11 MB dump.
pub fn assert_same_bytes(what: &str, got: &[u8], expected: &[u8]) {
    let first_difference = got.iter().zip(expected).position(|(a, b)| a != b);
    if let Some(at) = first_difference {
        panic!(
            "{what}: the bytes differ from offset {at} on ({} bytes received, {} expected)",
            got.len(),
            expected.len()
        );
    }
    if got.len() < expected.len() {
        panic!(
            "{what}: {} of {} bytes missing: the first {} arrived intact, then the data ended",
            expected.len() - got.len(),
            expected.len(),
            got.len()
        );
    }
    if got.len() > expected.len() {
        panic!(
            "{what}: {} bytes too many after the expected {}",
            got.len() - expected.len(),
            expected.len()
        );
    }
}

/// The body of an HTTP response (everything after the blank line).
pub fn body(response: &[u8]) -> &[u8] {
    match response.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &response[i + 4..],
        None => &[],
    }
}

/// Asserts that `response` is a `200` with [`HELLO`] as its body.
pub fn assert_hello(response: &[u8]) {
    let text = String::from_utf8_lossy(response);
    assert!(text.starts_with("HTTP/1.0 200"), "bad response: {text:?}");
    assert_eq!(body(response), HELLO.as_bytes(), "bad body in {text:?}");
}

// ---------------------------------------------------------------------------------------
// Proxies: the binaries under test
// ---------------------------------------------------------------------------------------

/// A binary under test and the way it takes its settings, as its C counterpart did.
/// Failure messages name it with `{target:?}`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `part1 <listen_port> <backend_addr> <backend_port>`
    Part1,
    /// `part2 <listen_port> <backend_addr> <backend_port>`
    Part2,
    /// `part3 <config.lua>` with `listenPort`, `backendAddress`, `backendPort`
    Part3,
    /// `part4 <config.lua>`: the fixed relay
    Part4,
    /// `part4 --broken <config.lua>`: the C's lossy non-blocking write, on purpose
    Part4Broken,
    /// `part5 <config.lua>`: the worker pool
    Part5,
    /// `part6 <config.lua>`: several backends, round robin, health checks
    Part6,
    /// `part7 <config.lua>`: the mio event loop
    Part7,
    /// `rsp <proxy.lua>` in threads mode
    Rsp,
    /// `rsp <proxy.lua>` with `mode = "mio"`
    RspMio,
    /// A reader's own proxy (`make test-N BIN=path`, or the environment variables
    /// [`BIN_VAR`] and [`PART_VAR`]), started with lesson part `part`'s command line:
    /// parts 1 and 2 take `LISTEN_PORT BACKEND_HOST BACKEND_PORT`, later parts a Lua
    /// config file with `listenPort`, `backendAddress` and `backendPort` (part 6, given
    /// several backends or check settings: [`balancer_lua`]).
    Bin { path: &'static str, part: u8 },
}

impl std::fmt::Debug for Target {
    /// The variant's name, or for a reader's proxy its path and the part it follows.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Target::Part1 => "Part1",
            Target::Part2 => "Part2",
            Target::Part3 => "Part3",
            Target::Part4 => "Part4",
            Target::Part4Broken => "Part4Broken",
            Target::Part5 => "Part5",
            Target::Part6 => "Part6",
            Target::Part7 => "Part7",
            Target::Rsp => "Rsp",
            Target::RspMio => "RspMio",
            Target::Bin { path, part } => return write!(f, "{path} (as part {part})"),
        };
        f.write_str(name)
    }
}

/// Whether rsp's `mode = "mio"` is built and implemented (flip when the mio issue lands).
pub const RSP_MIO_READY: bool = true;

/// The environment variable naming a reader's own proxy to test instead of ours.
pub const BIN_VAR: &str = "RSP_TEST_BIN";
/// The lesson part whose command line that proxy follows (1, 2, 3, ...).
pub const PART_VAR: &str = "RSP_TEST_PART";

/// The lessons, in order: the part that introduced each one's behaviour. A new lesson is
/// one more row (and one arm in [`Target::binary`] and [`Target::start_with`]).
fn lessons() -> Vec<(u8, Target)> {
    let mut lessons = vec![
        (1, Target::Part1),
        (2, Target::Part2),
        (3, Target::Part3),
        (4, Target::Part4),
        (5, Target::Part5),
        (6, Target::Part6),
    ];
    if cfg!(feature = "mio") {
        lessons.push((7, Target::Part7));
    }
    lessons
}

/// The reader's proxy from [`BIN_VAR`] and [`PART_VAR`], if they are set. A bad value is
/// one clear panic, not a silent run against our own binaries.
pub fn own_proxy() -> Option<Target> {
    static OWN: OnceLock<Option<Target>> = OnceLock::new();
    *OWN.get_or_init(|| {
        let path = std::env::var(BIN_VAR).ok().filter(|p| !p.is_empty())?;
        let part = std::env::var(PART_VAR).unwrap_or_default();
        let part: u8 = part.parse().unwrap_or_else(|_| {
            panic!("{BIN_VAR}={path} needs {PART_VAR}=N, the lesson part whose command line it follows; got {part:?}")
        });
        assert!(
            Path::new(&path).is_file(),
            "{BIN_VAR}={path}: no such file (build your proxy first)"
        );
        Some(Target::Bin {
            path: Box::leak(path.into_boxed_str()),
            part,
        })
    })
}

/// What a test prints, at the start of a line, when it cannot judge the binary under test.
///
/// Rust's test harness has no skip decided at run time: a test either passes or fails. So
/// a test that cannot judge prints one line, `SKIPPED: reason`, and returns. `cargo test`
/// then says `ok`; `make test-N` (which runs `tests/summary.py` over cargo's output) reads
/// the line and counts the test as skipped, with that reason, not as passed.
pub const SKIPPED: &str = "SKIPPED: ";

/// Prints the line that marks the running test as skipped (see [`SKIPPED`]).
pub fn skip(reason: &str) {
    println!("{SKIPPED}{reason}");
}

/// When a reader's proxy is under test, marks the test skipped because it shows `what`
/// on this project's own binaries (the problem before a fix), and returns true: such a
/// test runs only without `BIN=`.
pub fn skipped_for_own_proxy(what: &str) -> bool {
    if own_proxy().is_some() {
        skip(&format!(
            "{what}: it runs this project's own binaries, not the proxy under test, so only \
             without BIN="
        ));
        return true;
    }
    false
}

/// The reader's proxy if one is under test, else `ours`: for tests of one lesson's own
/// interface (its log lines, its signals, its `workers` key), which `rsp` does not share.
pub fn own_proxy_or(ours: Vec<Target>) -> Vec<Target> {
    own_proxy().map_or(ours, |own| vec![own])
}

impl Target {
    /// Every target that has the behaviour introduced by lesson part `n`: that part, every
    /// later part, and `rsp` (in each mode it has). `Part4Broken` is never included: it is
    /// only used to show part 4's bug. With a reader's proxy under test ([`own_proxy`]),
    /// only that proxy, and only if its part is `n` or later.
    pub fn from_part(n: u8) -> Vec<Target> {
        if let Some(own) = own_proxy() {
            return match own {
                Target::Bin { part, .. } if part >= n => vec![own],
                _ => {
                    skip(&format!(
                        "part {n}'s behaviour, which the proxy under test (started as an \
                         earlier part) need not have"
                    ));
                    vec![]
                }
            };
        }
        let mut targets: Vec<Target> = lessons()
            .into_iter()
            .filter(|(part, _)| *part >= n)
            .map(|(_, t)| t)
            .collect();
        targets.extend(Target::rsp_modes());
        targets
    }

    /// The targets that balance over several backends: lesson part 6 and `rsp` (part 7,
    /// the mio lesson, has one backend). With a reader's proxy under test, only that
    /// proxy, and only if it follows part 6; else none, and a line says why.
    pub fn load_balancers() -> Vec<Target> {
        match own_proxy() {
            Some(own @ Target::Bin { part: 6, .. }) => vec![own],
            Some(Target::Bin { part, .. }) => {
                skip(&format!(
                    "part 6's load balancing, which a proxy that follows part {part} need not have"
                ));
                vec![]
            }
            _ => [vec![Target::Part6], Target::rsp_modes()].concat(),
        }
    }

    /// The lessons from part `n` on that read part 3's Lua config (no `rsp`), or the
    /// reader's proxy if it follows part `n` or later.
    pub fn lessons_from(n: u8) -> Vec<Target> {
        let mut targets = Target::from_part(n);
        targets.retain(|t| !matches!(t, Target::Rsp | Target::RspMio));
        targets
    }

    /// `rsp` in each mode this build has.
    pub fn rsp_modes() -> Vec<Target> {
        if cfg!(feature = "mio") && RSP_MIO_READY {
            vec![Target::Rsp, Target::RspMio]
        } else {
            vec![Target::Rsp]
        }
    }

    /// How many threads this target has once every connection has ended, if it is a
    /// lesson that starts threads per connection (so a count above this is a leak).
    /// `None` for targets whose count is not theirs to promise (rsp's pool, the event
    /// loop, a reader's proxy).
    pub fn idle_threads(self) -> Option<usize> {
        match self {
            Target::Part2 | Target::Part3 | Target::Part4 | Target::Part4Broken => Some(1),
            // The main thread, the default 8 workers and ctrlc's signal thread.
            Target::Part5 => Some(10),
            // Part 5's, and the health-check thread.
            Target::Part6 => Some(11),
            _ => None,
        }
    }

    /// The path of the binary under test.
    pub fn binary(self) -> &'static str {
        match self {
            Target::Part1 => env!("CARGO_BIN_EXE_part1"),
            Target::Part2 => env!("CARGO_BIN_EXE_part2"),
            Target::Part3 => env!("CARGO_BIN_EXE_part3"),
            Target::Part4 | Target::Part4Broken => env!("CARGO_BIN_EXE_part4"),
            Target::Part5 => env!("CARGO_BIN_EXE_part5"),
            Target::Part6 => env!("CARGO_BIN_EXE_part6"),
            #[cfg(feature = "mio")]
            Target::Part7 => env!("CARGO_BIN_EXE_part7"),
            #[cfg(not(feature = "mio"))]
            Target::Part7 => panic!("part7 needs the `mio` feature"),
            Target::Rsp | Target::RspMio => env!("CARGO_BIN_EXE_rsp"),
            Target::Bin { path, .. } => path,
        }
    }

    /// Starts this target on port 0 in front of 127.0.0.1:`backend_port`.
    pub fn start(self, backend_port: u16) -> Proxy {
        self.start_with(&[backend_port], "")
    }

    /// Starts this target in front of `backends`; `rsp` also gets `extra` appended to its
    /// proxy.lua (one `key = value` per line). Lessons take one backend and no extras,
    /// except the load balancers of part 6 on ([`Target::load_balancers`]): given several
    /// backends or extras, they get [`balancer_lua`].
    pub fn start_with(self, backends: &[u16], extra: &str) -> Proxy {
        let backend = backends[0];
        let port_args = |prefix: &[&str]| -> Vec<String> {
            let mut args: Vec<String> = prefix.iter().map(|s| s.to_string()).collect();
            args.extend(["0".into(), "127.0.0.1".into(), backend.to_string()]);
            args
        };
        let lesson_lua = || {
            temp_file(
                "lesson.lua",
                &format!(
                    "listenPort = \"0\"\nbackendAddress = \"127.0.0.1\"\nbackendPort = \"{backend}\"\n"
                ),
            )
        };
        let args: Vec<String> = match self {
            Target::Part1 | Target::Part2 => port_args(&[]),
            Target::Bin { part, .. } if part <= 2 => port_args(&[]),
            Target::Part6 | Target::Bin { .. } if backends.len() > 1 || !extra.is_empty() => {
                vec![balancer_lua(backends, extra).display().to_string()]
            }
            Target::Part3
            | Target::Part4
            | Target::Part5
            | Target::Part6
            | Target::Part7
            | Target::Bin { .. } => {
                vec![lesson_lua().display().to_string()]
            }
            Target::Part4Broken => vec!["--broken".into(), lesson_lua().display().to_string()],
            Target::Rsp | Target::RspMio => {
                let mode = if self == Target::RspMio {
                    "mio"
                } else {
                    "threads"
                };
                vec![
                    rsp_config(backends, &format!("mode = \"{mode}\"\n{extra}"))
                        .display()
                        .to_string(),
                ]
            }
        };
        Proxy::spawn(self.binary(), &args)
    }
}

/// Writes a part-6 config (lesson part 6, or a reader's load balancer): `listenPort = "0"`,
/// `backends = { "127.0.0.1:P", … }`, then `extra` lines (`check_interval = 0.2`, …).
pub fn balancer_lua(backends: &[u16], extra: &str) -> PathBuf {
    let list = backend_list(backends);
    temp_file(
        "balancer.lua",
        &format!("listenPort = \"0\"\nbackends = {{ {list} }}\n{extra}\n"),
    )
}

/// `"127.0.0.1:P1", "127.0.0.1:P2", …`: the inside of a Lua `backends` list.
fn backend_list(backends: &[u16]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|p| format!("\"127.0.0.1:{p}\""))
        .collect();
    list.join(", ")
}

/// Writes an rsp config listening on port 0 in front of `backends`, plus `extra` lines.
pub fn rsp_config(backends: &[u16], extra: &str) -> PathBuf {
    let list = backend_list(backends);
    temp_file(
        "proxy.lua",
        &format!("listen = \"127.0.0.1:0\"\nbackends = {{ {list} }}\n{extra}\n"),
    )
}

/// Writes `contents` to a fresh file in Cargo's temp dir for tests and returns its path.
pub fn temp_file(name: &str, contents: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!("{}-{n}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// A running binary under test. Dropping it kills the child.
pub struct Proxy {
    pub child: Child,
    /// The port from the banner.
    pub port: u16,
    lines: Arc<Mutex<Vec<String>>>,
    rx: Receiver<String>,
}

impl Proxy {
    /// Starts `binary args…`, waits for the banner and parses the port from it.
    pub fn spawn(binary: &str, args: &[String]) -> Proxy {
        let mut child = Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        collect_lines(stdout, lines.clone(), tx.clone());
        collect_lines(stderr, lines.clone(), tx);
        let mut proxy = Proxy {
            child,
            port: 0,
            lines,
            rx,
        };
        let banner = proxy.wait_for_line("Started.  Listening on port ", BANNER_TIMEOUT);
        let Some(banner) = banner else {
            // One line, so that the summary of `make test-N` shows the output too.
            let output = proxy.output();
            // Its output ended, or the time is up: if it has exited, it does so at once.
            match proxy.wait_exit(Duration::from_secs(1)) {
                Some(status) => {
                    panic!(
                        "{binary} {args:?} exited ({status}) without a banner; output: {output:?}"
                    )
                }
                None => panic!(
                    "{binary} {args:?}: no banner within {BANNER_TIMEOUT:?}; output: {output:?}"
                ),
            }
        };
        proxy.port = parse_banner_port(&banner)
            .unwrap_or_else(|| panic!("cannot read a port in the banner {banner:?}"));
        proxy
    }

    /// Waits until an output line contains `needle`; `None` after `timeout` or at exit.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        if let Some(line) = self
            .lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
        {
            return Some(line.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Everything the child printed so far, stdout and stderr interleaved by arrival.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's thread count, from `/proc/PID/status`.
    pub fn threads(&self) -> usize {
        proc_status_field(self.pid(), "Threads:").unwrap_or(0) as usize
    }

    /// The names of the child's threads (`/proc/PID/task/*/comm`).
    pub fn thread_names(&self) -> Vec<String> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid()));
        tasks
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
            .map(|name| name.trim().to_string())
            .collect()
    }

    /// The resident memory in KiB of the child and every process it started (a proxy
    /// may fork per connection, as socat does, or serve from worker processes, as nginx
    /// does), summed from each one's `/proc/PID/status`.
    pub fn rss_kib(&self) -> u64 {
        let mut tree = descendants(self.pid());
        tree.push(self.pid());
        tree.iter()
            .filter_map(|&pid| proc_status_field(pid, "VmRSS:"))
            .sum()
    }

    /// The child's open file descriptors, from `/proc/PID/fd`.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits (up to `timeout`) until `check(self)` is true; returns whether it became true.
    pub fn eventually(&self, timeout: Duration, check: impl Fn(&Proxy) -> bool) -> bool {
        eventually(timeout, || check(self))
    }

    /// Sends a signal (`"INT"`, `"TERM"`, …) to the child with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `timeout` for the child to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proxy {
    /// Kills the child, and every process it started: a wrapper script that starts the
    /// proxy without `exec` would otherwise leave it running, and a forking proxy its
    /// children.
    fn drop(&mut self) {
        let others = descendants(self.pid());
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !others.is_empty() {
            let pids: Vec<String> = others.iter().map(u32::to_string).collect();
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(&pids)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The processes below `pid` (its children, theirs, and so on), from `/proc/*/stat`.
pub fn descendants(pid: u32) -> Vec<u32> {
    // (pid, parent) of every process. In `/proc/N/stat` the parent is the second field
    // after the command name, which is in parentheses and may itself hold spaces.
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|entry| {
                let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let after_name = &stat[stat.rfind(')')? + 1..];
                Some((pid, after_name.split_whitespace().nth(1)?.parse().ok()?))
            })
            .collect()
        })
        .unwrap_or_default();
    let mut found = vec![];
    let mut frontier = vec![pid];
    // Bounded: each round goes one generation down, and a process has one parent.
    while let Some(parent) = frontier.pop() {
        for &(child, _) in parents.iter().filter(|(_, p)| *p == parent) {
            if !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

/// Runs `binary args…` to completion (bounded by `timeout`) and returns its exit code and
/// its stderr and stdout together. For commands that are expected to exit on their own.
pub fn run_to_exit(binary: &str, args: &[&str], timeout: Duration) -> (Option<i32>, String) {
    let mut child = Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, _rx) = mpsc::channel();
    let out = collect_lines(child.stdout.take().unwrap(), lines.clone(), tx.clone());
    let err = collect_lines(child.stderr.take().unwrap(), lines.clone(), tx);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let _ = out.join();
    let _ = err.join();
    let text = lines.lock().unwrap().join("\n");
    match status {
        Some(status) => (status.code(), text),
        None => panic!("{binary} {args:?} did not exit within {timeout:?}; output:\n{text}"),
    }
}

fn collect_lines<R: Read + Send + 'static>(
    stream: R,
    lines: Arc<Mutex<Vec<String>>>,
    tx: mpsc::Sender<String>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap().push(line.clone());
            let _ = tx.send(line);
        }
    })
}

fn parse_banner_port(line: &str) -> Option<u16> {
    let rest = line.split("Started.  Listening on port ").nth(1)?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The address of 127.0.0.1:`port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `[YYYY-MM-DD HH:MM:SS.ffffff +zzzz] rest` into (Unix seconds, rest).
pub fn parse_stamped(line: &str) -> Option<(i64, &str)> {
    let (stamp, rest) = line.strip_prefix('[')?.split_once("] ")?;
    // '0' stands for a digit, '+' for the offset's sign; everything else is literal.
    let shape = "0000-00-00 00:00:00.000000 +0000";
    let fits = stamp.len() == shape.len()
        && stamp.chars().zip(shape.chars()).all(|(c, s)| match s {
            '0' => c.is_ascii_digit(),
            '+' => c == '+' || c == '-',
            _ => c == s,
        });
    if !fits {
        return None;
    }
    let num = |range: std::ops::Range<usize>| stamp[range].parse::<i64>().unwrap();
    let days = days_from_civil(num(0..4), num(5..7), num(8..10));
    let local = days * 86_400 + num(11..13) * 3600 + num(14..16) * 60 + num(17..19);
    let sign = if &stamp[27..28] == "-" { -1 } else { 1 };
    let offset = sign * (num(28..30) * 3600 + num(30..32) * 60);
    Some((local - offset, rest))
}

// ---------------------------------------------------------------------------------------
// The stats listener (`stats = "127.0.0.1:0"`)
// ---------------------------------------------------------------------------------------

/// The stats port of `proxy`, from its `Stats on http://127.0.0.1:PORT/` line.
pub fn stats_port(proxy: &mut Proxy) -> u16 {
    let line = proxy
        .wait_for_line("Stats on http://", BANNER_TIMEOUT)
        .unwrap_or_else(|| panic!("no stats line; output:\n{}", proxy.output()));
    let after = line.split("Stats on http://").nth(1).unwrap_or_default();
    let addr = after.split('/').next().unwrap_or_default();
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

/// Polls `check` every 10 ms until it holds or `timeout` has passed (then one last
/// try); returns whether it held. For what a test cannot be told of, only see: a log
/// line, a counter, a thread count.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    check()
}

/// `/metrics` once `check` holds (a connection is counted as it closes, just after the
/// client saw its end), or the last text after 10 s.
pub fn eventually_metrics(stats_port: u16, check: impl Fn(&str) -> bool) -> String {
    let mut text = metrics(stats_port);
    eventually(Duration::from_secs(10), || {
        text = metrics(stats_port);
        check(&text)
    });
    text
}

/// The text of `GET /metrics` on the stats port.
pub fn metrics(stats_port: u16) -> String {
    let response = http_get(stats_port, "/metrics").expect("GET /metrics");
    String::from_utf8_lossy(body(&response)).into_owned()
}

/// The value of the series `name{labels}` (labels as printed, e.g.
/// `backend="127.0.0.1:80",outcome="eof"`; empty for none) in metrics `text`.
pub fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    let series = match labels {
        "" => format!("{name} "),
        _ => format!("{name}{{{labels}}} "),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
}

/// `rsp_connections_total` of backend 127.0.0.1:`port` that ended in EOF.
pub fn eof_count(text: &str, port: u16) -> f64 {
    let labels = format!("backend=\"127.0.0.1:{port}\",outcome=\"eof\"");
    metric(text, "rsp_connections_total", &labels).unwrap_or(-1.0)
}

// ---------------------------------------------------------------------------------------
// The C's long-request test (issue 17): Python's http.server and a client that sends
// until it is refused
// ---------------------------------------------------------------------------------------

/// The C tests' mock backend (`fts/mock_backend.py`) in Python 3: a `BaseHTTPRequestHandler`
/// on a `ThreadingHTTPServer` answering GET with [`HELLO`]. It prints its port, then serves.
const PYTHON_BACKEND: &str = r#"
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"Hello from the mock server")
    def log_message(self, *args):
        pass
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// Python's `http.server` on 127.0.0.1, port 0, as the C tests ran it. Killed when dropped.
pub struct PythonBackend {
    pub port: u16,
    child: Child,
}

impl PythonBackend {
    /// Starts it and reads its port (within [`BANNER_TIMEOUT`]).
    pub fn start() -> PythonBackend {
        let mut child = Command::new("python3")
            .args(["-c", PYTHON_BACKEND])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "python3: {e} (the C's mock backend is Python's http.server: install python3)"
                )
            });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(BANNER_TIMEOUT).unwrap_or_default();
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("python3 http.server: expected its port, got {line:?}")
        });
        PythonBackend { port, child }
    }
}

impl Drop for PythonBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client of the C's `test_gives_error_on_long_requests`: sends `GET / HTTP/1.1\r`,
/// then `A-Header: some values\r` again and again (never a `\n`: one endless request line)
/// until a send fails, then reads. Python's `http.server` gives up after 64 KiB, answers
/// `HTTP/1.0 414`, and closes with the rest unread, which makes its kernel send a reset.
/// Returns what the client read before its EOF or error, or an error if its sends never
/// failed within 10 s (the proxy kept it waiting) or it sent 64 MiB.
pub fn send_long_request(port: u16) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    let mut sent = 0usize;
    let mut chunk: &[u8] = b"GET / HTTP/1.1\r";
    loop {
        match stream.write(chunk) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(explain(e, "a send of the long request to be refused"));
            }
            Err(_) => break, // Refused: the C's `except: break`.
        }
        if sent > 64 << 20 {
            return Err(io::Error::other("sent 64 MiB and nobody refused it"));
        }
        chunk = b"A-Header: some values\r";
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 10_000];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(answer),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(explain(e, "reading the answer to the long request"));
            }
            Err(_) => return Ok(answer), // A reset after the answer.
        }
    }
}
