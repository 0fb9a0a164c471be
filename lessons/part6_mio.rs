//! # Part 5: one event loop for every connection, with `mio`
//!
//! Mirrors the C's design: the epoll reactor of part 2 (`f51950b`) with part 4's fix
//! (edge-triggered `e197936`, write queues `3aa769e`, queue ordering `ed011e6`), plus what
//! the C never had: a high-water mark that stops reading a source while the queue it fills
//! is full, so a slow client cannot make the proxy buffer a whole response in memory.
//!
//! Changes since part 4 (a rewrite: one thread, non-blocking sockets, no copy threads):
//! - a `mio::Poll` (epoll) loop; a `Token` per socket and a `HashMap` of connections
//!   replace the C's handler pointers;
//! - every read is drained until `WouldBlock`; what a socket refuses is queued, and
//!   queued bytes always go out first; the FIN follows the last queued byte;
//! - the backend connect does not block the loop.
//!
//! Run it (three terminals; or `make run-5`, which starts the demo backend for you):
//!
//! ```text
//! make backend                                          # demo backend on port 8888
//! cargo run --bin part5 -- lessons/part3.lua            # proxy on port 8000
//! curl --limit-rate 100k http://127.0.0.1:8000/bytes/20000000 | sha256sum
//! ```
//!
//! Observe: `ps -o nlwp,rss -p $(pgrep part5)` during the slow download: one thread, and
//! memory stays flat while curl crawls. Tests: `tests/part5_mio.rs` (`make test-5`), and
//! every earlier part's tests run against part 5 too.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::env;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::process;

use mio::net::{TcpListener, TcpStream}; // New in part 5
use mio::{Events, Interest, Poll, Token}; // New in part 5
use rlua::{ChunkMode, Lua, LuaOptions, StdLib};

/// Bytes per `read` (the C used 4096; bigger chunks mean fewer system calls).
const BUFFER_SIZE: usize = 16 * 1024;
/// Stop reading a source once this much waits for its destination; resume below half.
const HIGH_WATER: usize = 256 * 1024; // New in part 5
/// The listening socket's token; connection `id` uses tokens `2*id` and `2*id + 1`.
const LISTENER: Token = Token(usize::MAX);
/// Indexes into a connection's `streams` and `sides`, and the last bit of its tokens.
const CLIENT: usize = 0;
const BACKEND: usize = 1;

fn main() {
    let args: Vec<String> = env::args().collect();
    if args.len() != 2 {
        eprintln!("Usage: {} <config_file>", args[0]);
        process::exit(1);
    }
    let config = match load_config(&args[1]) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            process::exit(1);
        }
    };
    if let Err(e) = run(&config) {
        eprintln!("Error: {e}");
        process::exit(1);
    }
}

/// The three settings, copied out of Lua (a `Lua` state is not `Send`).
struct Config {
    listen_port: String,
    backend_address: String,
    backend_port: String,
}

