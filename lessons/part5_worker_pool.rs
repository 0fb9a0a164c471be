//! # Part 5: a worker pool, timestamped logs, and Ctrl-C
//!
//! Mirrors what the C did after the series, once it ran in front of the author's blog
//! (Oct 2013 – Feb 2014): timestamped logs (`86132d3`, `1b90d5c`), a client that leaves
//! halfway (`3816909`), resets (`86a493e`), EPIPE taken as a reset (`071a933`). It is also
//! `rsp`'s threads mode in one file: a blocking accept loop hands each client to a pool.
//!
//! Changes since part 4 (`--broken` is gone: from here on only the fix is kept). Six ideas,
//! here in the order the file shows them, so read it top to bottom; each is explained
//! where it lives:
//! 1. `simplelog` lines stamped as the C's were (`init_logging`; the banner in `run` is
//!    the first such line);
//! 2. the `workers` config key, default 8 (`load_config`);
//! 3. Ctrl-C with `ctrlc`: its handler sets a flag and connects to our own port, to wake
//!    the accept loop (`run`, the first block after the banner);
//! 4. the pool: `workers` threads fed by a `crossbeam_channel` with room for nobody, so
//!    while every worker is busy the accept loop waits and new clients wait in the
//!    kernel's listen backlog; nobody is turned away (`run`, then `worker`). The end of
//!    `run` is the drain: stop accepting, let every worker finish its client, exit 0;
//! 5. each worker copies both directions, the second on a `thread::scope` thread that
//!    borrows the sockets, in place of part 4's `try_clone` (`handle_client_connection`);
//! 6. one log line per connection as it ends, naming its first error, kept in a
//!    `OnceLock` (`FirstError`, set in `relay`, read in `handle_client_connection`).
//!
//! (The markers follow `make diff A=4 B=5` exactly, but for one exception: a line that
//! ends in `{`, `(` or `[`, or starts a method chain, may go unmarked, since rustfmt would
//! move its comment. README "The lessons" gives the rule; `tests/markers.rs` checks it.)
//!
//! Run it (three terminals; or `make run-5`, which starts the demo backend for you):
//!
//! ```text
//! make backend                                       # demo backend on port 8888
//! cargo run --bin part5 -- lessons/part3.lua         # proxy on port 8000
//! curl http://127.0.0.1:8000/                        # then press Ctrl-C in the proxy
//! ```
//!
//! Observe: a log line per request; `ps -o nlwp= -p $(pgrep part5)` says 10 threads (main,
//! Ctrl-C, 8 workers) plus one per client being served. Tests: `tests/part5_worker_pool.rs`
//! (`make test-5`); every earlier part's tests run against part 5 too.
#![forbid(unsafe_code)]

use crossbeam_channel::{Receiver, bounded}; // New in part 5
use log::{error, info}; // New in part 5
use rlua::{ChunkMode, Lua, LuaOptions, StdLib};
use simplelog::{ConfigBuilder, LevelFilter, SimpleLogger}; // New in part 5
use std::env;
use std::fs;
use std::io::ErrorKind::{BrokenPipe, ConnectionReset}; // New in part 5
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process;
use std::sync::atomic::{AtomicBool, Ordering}; // New in part 5
use std::sync::{Arc, OnceLock}; // New in part 5
use std::thread;

/// The C read each chunk into a 4096-byte buffer.
const BUFFER_SIZE: usize = 4096;
/// Clients served at once when the config does not say `workers = N`.
const DEFAULT_WORKERS: usize = 8; // New in part 5

fn main() {
    init_logging(); // New in part 5
    let args: Vec<String> = env::args().collect();
    if args.len() != 2 {
        eprintln!("Usage: {} <config_file>", args[0]); // New in part 5
        process::exit(1);
    }
    // Like the C, a config error is one line on stderr and exit status 1.
    let config = match load_config(&args[1]) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            process::exit(1);
        }
    };
    // `run` returns `Ok` only after Ctrl-C, once every client is served: then we exit 0.
    if let Err(e) = run(&config) {
        error!("Error: {e}"); // New in part 5
        process::exit(1);
    }
}

/// Log lines look like the C's: `[2013-10-14 18:05:01.123456 +0100] message`.
fn init_logging() {
    let mut builder = ConfigBuilder::new(); // New in part 5
    // A `time` format description: `[name]` is a field, and `[[` is a literal bracket.
    builder.set_time_format_custom(simplelog::format_description!(
        "[[[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6] [offset_hour sign:mandatory][offset_minute]]" // New in part 5
    )); // New in part 5
    // No "[INFO]" tag, as in the C: `set_max_level` picks the levels whose NAME is shown
    // in the line, and `Off` shows none. (Which lines are logged at all is the level given
    // to `init` below: `Info` and up.)
    builder.set_max_level(LevelFilter::Off); // New in part 5
    // The UTC offset can only be read while no other thread runs; else the lines are UTC.
    let _ = builder.set_time_offset_to_local(); // New in part 5
    // Errors go to stderr, the rest to stdout; `init` fails only if a logger is set already.
    let _ = SimpleLogger::init(LevelFilter::Info, builder.build()); // New in part 5
} // New in part 5

