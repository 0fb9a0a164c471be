//! # Part 7: one event loop for every connection, with `mio`
//!
//! Back to the C's design: the epoll reactor of part 2 (`f51950b`) with part 4's fix
//! (edge-triggered `e197936`, write queues `3aa769e`, queue ordering `ed011e6`), plus what
//! the C never had: a high-water mark, so a slow client cannot make the proxy hold a whole
//! response in memory. Four new ideas, each explained where it first appears, in capitals:
//! THE EVENT LOOP and tokens (`run`), EDGE-TRIGGERED events (`run`, then `accept_all`),
//! THE WRITE QUEUE (`Side`, `Connection::send`), THE HIGH-WATER MARK (`Connection::relay`).
//!
//! Changes since part 5 (the serving half is rewritten; the config loader and the log
//! format are kept, but only the banner and errors are logged: part 5's line per
//! connection is gone, since nothing here counts a connection's bytes):
//! - one thread with non-blocking sockets and a `mio::Poll` loop, instead of a pool and
//!   blocking copies; a `Token` per socket and a `HashMap` replace the C's handler pointers;
//! - what a socket refuses is queued, and queued bytes always go out first;
//! - no `workers` and no drain: Ctrl-C just ends the process (waking a loop for a drain
//!   takes a `mio::Waker`, as in rsp's mio mode).
//!
//! Run it (three terminals; or `make run-7`, which starts the demo backend for you):
//!
//! ```text
//! make backend                                          # demo backend on port 8888
//! cargo run --bin part7 -- lessons/part3.lua            # proxy on port 8000
//! curl --limit-rate 1M http://127.0.0.1:8000/bytes/20000000 | sha256sum    # 10-20 s
//! ```
//!
//! Observe: the sum is `b7845ea3…fb1301` (the demo backend's); `ps -o nlwp,rss -p $(pgrep
//! part7)` during the download shows one thread, and memory stays flat. Tests:
//! `tests/part7_mio.rs` (`make test-7`); every earlier part's tests run against part 7 too.
#![forbid(unsafe_code)]

use log::{error, info};
use mio::net::{TcpListener, TcpStream}; // New in part 7
use mio::{Events, Interest, Poll, Token}; // New in part 7
use rlua::{ChunkMode, Lua, LuaOptions, StdLib};
use simplelog::{ConfigBuilder, LevelFilter, SimpleLogger};
use std::collections::{HashMap, VecDeque}; // New in part 7
use std::env;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr}; // New in part 7
use std::process;

/// The C read each chunk into a 4096-byte buffer.
const BUFFER_SIZE: usize = 4096;
/// Stop reading a source once this much waits for its destination; resume below half.
const HIGH_WATER: usize = 256 * 1024; // New in part 7
/// mio hands back, with each event, the `Token` (a plain `usize`) that the socket was
/// registered with: the listener gets this one, connection `id` gets `2*id` and `2*id + 1`.
const LISTENER: Token = Token(usize::MAX); // New in part 7
/// Indexes into a connection's `streams` and `sides`, and the last bit of its tokens.
const CLIENT: usize = 0; // New in part 7
const BACKEND: usize = 1; // New in part 7

fn main() {
    init_logging();
    let args: Vec<String> = env::args().collect();
    if args.len() != 2 {
        eprintln!("Usage: {} <config_file>", args[0]);
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
    // `run` loops forever; it returns only on a fatal error (Ctrl-C simply ends the process).
    if let Err(e) = run(&config) {
        error!("Error: {e}");
        process::exit(1);
    }
}

/// Log lines look like the C's: `[2013-10-14 18:05:01.123456 +0100] message`.
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
    backend_address: String,
    backend_port: String,
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
    Ok(Config {
        listen_port: get("listenPort")?,
        backend_address: get("backendAddress")?,
        backend_port: get("backendPort")?,
    })
}

/// The first line of an error: Lua may append a traceback, and one line is enough here.
fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}