/// Part 3's config loader, unchanged: see there for why each step is as it is.
fn load_config(path: &str) -> Result<Config, String> {
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

/// Binds, prints the banner, then waits for events and dispatches them, forever.
fn run(config: &Config) -> io::Result<()> {
    let listen_port = parse_port("listenPort", &config.listen_port)?;
    let backend_port = parse_port("backendPort", &config.backend_port)?;
    // A name lookup blocks, and nothing may block an event loop: resolve once, here.
    let backend_host = (config.backend_address.as_str(), backend_port);
    let backend = backend_host.to_socket_addrs()?.next(); // New in part 5
    let backend = backend.ok_or_else(|| io::Error::other("backendAddress did not resolve"))?;
    // The C listened on all interfaces; we listen on loopback only, so a lesson never
    // opens a port to the network by accident.
    let mut listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], listen_port)))?;
    let port = listener.local_addr()?.port();
    println!("Started.  Listening on port {port}.");
    io::stdout().flush()?;

    let mut poll = Poll::new()?; // New in part 5: epoll_create
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    // Unlike the C (maxevents = 1), we take many events per call: see the lookup below.
    let mut events = Events::with_capacity(1024);
    let mut connections: HashMap<usize, Connection> = HashMap::new(); // New in part 5
    let mut next_id = 0;
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            result => result?,
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                accept_all(&listener, &poll, backend, &mut connections, &mut next_id);
                continue;
            }
            // Where the C kept a handler pointer in each epoll entry, we keep a number: the
            // token names the connection, and the map finds it. A connection closed
            // earlier in this batch may still have an event queued behind it. Ids are
            // never reused, so that stale event finds nothing and is skipped: the safe
            // twin of the C's maxevents = 1 and deferred free list.
            let id = event.token().0 / 2;
            let Some(connection) = connections.get_mut(&id) else {
                continue; // New in part 5
            };
            // Edge-triggered (mio always is): an event only says "something changed", so
            // we do everything the connection can do now, each step until `WouldBlock`.
            let finished = connection.pump().unwrap_or_else(|e| {
                eprintln!("Connection failed: {e}");
                true
            });
            if finished {
                // Dropping closes both sockets, and the kernel takes a closed fd out of
                // epoll by itself (we never `dup` them): nothing else to undo.
                connections.remove(&id); // New in part 5
            }
        }
    }
}

/// Accepts every waiting client (edge-triggered: until `WouldBlock`) and starts its
/// backend connection. A failure costs that one client, never the loop.
fn accept_all(
    listener: &TcpListener,
    poll: &Poll,
    backend: SocketAddr,
    connections: &mut HashMap<usize, Connection>,
    next_id: &mut usize,
) {
    loop {
        let mut client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => return eprintln!("Could not accept: {e}"),
        };
        // A non-blocking connect only starts the handshake; the backend's socket turns
        // writable once it is done (see `Connection::pump`).
        let server =
            TcpStream::connect(backend).inspect_err(|e| eprintln!("Backend {backend}: {e}"));
        let Ok(mut server) = server else { continue };
        // Both interests, once and for all: being edge-triggered, an unused WRITABLE costs
        // one wake-up when the socket turns writable, not one per loop as the C's
        // level-triggered EPOLLOUT did. (Errors and hang-ups are always reported.)
        let (id, both) = (*next_id, Interest::READABLE | Interest::WRITABLE);
        *next_id += 1;
        let registry = poll.registry();
        let registered = registry
            .register(&mut client, Token(2 * id + CLIENT), both)
            .and_then(|()| registry.register(&mut server, Token(2 * id + BACKEND), both));
        if let Err(e) = registered {
            eprintln!("Could not register: {e}");
            continue; // `client` and `server` are dropped here: both closed.
        }
        let (streams, sides) = ([client, server], Default::default());
        let connection = Connection {
            streams,
            sides,
            connected: false,
        };
        connections.insert(id, connection);
    }
}

/// The state of one socket of a connection, and the bytes waiting to be written to it.
#[derive(Default)]
struct Side {
    /// Bytes read from the OTHER side that this socket has not taken yet (the C kept a
    /// linked list of `{data, offset, len}` chunks; a ring buffer of bytes does the same).
    queue: VecDeque<u8>, // New in part 5
    /// We read end of file from this socket: its peer will send nothing more.
    read_closed: bool,
    /// We sent our FIN to this socket (`shutdown(Write)`), after its queue ran dry.
    write_closed: bool,
    /// We stopped reading this socket because the other side's queue is over the mark.
    paused: bool,
}

/// A client and its backend: what the C's two handlers, pointing at each other, held.
struct Connection {
    /// The two sockets, indexed by `CLIENT` and `BACKEND`, and their states.
    streams: [TcpStream; 2],
    sides: [Side; 2],
    /// The backend's non-blocking connect has completed.
    connected: bool,
}