/// The settings, copied out of Lua (a `Lua` state is not `Send`).
struct Config {
    listen_port: String,
    backend_address: String,
    backend_port: String,
    /// How many clients are served at once: the size of the pool.
    workers: usize, // New in part 5
}

/// Runs the config file and reads its globals. The error is the whole message.
fn load_config(path: &str) -> Result<Config, String> {
    // Part 3's loader; see there for why each step is as it is.
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default())
        .map_err(|e| format!("Cannot start Lua: {e}"))?;
    let env = lua
        .create_table()
        .map_err(|e| format!("Cannot start Lua: {e}"))?;
    let source = fs::read(path)
        .map_err(|e| format!("Error parsing config file: cannot open {path}: {e}"))?;
    // No time limit, as in parts 3 and 4 (why: see there).
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
        Ok(None) => DEFAULT_WORKERS, // New in part 5
        Ok(Some(n)) if n > 0 => n,   // New in part 5
        _ => return Err("workers must be a whole number from 1 up".into()), // New in part 5
    }; // New in part 5
    Ok(Config {
        listen_port: get("listenPort")?,
        backend_address: get("backendAddress")?,
        backend_port: get("backendPort")?,
        workers, // New in part 5
    })
}

/// The first line of an error: Lua may append a traceback, and one line is enough here.
fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}

/// Binds, logs the banner, starts the pool and hands it clients until Ctrl-C; then waits
/// for the workers to finish their clients.
fn run(config: &Config) -> io::Result<()> {
    let listen_port = parse_port("listenPort", &config.listen_port)?; // New in part 5
    let backend_port = parse_port("backendPort", &config.backend_port)?; // New in part 5
    // Every worker needs the backend's name; an `Arc` shares one copy.
    let backend_addr: Arc<str> = Arc::from(config.backend_address.as_str()); // New in part 5
    // Loopback only, so a lesson never opens a port to the network by accident.
    let listener = TcpListener::bind(("127.0.0.1", listen_port))
        .map_err(|e| with_context(e, format!("cannot listen on port {listen_port}")))?;
    let port = listener.local_addr()?.port();
    // No flush, where parts 1-4 flushed stdout to be explicit: simplelog writes whole
    // lines, and Rust's stdout is line-buffered even into a pipe, so the line is out now.
    info!("Started.  Listening on port {port}."); // New in part 5

    // `ctrlc` runs this handler on a thread of its own. A flag alone would not stop the
    // main thread, asleep in `accept()`, so the handler also connects to our own port:
    // `accept` returns, and the loop sees the flag. A second Ctrl-C exits at once.
    let stopping = Arc::new(AtomicBool::new(false)); // New in part 5
    let flag = Arc::clone(&stopping); // New in part 5
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            // 128 + SIGINT, as shells report it.
            process::exit(130); // New in part 5
        } // New in part 5
        info!("Ctrl-C: finishing the clients being served; Ctrl-C again exits now."); // New in part 5
        let _ = TcpStream::connect(("127.0.0.1", port)); // New in part 5
    }) // New in part 5
    .map_err(io::Error::other)?; // New in part 5

    // Capacity 0: `send` waits until a worker is free to take the client.
    let (sender, receiver) = bounded::<TcpStream>(0); // New in part 5
    let mut pool = Vec::new(); // New in part 5
    for _ in 0..config.workers {
        // A crossbeam `Receiver` can be cloned: every worker takes from the one channel.
        let clients = receiver.clone(); // New in part 5
        let backend_addr = Arc::clone(&backend_addr); // New in part 5
        let work = move || worker(clients, &backend_addr, backend_port); // New in part 5
        pool.push(thread::Builder::new().spawn(work)?); // New in part 5
    } // New in part 5
    // Only the workers hold one now.
    drop(receiver); // New in part 5

    for client in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            // Ctrl-C (this client is the handler's wake-up)
            break; // New in part 5
        } // New in part 5
        // A failed accept (say, out of fds) is logged; the loop goes on.
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                error!("Could not accept: {e}"); // New in part 5
                continue;
            }
        };
        // While every worker is busy this waits, and so does `accept`: new clients queue
        // in the kernel (std asks for a backlog of 128; when that is full, the kernel
        // ignores a SYN, and the client's TCP sends it again a second later).
        if sender.send(client).is_err() {
            // Fails only if every worker has gone.
            break; // New in part 5
        }
    }
    // Closed, so new connects are refused.
    drop(listener); // New in part 5
    // The shutdown signal: with the only `Sender` gone, each worker's `iter()` ends once
    // the worker has finished its client.
    drop(sender); // New in part 5
    info!("Stopped accepting; waiting for the clients being served."); // New in part 5
    for worker in pool {
        let _ = worker.join(); // New in part 5
    } // New in part 5
    info!("All clients served; exiting."); // New in part 5
    Ok(())
}

