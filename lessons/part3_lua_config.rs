//! # Part 3: configuration in a Lua file
//!
//! Mirrors part 3 of the C series (Sep 2013; the C at commit `fc4a14f`): the settings move
//! from the command line into a Lua file, the first step towards letting Lua decide where
//! traffic goes, as nginx/OpenResty does. The file is a Lua chunk that sets three globals:
//! `listenPort`, `backendAddress` and `backendPort` (see `lessons/part3.lua`).
//!
//! Changes since part 2:
//! - the only argument is the config file: `part3 <config.lua>`;
//! - `load_config` runs it in a Lua state with NO standard library, then reads the globals;
//! - a bad file prints the C's one-line errors and exits 1.
//!
//! Run it (three terminals; or `make run-3`, which starts the demo backend for you):
//!
//! ```text
//! make backend                                       # demo backend on 127.0.0.1:8888
//! cargo run --bin part3 -- lessons/part3.lua         # the proxy on port 8000
//! curl http://127.0.0.1:8000/                        # a request through the proxy
//! ```
//!
//! Observe: the same proxy as part 2. Now break the config (delete a quote, or write
//! `os.execute("ls")`) and read the error. Tests: `tests/part3_lua_config.rs`
//! (`make test-3`); the tests of parts 1 and 2 run against this file too.
#![forbid(unsafe_code)]

use rlua::{ChunkMode, Lua, LuaOptions, StdLib}; // New in part 3
use std::env;
use std::fs; // New in part 3
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process;
use std::sync::Arc;
use std::thread;

/// The C read each chunk into a 4096-byte buffer.
const BUFFER_SIZE: usize = 4096;

fn main() {
    let args: Vec<String> = env::args().collect();
    if args.len() != 2 {
        eprintln!("Usage: {} <config_file>", args[0]); // New in part 3
        process::exit(1);
    }
    // Like the C, a config error is one line on stderr and exit status 1.
    let config_file = &args[1]; // New in part 3
    let config = match load_config(config_file) {
        Ok(config) => config, // New in part 3
        Err(message) => {
            eprintln!("{message}"); // New in part 3
            process::exit(1); // New in part 3
        } // New in part 3
    }; // New in part 3
    // Each `?` inside `run` stands for one of the C's `perror(...); exit(1);` pairs: the
    // error travels up to here, where we print it and exit with the same status.
    if let Err(e) = run(
        &config.listen_port,     // New in part 3
        &config.backend_address, // New in part 3
        &config.backend_port,    // New in part 3
    ) {
        eprintln!("Error: {e}");
        process::exit(1);
    }
}

/// The three settings, copied out of Lua into plain Rust strings: a `Lua` state is not
/// `Send`, and the proxy needs nothing else from it once the file has run.
struct Config {
    listen_port: String,     // New in part 3
    backend_address: String, // New in part 3
    backend_port: String,    // New in part 3
} // New in part 3

/// Runs the config file and reads its three globals. The error is the whole message.
fn load_config(path: &str) -> Result<Config, String> {
    // `StdLib::NONE` opens none of `os`, `io`, `string`... (the C opened nothing either).
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()) // New in part 3
        .map_err(|e| format!("Cannot start Lua: {e}"))?; // New in part 3
    // mlua always opens Lua's base library (`print`, `dofile`, `load`...), so the chunk
    // runs with an empty table as its globals: it can set variables and compute, nothing
    // else. Its globals land in `env`, where we read them afterwards.
    let env = lua // New in part 3
        .create_table() // New in part 3
        .map_err(|e| format!("Cannot start Lua: {e}"))?; // New in part 3
    // We read the file ourselves; the C's `luaL_dofile` said "cannot open" as well.
    let source = fs::read(path)
        .map_err(|e| format!("Error parsing config file: cannot open {path}: {e}"))?; // New in part 3
    // No time limit here, as in the C: a config that never ends (a loop, a `__gc`
    // finalizer) keeps the lesson from starting, and Ctrl-C ends it; it is the reader's
    // own file. rsp, which must never hang, runs its config under a watchdog (src/config.rs).
    // The "@" makes Lua name the file in its messages (`path:3: ...`); text mode refuses
    // precompiled bytecode, which could crash Lua; `exec` runs the chunk.
    lua.load(&source) // New in part 3
        .set_name(format!("@{path}")) // New in part 3
        .set_mode(ChunkMode::Text) // New in part 3
        .set_environment(env.clone()) // New in part 3
        .exec() // New in part 3
        .map_err(|e| format!("Error parsing config file: {}", first_line(&e.to_string())))?; // New in part 3
    // Reading a Lua value as a Rust `String` works like the C's `lua_isstring`: a string,
    // or a number that Lua turns into one (8000 gives "8000"). Anything else, a missing
    // global (nil) included, fails, and we say which setting it was.
    let get = |name: &str| -> Result<String, String> {
        env.get::<_, String>(name) // New in part 3
            .map_err(|_| format!("{name} must be a string")) // New in part 3
    }; // New in part 3
    Ok(Config {
        listen_port: get("listenPort")?,         // New in part 3
        backend_address: get("backendAddress")?, // New in part 3
        backend_port: get("backendPort")?,       // New in part 3
    }) // New in part 3
} // New in part 3

