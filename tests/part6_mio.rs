//! Part 6: the event loop passes half-closes on, and keeps a slow client's backlog small.
//!
//! These check what part 6 adds to the C: half-close, and the high-water mark. The tests
//! of every earlier part run against part 6 too: the C's client-disconnect test
//! (`tests/part5_worker_pool.rs`), the slow reader of `tests/part4_slow_clients.rs` and the
//! concurrency test of `tests/part2_threads.rs`.
//!
//! What these cannot see: a queue that grows only under patterns other than "not reading
//! at all".
//! RSS counts the proxy's heap, not the kernel's socket buffers.
//!
//! Try this:
//! - In `lessons/part6_mio.rs`, remove `side.queue.is_empty() &&` from `send` (the
//!   ordering invariant) and run `make test-4`. It most likely still passes: `relay` has
//!   just found the socket full, so the direct write nearly always fails too. Why is a
//!   bug that needs that small a window exactly the kind no test run will catch?
//! - Set `HIGH_WATER` to `usize::MAX` (no mark, like the C). Which test fails, and by how
//!   many MiB?
//! - Make `Connection::pump` return `Ok(true)` as soon as one side has sent EOF (closing
//!   both at once, as the C's part 2 did). Which test notices?

mod common;

use common::{Backend, Target, connect, random_bytes, sha256};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

/// The client half-closes (sends FIN) and still receives everything the backend sends.
#[test]
fn can_pass_on_a_half_close() {
    let backend = Backend::echo();
    let data = random_bytes(1024 * 1024, 5);
    for target in Target::from_part(6) {
        let proxy = target.start(backend.port);
        let mut stream = connect(proxy.port);
        // Write on another thread: an echo that nobody reads would fill every buffer.
        let mut writer = stream.try_clone().unwrap();
        let to_send = data.clone();
        let sender = thread::spawn(move || {
            writer.write_all(&to_send).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let mut echoed = Vec::new();
        let result = stream.read_to_end(&mut echoed);
        sender.join().unwrap();
        assert!(result.is_ok(), "{target:?}: {result:?}");
        assert_eq!(echoed.len(), data.len(), "{target:?}: echo length");
        assert_eq!(sha256(&echoed), sha256(&data), "{target:?}: echo corrupted");
    }
}

/// The byte at offset `i` of the high-water test's stream.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// A client that reads nothing for 2 s costs the proxy little memory (the C queued the
/// whole response), and then still gets all of it.
#[test]
fn keeps_memory_small_for_a_client_that_does_not_read() {
    const TOTAL: usize = 64 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    const LIMIT_KIB: u64 = 20 * 1024;
    let backend = Backend::start(|mut stream| {
        let _ = common::read_request(&mut stream);
        for start in (0..TOTAL).step_by(CHUNK) {
            let chunk: Vec<u8> = (start..start + CHUNK).map(pattern).collect();
            if stream.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    for target in Target::from_part(6) {
        let proxy = target.start(backend.port);
        let idle = proxy.rss_kib();
        let mut peak = idle;
        let mut stream = connect(proxy.port);
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let pause_until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < pause_until {
            thread::sleep(Duration::from_millis(50));
            peak = peak.max(proxy.rss_kib());
        }
        let mut buffer = vec![0u8; 64 * 1024];
        let mut received = 0;
        loop {
            let n = stream.read(&mut buffer).unwrap();
            if n == 0 {
                break;
            }
            for (k, byte) in buffer[..n].iter().enumerate() {
                let at = received + k;
                assert_eq!(*byte, pattern(at), "{target:?}: wrong byte at {at}");
            }
            received += n;
            if received % (1024 * 1024) < n {
                peak = peak.max(proxy.rss_kib());
            }
        }
        assert_eq!(received, TOTAL, "{target:?}: bytes received");
        let growth = peak.saturating_sub(idle);
        println!("{target:?}: RSS {idle} KiB idle, {peak} KiB peak");
        assert!(growth < LIMIT_KIB, "{target:?}: RSS grew {growth} KiB");
    }
}
