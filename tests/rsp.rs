//! rsp end to end, in both modes: proxying, half-close, slow readers, disconnects, load
//! balancing, idle timeout, Ctrl-C drain and the worker pool. Every test loops over
//! `Target::rsp_modes()`: threads mode, and mio mode when built with the `mio` feature.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The request `http_get` sends for `/`, byte for byte.
const GET_ROOT: &str = "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";

/// Reads until EOF or an error; returns what arrived (an error just ends the read).
fn read_all(stream: &mut TcpStream) -> Vec<u8> {
    let mut data = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return data,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether the proxy closed `stream`: a read gives EOF or an error (not a timeout).
fn is_closed(stream: &mut TcpStream) -> bool {
    match stream.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// An HTTP request to one backend comes back unchanged through rsp.
#[test]
fn can_proxy_http_request_to_backend() {
    for target in Target::rsp_modes() {
        let backend = Backend::hello();
        let proxy = target.start(backend.port);
        assert_hello(&http_get(proxy.port, "/").unwrap());
        assert_hello(&http_get(proxy.port, "/again").unwrap());
    }
}

/// 8 MiB of random bytes go up and come back down with the same sha256.
#[test]
fn echoes_8_mib_both_ways_intact() {
    for target in Target::rsp_modes() {
        let backend = Backend::echo();
        let proxy = target.start(backend.port);
        let data = random_bytes(8 * 1024 * 1024, 42);
        let expected = sha256(&data);
        let mut stream = connect(proxy.port);
        let mut writer = stream.try_clone().unwrap();
        let sender = thread::spawn(move || {
            writer.write_all(&data).unwrap();
            writer.shutdown(Shutdown::Write).unwrap();
        });
        let echoed = read_all(&mut stream);
        sender.join().unwrap();
        assert_eq!(echoed.len(), 8 * 1024 * 1024, "{target:?}");
        assert_eq!(sha256(&echoed), expected, "{target:?}");
    }
}

/// The C test's 11,534,336-byte body reaches a client that pauses while reading,
/// through 4 KiB buffers: a blocking write waits for the slow reader, nothing is lost.
#[test]
fn can_handle_large_response() {
    for target in Target::rsp_modes() {
        let backend = Backend::large();
        let proxy = target.start_with(&[backend.port], "buffer_size = 4096");
        let mut stream = connect(proxy.port);
        stream.write_all(GET_ROOT.as_bytes()).unwrap();
        let mut response = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        let mut next_pause = 64 * 1024;
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
            if response.len() >= next_pause && response.len() <= 2 * 1024 * 1024 {
                thread::sleep(Duration::from_millis(200));
                next_pause += 64 * 1024;
            }
        }
        assert_eq!(body(&response).len(), 11_534_336, "{target:?}");
        assert!(
            body(&response) == large_body(),
            "{target:?}: body corrupted"
        );
    }
}

/// A client that half-closes after its request still gets the whole response: the
/// half-close reaches the backend as EOF, and the backend's answer comes back.
#[test]
fn passes_on_a_client_half_close() {
    for target in Target::rsp_modes() {
        let backend = Backend::start(|mut stream| {
            let mut request = Vec::new();
            let _ = stream.read_to_end(&mut request); // until the client's half-close
            let _ = write!(stream, "got {} bytes", request.len());
        });
        let proxy = target.start(backend.port);
        let mut stream = connect(proxy.port);
        stream.write_all(b"twelve bytes").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut stream), b"got 12 bytes", "{target:?}");
    }
}

/// When the backend half-closes first, the client sees EOF and its later bytes still
/// reach the backend.
#[test]
fn passes_on_a_backend_half_close() {
    for target in Target::rsp_modes() {
        let (tx, rx) = mpsc::channel();
        let backend = Backend::start(move |mut stream| {
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while !line.ends_with(b"\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                line.push(byte[0]);
            }
            let _ = stream.write_all(b"response\n");
            let _ = stream.shutdown(Shutdown::Write);
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest); // keeps reading after its own FIN
            let _ = tx.send(rest);
        });
        let proxy = target.start(backend.port);
        let mut stream = connect(proxy.port);
        stream.write_all(b"request\n").unwrap();
        assert_eq!(read_all(&mut stream), b"response\n", "{target:?}");
        stream.write_all(b"after the backend's FIN").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let rest = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(rest, b"after the backend's FIN", "{target:?}");
    }
}

