//! # Part 6: load balancing: several backends, round robin, health checks
//!
//! After the series, which is called "Writing a reverse proxy/loadbalancer" but never got
//! past one backend. This part is steps 2 and 3 of the "Build Your Own Load Balancer"
//! challenge, on top of part 5. rsp's grown-up form is `src/balancer.rs` (round robin,
//! failover) and `src/health.rs` (the checks).
//!
//! Changes since part 5 (comments on code that part 5 explains are shortened, naming it):
//! - `backends = { "127.0.0.1:8888", "127.0.0.1:8889" }` in the config (part 3's
//!   `backendAddress` and `backendPort` still name a single backend);
//! - clients go round robin over the backends that are up; a backend whose connect fails
//!   is skipped for this client, and the next one is tried;
//! - a health-check thread probes every backend every `check_interval` seconds (default
//!   2): a TCP connect, or with `check_path = "/health"` an HTTP GET answered 2xx or 3xx;
//! - a backend goes DOWN after `fall` (default 3) failed probes in a row, and UP after
//!   `rise` (default 2) good ones, each change one log line; if all are down, all are tried.
//!
//! What Rust changes: the health thread writes each backend's UP/DOWN while every worker
//! reads it. A plain `bool` shared that way does not compile (a data race); an `AtomicBool`
//! does, needs no lock, and the `Balancer` holding them is shared with an `Arc`, as part 5
//! shared the backend's name.
//!
//! Run it (three terminals):
//!
//! ```text
//! make run-6                                 # demo backends on 8888 and 8889, part 6 on 8000
//! curl http://127.0.0.1:8000/                # a few times: the answers name each in turn
//! cargo run --bin demo_backend -- 8890       # the third backend of lessons/part6.lua
//! ```
//!
//! Observe: nothing runs on 8890 at first, so after three checks the log says `backend
//! 127.0.0.1:8890 is DOWN: 3 failed checks, last: connection refused`. Start it: two checks
//! later it is UP, and curl's answers name three backends in turn. Stop it with Ctrl-C:
//! curl goes on working (its turn is skipped, at first on the refused connect). Tests:
//! `tests/part6_load_balancing.rs` (`make test-6`); every earlier part's tests run too.
#![forbid(unsafe_code)]

use crossbeam_channel::{Receiver, bounded};
use log::{error, info, warn}; // New in part 6
use rlua::{ChunkMode, Lua, LuaOptions, StdLib};
use simplelog::{ConfigBuilder, LevelFilter, SimpleLogger};
use std::env;
use std::fs;
use std::io::ErrorKind::{BrokenPipe, ConnectionReset, TimedOut, WouldBlock}; // New in part 6
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs}; // New in part 6
use std::process;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering}; // New in part 6
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration; // New in part 6

/// The C read each chunk into a 4096-byte buffer.
const BUFFER_SIZE: usize = 4096;
/// Clients served at once when the config does not say `workers = N`.
const DEFAULT_WORKERS: usize = 8;
/// How long a client's connect to a backend may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2); // New in part 6

fn main() {
    init_logging();
    let args: Vec<String> = env::args().collect();
    if args.len() != 2 {
        eprintln!("Usage: {} <config_file>", args[0]);
        process::exit(1);
    }
    // Like the C, a config error is one line on stderr and exit status 1.
    let config = match load_config(&args[args.len() - 1]) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            process::exit(1);
        }
    };
    // `run` returns `Ok` only after Ctrl-C, once every client is served: then we exit 0.
    if let Err(e) = run(&config) {
        error!("Error: {e}");
        process::exit(1);
    }
}

/// Log lines look like the C's, `[2013-10-14 18:05:01.123456 +0100] message` (part 5).
fn init_logging() {
    let mut builder = ConfigBuilder::new();
    builder.set_time_format_custom(simplelog::format_description!(
        "[[[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6] [offset_hour sign:mandatory][offset_minute]]"
    ));
    builder.set_max_level(LevelFilter::Off);
    let _ = builder.set_time_offset_to_local();
    let _ = SimpleLogger::init(LevelFilter::Info, builder.build());
}

