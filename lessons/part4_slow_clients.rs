//! # Part 4: slow clients, and the bytes the C lost to them
//!
//! Mirrors "pause to regroup" and part 4 of the C series (10 Oct 2013): the test of C commit
//! `042a811` and the fix in `e197936`, `3aa769e`, `ed011e6`, `e600072`. The C wrote to
//! NON-BLOCKING sockets and ignored `write`'s answer: when a client read slower than the
//! backend sent, the kernel's send buffer filled, `write` said EAGAIN (or took only part of
//! the chunk), and the rest was lost. Our threads use BLOCKING writes, so parts 2 and 3
//! never had the bug: this part shows it to you.
//!
//! Where blog part 4's mechanism went: the C fixed the bug inside its event loop, with
//! edge-triggered epoll (`e197936`), a write queue per socket (`3aa769e`), queued bytes
//! always sent first (`ed011e6`) and a close deferred until the queue is empty (`e600072`).
//! You will find none of that here. A thread per connection may simply WAIT in a blocking
//! `write_all` until the slow client has taken every byte: the waiting is the queue, kept
//! by the kernel, and it slows the backend down for free. That is why this series fixes
//! part 4 with `write_all`, one line. The C's mechanism is what a single thread serving
//! everybody needs, since it must never wait: it arrives with the event loop, in part 7
//! (`lessons/part7_mio.rs`), after part 5's pool and part 6's load balancing.
//!
//! Changes since part 3:
//! - `--broken` brings the C's mistake back on purpose (non-blocking client socket, one
//!   `write` per chunk, its answer ignored); without it, `write_all` is the fix, as before.
//!
//! Run it (three terminals; or `make run-4`, which starts the demo backend for you):
//!
//! ```text
//! make backend                                             # demo backend on port 8888
//! cargo run --bin part4 -- --broken lessons/part3.lua      # proxy on 8000 (drop --broken)
//! curl -sS --limit-rate 1M http://127.0.0.1:8000/bytes/20000000 | sha256sum
//! ```
//!
//! Observe: curl reads 20 MB at 1 MB/s, slower than the backend sends. Without `--broken`
//! it takes about 10 s and every byte arrives: the sum is
//! `b7845ea39a0ca533e557cd890e9af7598151ad50f3408bdf17e80b0f03fb1301` (the demo backend's
//! `/bytes/N` is always the same `0123456789\n` pattern). With `--broken` it ends at once
//! with "curl: (18) transfer closed with N bytes remaining to read", another sum, and the
//! proxy prints how many bytes it dropped (about 15 MB here). Tests:
//! `tests/part4_slow_clients.rs` (`make test-4`).
#![forbid(unsafe_code)]

use rlua::{ChunkMode, Lua, LuaOptions, StdLib};
use std::env;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process;
use std::sync::Arc;
use std::thread;
use std::time::Duration; // New in part 4

/// The C read each chunk into a 4096-byte buffer.
const BUFFER_SIZE: usize = 4096;

fn main() {
    let args: Vec<String> = env::args().collect();
    // `--broken` switches the backend → client copy to the C's lossy write.
    let broken = args.len() == 3 && args[1] == "--broken"; // New in part 4
    // Two arguments (program, config), or three with `--broken`: `usize::from(true)` is 1.
    if args.len() != 2 + usize::from(broken) {
        eprintln!("Usage: {} [--broken] <config_file>", args[0]); // New in part 4
        process::exit(1);
    }
    // Like the C, a config error is one line on stderr and exit status 1.
    let config_file = &args[args.len() - 1]; // New in part 4
    let config = match load_config(config_file) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            process::exit(1);
        }
    };
    // Each `?` inside `run` stands for one of the C's `perror(...); exit(1);` pairs: the
    // error travels up to here, where we print it and exit with the same status.
    if let Err(e) = run(
        &config.listen_port,
        &config.backend_address,
        &config.backend_port,
        broken, // New in part 4
    ) {
        eprintln!("Error: {e}");
        process::exit(1);
    }
}

/// The three settings, copied out of Lua into plain Rust strings: a `Lua` state is not
/// `Send`, and the proxy needs nothing else from it once the file has run.
struct Config {
    listen_port: String,
    backend_address: String,
    backend_port: String,
}

/// Runs the config file and reads its three globals. The error is the whole message.
fn load_config(path: &str) -> Result<Config, String> {
    // `StdLib::NONE` opens none of `os`, `io`, `string`... (the C opened nothing either).
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default())
        .map_err(|e| format!("Cannot start Lua: {e}"))?;
    // mlua always opens Lua's base library (`print`, `dofile`, `load`...), so the chunk
    // runs with an empty table as its globals: it can set variables and compute, nothing
    // else. Its globals land in `env`, where we read them afterwards.
    let env = lua
        .create_table()
        .map_err(|e| format!("Cannot start Lua: {e}"))?;
    // We read the file ourselves; the C's `luaL_dofile` said "cannot open" as well.
    let source = fs::read(path)
        .map_err(|e| format!("Error parsing config file: cannot open {path}: {e}"))?;
    // No time limit here, as in the C: a config that never ends (a loop, a `__gc`
    // finalizer) keeps the lesson from starting, and Ctrl-C ends it; it is the reader's
    // own file. rsp, which must never hang, runs its config under a watchdog (src/config.rs).
    // The "@" makes Lua name the file in its messages (`path:3: ...`); text mode refuses
    // precompiled bytecode, which could crash Lua; `exec` runs the chunk.
    lua.load(&source)
        .set_name(format!("@{path}"))
        .set_mode(ChunkMode::Text)
        .set_environment(env.clone())
        .exec()
        .map_err(|e| format!("Error parsing config file: {}", first_line(&e.to_string())))?;
    // Reading a Lua value as a Rust `String` works like the C's `lua_isstring`: a string,
    // or a number that Lua turns into one (8000 gives "8000"). Anything else, a missing
    // global (nil) included, fails, and we say which setting it was.
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

