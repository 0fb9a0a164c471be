//! # Part 4: slow clients, and the bytes the C lost to them
//!
//! Mirrors "pause to regroup" and part 4 of the C series (10 Oct 2013): the test of C commit
//! `042a811` and the fix in `e197936`, `3aa769e`, `ed011e6`, `e600072`. The C wrote to
//! NON-BLOCKING sockets and ignored `write`'s answer: when a client read slower than the
//! backend sent, the kernel's send buffer filled, `write` said EAGAIN (or took only part of
//! the chunk), and the rest was silently dropped. The C fixed it with a queue per client.
//! Our threads use BLOCKING writes, so parts 2 and 3 never had the bug; this part shows it.
//!
//! Changes since part 3:
//! - `--broken` brings the C's mistake back on purpose (non-blocking client socket, one
//!   `write` per chunk, its answer ignored), so you can watch bytes disappear;
//! - without it nothing changes: blocking `write_all` is the fix, and the comments say why.
//!
//! Run it (three terminals; or `make run-4`, which starts the demo backend for you):
//!
//! ```text
//! make backend                                             # demo backend on port 8888
//! cargo run --bin part4 -- --broken lessons/part3.lua      # proxy on 8000 (drop --broken)
//! curl --limit-rate 100k http://127.0.0.1:8000/bytes/20000000 | wc -c
//! ```
//!
//! Observe: with `--broken` far fewer than 20,000,000 bytes arrive and the proxy reports
//! how many it dropped; without it every byte arrives, only slower. Tests:
//! `tests/part4_slow_clients.rs` (`make test-4`), which asserts both.
#![forbid(unsafe_code)]

use std::env;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process;
use std::sync::Arc;
use std::thread;
use std::time::Duration; // New in part 4

use rlua::{Lua, LuaOptions, StdLib};

/// The C read each chunk into a 4096-byte buffer.
const BUFFER_SIZE: usize = 4096;

/// The three settings of the C's config file. They stay strings, as in the C.
struct Config {
    listen_port: String,
    backend_address: String,
    backend_port: String,
}

fn main() {
    let args: Vec<String> = env::args().collect();
    // `--broken` switches the backend → client copy to the C's lossy write.
    let broken = args.len() == 3 && args[1] == "--broken"; // New in part 4
    if args.len() != 2 + usize::from(broken) {
        eprintln!("Usage: {} [--broken] <config_file>", args[0]); // New in part 4
        process::exit(1);
    }
    let config = match load_config(&args[args.len() - 1]) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{message}");
            process::exit(1);
        }
    };
    if let Err(e) = run(&config, broken) {
        eprintln!("Error: {e}");
        process::exit(1);
    }
}

/// Runs the config file as Lua and reads its three globals, like the C's `luaL_dofile`.
fn load_config(path: &str) -> Result<Config, String> {
    let parse_error = |e: &dyn std::fmt::Display| format!("Error parsing config file: {e}");
    let source = fs::read_to_string(path).map_err(|e| parse_error(&format!("{path}: {e}")))?;
    // No standard libraries at all, as in the C: the config cannot reach `os` or `io`.
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()).map_err(|e| parse_error(&e))?;
    // The "@" makes Lua's messages start with `path:line:`.
    let chunk = lua.load(&source).set_name(format!("@{path}"));
    chunk.exec().map_err(|e| parse_error(&e))?;
    // Reading a global as `String` accepts numbers too, like the C's `lua_isstring`.
    let global = |name: &str| {
        let value = lua.globals().get::<_, String>(name);
        value.map_err(|_| format!("{name} must be a string"))
    };
    Ok(Config {
        listen_port: global("listenPort")?,
        backend_address: global("backendAddress")?,
        backend_port: global("backendPort")?,
    })
}

/// Binds the listening socket, prints the banner, then starts a thread per client, forever.
fn run(config: &Config, broken: bool) -> io::Result<()> {
    let listen_port = parse_port("listenPort", &config.listen_port)?;
    let backend_port = parse_port("backendPort", &config.backend_port)?;
    let backend_addr: Arc<str> = Arc::from(config.backend_address.as_str());
    // The C listened on all interfaces; we listen on loopback only, so a lesson never
    // opens a port to the network by accident.
    let listener = TcpListener::bind(("127.0.0.1", listen_port))?;
    // Port 0 asks the kernel for any free port, so we print the port it really gave us.
    let port = listener.local_addr()?.port();
    println!("Started.  Listening on port {port}.");
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
        let spawned = thread::Builder::new().spawn(move || {
            let result = handle_client_connection(client, &backend_addr, backend_port, broken);
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
    broken: bool,
) -> io::Result<()> {
    let backend = TcpStream::connect((backend_addr, backend_port))?;
    // O_NONBLOCK belongs to the socket, not to one handle: after `try_clone` (= `dup`) it
    // switches BOTH handles, so the client → backend thread will see `WouldBlock` too.
    if broken {
        client.set_nonblocking(true)?; // New in part 4
    }
    let client_reader = client.try_clone()?;
    let backend_writer = backend.try_clone()?;
    let upstream = thread::Builder::new().spawn(move || relay(client_reader, backend_writer))?;
    let downstream = if broken {
        lossy_relay(backend, client) // New in part 4
    } else {
        relay(backend, client)
    };
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
            }
            Err(e) => break Err(e),
        };
        // THE FIX. A blocking `write_all` returns only when the kernel has taken every
        // byte. When the client reads slowly its socket's send buffer fills and this call
        // simply waits, so this thread stops reading the backend, whose own send buffer
        // then fills: backpressure reaches the backend for free, with no queue and no
        // memory growth. An event loop cannot wait here (it serves everyone on one
        // thread), so it must queue what the socket refused: that is part 5.
        if let Err(e) = to.write_all(&buffer[..bytes_read]) {
            break Err(e);
        }
        copied += bytes_read as u64;
    };
    finish(&from, &to, &result);
    result
}

/// THE BUG, kept on purpose (`--broken`): one `write` per chunk into the non-blocking
/// client socket, and whatever it did not take is forgotten, as the C did before part 4.
fn lossy_relay(mut from: TcpStream, mut to: TcpStream) -> io::Result<u64> {
    let mut buffer = [0u8; BUFFER_SIZE];
    let (mut copied, mut dropped) = (0u64, 0u64);
    let result = loop {
        let bytes_read = match from.read(&mut buffer) {
            Ok(0) => break Ok(copied),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(e),
        };
        // A non-blocking `write` takes what fits in the kernel's send buffer (perhaps only
        // part: a short count) or, when the buffer is full, nothing: `WouldBlock` (EAGAIN).
        let written = match to.write(&buffer[..bytes_read]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => break Err(e),
        };
        // The C ignored both cases, so the rest of the chunk was lost. We count it.
        dropped += (bytes_read - written) as u64;
        copied += written as u64;
    };
    eprintln!("--broken: dropped {dropped} bytes, delivered {copied}");
    finish(&from, &to, &result);
    result
}

/// Ends one direction: a half-close after a clean end of file, a full shutdown after an
/// error (that also wakes the other thread from its blocking `read`).
fn finish(from: &TcpStream, to: &TcpStream, result: &io::Result<u64>) {
    if result.is_ok() {
        let _ = to.shutdown(Shutdown::Write);
    } else {
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    }
}

/// Reads a port number from the config, with an error that says which one was bad.
fn parse_port(name: &str, text: &str) -> io::Result<u16> {
    text.parse().map_err(|_| {
        let message = format!("{name} must be a number from 0 to 65535, not {text:?}");
        io::Error::new(io::ErrorKind::InvalidInput, message)
    })
}