/// A client that reads 1 KiB of an 11 MB reply and leaves ends only its own connection:
/// the next request succeeds and threads and fds return to their idle level.
#[test]
fn can_handle_client_disconnect() {
    for target in Target::rsp_modes() {
        let backend = Backend::large();
        let mut proxy = target.start(backend.port);
        let (idle_threads, idle_fds) = (proxy.threads(), proxy.fds());
        let mut stream = connect(proxy.port);
        stream.write_all(GET_ROOT.as_bytes()).unwrap();
        stream.read_exact(&mut [0u8; 1024]).unwrap();
        drop(stream);
        let response = http_get(proxy.port, "/").unwrap();
        assert_eq!(body(&response).len(), 11_534_336, "{target:?}");
        assert!(
            proxy.eventually(Duration::from_secs(2), |p| p.threads() <= idle_threads),
            "{target:?}: {} threads, {idle_threads} when idle",
            proxy.threads()
        );
        assert!(
            proxy.eventually(Duration::from_secs(2), |p| p.fds() <= idle_fds),
            "{target:?}: {} fds open, {idle_fds} when idle",
            proxy.fds()
        );
        let line = proxy.wait_for_line("conn 1 ", Duration::from_secs(10));
        assert!(
            line.is_some_and(|l| l.ends_with("client reset")),
            "{target:?}: {}",
            proxy.output()
        );
    }
}

/// A backend that resets its connection ends that connection (logged as `backend
/// reset`) and nothing else.
#[test]
fn a_backend_reset_ends_only_that_connection() {
    for target in Target::rsp_modes() {
        // Closing a socket with unread data sends a reset instead of a FIN.
        let resetter = Backend::start(|stream| {
            thread::sleep(Duration::from_millis(300));
            drop(stream);
        });
        let hello = Backend::hello();
        let mut proxy = target.start_with(&[resetter.port, hello.port], "");
        let mut stream = connect(proxy.port);
        stream.write_all(b"unread bytes\n").unwrap();
        assert!(read_all(&mut stream).is_empty(), "{target:?}");
        let line = proxy.wait_for_line("conn 1 ", Duration::from_secs(10));
        assert!(
            line.is_some_and(|l| l.ends_with("backend reset")),
            "{target:?}: {}",
            proxy.output()
        );
        assert_hello(&http_get(proxy.port, "/").unwrap()); // round-robin: the hello one
    }
}

/// With one backend down and one up, every request is served.
#[test]
fn skips_a_dead_backend() {
    for target in Target::rsp_modes() {
        let backend = Backend::hello();
        let proxy = target.start_with(&[dead_port(), backend.port], "");
        for _ in 0..20 {
            assert_hello(&http_get(proxy.port, "/").unwrap());
        }
        assert_eq!(
            backend.accepted.load(std::sync::atomic::Ordering::SeqCst),
            20
        );
    }
}

/// With every backend down, the client is closed quickly, an error is logged, and the
/// proxy keeps running.
#[test]
fn closes_the_client_when_every_backend_is_down() {
    for target in Target::rsp_modes() {
        let mut proxy = target.start_with(&[dead_port(), dead_port()], "connect_timeout = 1");
        for round in 1..=2 {
            let started = Instant::now();
            let mut stream = connect(proxy.port);
            let _ = stream.write_all(GET_ROOT.as_bytes());
            assert!(read_all(&mut stream).is_empty(), "{target:?}");
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{target:?} round {round}"
            );
        }
        assert!(
            proxy.child.try_wait().unwrap().is_none(),
            "{target:?} exited"
        );
        let error = proxy.wait_for_line("no backend accepted", Duration::from_secs(5));
        assert!(error.is_some(), "{target:?}: {}", proxy.output());
        let summary = proxy.wait_for_line("conn 2 ", Duration::from_secs(5));
        assert!(summary.is_some_and(|l| l.ends_with("connect failed")));
    }
}

/// Two healthy backends share 20 requests round-robin, 10 ± 1 each.
#[test]
fn spreads_requests_over_two_backends() {
    use std::sync::atomic::Ordering::SeqCst;
    for target in Target::rsp_modes() {
        let (a, b) = (Backend::hello(), Backend::hello());
        let proxy = target.start_with(&[a.port, b.port], "");
        for _ in 0..20 {
            assert_hello(&http_get(proxy.port, "/").unwrap());
        }
        let (a, b) = (a.accepted.load(SeqCst), b.accepted.load(SeqCst));
        assert_eq!(a + b, 20, "{target:?}");
        assert!((9..=11).contains(&a), "{target:?}: {a} / {b}");
    }
}