/// One thread of the pool: serves a client at a time, until the channel is closed.
fn worker(clients: Receiver<TcpStream>, backend_addr: &str, backend_port: u16) {
    // `iter()` sleeps until a client arrives, and ends once every `Sender` is dropped.
    for client in clients.iter() {
        handle_client_connection(client, backend_addr, backend_port); // New in part 5
    }
} // New in part 5

/// The first error of a connection, and which socket it came from. A `OnceLock` can be
/// set once: the first `set` stores its value, and every later `set` returns `Err` and
/// changes nothing. So whichever thread fails first is the one remembered.
type FirstError = OnceLock<(&'static str, io::Error)>; // New in part 5

/// Proxies one client: copies backend → client here, client → backend on a second
/// thread, and logs one line once both are done.
fn handle_client_connection(client: TcpStream, backend_addr: &str, backend_port: u16) {
    let peer = client.peer_addr().map_or("?".into(), |a| a.to_string()); // New in part 5
    // `connect` resolves the name and tries each address in turn, like the C's loop.
    // `error!(…)` is an expression of type `()`, as is this function: `return error!(…)`
    // logs and leaves in one line.
    let backend = match TcpStream::connect((backend_addr, backend_port)) {
        Ok(backend) => backend, // New in part 5
        Err(e) => return error!("{peer}: backend {backend_addr}:{backend_port}: {e}"), // New in part 5
    };
    // Only the first error says how the connection ended: the thread that meets it shuts
    // both sockets down, and the other thread's error is then just the echo of that.
    let first_error = FirstError::new(); // New in part 5
    // Part 4 gave each thread its own handles with `try_clone` (`dup`). A scoped thread
    // may BORROW `client` and `backend` (the scope ends only after it), and `&TcpStream`
    // can read and write: two fds per connection instead of four, and no `Arc`.
    let result = thread::scope(|scope| {
        let up = || relay(&client, &backend, ["client", "backend"], &first_error); // New in part 5
        let upstream = thread::Builder::new().spawn_scoped(scope, up)?; // New in part 5
        let down = relay(&backend, &client, ["backend", "client"], &first_error); // New in part 5
        // `relay` has no call that panics, so `join` cannot return a panic's `Err`.
        let up = upstream.join().expect("relay does not panic"); // New in part 5
        // The closure's `?` needs to know the closure's error type, and nothing else
        // says it: `io::Result::Ok` (`Result<_, io::Error>`'s `Ok`) names it.
        io::Result::Ok((up, down)) // New in part 5
    }); // New in part 5
    let (up, down) = match result {
        Ok(counts) => counts, // New in part 5
        Err(e) => return error!("{peer}: could not start a thread: {e}"), // New in part 5
    }; // New in part 5
    let how = match first_error.into_inner() {
        None => "done".to_string(), // New in part 5
        // A write to a peer that has gone fails with EPIPE (`BrokenPipe`: Rust ignores
        // SIGPIPE). The C decided it means what a reset means, and so do we.
        Some((who, e)) => match e.kind() {
            ConnectionReset | BrokenPipe => format!("{who} reset"), // New in part 5
            _ => format!("{who} error: {e}"),                       // New in part 5
        }, // New in part 5
    }; // New in part 5
    info!("{peer}: {up} bytes up, {down} bytes down, {how}"); // New in part 5
}

/// Copies everything from `from` to `to` until `from` reaches end of file, then passes the
/// end of file on with a half-close. Returns the bytes copied; an error goes to `first`.
/// (`read` needs `&mut self`, here a `&mut &TcpStream`: hence `mut` on shared references.)
fn relay(
    mut from: &TcpStream,     // New in part 5
    mut to: &TcpStream,       // New in part 5
    names: [&'static str; 2], // New in part 5
    first: &FirstError,       // New in part 5
) -> u64 {
    let mut buffer = [0u8; BUFFER_SIZE];
    let mut copied = 0;
    let result = loop {
        // A read of 0 bytes means the sender has closed (or half-closed) its side.
        let bytes_read = match from.read(&mut buffer) {
            Ok(0) => break Ok(()), // New in part 5
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err((names[0], e)), // New in part 5
        };
        // Part 4's fix: a blocking `write_all` returns only when the kernel has taken every
        // byte, so a slow reader slows this thread down, and no byte is ever dropped.
        if let Err(e) = to.write_all(&buffer[..bytes_read]) {
            // `to` has gone, but what it sent before it went is still readable: the other
            // thread reads it and delivers it to `from`, so leave both sockets to it.
            let _ = first.set((names[1], e)); // New in part 5
            return copied; // New in part 5
        } // New in part 5
        copied += bytes_read as u64;
    };
    match result {
        // A half-close: the peer reads end of file; the other direction keeps flowing.
        Ok(()) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        // On an error, shut both down: that wakes the other thread from its `read`. Record
        // the error FIRST: once we shut down, the other thread may fail too (a read from a
        // socket we shut down can end in a reset), and that is not how it all began.
        // (`set` fails if the other thread's error came first: then we keep that one.)
        Err(error) => {
            let _ = first.set(error); // New in part 5
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
    copied // New in part 5
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