/// The settings, copied out of Lua (a `Lua` state is not `Send`).
struct Config {
    listen_port: String,
    /// Each backend as `"host:port"`: the `backends` list, or part 3's one backend.
    backends: Vec<String>, // New in part 6
    /// How many clients are served at once: the size of the pool.
    workers: usize,
    checks: Checks, // New in part 6
} // New in part 6

/// How the health-check thread probes the backends.
#[derive(Clone)] // New in part 6
struct Checks {
    /// Time between two probes of a backend, and how long one probe may take.
    interval: Duration, // New in part 6
    /// `Some("/health")`: probe with an HTTP GET of this path; `None`: a TCP connect.
    path: Option<String>, // New in part 6
    /// Good probes in a row that bring a DOWN backend back UP.
    rise: u32, // New in part 6
    /// Failed probes in a row that take an UP backend DOWN.
    fall: u32, // New in part 6
}

/// Runs the config file and reads its globals. The error is the whole message.
fn load_config(path: &str) -> Result<Config, String> {
    // Part 3's loader, unchanged: see there for why each step is as it is.
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default())
        .map_err(|e| format!("Cannot start Lua: {e}"))?;
    let env = lua
        .create_table()
        .map_err(|e| format!("Cannot start Lua: {e}"))?;
    let source = fs::read(path)
        .map_err(|e| format!("Error parsing config file: cannot open {path}: {e}"))?;
    lua.load(&source)
        .set_name(format!("@{path}"))
        .set_mode(ChunkMode::Text)
        .set_environment(env.clone())
        .exec()
        .map_err(|e| format!("Error parsing config file: {}", first_line(&e.to_string())))?;
    let get = |name: &str| -> Result<String, String> {
        env.get::<_, String>(name)
            .map_err(|_| format!("{name} must be a string"))
    };
    // Reading as `Option` turns a missing global (nil) into `None`: the default applies.
    let workers = match env.get::<_, Option<usize>>("workers") {
        Ok(None) => DEFAULT_WORKERS,
        Ok(Some(n)) if n > 0 => n,
        _ => return Err("workers must be a whole number from 1 up".into()),
    };
    // Without a list, part 3's keys name one backend, with part 3's messages.
    let backends = match env.get::<_, Option<Vec<String>>>("backends") {
        Ok(Some(list)) if !list.is_empty() => list, // New in part 6
        Ok(None) => {
            let (host, port) = (get("backendAddress")?, get("backendPort")?); // New in part 6
            parse_port("backendPort", &port).map_err(|e| e.to_string())?; // New in part 6
            vec![format!("{host}:{port}")] // New in part 6
        } // New in part 6
        _ => return Err("backends must be a list of \"host:port\" strings".into()), // New in part 6
    }; // New in part 6
    let interval = match env.get::<_, Option<f64>>("check_interval") {
        Ok(None) => Duration::from_secs(2), // New in part 6
        Ok(Some(s)) if (0.001..=3600.0).contains(&s) => Duration::from_secs_f64(s), // New in part 6
        _ => return Err("check_interval must be from 0.001 to 3600 (seconds)".into()), // New in part 6
    }; // New in part 6
    // The path goes into the request line as it is: no spaces, no line breaks.
    let path = match env.get::<_, Option<String>>("check_path") {
        Ok(None) => None, // New in part 6
        Ok(Some(p)) if p.starts_with('/') && !p.contains(char::is_whitespace) => Some(p), // New in part 6
        _ => return Err("check_path must be a path that starts with / (no spaces)".into()), // New in part 6
    }; // New in part 6
    let count = |name: &str, default: u32| match env.get::<_, Option<u32>>(name) {
        Ok(None) => Ok(default),       // New in part 6
        Ok(Some(n)) if n > 0 => Ok(n), // New in part 6
        _ => Err(format!("{name} must be a whole number from 1 up")), // New in part 6
    }; // New in part 6
    let (rise, fall) = (count("rise", 2)?, count("fall", 3)?); // New in part 6
    Ok(Config {
        listen_port: get("listenPort")?,
        backends, // New in part 6
        workers,
        checks: Checks {
            interval, // New in part 6
            path,     // New in part 6
            rise,     // New in part 6
            fall,     // New in part 6
        }, // New in part 6
    })
}

