//! Part 4: a client that reads slower than the backend sends still gets every byte.
//!
//! Mirrors the C's `test_can_handle_large_response` (commit `042a811`): the backend answers
//! with 11,534,336 bytes (`"0123456789\n"` × 1 MiB). Our client is also SLOW on purpose: it
//! pauses after each 64 KiB for the first 2 MiB, so the proxy's send buffer to it fills up.
//! That is the moment the C went wrong, and the moment a fast local client never creates.
//!
//! The problem before the fix is asserted too: `part4 --broken` (the C's ignored EAGAIN)
//! must lose bytes with the same slow client. Run `cargo test --test part4_slow_clients --
//! --nocapture` to see how many.
//!
//! What this cannot see: one timing pattern passing does not prove that no other pattern
//! loses bytes, and a lossy proxy can pass a test whose client reads fast enough.
//!
//! Try this:
//! - In `lessons/part4_slow_clients.rs`, replace `write_all` in `relay` with one `write`
//!   whose count is ignored. Which target fails, and with how many bytes missing?
//! - Set `PAUSE` to zero. Does `--broken` still lose bytes on your machine? (Loopback
//!   buffers are big; that is how the C's bug survived its first tests.)
//! - In `lessons/part6_mio.rs`, make `HIGH_WATER` tiny (say 1). Is the body still intact?
//!   (It should be: the mark is about memory, never about correctness.)

mod common;

use common::{Backend, Target, body, connect, large_body, sha256};
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
            Err(_) => return response,
        }
    }
}

/// Every byte of the large body reaches a slow client, and `--broken` loses some.
#[test]
fn can_handle_large_response() {
    let backend = Backend::large();
    let expected = large_body();
    for target in Target::from_part(4) {
        let proxy = target.start(backend.port);
        let response = slow_get(proxy.port);
        let got = body(&response);
        assert_eq!(got.len(), expected.len(), "{target:?}: wrong body length");
        assert_eq!(sha256(got), sha256(&expected), "{target:?}: body corrupted");
    }

    // The bug, shown: the same slow client through the C's lossy write.
    let target = Target::Part4Broken;
    let proxy = target.start(backend.port);
    let response = slow_get(proxy.port);
    let got = body(&response);
    let lost = expected.len() as i64 - got.len() as i64;
    println!("{target:?}: lost {lost} of {} bytes", expected.len());
    assert!(
        got.len() < expected.len() || sha256(got) != sha256(&expected),
        "{target:?}: expected the slow client to lose bytes, but all {} arrived",
        got.len()
    );
}
