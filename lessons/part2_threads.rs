//! # Part 2: many connections at once, with a thread per connection
//!
//! Mirrors part 2 of the C series (7 Sep 2013, C commit `f51950b`). The C switched to an
//! epoll reactor: one thread, non-blocking sockets, a handler per fd. Rust's standard
//! library has no epoll, so this part gets concurrency the simpler way: blocking sockets
//! and threads. (Part 7 comes back to an event loop, with the `mio` crate.)
//!
//! Changes since part 1:
//! - every accepted client is served on its own thread, so a slow one blocks nobody;
//! - both directions are copied at once, on two threads (`try_clone` gives each its socket);
//! - the whole request is forwarded, not just one read of it;
//! - when one side finishes sending, the other side is told with a half-close.
//!
//! Run it (three terminals; or `make run-2`, which starts the demo backend for you):
//!
//! ```text
//! make backend                                     # demo backend on 127.0.0.1:8888
//! cargo run --bin part2 -- 8000 127.0.0.1 8888     # the proxy on port 8000
//! curl http://127.0.0.1:8000/                      # a request through the proxy
//! ```
//!
//! Observe: two slow requests at once (`/slow/MS` waits MS ms) now take as long as one,
//! about 3 s (part 1 took 6):
//!
//! ```text
//! time (curl -s http://127.0.0.1:8000/slow/3000 & curl -s http://127.0.0.1:8000/slow/3000; wait)
//! ```
//!
//! Tests: `tests/part2_threads.rs` (`make test-2`), which also shows that part 1 fails them.
#![forbid(unsafe_code)]

use std::env;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream}; // New in part 2
use std::process;
use std::sync::Arc; // New in part 2
use std::thread; // New in part 2

/// The C read each chunk into a 4096-byte buffer.
const BUFFER_SIZE: usize = 4096;

fn main() {
    let args: Vec<String> = env::args().collect();
    if args.len() != 4 {
        eprintln!(
            "Usage: {} <listen_port> <backend_addr> <backend_port>",
            args[0]
        );
        process::exit(1);
    }
    // Each `?` inside `run` stands for one of the C's `perror(...); exit(1);` pairs: the
    // error travels up to here, where we print it and exit with the same status.
    if let Err(e) = run(&args[1], &args[2], &args[3]) {
        eprintln!("Error: {e}");
        process::exit(1);
    }
}

/// Binds the listening socket, prints the banner, then starts a thread per client, forever.
fn run(listen_port: &str, backend_addr: &str, backend_port: &str) -> io::Result<()> {
    let listen_port = parse_port("listen_port", listen_port)?;
    let backend_port = parse_port("backend_port", backend_port)?;
    // Every connection thread needs the backend's name; an `Arc` shares one copy.
    let backend_addr: Arc<str> = Arc::from(backend_addr); // New in part 2
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
            Ok(client) => client, // New in part 2
            Err(e) => {
                eprintln!("Could not accept: {e}"); // New in part 2
                continue; // New in part 2
            } // New in part 2
        }; // New in part 2
        let backend_addr = Arc::clone(&backend_addr); // New in part 2
        // `thread::spawn` panics if the OS refuses a thread; `Builder::spawn` returns the
        // error instead, so running out of threads costs one connection, not the proxy.
        let spawned = thread::Builder::new().spawn(move || {
            if let Err(e) = handle_client_connection(client, &backend_addr, backend_port) {
                eprintln!("Connection failed: {e}"); // New in part 2
            } // New in part 2
        }); // New in part 2
        if let Err(e) = spawned {
            eprintln!("Could not start a thread: {e}"); // New in part 2
        }
    }
    Ok(())
}

/// Proxies one client on its own thread: this thread copies backend → client while a
/// second one copies client → backend, until both directions have finished.
fn handle_client_connection(
    client: TcpStream, // New in part 2
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
    let client_reader = client.try_clone()?; // New in part 2
    let backend_writer = backend.try_clone()?; // New in part 2
    let upstream = thread::Builder::new().spawn(move || relay(client_reader, backend_writer))?; // New in part 2
    let downstream = relay(backend, client); // New in part 2

    // Wait for the other direction too, so its error (if any) is reported. A panic cannot
    // happen in `relay`, but `join` reports one as an `Err`, which we pass on as text.
    let upstream = upstream // New in part 2
        .join() // New in part 2
        .unwrap_or_else(|_| Err(io::Error::other("relay thread panicked"))); // New in part 2
    downstream.and(upstream).map(|_| ()) // New in part 2
} // New in part 2

/// Copies everything from `from` to `to` until `from` reaches end of file, then passes the
/// end of file on with a half-close. Returns the number of bytes copied.
fn relay(mut from: TcpStream, mut to: TcpStream) -> io::Result<u64> {
    let mut buffer = [0u8; BUFFER_SIZE]; // New in part 2
    let mut copied = 0; // New in part 2
    let result = loop {
        // A read of 0 bytes means the sender has closed (or half-closed) its side.
        let bytes_read = match from.read(&mut buffer) {
            Ok(0) => break Ok(copied), // New in part 2
            Ok(n) => n,                // New in part 2
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue, // New in part 2
            Err(e) => break Err(e),    // New in part 2
        }; // New in part 2
        // Blocking `write_all` waits until the kernel takes every byte: a slow reader
        // slows this thread down, and no data is ever lost (the bug of C part 2).
        // A peer that has gone away is a BrokenPipe error: Rust ignores SIGPIPE.
        // If `to` has gone, what it sent before it went is still readable: the other
        // thread reads it and delivers it to `from`, so `?` leaves both sockets to it.
        to.write_all(&buffer[..bytes_read])?; // New in part 2
        copied += bytes_read as u64; // New in part 2
    }; // New in part 2
    match result {
        // `shutdown(Write)` is a half-close: it sends FIN, so the peer reads end of file,
        // while the other direction keeps flowing. The C closed both sides at once. If the
        // peer is already gone there is nobody left to tell, so the result is ignored.
        Ok(_) => {
            let _ = to.shutdown(Shutdown::Write); // New in part 2
        } // New in part 2
        // On an error, shut both sockets down completely: that wakes the other thread
        // from its blocking `read`, so it ends too instead of waiting forever.
        Err(_) => {
            let _ = from.shutdown(Shutdown::Both); // New in part 2
            let _ = to.shutdown(Shutdown::Both); // New in part 2
        }
    }
    result // New in part 2
    // Each thread drops its two handles here; the fd closes when the last `dup` is gone.
}

/// Reads a port number from the command line, with an error that says which one was bad.
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
