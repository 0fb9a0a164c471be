//! Part 1's behaviour, as exercises: `make test-1` (or `cargo test --test part1_single_connection`).
//!
//! Each test runs against every target that has the behaviour: lesson part 1, every later
//! part, and `rsp` (see `Target::from_part` in `tests/common/mod.rs`). A failure names the
//! target in its message.
//!
//! What these tests cannot see: they send small requests in one write, so part 1's single
//! read of the request always gets all of it. A request bigger than 4096 bytes, or one
//! typed slowly by hand (`nc 127.0.0.1 8000`, then type), would show that limit.
//!
//! Try this (each one: edit, `make test-1`, look, then undo the edit):
//! - In `lessons/part1_single_connection.rs`, replace the `loop` that copies the response
//!   with a single `let bytes_read = backend.read(&mut buffer)?;` and
//!   `client.write_all(&buffer[..bytes_read])?;`. `can_proxy_http_request_to_backend`
//!   fails on most runs (two of three here, in under 2 s) with "Part1: request 1: bad body
//!   in …" showing the head alone: the test's backend writes the head and the body with
//!   two writes, and one read may get only the first. `answers_two_plain_curl_requests_in_a_row`
//!   still passes: the demo backend sends its short page in one write.
//! - In the same file, bring back the C's behaviour on a failed backend connect: replace
//!   `eprintln!("Connection failed: {e}");` in the accept loop with `process::exit(1);`.
//!   `keeps_running_when_the_backend_is_down` fails at once: "Part1 exited after request 1
//!   to a dead backend".
//! - In this file, start the demo backend with `demo_backend(&["--keep-alive"])` in
//!   `answers_two_plain_curl_requests_in_a_row`. After 10 s: "Part1: plain HTTP/1.1
//!   request 2 of 2: timed out after 10 s waiting for the response head (0 bytes had
//!   arrived)". Part 1 copies until the backend closes; a keep-alive backend never does,
//!   so part 1 is still busy with the first client. Parts 2 on pass: the client's close
//!   reaches them.

mod common;

use common::*;
use std::time::Duration;

/// Starts the real demo backend (`make run-N` puts it behind the lessons), with `flags`.
fn demo_backend(flags: &[&str]) -> Proxy {
    let mut args = vec!["0".to_string()];
    args.extend(flags.iter().map(|f| f.to_string()));
    Proxy::spawn(env!("CARGO_BIN_EXE_demo_backend"), &args)
}

/// `make run-N`, then `curl http://127.0.0.1:8000/` twice: both are answered. curl speaks
/// HTTP/1.1 and would keep the connection open; the demo backend answers like the C's
/// mock (`Connection: close`, then it closes), and that close is what part 1 waits for.
/// The client here reads like curl: the head, then `Content-Length` bytes, no waiting for
/// the close.
#[test]
fn answers_two_plain_curl_requests_in_a_row() {
    let backend = demo_backend(&[]);
    for target in Target::from_part(1) {
        let proxy = target.start(backend.port);
        for attempt in 1..=2 {
            let (head, body) = curl_get(proxy.port, "/").unwrap_or_else(|e| {
                panic!("{target:?}: plain HTTP/1.1 request {attempt} of 2: {e}")
            });
            assert!(
                head.starts_with("HTTP/1.1 200"),
                "{target:?}: request {attempt}: bad response head {head:?}"
            );
            assert!(
                body.starts_with(b"Hello from"),
                "{target:?}: request {attempt}: bad body {:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
}

/// The C project's first functional test: two GETs in a row through the proxy both get the
/// mock backend's answer.
#[test]
fn can_proxy_http_request_to_backend() {
    let backend = Backend::hello();
    for target in Target::from_part(1) {
        let proxy = target.start(backend.port);
        for attempt in 1..=2 {
            let response = http_get(proxy.port, "/")
                .unwrap_or_else(|e| panic!("{target:?}: request {attempt} failed: {e}"));
            let text = String::from_utf8_lossy(&response);
            assert!(
                text.starts_with("HTTP/1.0 200"),
                "{target:?}: request {attempt}: bad response {text:?}"
            );
            assert_eq!(
                body(&response),
                HELLO.as_bytes(),
                "{target:?}: request {attempt}: bad body in {text:?}"
            );
        }
    }
}

/// The C exited when it could not connect to the backend; every Rust version logs the
/// error, closes that one client, and goes on accepting.
#[test]
fn keeps_running_when_the_backend_is_down() {
    let port = dead_port();
    for target in Target::from_part(1) {
        let mut proxy = target.start(port);
        for attempt in 1..=2 {
            // Nothing to check in the answer: a closed connection, a reset, or (for a proxy
            // that speaks HTTP) an error page are all fine. It must not hang: `connect`
            // sets a 10 s read timeout, and `http_get` returns its error.
            let _ = http_get(proxy.port, "/");
            assert!(
                proxy.wait_exit(Duration::from_millis(100)).is_none(),
                "{target:?} exited after request {attempt} to a dead backend; output:\n{}",
                proxy.output()
            );
        }
    }
}