impl Connection {
    /// Does all the work the sockets allow right now. Returns whether the connection is
    /// finished: both directions have ended and every byte has been delivered.
    fn pump(&mut self) -> io::Result<bool> {
        if !self.connected {
            // The connect failed (`take_error` hands over its error), finished
            // (`peer_addr` works), or is still under way (NotConnected: wait).
            let backend = &self.streams[BACKEND];
            if let Some(e) = backend.take_error()? {
                let what = format!("cannot connect to backend: {e}");
                return Err(io::Error::new(e.kind(), what));
            }
            match backend.peer_addr() {
                Ok(_) => self.connected = true, // New in part 5
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return Err(e),
            }
        }
        self.relay(CLIENT)?;
        self.relay(BACKEND)?;
        Ok(self.sides.iter().all(|side| side.write_closed))
    }

    /// Moves bytes from side `from` to the other side: first what is queued, then what
    /// `from` has to say, until it would block, ends, or the queue reaches the mark.
    fn relay(&mut self, from: usize) -> io::Result<()> {
        let to = 1 - from;
        let mut buffer = [0u8; BUFFER_SIZE];
        loop {
            // Flushing first may resume a paused `from`, or pass its end of file on.
            self.flush(to)?;
            // The client can be read at once, the backend once it is connected.
            let ready = from == CLIENT || self.connected;
            let side = &mut self.sides[from];
            if !ready || side.read_closed || side.paused {
                return Ok(());
            }
            // Non-blocking calls never sleep, so they are never `Interrupted` (EINTR).
            match self.streams[from].read(&mut buffer) {
                // A 0-byte read is end of file; `flush` passes it on after the queue.
                Ok(0) => side.read_closed = true,
                Ok(n) => self.send(to, &buffer[..n])?,
                // `WouldBlock` is EAGAIN: drained, and the next edge will wake us.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
            // The high-water mark: stop reading `from` while `to` is this far behind.
            // Its bytes then wait in the kernel, and its sender feels TCP backpressure.
            if self.sides[to].queue.len() >= HIGH_WATER {
                self.sides[from].paused = true; // New in part 5
            }
        }
    }

    /// Passes `data` on to side `to`: straight to the socket if nothing is queued, and
    /// whatever the socket does not take goes to the back of the queue.
    fn send(&mut self, to: usize, data: &[u8]) -> io::Result<()> {
        let ready = to == CLIENT || self.connected;
        let side = &mut self.sides[to];
        let mut written = 0;
        // The ordering invariant (the C's `ed011e6`): while older bytes wait in the
        // queue, new bytes go behind them, never straight to the socket.
        if ready && side.queue.is_empty() {
            written = match self.streams[to].write(data) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e), // e.g. BrokenPipe: Rust ignores SIGPIPE
            };
        }
        side.queue.extend(&data[written..]); // New in part 5: queue, never drop
        Ok(())
    }

    /// Writes side `to`'s queue until it is empty or the socket is full; resumes the
    /// source below half the mark; sends the FIN once the source ended and all is sent.
    fn flush(&mut self, to: usize) -> io::Result<()> {
        if to == BACKEND && !self.connected {
            return Ok(());
        }
        let side = &mut self.sides[to];
        while !side.queue.is_empty() {
            match self.streams[to].write(side.queue.as_slices().0) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                // The socket took `n` bytes from the front of the queue: forget them.
                Ok(n) => drop(side.queue.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        let (queued, fin_sent) = (side.queue.len(), side.write_closed);
        let source = &mut self.sides[1 - to];
        if queued <= HIGH_WATER / 2 {
            source.paused = false; // New in part 5
        }
        // Deferred close: the FIN goes out only after every queued byte. It is a
        // half-close (`shutdown(Write)`): the other direction keeps flowing.
        if queued == 0 && source.read_closed && !fin_sent {
            self.streams[to].shutdown(Shutdown::Write)?; // New in part 5
            self.sides[to].write_closed = true;
        }
        Ok(())
    }
}

/// Reads a port number from the config, with an error that says which one was bad.
fn parse_port(name: &str, text: &str) -> io::Result<u16> {
    text.parse().map_err(|_| {
        let message = format!("{name} must be a number from 0 to 65535, not {text:?}");
        io::Error::new(io::ErrorKind::InvalidInput, message)
    })
}