/// The first line of an error: Lua may append a traceback, and one line is enough here.
fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message) // New in part 3
} // New in part 3

/// Binds the listening socket, prints the banner, then starts a thread per client, forever.
fn run(listen_port: &str, backend_addr: &str, backend_port: &str) -> io::Result<()> {
    let listen_port = parse_port("listenPort", listen_port)?; // New in part 3
    let backend_port = parse_port("backendPort", backend_port)?; // New in part 3
    // Every connection thread needs the backend's name; an `Arc` shares one copy.
    let backend_addr: Arc<str> = Arc::from(backend_addr);
    // The C used getaddrinfo with AI_PASSIVE, i.e. it listened on ALL interfaces. We listen
    // on loopback only, so a lesson never opens a port to the network by accident; write
    // "0.0.0.0" here to behave like the C. `bind` also sets SO_REUSEADDR on Unix and
    // listens with a backlog of 128 (the C's part 2 asked for 4096).
    let listener = TcpListener::bind(("127.0.0.1", listen_port))
        .map_err(|e| with_context(e, format!("cannot listen on port {listen_port}")))?;
    // Port 0 asks the kernel for any free port, so we print the port it really gave us.
    let port = listener.local_addr()?.port();
    println!("Started.  Listening on port {port}.");
    // Rust's stdout is line-buffered even into a pipe (C's is not); flush to be explicit.
    io::stdout().flush()?;

    for client in listener.incoming() {
        // A failed accept (say, out of fds) is logged; the loop goes on.
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                eprintln!("Could not accept: {e}");
                continue;
            }
        };
        let backend_addr = Arc::clone(&backend_addr);
        // `thread::spawn` panics if the OS refuses a thread; `Builder::spawn` returns the
        // error instead, so running out of threads costs one connection, not the proxy.
        let spawned = thread::Builder::new().spawn(move || {
            if let Err(e) = handle_client_connection(client, &backend_addr, backend_port) {
                eprintln!("Connection failed: {e}");
            }
        });
        if let Err(e) = spawned {
            eprintln!("Could not start a thread: {e}");
        }
    }
    Ok(())
}

/// Proxies one client on its own thread: this thread copies backend → client while a
/// second one copies client → backend, until both directions have finished.
fn handle_client_connection(
    client: TcpStream,
    backend_addr: &str,
    backend_port: u16,
) -> io::Result<()> {
    // `connect` resolves the name and tries each address in turn, like the C's loop.
    let backend = TcpStream::connect((backend_addr, backend_port)).map_err(|e| {
        with_context(
            e,
            format!("cannot connect to backend {backend_addr}:{backend_port}"),
        )
    })?;

    // `try_clone` is `dup()`: a second handle on the same socket, so each thread owns
    // one. (Sharing one `TcpStream` behind a Mutex would deadlock: a thread blocked in
    // `read` would hold the lock the other thread needs to `write`.) `&TcpStream` also
    // implements Read and Write, so an `Arc<TcpStream>` would save the two extra fds;
    // `try_clone` is kept here because it is what the C would do: one fd per owner.
    let client_reader = client.try_clone()?;
    let backend_writer = backend.try_clone()?;
    let upstream = thread::Builder::new().spawn(move || relay(client_reader, backend_writer))?;
    let downstream = relay(backend, client);

    // Wait for the other direction too, so its error (if any) is reported. A panic cannot
    // happen in `relay`, but `join` reports one as an `Err`, which we pass on as text.
    let upstream = upstream
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("relay thread panicked")));
    downstream.and(upstream).map(|_| ())
}

/// Copies everything from `from` to `to` until `from` reaches end of file, then passes the
/// end of file on with a half-close. Returns the number of bytes copied.
fn relay(mut from: TcpStream, mut to: TcpStream) -> io::Result<u64> {
    let mut buffer = [0u8; BUFFER_SIZE];
    let mut copied = 0;
    let result = loop {
        // A read of 0 bytes means the sender has closed (or half-closed) its side.
        let bytes_read = match from.read(&mut buffer) {
            Ok(0) => break Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        };
        // Blocking `write_all` waits until the kernel takes every byte: a slow reader
        // slows this thread down, and no data is ever lost (the bug of C part 2).
        // A peer that has gone away is a BrokenPipe error: Rust ignores SIGPIPE.
        // If `to` has gone, what it sent before it went is still readable: the other
        // thread reads it and delivers it to `from`, so `?` leaves both sockets to it.
        to.write_all(&buffer[..bytes_read])?;
        copied += bytes_read as u64;
    };
    match result {
        // `shutdown(Write)` is a half-close: it sends FIN, so the peer reads end of file,
        // while the other direction keeps flowing. The C closed both sides at once. If the
        // peer is already gone there is nobody left to tell, so the result is ignored.
        Ok(_) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        // On an error, shut both sockets down completely: that wakes the other thread
        // from its blocking `read`, so it ends too instead of waiting forever.
        Err(_) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
    result
    // Each thread drops its two handles here; the fd closes when the last `dup` is gone.
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