/// The first line of an error: Lua may append a traceback, and one line is enough here.
fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}

/// Binds, logs the banner, starts the health checks and the pool, and hands the pool
/// clients until Ctrl-C; then waits for the workers to finish their clients.
fn run(config: &Config) -> io::Result<()> {
    let listen_port = parse_port("listenPort", &config.listen_port)?;
    // The workers and the health-check thread share one balancer.
    let balancer = Arc::new(Balancer::new(&config.backends)?); // New in part 6
    // Loopback only, so a lesson never opens a port to the network by accident.
    let listener = TcpListener::bind(("127.0.0.1", listen_port))
        .map_err(|e| with_context(e, format!("cannot listen on port {listen_port}")))?;
    let port = listener.local_addr()?.port();
    info!("Started.  Listening on port {port}.");

    // One thread probes every backend, for as long as the process lives (nothing joins
    // it: at exit it simply stops).
    let (checked, checks) = (Arc::clone(&balancer), config.checks.clone()); // New in part 6
    thread::Builder::new().spawn(move || health_checks(&checked, &checks))?; // New in part 6

    // Ctrl-C sets the flag and wakes `accept` with a connect of its own (part 5).
    let stopping = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stopping);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // 128 + SIGINT, as shells report it.
            process::exit(130);
        }
        info!("Ctrl-C: finishing the clients being served; Ctrl-C again exits now.");
        let _ = TcpStream::connect(("127.0.0.1", port));
    })
    .map_err(io::Error::other)?;

    // Capacity 0: `send` waits until a worker is free to take the client (part 5).
    let (sender, receiver) = bounded::<TcpStream>(0);
    let mut pool = Vec::new();
    for _ in 0..config.workers {
        let clients = receiver.clone();
        let balancer = Arc::clone(&balancer); // New in part 6
        let work = move || worker(clients, &balancer); // New in part 6
        pool.push(thread::Builder::new().spawn(work)?);
    }
    drop(receiver);

    for client in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            // Ctrl-C (this client is the handler's wake-up)
            break;
        }
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                error!("Could not accept: {e}");
                continue;
            }
        };
        // While every worker is busy this waits, and new clients queue in the kernel.
        if sender.send(client).is_err() {
            break;
        }
    }
    // Refuse new connects, then close the channel: each worker ends after its client.
    drop(listener);
    drop(sender);
    info!("Stopped accepting; waiting for the clients being served.");
    for worker in pool {
        let _ = worker.join();
    }
    info!("All clients served; exiting.");
    Ok(())
}

/// One thread of the pool: serves a client at a time, until the channel is closed.
fn worker(clients: Receiver<TcpStream>, balancer: &Balancer) {
    for client in clients.iter() {
        handle_client_connection(client, balancer); // New in part 6
    } // New in part 6
} // New in part 6

/// One backend, and what the health checks last concluded about it.
struct Backend {
    addr: SocketAddr, // New in part 6
    /// Written by the health-check thread, read by every worker: an atomic needs no lock.
    up: AtomicBool, // New in part 6
} // New in part 6

/// The backends, and the round robin's turn counter.
struct Balancer {
    backends: Vec<Backend>, // New in part 6
    next: AtomicUsize,      // New in part 6
} // New in part 6

impl Balancer {
    /// Resolves each `"host:port"` once, at start, to its first address. All start UP.
    fn new(names: &[String]) -> io::Result<Balancer> {
        let mut backends = Vec::new(); // New in part 6
        for name in names {
            let context = |e| with_context(e, format!("backend {name:?}")); // New in part 6
            let mut found = name.to_socket_addrs().map_err(context)?; // New in part 6
            let none = io::Error::new(io::ErrorKind::NotFound, "no address"); // New in part 6
            let addr = found.next().ok_or(none).map_err(context)?; // New in part 6
            let up = AtomicBool::new(true); // New in part 6
            backends.push(Backend { addr, up }); // New in part 6
        } // New in part 6
        let next = AtomicUsize::new(0); // New in part 6
        Ok(Balancer { backends, next }) // New in part 6
    } // New in part 6