/// Binds, logs the banner, then waits for events and dispatches them, forever.
fn run(config: &Config) -> io::Result<()> {
    let listen_port = parse_port("listenPort", &config.listen_port)?;
    let backend_port = parse_port("backendPort", &config.backend_port)?;
    let backend = (config.backend_address.as_str(), backend_port); // New in part 7
    // Loopback only, so a lesson never opens a port to the network by accident.
    let address = SocketAddr::from(([127, 0, 0, 1], listen_port)); // New in part 7
    let what = format!("cannot listen on port {listen_port}"); // New in part 7
    let mut listener = TcpListener::bind(address).map_err(|e| with_context(e, what))?; // New in part 7
    let port = listener.local_addr()?.port();
    info!("Started.  Listening on port {port}.");

    // THE EVENT LOOP. A `Poll` is an epoll instance: we register each socket once, then
    // `poll` sleeps until some of them are ready and says which, by their tokens.
    let mut poll = Poll::new()?; // New in part 7
    poll.registry() // New in part 7
        .register(&mut listener, LISTENER, Interest::READABLE)?; // New in part 7
    // Unlike the C (maxevents = 1), we take many events per call: see the lookup below.
    let mut events = Events::with_capacity(1024); // New in part 7
    let mut connections: HashMap<usize, Connection> = HashMap::new(); // New in part 7
    let mut next_id = 0; // New in part 7
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue, // New in part 7
            result => result?,                                            // New in part 7
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, backend, &mut connections, &mut next_id); // New in part 7
                continue;
            }
            // Where the C kept a handler pointer in each epoll entry, the token names the
            // connection and the map finds it. A connection closed earlier in this batch
            // may still have an event queued; ids are never reused, so that stale event
            // finds nothing. `let ... else` is a `let` whose pattern may fail: then its
            // `else` block runs, and must leave (`continue`, `return`, `break`).
            let id = event.token().0 / 2; // New in part 7
            let Some(connection) = connections.get_mut(&id) else {
                continue; // New in part 7
            }; // New in part 7
            // EDGE-TRIGGERED (mio always is): an event says only "something changed", once,
            // so we do all a connection can do now, each step until `WouldBlock`.
            let pumped = connection // New in part 7
                .pump() // New in part 7
                .inspect_err(|e| error!("Connection failed: {e}")); // New in part 7
            // Finished, or failed: dropping closes both sockets, and epoll forgets them.
            if pumped.unwrap_or(true) {
                connections.remove(&id); // New in part 7
            } // New in part 7
        }
    }
}

/// Accepts every waiting client (edge-triggered: until `WouldBlock`) and connects it to
/// the backend. A failure costs that one client, never the loop.
fn accept_all(
    listener: &TcpListener,                       // New in part 7
    poll: &Poll,                                  // New in part 7
    backend: (&str, u16),                         // New in part 7
    connections: &mut HashMap<usize, Connection>, // New in part 7
    next_id: &mut usize,                          // New in part 7
) {
    loop {
        let mut client = match listener.accept() {
            Ok((client, _)) => client,                                 // New in part 7
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return, // New in part 7
            Err(e) => return error!("Could not accept: {e}"),          // New in part 7
        }; // New in part 7
        // A blocking connect, as the C's was: on loopback it takes microseconds, but a far
        // backend would stall every client for a round trip (rsp's mio mode does not).
        let server = connect(backend).inspect_err(|e| error!("Backend {backend:?}: {e}")); // New in part 7
        let Ok(mut server) = server else {
            // `client` is dropped here, so closed.
            continue; // New in part 7
        }; // New in part 7
        // Both interests, once: edge-triggered, an unused WRITABLE costs one wake-up, not
        // one per loop as the C's level-triggered EPOLLOUT did.
        let (id, both) = (*next_id, Interest::READABLE | Interest::WRITABLE); // New in part 7
        *next_id += 1; // New in part 7
        let registry = poll.registry(); // New in part 7
        let registered = registry // New in part 7
            .register(&mut client, Token(2 * id + CLIENT), both) // New in part 7
            .and_then(|()| registry.register(&mut server, Token(2 * id + BACKEND), both)); // New in part 7
        if let Err(e) = registered {
            error!("Could not register: {e}"); // New in part 7
            continue; // New in part 7
        } // New in part 7
        let streams = [client, server]; // New in part 7
        let sides = Default::default(); // New in part 7
        connections.insert(id, Connection { streams, sides }); // New in part 7
    }
}

/// Connects with std's blocking `connect` (it tries each address of the name), then hands
/// the socket to mio, non-blocking from here on.
fn connect(backend: (&str, u16)) -> io::Result<TcpStream> {
    let stream = std::net::TcpStream::connect(backend)?; // New in part 7
    stream.set_nonblocking(true)?; // New in part 7
    Ok(TcpStream::from_std(stream)) // New in part 7
}

/// THE WRITE QUEUE. The state of one socket of a connection, and the bytes waiting to be
/// written to it.
#[derive(Default)] // New in part 7
struct Side {
    /// Bytes from the OTHER side that this socket has not taken yet. The C kept a list of
    /// chunks; a `VecDeque` is a ring buffer: push at the back, drain from the front.
    queue: VecDeque<u8>, // New in part 7
    /// We read end of file from this socket: its peer will send nothing more.
    read_closed: bool, // New in part 7
    /// We sent our FIN to this socket (`shutdown(Write)`), after its queue ran dry.
    write_closed: bool, // New in part 7
    /// We stopped reading this socket because the other side's queue is over the mark.
    paused: bool, // New in part 7
} // New in part 7

