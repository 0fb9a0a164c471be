//! # Part 6: load balancing: several backends, round robin, health checks
//!
//! The "loadbalancer" of the series' title, which the C never reached: steps 2 and 3 of the
//! "Build Your Own Load Balancer" challenge, on top of part 5. Grown up in rsp as
//! `src/balancer.rs` (round robin, failover) and `src/health.rs` (the checks).
//!
//! Changes since part 5 (code met in earlier parts keeps a short comment naming the part):
//! - `backends = { "127.0.0.1:8888", "127.0.0.1:8889" }` in the config (part 3's
//!   `backendAddress` and `backendPort` still name a single backend);
//! - clients go round robin over the backends that are up; a backend whose connect fails
//!   is skipped for this client, and the next one is tried;
//! - a health-check thread probes every backend every `check_interval` seconds (default
//!   2): a TCP connect, or with `check_path = "/health"` an HTTP GET answered 2xx or 3xx;
//! - a backend goes DOWN after `fall` (default 3) failed probes in a row, and UP after
//!   `rise` (default 2) good ones, each change one log line; if all are down, all are tried;
//! - what Rust changes: the health thread writes a backend's UP/DOWN while the workers read
//!   it, so it is an `AtomicBool` (a plain `bool` shared so is a data race, which does not
//!   compile), in a `Balancer` shared with an `Arc` as part 5 shared the backend's name.
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
use std::io::ErrorKind::{BrokenPipe, ConnectionReset, TimedOut, WouldBlock}; // New in part 6
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs}; // New in part 6
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering}; // New in part 6
use std::sync::{Arc, OnceLock};
use std::time::Duration; // New in part 6
use std::{env, fs, process, thread}; // New in part 6

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
    let config = load_config(&args[1]).unwrap_or_else(|message| {
        eprintln!("{message}"); // New in part 6
        process::exit(1); // New in part 6
    }); // New in part 6
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
#[derive(Clone)] // New in part 6
struct Config {
    listen_port: String,
    /// Each backend as `"host:port"`: the `backends` list, or part 3's one backend.
    backends: Vec<String>, // New in part 6
    /// How many clients are served at once: the size of the pool.
    workers: usize,
    /// Time between two probes of a backend, and how long one probe may take.
    check_interval: Duration, // New in part 6
    /// `Some("/health")`: probe with an HTTP GET of this path; `None`: a TCP connect.
    check_path: Option<String>, // New in part 6
    /// Good probes in a row that bring a DOWN backend back UP.
    rise: usize, // New in part 6
    /// Failed probes in a row that take an UP backend DOWN.
    fall: usize, // New in part 6
}

/// Runs the config file and reads its globals. The error is the whole message.
fn load_config(path: &str) -> Result<Config, String> {
    // Part 3's loader; see there for why each step is as it is.
    let no_lua = |e| format!("Cannot start Lua: {e}"); // New in part 6
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()).map_err(no_lua)?; // New in part 6
    let env = lua.create_table().map_err(no_lua)?; // New in part 6
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
    let count = |name: &str, default: usize| match env.get::<_, Option<usize>>(name) {
        Ok(None) => Ok(default),       // New in part 6
        Ok(Some(n)) if n > 0 => Ok(n), // New in part 6
        _ => Err(format!("{name} must be a whole number from 1 up")), // New in part 6
    }; // New in part 6
    let workers = count("workers", DEFAULT_WORKERS)?; // New in part 6
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
    let check_interval = match env.get::<_, Option<f64>>("check_interval") {
        Ok(None) => Duration::from_secs(2), // New in part 6
        Ok(Some(s)) if (0.001..=3600.0).contains(&s) => Duration::from_secs_f64(s), // New in part 6
        _ => return Err("check_interval must be from 0.001 to 3600 (seconds)".into()), // New in part 6
    }; // New in part 6
    // The path goes into the request line as it is: no spaces, no line breaks.
    let check_path = match env.get::<_, Option<String>>("check_path") {
        Ok(None) => None, // New in part 6
        Ok(Some(p)) if p.starts_with('/') && !p.contains(char::is_whitespace) => Some(p), // New in part 6
        _ => return Err("check_path must be a path that starts with / (no spaces)".into()), // New in part 6
    };
    Ok(Config {
        listen_port: get("listenPort")?,
        backends, // New in part 6
        workers,
        check_interval,          // New in part 6
        check_path,              // New in part 6
        rise: count("rise", 2)?, // New in part 6
        fall: count("fall", 3)?, // New in part 6
    })
}