/// With `idle_timeout = 1`, a connection where nothing moves is closed within 3 s.
#[test]
fn closes_an_idle_connection() {
    for target in Target::rsp_modes() {
        let backend = Backend::echo();
        let mut proxy = target.start_with(&[backend.port], "idle_timeout = 1");
        let mut stream = connect(proxy.port);
        let started = Instant::now();
        assert!(is_closed(&mut stream), "{target:?}: still open after 10 s");
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_secs(3),
            "{target:?}: closed after {waited:?}"
        );
        let line = proxy.wait_for_line("conn 1 ", Duration::from_secs(5));
        assert!(line.is_some_and(|l| l.ends_with("idle timeout")));
    }
}

/// A byte every 300 ms (echoed back) keeps a connection with `idle_timeout = 1` open.
#[test]
fn keeps_a_trickling_connection_open() {
    for target in Target::rsp_modes() {
        let backend = Backend::echo();
        let proxy = target.start_with(&[backend.port], "idle_timeout = 1");
        let mut stream = connect(proxy.port);
        for i in 0..10u8 {
            stream.write_all(&[i]).unwrap();
            let mut echoed = [0u8; 1];
            stream.read_exact(&mut echoed).unwrap();
            assert_eq!(echoed[0], i, "{target:?}");
            thread::sleep(Duration::from_millis(300));
        }
        assert!(proxy.output().lines().all(|l| !l.contains("idle timeout")));
    }
}

/// `signal` during a 20 MB transfer to a slow reader: new connections are refused at
/// once, the transfer completes intact, and rsp exits 0.
fn drains_a_transfer_on(signal: &str) {
    for target in Target::rsp_modes() {
        let data = std::sync::Arc::new(random_bytes(20_000_000, 7));
        let expected = sha256(&data);
        let backend = Backend::http(move |_| data.to_vec());
        let mut proxy = target.start_with(&[backend.port], "drain_timeout = 60");
        let mut stream = connect(proxy.port);
        stream.write_all(GET_ROOT.as_bytes()).unwrap();
        let mut response = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        let mut signalled = false;
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
            if !signalled && response.len() > 1024 * 1024 {
                signalled = true;
                proxy.signal(signal);
                let line = proxy.wait_for_line("Shutting down", Duration::from_secs(10));
                assert!(line.is_some(), "{target:?}: {}", proxy.output());
                let refused = TcpStream::connect(local(proxy.port));
                assert!(
                    refused.is_err(),
                    "{target:?}: still accepting after SIG{signal}"
                );
            }
            thread::sleep(Duration::from_millis(5)); // a slow reader
        }
        assert!(signalled, "{target:?}: transfer ended before the signal");
        assert_eq!(sha256(body(&response)), expected, "{target:?}");
        drop(stream); // like any HTTP client, close after the response: the drain can end
        let status = proxy.wait_exit(Duration::from_secs(30));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", proxy.output());
    }
}

/// Ctrl-C (SIGINT) lets a running transfer finish before exiting 0.
#[test]
fn ctrl_c_drains_open_connections() {
    drains_a_transfer_on("INT");
}

/// SIGTERM behaves like Ctrl-C.
#[test]
fn sigterm_drains_open_connections() {
    drains_a_transfer_on("TERM");
}

/// With `drain_timeout = 1`, `signal` with an idle connection open exits 0 within 3 s,
/// and the connection's summary says `shutdown`.
fn cuts_an_idle_connection_on(signal: &str) {
    for target in Target::rsp_modes() {
        let backend = Backend::echo();
        let mut proxy = target.start_with(&[backend.port], "drain_timeout = 1");
        let mut stream = connect(proxy.port);
        stream.write_all(b"x").unwrap();
        stream.read_exact(&mut [0u8; 1]).unwrap(); // the connection is fully set up
        let started = Instant::now();
        proxy.signal(signal);
        let status = proxy.wait_exit(Duration::from_secs(3));
        assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", proxy.output());
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(is_closed(&mut stream), "{target:?}");
        let line = proxy.wait_for_line("conn 1 ", Duration::from_secs(5));
        assert!(
            line.is_some_and(|l| l.ends_with("shutdown")),
            "{}",
            proxy.output()
        );
    }
}

/// Ctrl-C cuts what is still open when `drain_timeout` runs out.
#[test]
fn ctrl_c_cuts_connections_after_the_drain_timeout() {
    cuts_an_idle_connection_on("INT");
}

/// SIGTERM cuts what is still open when `drain_timeout` runs out, like Ctrl-C.
#[test]
fn sigterm_cuts_connections_after_the_drain_timeout() {
    cuts_an_idle_connection_on("TERM");
}

