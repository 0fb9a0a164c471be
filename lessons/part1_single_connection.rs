//! # Part 1: a trivial proxy that serves one connection at a time
//!
//! Mirrors part 1 of Giles Thomas's "Writing a reverse proxy/loadbalancer from the ground
//! up in C" (12 Aug 2013), C commit `f214f5a`: accept a client, connect to the one backend,
//! forward one read of the request, copy the response back until the backend closes.
//!
//! Changes since part 0: everything (this is the first program).
//!
//! Run it (three terminals; or `make run-1`, which starts the demo backend for you):
//!
//! ```text
//! make backend                                     # demo backend on 127.0.0.1:8888
//! cargo run --bin part1 -- 8000 127.0.0.1 8888     # the proxy on port 8000
//! curl http://127.0.0.1:8000/                      # a request through the proxy
//! ```
//!
//! Observe: the banner `Started.  Listening on port 8000.`, then curl gets the backend's
//! answer, every time you ask. That needs a backend that closes the connection after its
//! answer, as the C's mock did (Python's HTTP/1.0 server) and the demo backend does: this
//! proxy copies the response until the backend closes, and only then serves the next
//! client. Behind a backend that keeps connections open (`demo_backend 8888
//! --keep-alive`), the first curl is answered and every later one hangs.
//!
//! Then ask the demo backend for two slow answers at once (`/slow/MS` waits MS ms):
//!
//! ```text
//! time (curl -s http://127.0.0.1:8000/slow/3000 & curl -s http://127.0.0.1:8000/slow/3000; wait)
//! ```
//!
//! It takes about 6 s, not 3: the second request waits for the first. This proxy has a
//! single thread and handles one client at a time. Part 2 fixes that.
//!
//! Tests: `tests/part1_single_connection.rs` (`make test-1`); `tests/part2_threads.rs`
//! also runs against this file to show the one-at-a-time limit.
#![forbid(unsafe_code)]

use std::env;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process;

/// The C read the request, and each chunk of the response, into a 4096-byte buffer.
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

/// Binds the listening socket, prints the banner, then serves clients one by one, forever.
fn run(listen_port: &str, backend_addr: &str, backend_port: &str) -> io::Result<()> {
    let listen_port = parse_port("listen_port", listen_port)?;
    let backend_port = parse_port("backend_port", backend_port)?;
    // The C used getaddrinfo with AI_PASSIVE, i.e. it listened on ALL interfaces. We listen
    // on loopback only, so a lesson never opens a port to the network by accident; write
    // "0.0.0.0" here to behave like the C. `bind` also sets SO_REUSEADDR on Unix (the C
    // called setsockopt itself) and listens with a backlog of 128 (the C asked for 1).
    let listener = TcpListener::bind(("127.0.0.1", listen_port))
        .map_err(|e| with_context(e, format!("cannot listen on port {listen_port}")))?;
    // Port 0 asks the kernel for any free port, so we print the port it really gave us.
    let port = listener.local_addr()?.port();
    println!("Started.  Listening on port {port}.");
    // Rust's stdout is line-buffered even into a pipe (C's is not); flush to be explicit.
    io::stdout().flush()?;

    // `incoming()` calls the blocking `accept()` again and again: one client at a time.
    for client in listener.incoming() {
        // The C exited on a failed accept or backend connect. We log and keep serving:
        // one bad connection should never take the whole proxy down.
        let result = client.and_then(|c| handle_client_connection(c, backend_addr, backend_port));
        if let Err(e) = result {
            eprintln!("Connection failed: {e}");
        }
    }
    Ok(())
}

/// Proxies one client, exactly as naively as the C did. Its limits, on purpose:
/// - only ONE read of the request: a request bigger than 4096 bytes, or one that arrives
///   in two packets, is cut short; anything the client sends later is never forwarded;
/// - while we wait here (for a slow client or a slow backend) nobody else is served.
fn handle_client_connection(
    mut client: TcpStream,
    backend_addr: &str,
    backend_port: u16,
) -> io::Result<()> {
    // `connect` resolves the name and tries each address in turn, like the C's loop.
    let mut backend = TcpStream::connect((backend_addr, backend_port)).map_err(|e| {
        with_context(
            e,
            format!("cannot connect to backend {backend_addr}:{backend_port}"),
        )
    })?;
    let mut buffer = [0u8; BUFFER_SIZE];

    // One read of the request. The C ignored what `write` returned; `write_all` loops
    // until the kernel has taken every byte, or returns the error.
    let bytes_read = client.read(&mut buffer)?;
    backend.write_all(&buffer[..bytes_read])?;

    // Copy the response until the backend closes: a read of 0 bytes means end of file.
    // A client that went away shows up as a BrokenPipe error, not a crash: Rust's runtime
    // ignores SIGPIPE before `main`, something the C did not do at this stage.
    loop {
        let bytes_read = backend.read(&mut buffer)?;
        if bytes_read == 0 {
            break;
        }
        client.write_all(&buffer[..bytes_read])?;
    }
    Ok(())
    // Both streams are dropped here, and `Drop` closes their fds. The C only closed the
    // client: its backend fd leaked on every request.
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
