//! Part 7: the event loop passes half-closes on, and keeps a slow client's backlog small.
//!
//! These check what part 7 adds to the C: half-close, and the high-water mark. The tests
//! of every earlier part run against part 7 too: the C's client-disconnect test
//! (`tests/part5_worker_pool.rs`), the slow reader of `tests/part4_slow_clients.rs` and the
//! concurrency test of `tests/part2_threads.rs`.
//!
//! What these cannot see: a queue that grows only under patterns other than "not reading
//! at all".
//! RSS counts the proxy's heap (summed over its process and every process it started, for a
//! proxy that forks), not the kernel's socket buffers.
//!
//! Try this:
//! - In `lessons/part7_mio.rs`, in `send`, replace `if side.queue.is_empty()` with `if true`
//!   (the ordering invariant gone). `make test-4` still passes, and `make test-7` fails in
//!   `keeps_memory_small_for_a_client_that_does_not_read` with a wrong byte (here at
//!   offsets 8,900,608 and 30,931,590) only about one run in three: 2 of 6 runs here, so
//!   run it several times. Once a queue exists, a write that skips it puts new bytes ahead
//!   of old ones, but only if the client has freed room in its socket in the microseconds
//!   between a `flush` that left a queue and the next `send`. Why does the slow reader of
//!   part 4 almost never leave a queue behind?
//! - Set `HIGH_WATER` to `usize::MAX` (no mark, like the C).
//!   `keeps_memory_small_for_a_client_that_does_not_read` fails within seconds: RSS grows
//!   by about 60 MiB, the whole 64 MiB response, where the limit is 20 MiB.
//! - In `pump`, return `Ok(self.sides.iter().any(|side| side.read_closed))`: the
//!   connection closes once one side has sent EOF, as the C's part 2 did.
//!   `can_pass_on_a_half_close` notices only sometimes (1 run in 3 here): the echo is
//!   usually back before the client's FIN is read. How would you make it notice every time?

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
    for target in Target::from_part(7) {
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
    for target in Target::from_part(7) {
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