/// Binds the listening socket, prints the banner, then starts a thread per client, forever.
fn run(listen_port: &str, backend_addr: &str, backend_port: &str, broken: bool) -> io::Result<()> {
    let listen_port = parse_port("listenPort", listen_port)?;
    let backend_port = parse_port("backendPort", backend_port)?;
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
            let result = handle_client_connection(client, &backend_addr, backend_port, broken); // New in part 4
            if let Err(e) = result {
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
    broken: bool, // New in part 4
) -> io::Result<()> {
    // `connect` resolves the name and tries each address in turn, like the C's loop.
    let backend = TcpStream::connect((backend_addr, backend_port)).map_err(|e| {
        with_context(
            e,
            format!("cannot connect to backend {backend_addr}:{backend_port}"),
        )
    })?;

    // O_NONBLOCK is a flag of the open socket, which `try_clone` (`dup`) below shares: the
    // client → backend thread's reads turn non-blocking too, so `relay` copes (see there).
    if broken {
        client.set_nonblocking(true)?; // New in part 4
    } // New in part 4

    // `try_clone` is `dup()`: a second handle on the same socket, so each thread owns
    // one. (Sharing one `TcpStream` behind a Mutex would deadlock: a thread blocked in
    // `read` would hold the lock the other thread needs to `write`.) `&TcpStream` also
    // implements Read and Write, so an `Arc<TcpStream>` would save the two extra fds;
    // `try_clone` is kept here because it is what the C would do: one fd per owner.
    let client_reader = client.try_clone()?;
    let backend_writer = backend.try_clone()?;
    let upstream = thread::Builder::new().spawn(move || relay(client_reader, backend_writer))?;
    let downstream = if broken {
        lossy_relay(backend, client) // New in part 4
    } else {
        relay(backend, client) // New in part 4
    }; // New in part 4

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
            // Only with `--broken`: `from` is the non-blocking client, and `WouldBlock` is
            // Rust's name for EAGAIN ("nothing to read yet"). A thread has nothing better
            // to do, so it naps and asks again: polling, fine for a demo, not for a server.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5)); // New in part 4
                continue; // New in part 4
            } // New in part 4
            Err(e) => break Err(e),
        };
        // THE FIX. Blocking `write_all` returns only when the kernel has taken every byte.
        // When the client reads slowly its socket's send buffer fills and this call just
        // waits, so this thread stops reading the backend, whose own send buffer then
        // fills: backpressure reaches the backend for free, with no queue and no memory
        // growth. An event loop cannot wait here (one thread serves everybody), so it must
        // queue what the socket refused: that is part 7.
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
} // New in part 4

/// THE BUG, kept on purpose (`--broken`): one `write` per chunk into the non-blocking
/// client socket, and whatever it did not take is forgotten, as the C did before part 4.
fn lossy_relay(mut from: TcpStream, mut to: TcpStream) -> io::Result<u64> {
    let mut buffer = [0u8; BUFFER_SIZE]; // New in part 4
    let (mut copied, mut dropped) = (0u64, 0u64); // New in part 4
    let result = loop {
        let bytes_read = match from.read(&mut buffer) {
            Ok(0) => break Ok(copied), // New in part 4
            Ok(n) => n,                // New in part 4
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue, // New in part 4
            Err(e) => break Err(e),    // New in part 4
        }; // New in part 4
        // A non-blocking `write` takes what fits in the kernel's send buffer (perhaps only
        // part: a short count) or, when the buffer is full, nothing: `WouldBlock` (EAGAIN).
        let written = match to.write(&buffer[..bytes_read]) {
            Ok(n) => n,                                           // New in part 4
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0, // New in part 4
            Err(e) => break Err(e),                               // New in part 4
        }; // New in part 4
        // The C ignored both cases, so the rest of the chunk was lost. We count it.
        dropped += (bytes_read - written) as u64; // New in part 4
        copied += written as u64; // New in part 4
    }; // New in part 4
    eprintln!("--broken: dropped {dropped} bytes, delivered {copied}"); // New in part 4
    // The same ending as `relay`: half-close after end of file, full shutdown on error.
    if result.is_ok() {
        let _ = to.shutdown(Shutdown::Write); // New in part 4
    } else {
        let _ = from.shutdown(Shutdown::Both); // New in part 4
        let _ = to.shutdown(Shutdown::Both); // New in part 4
    } // New in part 4
    result // New in part 4
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
