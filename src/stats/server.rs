//! The stats HTTP server: one thread, one client at a time, never near the data path.
//!
//! A slow or hostile client costs only this thread, and only for a while: the whole
//! request must arrive within [`REQUEST_TIME`] and fit in [`MAX_REQUEST`] bytes, and the
//! answer is written with a timeout. Anything that is not a complete `GET` request line
//! and headers gets `400 Bad Request` and a close. Every answer closes the connection
//! (`Connection: close`), so no client can keep the thread.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::snapshot::Snapshot;
use super::{Stats, metrics, page};
use crate::reload::Current;

/// The longest a request may be (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long a client has to send its whole request, and to take the answer.
pub const REQUEST_TIME: Duration = Duration::from_secs(2);

/// Binds `addr` and serves the stats on a thread of its own. Logs the address.
pub fn start(addr: SocketAddr, stats: Arc<Stats>, current: Arc<Current>) -> io::Result<()> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot listen for stats on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    log::info!("Stats on http://{local}/ (and /metrics)");
    thread::Builder::new()
        .name("stats".into())
        .spawn(move || {
            for client in listener.incoming() {
                match client {
                    Ok(client) => serve(client, &stats, &current),
                    // Out of fds or the like: it passes; do not spin meanwhile.
                    Err(_) => thread::sleep(Duration::from_millis(100)),
                }
            }
        })
        .map(drop)
}

/// Answers one client and closes it.
fn serve(mut client: TcpStream, stats: &Stats, current: &Current) {
    let answer = match read_request(&mut client) {
        Ok(path) => route(&path, stats, current),
        Err(reason) => Answer::bad(&reason),
    };
    let _ = client.set_write_timeout(Some(REQUEST_TIME));
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
         Connection: close\r\n\r\n",
        answer.status,
        answer.content_type,
        answer.body.len()
    );
    let _ = client.write_all(head.as_bytes());
    let _ = client.write_all(answer.body.as_bytes());
    let _ = client.shutdown(std::net::Shutdown::Write);
    // Wait briefly for the client to close, so its unread request bytes (a huge request)
    // do not turn our close into a reset that could destroy the answer in flight.
    let _ = client.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 1024];
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline && matches!(client.read(&mut sink), Ok(n) if n > 0) {}
}

/// What to send back.
struct Answer {
    status: &'static str,
    content_type: &'static str,
    body: String,
}

impl Answer {
    fn bad(reason: &str) -> Answer {
        Answer {
            status: "400 Bad Request",
            content_type: "text/plain; charset=utf-8",
            body: format!("bad request: {reason}\n"),
        }
    }
}

fn route(path: &str, stats: &Stats, current: &Current) -> Answer {
    let path = path.split('?').next().unwrap_or_default();
    let ok = |content_type, body| Answer {
        status: "200 OK",
        content_type,
        body,
    };
    match path {
        "/" | "/index.html" => ok("text/html; charset=utf-8", page::HTML.to_string()),
        "/stats.json" => ok(
            "application/json",
            page::json(&Snapshot::take(stats, current)),
        ),
        "/metrics" => ok(
            metrics::CONTENT_TYPE,
            metrics::render(Snapshot::take(stats, current)),
        ),
        _ => Answer {
            status: "404 Not Found",
            content_type: "text/plain; charset=utf-8",
            body: "not found: try / or /metrics\n".into(),
        },
    }
}

/// Reads the request head (up to the blank line) within [`REQUEST_TIME`] and
/// [`MAX_REQUEST`]; returns the path of a `GET`, or why the request is refused.
fn read_request(client: &mut TcpStream) -> Result<String, String> {
    let deadline = Instant::now() + REQUEST_TIME;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() > MAX_REQUEST {
            return Err(format!("request longer than {MAX_REQUEST} bytes"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("request not complete in time".into());
        }
        let _ = client.set_read_timeout(Some(left));
        match client.read(&mut chunk) {
            Ok(0) => return Err("connection closed mid-request".into()),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err("request not complete in time".into()),
        }
    }
    let text = std::str::from_utf8(&head).map_err(|_| "request is not UTF-8".to_string())?;
    let line = text.lines().next().unwrap_or_default();
    match line.split(' ').collect::<Vec<_>>()[..] {
        ["GET", path, version] if path.starts_with('/') && version.starts_with("HTTP/1.") => {
            Ok(path.to_string())
        }
        _ => Err("expected \"GET /path HTTP/1.1\"".into()),
    }
}
