//! rsp's `mode = "mio"`: what only the event loop promises. Everything threads mode does
//! is checked in both modes by `tests/rsp.rs` (there with the default `loops`, one per
//! CPU); here: thousands of idle connections on one thread for a few KiB each, a slow
//! reader that cannot make the proxy buffer a whole response, no busy loop when rsp runs
//! out of file descriptors, and with several loops: clients spread over them, and one
//! Ctrl-C drain for all.
#![cfg(feature = "mio")]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use common::*;

/// A backend that reads until the client half-closes, then answers `got N bytes` and
/// closes. Its idle connections stay open as long as the client's do.
fn counting_backend() -> Backend {
    Backend::start(|mut stream| {
        let mut request = Vec::new();
        if stream.read_to_end(&mut request).is_ok() {
            let _ = write!(stream, "got {} bytes", request.len());
        }
    })
}

/// Sends `request` through rsp, half-closes, and returns the whole answer.
fn round_trip(port: u16, request: &[u8]) -> String {
    let mut stream = connect(port);
    stream.write_all(request).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// This process's soft limit on open files, from `/proc/self/limits`.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// Opens `n` idle connections through rsp, in batches so neither listen backlog (128)
/// overflows, and waits until the backend has accepted every one.
fn open_idle(proxy: &Proxy, backend: &Backend, n: usize) -> Vec<TcpStream> {
    let before = backend.accepted.load(Ordering::SeqCst);
    let mut clients = Vec::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(120);
    while clients.len() < n {
        for _ in 0..(n - clients.len()).min(100) {
            clients.push(TcpStream::connect(local(proxy.port)).unwrap());
        }
        while backend.accepted.load(Ordering::SeqCst) < before + clients.len() {
            assert!(Instant::now() < deadline, "backend accepts too slow");
            thread::sleep(Duration::from_millis(10));
        }
    }
    clients
}

/// 2,000 idle connections stay open through rsp for 2 s on ONE event-loop thread (plus
/// the Ctrl-C handler's, the log writer's and the SIGTERM/SIGHUP thread), cost under
/// 8 KiB of RSS each, and a fresh request is served.
#[test]
fn holds_2000_idle_connections_on_one_thread() {
    const N: usize = 2_000;
    assert!(
        open_files_limit() >= 3 * N as u64,
        "this test needs {} open files (client + backend sides)",
        3 * N
    );
    let backend = counting_backend();
    let proxy = Target::RspMio.start_with(&[backend.port], "connect_timeout = 10\nloops = 1");
    assert_eq!(round_trip(proxy.port, b"warm-up"), "got 7 bytes");
    let rss_before = proxy.rss_kib();

    let clients = open_idle(&proxy, &backend, N);
    thread::sleep(Duration::from_secs(2));
    for (i, client) in clients.iter().enumerate() {
        client.set_nonblocking(true).unwrap();
        let result = (&*client).read(&mut [0u8; 1]);
        let still_open = matches!(&result, Err(e) if e.kind() == ErrorKind::WouldBlock);
        assert!(still_open, "connection {i} was closed: {result:?}");
    }
    assert_eq!(round_trip(proxy.port, b"fresh"), "got 5 bytes");

    let threads = proxy.threads();
    let grown = proxy.rss_kib().saturating_sub(rss_before);
    println!("mio mode, {N} idle: {threads} threads, RSS +{grown} KiB");
    assert_eq!(
        threads, 4,
        "the event loop, the Ctrl-C handler, the log writer and the SIGTERM/SIGHUP thread"
    );
    assert!(
        grown < 8 * N as u64,
        "RSS grew {grown} KiB for {N} connections"
    );
}

/// The loop ids in the `conn N: accepted from … on loop K` debug lines so far.
fn loops_used(proxy: &Proxy) -> std::collections::BTreeSet<usize> {
    proxy
        .output()
        .lines()
        .filter(|l| l.contains(": accepted from "))
        .filter_map(|l| l.rsplit("on loop ").next()?.trim().parse().ok())
        .collect()
}

/// Waits (up to 10 s: a busy machine) until `n` accept lines are in the output.
fn wait_for_accepts(proxy: &Proxy, n: usize) {
    let count = |p: &Proxy| p.output().matches(": accepted from ").count();
    assert!(
        proxy.eventually(Duration::from_secs(10), |p| count(p) >= n),
        "timed out after 10 s waiting for {n} accept lines; output:\n{}",
        proxy.output()
    );
}

/// With `loops = 4`, rsp runs four event-loop threads (plus the Ctrl-C handler's and the
/// log writer's and the SIGTERM/SIGHUP thread) and the kernel spreads 40 clients over more
/// than one of them (`SO_REUSEPORT` picks a listener by a hash of the client's port: all 40
/// on one loop has odds of 4 in 4^40).
#[test]
fn several_loops_share_the_clients() {
    const CLIENTS: usize = 40;
    let backend = counting_backend();
    let proxy = Target::RspMio.start_with(&[backend.port], "loops = 4\nlog_level = \"debug\"");
    assert_eq!(
        proxy.threads(),
        7,
        "4 loops plus the Ctrl-C handler, the log writer and the SIGTERM/SIGHUP thread"
    );
    for i in 0..CLIENTS {
        let request = format!("request {i}");
        let answer = round_trip(proxy.port, request.as_bytes());
        assert_eq!(answer, format!("got {} bytes", request.len()));
    }
    wait_for_accepts(&proxy, CLIENTS);
    let used = loops_used(&proxy);
    assert!(used.len() > 1, "every client on loop(s) {used:?}");
    assert!(used.iter().all(|&l| l < 4), "loop ids {used:?}");
}

/// Ctrl-C with connections open on several loops: every loop stops accepting, the port
/// refuses new clients, every open connection is still served to its end, and the drain
/// is logged once for the whole process (one start line, one end line, all counted).
#[test]
fn ctrl_c_drains_every_loop() {
    const OPEN: usize = 12;
    let backend = Backend::echo();
    let extra = "loops = 4\nlog_level = \"debug\"\ndrain_timeout = 60";
    let mut proxy = Target::RspMio.start_with(&[backend.port], extra);
    let mut clients: Vec<TcpStream> = (0..OPEN).map(|_| connect(proxy.port)).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let ping = format!("ping {i:02}");
        client.write_all(ping.as_bytes()).unwrap();
        let mut echo = [0u8; 7];
        client.read_exact(&mut echo).unwrap();
        assert_eq!(&echo, ping.as_bytes(), "client {i}");
    }
    wait_for_accepts(&proxy, OPEN);
    let used = loops_used(&proxy);
    assert!(used.len() > 1, "every client on loop(s) {used:?}");

    proxy.signal("INT");
    let line = proxy.wait_for_line("Shutting down", Duration::from_secs(10));
    let line = line.unwrap_or_else(|| panic!("no drain start within 10 s: {}", proxy.output()));
    assert!(
        line.contains(&format!("for {OPEN} open connection(s)")),
        "{line}"
    );
    assert!(
        TcpStream::connect(local(proxy.port)).is_err(),
        "a loop still accepts after Ctrl-C"
    );
    for (i, mut client) in clients.into_iter().enumerate() {
        let pong = format!("pong {i:02}");
        client.write_all(pong.as_bytes()).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut rest = String::new();
        client.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, pong, "client {i} during the drain");
    }
    let status = proxy.wait_exit(Duration::from_secs(30));
    let output = proxy.output();
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{output}");
    assert_eq!(output.matches("Shutting down").count(), 1, "{output}");
    let end = format!("All {OPEN} connection(s) drained; exiting.");
    assert_eq!(output.matches(&end).count(), 1, "{output}");
}