/// A second Ctrl-C during the drain exits at once, with status 130.
#[test]
fn a_second_ctrl_c_exits_at_once() {
    for target in Target::rsp_modes() {
        let backend = Backend::echo();
        let mut proxy = target.start_with(&[backend.port], "drain_timeout = 60");
        let mut stream = connect(proxy.port);
        stream.write_all(b"x").unwrap();
        stream.read_exact(&mut [0u8; 1]).unwrap();
        proxy.signal("INT");
        let line = proxy.wait_for_line("Shutting down", Duration::from_secs(10));
        assert!(line.is_some(), "{target:?}: {}", proxy.output());
        proxy.signal("INT");
        let status = proxy.wait_exit(Duration::from_secs(3));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(130),
            "{}",
            proxy.output()
        );
    }
}

/// With `workers = 2`, extra clients wait for a free worker instead of being dropped.
#[test]
fn a_busy_pool_queues_clients() {
    // Only threads mode has a worker pool (`workers` means nothing to the event loop).
    for target in [Target::Rsp] {
        let backend = Backend::echo();
        let mut proxy = target.start_with(&[backend.port], "workers = 2");
        let ping = |stream: &mut TcpStream| -> bool {
            stream.write_all(b"p").is_ok() && stream.read_exact(&mut [0u8; 1]).is_ok()
        };
        let mut first = connect(proxy.port);
        let mut second = connect(proxy.port);
        assert!(ping(&mut first) && ping(&mut second));
        // Two wait in the queue, the fifth in the kernel's backlog.
        let mut waiting: Vec<TcpStream> = (0..3).map(|_| connect(proxy.port)).collect();
        for stream in &mut waiting {
            stream.write_all(b"p").unwrap();
            stream
                .set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            assert!(
                stream.read(&mut [0u8; 1]).is_err(),
                "served with every worker busy"
            );
        }
        // The warning names how many workers are busy and what to raise.
        let busy = proxy.wait_for_line("All 2 workers are busy", Duration::from_secs(10));
        assert!(
            busy.is_some_and(|line| line.contains("Raise `workers` in proxy.lua")),
            "{}",
            proxy.output()
        );
        for mut done in [first, second] {
            done.shutdown(Shutdown::Write).unwrap();
            read_all(&mut done);
        }
        // Each waiting client is served in turn once a worker frees up; closing it frees
        // the worker for the next.
        for mut stream in waiting {
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream.read_exact(&mut [0u8; 1]).unwrap(); // its "p", echoed at last
            assert!(ping(&mut stream));
            stream.shutdown(Shutdown::Write).unwrap();
            read_all(&mut stream);
        }
        // The next client finds room at once, and the end of the saturation is logged.
        let mut next = connect(proxy.port);
        assert!(ping(&mut next));
        let room = proxy.wait_for_line("room again", Duration::from_secs(10));
        assert!(room.is_some(), "{}", proxy.output());
        assert_eq!(proxy.output().matches("workers are busy").count(), 1);
    }
}

/// At `log_level = "debug"`, a write held up by a slow reader is logged with the
/// connection id and how long it blocked.
#[test]
fn logs_backpressure_from_a_slow_reader() {
    // The message comes from the blocking copy loop of threads mode.
    for target in [Target::Rsp] {
        let backend = Backend::large();
        let mut proxy = target.start_with(&[backend.port], "log_level = \"debug\"");
        let mut stream = connect(proxy.port);
        stream.write_all(GET_ROOT.as_bytes()).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..10 {
            stream.read_exact(&mut buf).unwrap();
            thread::sleep(Duration::from_millis(300));
        }
        let line = proxy.wait_for_line("write to client blocked for", Duration::from_secs(10));
        let line = line.unwrap_or_else(|| panic!("no backpressure line in {}", proxy.output()));
        assert!(
            line.starts_with('[') && line.contains("] conn 1:"),
            "{line}"
        );
        assert!(line.ends_with("ms (slow reader)"), "{line}");
    }
}

/// Each connection ends with one info line: id, client, backend, bytes each way,
/// duration, outcome.
#[test]
fn logs_one_summary_line_per_connection() {
    for target in Target::rsp_modes() {
        let backend = Backend::hello();
        let mut proxy = target.start(backend.port);
        let response = http_get(proxy.port, "/").unwrap();
        let line = proxy
            .wait_for_line("conn 1 ", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{target:?}: no summary in {}", proxy.output()));
        let fields = format!(
            " -> 127.0.0.1:{}: {} B up, {} B down, ",
            backend.port,
            GET_ROOT.len(),
            response.len()
        );
        assert!(
            parse_stamped(&line).is_some(),
            "no [timestamp] first: {line}"
        );
        assert!(line.contains("] conn 1 127.0.0.1:"), "{line}");
        assert!(line.contains(&fields), "{line} lacks {fields}");
        assert!(line.ends_with(" s, eof"), "{line}");
        assert_eq!(proxy.output().matches("conn 1 ").count(), 1);
    }
}
