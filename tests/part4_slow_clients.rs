//! Part 4: a client that reads slower than the backend sends still gets every byte.
//!
//! Mirrors the C's `test_can_handle_large_response` (commit `042a811`): the backend answers
//! with 11,534,336 bytes (`"0123456789\n"` × 1 MiB). Our client is also SLOW on purpose: it
//! pauses after each 64 KiB for the first 2 MiB, so the proxy's send buffer to it fills up.
//! That is the moment the C went wrong, and the moment a fast local client never creates.
//!
//! The problem before the fix is asserted too: `part4 --broken` (the C's ignored EAGAIN)
//! must lose bytes with the same slow client (`part4_broken_loses_bytes_to_a_slow_client`;
//! `make test-4` shows how many).
//!
//! What this cannot see: one timing pattern passing does not prove that no other pattern
//! loses bytes, and a lossy proxy can pass a test whose client reads fast enough.
//!
//! Try this (each one: edit, `make test-4`, look, undo; a passing run takes about 40 s):
//! - In `relay` in `lessons/part4_slow_clients.rs`, replace `to.write_all(…)` with one
//!   `to.write(…)` whose count is ignored. Nothing fails: on Linux a BLOCKING `write`
//!   waits until it has taken the whole 4 KiB chunk, so the count is always the full chunk
//!   here. `write_all` is what makes that a promise rather than luck (a signal, or another
//!   OS, may give a short count).
//! - In `handle_client_connection`, make every client non-blocking: keep
//!   `client.set_nonblocking(true)?;` but delete the `if broken {` and its `}` around it.
//!   Now the fixed part fails too, in under 10 s: "Part4: the body: 7591002 of 11534336
//!   bytes missing: the first 3943334 arrived intact, then the data ended" (numbers vary).
//!   `write_all` on a non-blocking socket returns `WouldBlock` once the buffer is full;
//!   `relay` takes that as an error and closes. Blocking is what makes `write_all` a fix.
//! - In this file, set `PAUSE` to zero. The test fails in about 2 s: "Part4Broken: expected
//!   the slow client to lose bytes, but all 11534336 arrived". A fast reader on loopback
//!   never fills the buffers: that is how the C's bug survived its first tests.

mod common;

use common::{
    Backend, Target, assert_same_bytes, body, connect, explain, large_body, skipped_for_own_proxy,
};
use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

/// The slow client pauses after each this many bytes…
const PAUSE_EVERY: usize = 64 * 1024;
/// …for this long…
const PAUSE: Duration = Duration::from_millis(200);
/// …until it has read this much; then it reads at full speed.
const SLOW_PART: usize = 2 * 1024 * 1024;

/// Sends a GET through the proxy on `port` and reads the response like a slow client.
fn slow_get(port: u16) -> Vec<u8> {
    let mut stream = connect(port);
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let mut buffer = vec![0u8; 16 * 1024];
    let mut next_pause = 0;
    loop {
        if response.len() >= next_pause && response.len() < SLOW_PART {
            thread::sleep(PAUSE);
            next_pause += PAUSE_EVERY;
        }
        match stream.read(&mut buffer) {
            Ok(0) => return response,
            Ok(n) => response.extend_from_slice(&buffer[..n]),
            // A reset or a timeout ends the response; the caller checks what arrived.
            Err(e) => {
                let waiting = format!("more of the response after {} bytes", response.len());
                println!("slow client: {}", explain(e, &waiting));
                return response;
            }
        }
    }
}

/// Every byte of the large body reaches a slow client.
#[test]
fn can_handle_large_response() {
    let backend = Backend::large();
    let expected = large_body();
    for target in Target::from_part(4) {
        let proxy = target.start(backend.port);
        let response = slow_get(proxy.port);
        assert_same_bytes(&format!("{target:?}: the body"), body(&response), &expected);
    }
}

/// The problem before the fix, shown: the same slow client through the C's lossy write
/// (`part4 --broken`) loses bytes.
#[test]
fn part4_broken_loses_bytes_to_a_slow_client() {
    if skipped_for_own_proxy("part4 --broken, the C's bug kept on purpose") {
        return;
    }
    let backend = Backend::large();
    let expected = large_body();
    let target = Target::Part4Broken;
    let proxy = target.start(backend.port);
    let response = slow_get(proxy.port);
    let got = body(&response);
    let lost = expected.len() as i64 - got.len() as i64;
    println!("{target:?}: lost {lost} of {} bytes", expected.len());
    assert!(
        got != &expected[..],
        "{target:?}: expected the slow client to lose bytes, but all {} arrived",
        got.len()
    );
}
