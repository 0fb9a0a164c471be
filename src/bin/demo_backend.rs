//! The demo backend: a tiny HTTP server to put rsp (or a lesson) in front of.
//!
//! ```text
//! demo_backend [PORT] [NAME] [--keep-alive]   # PORT defaults to 8888; 0 lets the OS choose
//! ```
//!
//! It prints the same banner as rsp and the lessons, `Started.  Listening on port N.`,
//! and serves, one thread per connection. By default it behaves like the C project's mock
//! (Python's HTTP/1.0 server): one response with `Connection: close`, then it closes, so
//! part 1, which copies until the backend closes, answers a plain `curl` every time.
//! `--keep-alive` serves HTTP/1.1 keep-alive instead (the benchmarks use it):
//! - `/`: a short page naming this instance, so round robin is visible with two running;
//! - `/bytes/N`: N bytes of the pattern `"0123456789\n"`, streamed in 64 KiB writes;
//! - `/slow/MS`: the `/` page, after waiting MS milliseconds.
//!
//! Std only, on purpose: it is a test fixture, not part of the proxy.
#![forbid(unsafe_code)]

use std::io::{self, BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Requests larger than this (request line plus headers) are refused.
const MAX_HEAD: usize = 16 * 1024;
/// The repeating body of `/bytes/N`, the same pattern as the C project's large-response test.
const PATTERN: &[u8] = b"0123456789\n";

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `--keep-alive` may stand anywhere; the rest are positional.
    let keep_alive_allowed = args.iter().any(|a| a == "--keep-alive");
    args.retain(|a| a != "--keep-alive");
    if args.len() > 2 || args.iter().any(|a| a.starts_with('-')) {
        eprintln!("usage: demo_backend [PORT] [NAME] [--keep-alive]");
        std::process::exit(2);
    }
    let port: u16 = match args.first().map(|p| p.parse()) {
        None => 8888,
        Some(Ok(port)) => port,
        Some(Err(_)) => {
            eprintln!(
                "demo_backend: PORT must be a number from 0 to 65535, got {:?}",
                args[0]
            );
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("demo_backend: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    // local_addr() of a bound listener only fails if the fd is broken; 0 would be harmless.
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let name: Arc<str> = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| format!("demo backend on port {port}"))
        .into();
    println!("Started.  Listening on port {port}.");
    let _ = io::stdout().flush();

    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let name = name.clone();
                thread::spawn(move || {
                    // A client that goes away mid-response is normal; nothing to report.
                    let _ = serve(stream, &name, keep_alive_allowed);
                });
            }
            Err(e) => {
                eprintln!("demo_backend: accept failed: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Serves requests on one connection until the client closes or asks to, or (without
/// `--keep-alive`) after the first response.
fn serve(stream: TcpStream, name: &str, keep_alive_allowed: bool) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let Some((path, asked_keep_alive)) = read_head(&mut reader)? else {
            return Ok(()); // the client closed between requests
        };
        let keep_alive = keep_alive_allowed && asked_keep_alive;
        respond(&mut writer, &path, name, keep_alive)?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Reads one request head; returns its path and whether the connection stays open.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<(String, bool)>> {
    let mut request_line = String::new();
    if reader.read_line(&mut request_line)? == 0 {
        return Ok(None);
    }
    let mut parts = request_line.split_whitespace();
    let path = parts.nth(1).unwrap_or("/").to_string();
    let mut keep_alive = parts.next() == Some("HTTP/1.1");
    let mut total = request_line.len();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        total += line.len();
        if total > MAX_HEAD {
            return Err(io::Error::other("request head too large"));
        }
        let lower = line.to_ascii_lowercase();
        if let Some(value) = lower.strip_prefix("connection:") {
            keep_alive = value.trim() == "keep-alive";
        }
    }
    Ok(Some((path, keep_alive)))
}

/// Writes the response for `path`.
fn respond(out: &mut TcpStream, path: &str, name: &str, keep_alive: bool) -> io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = |status: &str, length: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {length}\r\nConnection: {connection}\r\n\r\n"
        )
    };
    let page = format!("Hello from {name}\n");
    if path == "/" {
        return out.write_all(format!("{}{page}", head("200 OK", page.len())).as_bytes());
    }
    if let Some(ms) = path.strip_prefix("/slow/").and_then(|n| n.parse().ok()) {
        thread::sleep(Duration::from_millis(ms));
        return out.write_all(format!("{}{page}", head("200 OK", page.len())).as_bytes());
    }
    if let Some(n) = path
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        out.write_all(head("200 OK", n).as_bytes())?;
        return write_pattern(out, n);
    }
    let text = "Not found. Try /, /bytes/N or /slow/MS.\n";
    out.write_all(format!("{}{text}", head("404 Not Found", text.len())).as_bytes())
}

/// Streams `n` bytes of [`PATTERN`] in 64 KiB writes, so any size costs no extra memory.
fn write_pattern(out: &mut TcpStream, n: usize) -> io::Result<()> {
    // A whole number of patterns, so every chunk starts at the pattern's beginning.
    let chunk = PATTERN.repeat(64 * 1024 / PATTERN.len());
    let mut left = n;
    while left > 0 {
        let take = left.min(chunk.len());
        out.write_all(&chunk[..take])?;
        left -= take;
    }
    Ok(())
}
