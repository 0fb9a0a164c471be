//! The bundled demo backend that `make run` puts behind rsp: its routes answer as documented.

mod common;

use common::{Proxy, body, http_get, sha256};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn start() -> Proxy {
    Proxy::spawn(
        env!("CARGO_BIN_EXE_demo_backend"),
        &["0".into(), "alpha".into()],
    )
}

/// `/` names the instance, so round robin is visible when two run.
#[test]
fn root_page_names_the_instance() {
    let backend = start();
    let response = http_get(backend.port, "/").unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200 OK"));
    assert_eq!(body(&response), b"Hello from alpha\n");
}

/// `/bytes/N` streams exactly N bytes of the C test's pattern.
#[test]
fn bytes_route_streams_the_pattern() {
    let backend = start();
    let response = http_get(backend.port, "/bytes/11534336").unwrap();
    assert_eq!(sha256(body(&response)), sha256(&common::large_body()));
}

/// `/slow/MS` waits before answering; unknown paths get a 404.
#[test]
fn slow_route_waits_and_unknown_paths_are_404() {
    let backend = start();
    let started = Instant::now();
    let response = http_get(backend.port, "/slow/300").unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(body(&response), b"Hello from alpha\n");
    let response = http_get(backend.port, "/nope").unwrap();
    assert!(response.starts_with(b"HTTP/1.1 404"));
}

/// By default it answers like the C's mock, HTTP/1.0-style: one response with
/// `Connection: close`, then it closes, even when the client asked for keep-alive;
/// `--keep-alive` keeps an HTTP/1.1 connection open for the next request.
#[test]
fn closes_after_one_response_unless_keep_alive() {
    let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let backend = start();
    let mut stream = common::connect(backend.port);
    stream.write_all(request).unwrap();
    let response = common::read_all(&mut stream, "the demo backend to close").unwrap();
    assert!(
        String::from_utf8_lossy(&response).contains("Connection: close\r\n"),
        "no Connection: close in {:?}",
        String::from_utf8_lossy(&response)
    );

    let backend = Proxy::spawn(
        env!("CARGO_BIN_EXE_demo_backend"),
        &["0".into(), "alpha".into(), "--keep-alive".into()],
    );
    let mut stream = common::connect(backend.port);
    for attempt in 1..=2 {
        stream.write_all(request).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        // Bounded by the 10 s read timeout of `connect` and the head's size.
        while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
            stream.read_exact(&mut byte).unwrap_or_else(|e| {
                panic!("{}", common::explain(e, &format!("response {attempt}")))
            });
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head);
        assert!(
            text.contains("Connection: keep-alive"),
            "{attempt}: {text:?}"
        );
        let mut page = vec![0u8; b"Hello from alpha\n".len()];
        stream.read_exact(&mut page).unwrap();
        assert_eq!(page, b"Hello from alpha\n");
    }
}