/// The first line of an error: Lua may append a traceback, and one line is enough here.
fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}

/// Binds, logs the banner, starts the health checks and the pool, and hands the pool
/// clients until Ctrl-C; then waits for the workers to finish their clients (part 5).
fn run(config: &Config) -> io::Result<()> {
    let listen_port = parse_port("listenPort", &config.listen_port)?;
    // The workers and the health-check thread share one balancer.
    let balancer = Arc::new(Balancer::new(&config.backends)?); // New in part 6
    let listener = TcpListener::bind(("127.0.0.1", listen_port))
        .map_err(|e| with_context(e, format!("cannot listen on port {listen_port}")))?;
    let port = listener.local_addr()?.port();
    info!("Started.  Listening on port {port}.");

    // One thread probes every backend while the process lives: nothing joins it.
    let (checked, settings) = (Arc::clone(&balancer), config.clone()); // New in part 6
    thread::Builder::new().spawn(move || health_checks(&checked, &settings))?; // New in part 6

    // Ctrl-C sets the flag and wakes `accept` with a connect of its own (part 5).
    let stopping = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stopping);
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            process::exit(130);
        }
        info!("Ctrl-C: finishing the clients being served; Ctrl-C again exits now.");
        let _ = TcpStream::connect(("127.0.0.1", port));
    })
    .map_err(io::Error::other)?;

    let (sender, receiver) = bounded::<TcpStream>(0);
    let mut pool = Vec::new();
    for _ in 0..config.workers {
        let (clients, balancer) = (receiver.clone(), Arc::clone(&balancer)); // New in part 6
        let work = move || worker(clients, &balancer); // New in part 6
        pool.push(thread::Builder::new().spawn(work)?);
    }
    drop(receiver);

    for client in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
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
    }
}

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
            let found = name.to_socket_addrs().map_err(context)?.next(); // New in part 6
            let addr = found.ok_or_else(|| context(io::Error::other("no address")))?; // New in part 6
            let up = AtomicBool::new(true); // New in part 6
            backends.push(Backend { addr, up }); // New in part 6
        } // New in part 6
        let next = AtomicUsize::new(0); // New in part 6
        Ok(Balancer { backends, next }) // New in part 6
    } // New in part 6

    /// Connects to the next backend in turn among those that are up. One whose connect
    /// fails is skipped, and the next is tried. Returns the stream and its backend.
    fn connect(&self) -> io::Result<(TcpStream, SocketAddr)> {
        // `Relaxed`: the flag stands alone, no other data is published with it.
        let up = |b: &Backend| b.up.load(Ordering::Relaxed); // New in part 6
        // Every backend DOWN: try them all anyway. A check can be wrong (a broken health
        // page on a working site, a probe that timed out on a busy machine), and a client
        // is better served by a try than by a certain refusal.
        let all_down = !self.backends.iter().any(up); // New in part 6
        let pool: Vec<&Backend> = self.backends.iter().filter(|b| all_down || up(b)).collect(); // New in part 6
        // Turns count within `pool`, so those up share the clients evenly: counting over ALL
        // the backends and skipping those down would give a down one's share to the next.
        let turn = self.next.fetch_add(1, Ordering::Relaxed); // New in part 6
        let mut last_error = io::Error::other("no backend"); // New in part 6
        for i in 0..pool.len() {
            let addr = pool[(turn + i) % pool.len()].addr; // New in part 6
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => return Ok((stream, addr)), // New in part 6
                Err(e) => last_error = with_context(e, format!("backend {addr} skipped")), // New in part 6
            } // New in part 6
            warn!("{last_error}"); // New in part 6
        } // New in part 6
        Err(with_context(last_error, "no backend answered".into())) // New in part 6
    } // New in part 6
} // New in part 6