/// A client and its backend: what the C's two handlers, pointing at each other, held.
struct Connection {
    /// The two sockets, indexed by `CLIENT` and `BACKEND`, and their states.
    streams: [TcpStream; 2], // New in part 7
    sides: [Side; 2], // New in part 7
} // New in part 7

impl Connection {
    /// Does all the work the sockets allow right now. Returns whether the connection is
    /// finished: both directions have ended and every byte has been delivered.
    fn pump(&mut self) -> io::Result<bool> {
        let up = self.relay(CLIENT); // New in part 7
        // Even if writing to the backend failed: what it sent before its reset is still
        // readable, and must reach the client before the connection is dropped.
        let down = self.relay(BACKEND); // New in part 7
        up.and(down)?; // New in part 7
        Ok(self.sides.iter().all(|side| side.write_closed)) // New in part 7
    } // New in part 7

    /// Moves bytes from side `from` to the other side: first what is queued, then what
    /// `from` has to say, until it would block, ends, or the queue reaches the mark.
    fn relay(&mut self, from: usize) -> io::Result<()> {
        let to = 1 - from; // New in part 7
        let mut buffer = [0u8; BUFFER_SIZE]; // New in part 7
        loop {
            // Flushing first may resume a paused `from`, or pass its end of file on.
            self.flush(to)?; // New in part 7
            let side = &mut self.sides[from]; // New in part 7
            if side.read_closed || side.paused {
                return Ok(()); // New in part 7
            } // New in part 7
            // Non-blocking calls never sleep, so they are never `Interrupted` (EINTR).
            match self.streams[from].read(&mut buffer) {
                // A 0-byte read is end of file; `flush` passes it on after the queue.
                Ok(0) => side.read_closed = true, // New in part 7
                Ok(n) => self.send(to, &buffer[..n])?, // New in part 7
                // `WouldBlock` is EAGAIN: drained, and the next edge will wake us.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()), // New in part 7
                Err(e) => return Err(e),                                          // New in part 7
            } // New in part 7
            // THE HIGH-WATER MARK: stop reading `from` while `to` is this far behind. Its
            // bytes then wait in the kernel, and its sender feels TCP backpressure.
            if self.sides[to].queue.len() >= HIGH_WATER {
                self.sides[from].paused = true; // New in part 7
            } // New in part 7
        }
    } // New in part 7

    /// Passes `data` on to side `to`: straight to the socket if nothing is queued, and
    /// whatever the socket does not take goes to the back of the queue.
    fn send(&mut self, to: usize, data: &[u8]) -> io::Result<()> {
        let side = &mut self.sides[to]; // New in part 7
        let mut written = 0; // New in part 7
        // The ordering invariant (the C's `ed011e6`): while older bytes wait in the
        // queue, new bytes go behind them, never straight to the socket.
        if side.queue.is_empty() {
            written = match self.streams[to].write(data) {
                Ok(n) => n,                                           // New in part 7
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0, // New in part 7
                // E.g. BrokenPipe (no SIGPIPE)
                Err(e) => return Err(e), // New in part 7
            }; // New in part 7
        } // New in part 7
        // Queue, never drop.
        side.queue.extend(&data[written..]); // New in part 7
        Ok(()) // New in part 7
    } // New in part 7

    /// Writes side `to`'s queue until it is empty or the socket is full; resumes the
    /// source below half the mark; sends the FIN once the source ended and all is sent.
    fn flush(&mut self, to: usize) -> io::Result<()> {
        let side = &mut self.sides[to]; // New in part 7
        while !side.queue.is_empty() {
            // `as_slices().0` is the queue's first contiguous run of bytes.
            match self.streams[to].write(side.queue.as_slices().0) {
                // A socket that takes 0 of our bytes would keep this loop spinning: std's
                // `write_all` calls that an error, `WriteZero`, and so do we.
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()), // New in part 7
                // Forget what was taken.
                Ok(n) => drop(side.queue.drain(..n)), // New in part 7
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break, // New in part 7
                Err(e) => return Err(e),              // New in part 7
            } // New in part 7
        } // New in part 7
        // Copy the two values out of `side`: it is a `&mut` into `self.sides`, and once it
        // is no longer used its borrow ends, so the lines below may borrow `self` again.
        let (queued, fin_sent) = (side.queue.len(), side.write_closed); // New in part 7
        let source = &mut self.sides[1 - to]; // New in part 7
        if queued <= HIGH_WATER / 2 {
            source.paused = false; // New in part 7
        }
        // Deferred close: the FIN goes out only after every queued byte. It is a
        // half-close (`shutdown(Write)`): the other direction keeps flowing.
        if queued == 0 && source.read_closed && !fin_sent {
            self.streams[to].shutdown(Shutdown::Write)?; // New in part 7
            self.sides[to].write_closed = true; // New in part 7
        }
        Ok(()) // New in part 7
    }
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