    /// Connects to the next backend in turn among those that are up. One whose connect
    /// fails is skipped, and the next is tried. Returns the stream and its backend.
    fn connect(&self) -> io::Result<(TcpStream, SocketAddr)> {
        // `Relaxed`: the flag stands alone, no other data is published with it. (`filter`
        // lends each item, and the items are `&Backend`: hence `&&Backend`.)
        let up = |b: &&Backend| b.up.load(Ordering::Relaxed); // New in part 6
        let mut pool: Vec<&Backend> = self.backends.iter().filter(up).collect(); // New in part 6
        // Every backend DOWN: try them all anyway. A check can be wrong (a broken health
        // page on a working site, a probe that timed out on a busy machine), and a client
        // is better served by a try than by a certain refusal.
        if pool.is_empty() {
            pool = self.backends.iter().collect(); // New in part 6
        } // New in part 6
        // Turns count among the backends in `pool`, so that those up share the clients
        // evenly however many are down. (Starting at `turn % len` of ALL the backends
        // and skipping the down ones would give a down backend's share to its neighbour.)
        let turn = self.next.fetch_add(1, Ordering::Relaxed); // New in part 6
        let mut last_error = io::Error::other("no backend"); // New in part 6
        for i in 0..pool.len() {
            let addr = pool[(turn + i) % pool.len()].addr; // New in part 6
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => return Ok((stream, addr)), // New in part 6
                Err(e) => {
                    warn!("backend {addr} skipped: {e}"); // New in part 6
                    last_error = with_context(e, format!("backend {addr}")); // New in part 6
                } // New in part 6
            } // New in part 6
        } // New in part 6
        Err(with_context(last_error, "no backend answered".into())) // New in part 6
    } // New in part 6
} // New in part 6

/// The health-check thread: every `interval`, probes each backend in turn. A backend goes
/// DOWN after `fall` failed probes in a row and UP after `rise` good ones: a threshold,
/// not a single probe, decides, so one lost probe does not take a backend out.
fn health_checks(balancer: &Balancer, checks: &Checks) {
    // Per backend: how many probes in a row have disagreed with its state.
    let mut streaks = vec![0; balancer.backends.len()]; // New in part 6
    loop {
        for (backend, streak) in balancer.backends.iter().zip(&mut streaks) {
            let result = probe(backend.addr, checks); // New in part 6
            let up = backend.up.load(Ordering::Relaxed); // New in part 6
            *streak = if result.is_ok() == up { 0 } else { *streak + 1 }; // New in part 6
            let addr = backend.addr; // New in part 6
            match result {
                Err(why) if up && *streak == checks.fall => {
                    backend.up.store(false, Ordering::Relaxed); // New in part 6
                    warn!("backend {addr} is DOWN: {streak} failed checks, last: {why}"); // New in part 6
                    *streak = 0; // New in part 6
                } // New in part 6
                Ok(()) if !up && *streak == checks.rise => {
                    backend.up.store(true, Ordering::Relaxed); // New in part 6
                    info!("backend {addr} is UP: {streak} good checks"); // New in part 6
                    *streak = 0; // New in part 6
                } // New in part 6
                _ => {} // New in part 6
            } // New in part 6
        } // New in part 6
        // The next round starts an interval after this one ends: a probe that hangs until
        // its timeout delays the others. Simple, and checks need not be punctual.
        thread::sleep(checks.interval); // New in part 6
    } // New in part 6
} // New in part 6