/// The bytes the slow-reader backend sends: a 1 MiB + 13 block of random bytes, repeated
/// (the odd length keeps block and read boundaries from lining up), cut at `total`.
fn pattern_chunks(total: usize) -> impl Iterator<Item = Vec<u8>> {
    let block = random_bytes(1024 * 1024 + 13, 99);
    let mut left = total;
    std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        let n = left.min(block.len());
        left -= n;
        Some(block[..n].to_vec())
    })
}

/// A client reading 100 MiB slowly (64 KiB, then 5 ms sleep) gets every byte (equal
/// sha256) while rsp's RSS stays under 10 MiB above idle: the high-water mark pauses the
/// backend instead of queueing the whole response; pauses are logged at debug level.
#[test]
fn a_slow_reader_of_100_mib_keeps_rss_flat() {
    const TOTAL: usize = 100 * 1024 * 1024;
    let mut expected = Sha256::new();
    for chunk in pattern_chunks(TOTAL) {
        expected.update(&chunk);
    }
    let expected = expected.finalize();
    let backend = Backend::start(|mut stream| {
        for chunk in pattern_chunks(TOTAL) {
            if stream.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut proxy = Target::RspMio.start_with(&[backend.port], "log_level = \"debug\"");
    let idle = proxy.rss_kib();

    let mut stream = connect(proxy.port);
    stream.shutdown(Shutdown::Write).unwrap(); // no request: the backend just sends
    let mut got = Sha256::new();
    let mut received = 0usize;
    let mut peak = idle;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(300);
    for reads in 0usize.. {
        assert!(
            Instant::now() < deadline,
            "transfer too slow: {received} bytes"
        );
        let n = stream.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.update(&buf[..n]);
        received += n;
        if reads % 16 == 0 {
            peak = peak.max(proxy.rss_kib());
        }
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(received, TOTAL);
    assert!(got.finalize() == expected, "the bytes differ");
    let grown = peak.saturating_sub(idle);
    println!("mio mode, slow reader of 100 MiB: RSS peak +{grown} KiB over idle");
    assert!(grown < 10 * 1024, "RSS grew {grown} KiB");
    assert!(
        proxy
            .wait_for_line("backend -> client paused", Duration::from_secs(5))
            .is_some()
    );
    assert!(
        proxy
            .wait_for_line("backend -> client resumed", Duration::from_secs(5))
            .is_some()
    );
}

/// A listener whose accept queue is full, so new connects to it hang in the handshake
/// (the kernel drops their SYNs). Returns it with the connections that fill it.
fn black_hole() -> (TcpListener, Vec<TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.bind(&local(0).into()).unwrap();
    socket.listen(0).unwrap();
    let listener: TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..10 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(stream) => fillers.push(stream),
            Err(_) => return (listener, fillers), // Full: this connect hung.
        }
    }
    panic!("could not fill the accept queue of {addr}");
}

/// A backend whose handshake never completes is given up after `connect_timeout` and the
/// next backend serves the client; meanwhile the loop serves other clients (the connect
/// does not block it).
#[test]
fn a_hanging_connect_times_out_without_stalling_the_loop() {
    let (hole, _fillers) = black_hole();
    let hole_port = hole.local_addr().unwrap().port();
    let good = Backend::hello();
    // One loop: the test is about that loop not stalling, and with several the second
    // client could be accepted first (on another loop) and take the black hole's turn.
    let extra = "connect_timeout = 3\nloops = 1";
    let mut proxy = Target::RspMio.start_with(&[hole_port, good.port], extra);
    // The first client is accepted first, so round robin sends it to the black hole.
    let started = Instant::now();
    let mut first = connect(proxy.port);
    write!(first, "GET / HTTP/1.0\r\n\r\n").unwrap();
    // The second goes to the good backend and is served while the first still waits.
    assert_hello(&http_get(proxy.port, "/").unwrap());
    first.set_nonblocking(true).unwrap();
    let waiting = (&first).read(&mut [0u8; 1]);
    assert!(
        matches!(&waiting, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the first client should still wait: {waiting:?}"
    );
    first.set_nonblocking(false).unwrap();
    let mut response = Vec::new();
    first.read_to_end(&mut response).unwrap();
    assert_hello(&response);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(2500),
        "failover after {took:?}"
    );
    let line = proxy.wait_for_line("connect timed out", Duration::from_secs(5));
    assert!(
        line.is_some_and(|l| l.contains(&hole_port.to_string())),
        "{}",
        proxy.output()
    );
}