/// The health-check thread: every `check_interval`, probes each backend in turn. A backend
/// goes DOWN after `fall` failed probes in a row and UP after `rise` good ones: a threshold,
/// not a single probe, decides, so one lost probe does not take a backend out. A round
/// starts an interval after the last one ends, so a slow probe delays the others: simple.
fn health_checks(balancer: &Balancer, config: &Config) {
    // Per backend: how many probes in a row have disagreed with its state.
    let mut streaks = vec![0; balancer.backends.len()]; // New in part 6
    loop {
        for (backend, streak) in balancer.backends.iter().zip(&mut streaks) {
            let (addr, up) = (backend.addr, backend.up.load(Ordering::Relaxed)); // New in part 6
            let result = probe(addr, config); // New in part 6
            *streak = if result.is_ok() == up { 0 } else { *streak + 1 }; // New in part 6
            let n = *streak; // New in part 6
            let change = match result {
                Err(e) if up && n == config.fall => format!("DOWN: {n} failed checks, last: {e}"), // New in part 6
                Ok(()) if !up && n == config.rise => format!("UP: {n} good checks"), // New in part 6
                _ => continue, // New in part 6
            }; // New in part 6
            // The flag first: once the line is out, the workers act on the change.
            backend.up.store(!up, Ordering::Relaxed); // New in part 6
            *streak = 0; // New in part 6
            info!("backend {addr} is {change}"); // New in part 6
        } // New in part 6
        thread::sleep(config.check_interval); // New in part 6
    } // New in part 6
} // New in part 6

/// One probe: a TCP connect; with a `check_path`, also `GET path` and the status line,
/// which must say 2xx or 3xx. Each step may take up to `check_interval`. `Err` says why.
fn probe(addr: SocketAddr, config: &Config) -> Result<(), String> {
    // "connection refused", not "Connection refused (os error 111)"; and a read that
    // timed out is `WouldBlock` on Linux, which would say "operation would block".
    let why = |e: io::Error| match e.kind() {
        TimedOut | WouldBlock => "timed out".to_string(), // New in part 6
        kind => kind.to_string(),                         // New in part 6
    }; // New in part 6
    let mut stream = TcpStream::connect_timeout(&addr, config.check_interval).map_err(why)?; // New in part 6
    let Some(path) = &config.check_path else {
        return Ok(()); // New in part 6
    }; // New in part 6
    let timeout = Some(config.check_interval); // New in part 6
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
    } // New in part 6
} // New in part 6

/// The first error of a connection, and which socket it came from (part 5).
type FirstError = OnceLock<(&'static str, io::Error)>;

/// Proxies one client through the balancer's pick: backend → client here, client →
/// backend on a scoped thread, and one log line once both are done (all as in part 5).
fn handle_client_connection(client: TcpStream, balancer: &Balancer) {
    let peer = client.peer_addr().map_or("?".into(), |a| a.to_string());
    let (backend, addr) = match balancer.connect() {
        Ok(found) => found,                     // New in part 6
        Err(e) => return error!("{peer}: {e}"), // New in part 6
    };
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
        // EPIPE (`BrokenPipe`) means what a reset means, as the C decided.
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
        if let Err(e) = to.write_all(&buffer[..bytes_read]) {
            let _ = first.set((names[1], e));
            return copied;
        }
        copied += bytes_read as u64;
    };
    if let Err(error) = result {
        let _ = first.set(error); // New in part 6
        let _ = from.shutdown(Shutdown::Both); // New in part 6
        let _ = to.shutdown(Shutdown::Both); // New in part 6
    } else {
        let _ = to.shutdown(Shutdown::Write); // New in part 6
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