/// One probe: a TCP connect; with a `check_path`, also `GET path` and the status line,
/// which must say 2xx or 3xx. Each step may take up to `interval`. `Err` says why not.
fn probe(addr: SocketAddr, checks: &Checks) -> Result<(), String> {
    // "connection refused", not "Connection refused (os error 111)"; and a read that
    // timed out is `WouldBlock` on Linux, which would say "operation would block".
    let why = |e: io::Error| match e.kind() {
        TimedOut | WouldBlock => "timed out".to_string(), // New in part 6
        kind => kind.to_string(),                         // New in part 6
    }; // New in part 6
    let mut stream = TcpStream::connect_timeout(&addr, checks.interval).map_err(why)?; // New in part 6
    let Some(path) = &checks.path else {
        return Ok(()); // New in part 6
    }; // New in part 6
    let timeout = Some(checks.interval); // New in part 6
    stream.set_read_timeout(timeout).map_err(why)?; // New in part 6
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"); // New in part 6
    stream.write_all(request.as_bytes()).map_err(why)?; // New in part 6
    // "HTTP/1.1 200": the status is bytes 9 to 11. The rest is left unread, so dropping
    // the stream resets the connection; HAProxy's checks end the same way.
    let mut status = [0u8; 12]; // New in part 6
    stream.read_exact(&mut status).map_err(why)?; // New in part 6
    match status {
        [b'H', b'T', b'T', b'P', b'/', .., b'2' | b'3', _, _] => Ok(()), // New in part 6
        _ => Err(format!("answered {:?}", String::from_utf8_lossy(&status))), // New in part 6
    }
}

/// The first error of a connection, and which socket it came from.
type FirstError = OnceLock<(&'static str, io::Error)>;

/// Proxies one client through the balancer's pick: backend → client here, client →
/// backend on a scoped thread (part 5), and one log line once both are done.
fn handle_client_connection(client: TcpStream, balancer: &Balancer) {
    let peer = client.peer_addr().map_or("?".into(), |a| a.to_string());
    let (backend, addr) = match balancer.connect() {
        Ok(found) => found,                     // New in part 6
        Err(e) => return error!("{peer}: {e}"), // New in part 6
    };
    // The first error says how the connection ended; later ones are its echo (part 5).
    let first_error = FirstError::new();
    let result = thread::scope(|scope| {
        let up = || relay(&client, &backend, ["client", "backend"], &first_error);
        let upstream = thread::Builder::new().spawn_scoped(scope, up)?;
        let down = relay(&backend, &client, ["backend", "client"], &first_error);
        // `relay` has no call that panics, so `join` cannot return a panic's `Err`.
        let up = upstream.join().expect("relay does not panic");
        io::Result::Ok((up, down))
    });
    let (up, down) = match result {
        Ok(counts) => counts,
        Err(e) => return error!("{peer}: could not start a thread: {e}"),
    };
    let how = match first_error.into_inner() {
        None => "done".to_string(),
        // EPIPE (`BrokenPipe`) means what a reset means, as the C decided (part 5).
        Some((who, e)) => match e.kind() {
            ConnectionReset | BrokenPipe => format!("{who} reset"),
            _ => format!("{who} error: {e}"),
        },
    };
    info!("{peer}: via {addr}, {up} bytes up, {down} bytes down, {how}"); // New in part 6
}

/// Copies `from` to `to` until end of file, then passes the end of file on with a
/// half-close; returns the bytes copied. Parts 4 and 5 explain each step.
fn relay(
    mut from: &TcpStream,
    mut to: &TcpStream,
    names: [&'static str; 2],
    first: &FirstError,
) -> u64 {
    let mut buffer = [0u8; BUFFER_SIZE];
    let mut copied = 0;
    let result = loop {
        let bytes_read = match from.read(&mut buffer) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err((names[0], e)),
        };
        // A blocking `write_all`: a slow reader slows this thread, and no byte is lost.
        if let Err(e) = to.write_all(&buffer[..bytes_read]) {
            // `to` has gone, but what it sent before it went is still readable: the other
            // thread reads it and delivers it to `from`, so leave both sockets to it.
            let _ = first.set((names[1], e));
            return copied;
        }
        copied += bytes_read as u64;
    };
    match result {
        Ok(()) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        // Record the error first, then shut both down to wake the other thread (part 5).
        Err(error) => {
            let _ = first.set(error);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
    copied
}

/// Reads a port number from the config, with an error that says which one was bad.
fn parse_port(name: &str, text: &str) -> io::Result<u16> {
    text.parse().map_err(|_| {
        let message = format!("{name} must be a number from 0 to 65535, not {text:?}");
        io::Error::new(io::ErrorKind::InvalidInput, message)
    })
}

/// Puts `what` in front of an error's text, so the one line we print says what failed.
fn with_context(error: io::Error, what: String) -> io::Error {
    io::Error::new(error.kind(), format!("{what}: {error}"))
}
