//! The bundled demo backend that `make run` puts behind rsp: its routes answer as documented.

mod common;

use common::{Proxy, body, http_get, sha256};
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
