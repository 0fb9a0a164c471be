//! rsp as a load balancer, in both modes: active health checks (`health_check`), weights
//! and `balance = "leastconn"`, against real backends on loopback.
//!
//! Every backend here says who it is: an HTTP backend answers `backend N`, and counts the
//! client requests it served (not the health probes, which ask for `/health` or send
//! nothing). Timings are generous: a probe interval of 0.3–0.5 s and seconds of slack.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{Backend, Target, eventually, read_request, write_http_response};

/// Slack on top of what the checks need in theory (the machine is shared and busy).
const SLACK: Duration = Duration::from_secs(4);

/// An HTTP backend that answers client requests with `backend {name}` and counts them;
/// `/health` gets `health(n)` (n = health requests so far) as the status line.
struct Named {
    backend: Backend,
    served: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
}

impl Named {
    fn start(name: usize, health: fn(usize) -> &'static str) -> Named {
        let served = Arc::new(AtomicUsize::new(0));
        let probes = Arc::new(AtomicUsize::new(0));
        let (count, probed) = (Arc::clone(&served), Arc::clone(&probes));
        let backend = Backend::start(move |mut stream| {
            let Ok(path) = read_request(&mut stream) else {
                return;
            };
            if path == "/health" {
                let status = health(probed.fetch_add(1, Ordering::SeqCst));
                let _ = stream.write_all(format!("HTTP/1.0 {status}\r\n\r\n").as_bytes());
            } else if path == "/client" {
                count.fetch_add(1, Ordering::SeqCst);
                let _ = write_http_response(&mut stream, format!("backend {name}").as_bytes());
            }
        });
        Named {
            backend,
            served,
            probes,
        }
    }

    fn healthy(name: usize) -> Named {
        Named::start(name, |_| "200 OK")
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// `GET /client` through rsp: which backend answered, or the error.
fn which(port: u16) -> io::Result<usize> {
    let response = common::http_get(port, "/client")?;
    let text = String::from_utf8_lossy(&response);
    text.rsplit("backend ")
        .next()
        .filter(|_| text.starts_with("HTTP/1.0 200"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| io::Error::other(format!("not a backend's answer: {text:?}")))
}

/// The `health_check` line for a send/expect HTTP check.
fn http_check(interval: f64, timeout: f64, rise: u32, fall: u32) -> String {
    format!(
        "health_check = {{ interval = {interval}, timeout = {timeout}, rise = {rise}, \
         fall = {fall}, send = \"GET /health HTTP/1.0\\r\\n\\r\\n\", expect = \"HTTP/1.0 200\" }}\n"
    )
}

/// Waits for `needle` in rsp's output; fails naming what it waited for.
fn expect_line(
    proxy: &mut common::Proxy,
    needle: &str,
    within: Duration,
    target: Target,
) -> Duration {
    let started = Instant::now();
    proxy.wait_for_line(needle, within).unwrap_or_else(|| {
        panic!(
            "{target:?}: no {needle:?} within {within:?}; output:\n{}",
            proxy.output()
        )
    });
    started.elapsed()
}

// ---------------------------------------------------------------------------------------
// Kill and restart one of three backends while clients run
// ---------------------------------------------------------------------------------------

/// A backend on a fixed port that can be stopped (its port then refuses) and started
/// again. It closes its listener only when no connection waits to be accepted, so a
/// client rsp has already connected is served, as by a server that stops gracefully.
/// (A kill -9 would also reset the connections in its accept queue; the window left
/// here, between the last empty `accept` and the close, is a few microseconds.)
struct Restartable {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Restartable {
    fn start(name: usize, port: u16, served: Arc<AtomicUsize>) -> Restartable {
        // The port was ours a moment ago: binding again may need a few tries.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(listener) => break listener,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot bind 127.0.0.1:{port} again: {e}"),
            }
        };
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (stopping, count) = (Arc::clone(&stop), Arc::clone(&served));
        let thread = thread::spawn(move || {
            loop {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        let count = Arc::clone(&count);
                        stream.set_nonblocking(false).unwrap();
                        thread::spawn(move || {
                            if let Ok(path) = read_request(&mut stream)
                                && path == "/client"
                            {
                                count.fetch_add(1, Ordering::SeqCst);
                                let body = format!("backend {name}");
                                let _ = write_http_response(&mut stream, body.as_bytes());
                            }
                        });
                    }
                    Err(_) if stopping.load(Ordering::SeqCst) => return,
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Restartable {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap(); // the listener is closed when this returns
        }
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn a_killed_backend_is_taken_out_and_put_back_with_no_client_error() {
    for target in Target::rsp_modes() {
        let served: Vec<Arc<AtomicUsize>> = (0..3).map(|_| Arc::default()).collect();
        let mut backends: Vec<Restartable> = (0..3)
            .map(|i| Restartable::start(i, 0, Arc::clone(&served[i])))
            .collect();
        let ports: Vec<u16> = backends.iter().map(|b| b.port).collect();
        let (interval, rise, fall) = (0.5, 2u32, 3u32);
        // A long backend_retry: the probes, not the passive skip's expiry, bring it back.
        let extra = format!(
            "backend_retry = 60\nhealth_check = {{ interval = {interval}, timeout = 0.5, rise = {rise}, fall = {fall} }}\n"
        );
        let mut proxy = target.start_with(&ports, &extra);
        let port = proxy.port;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicBool::new(true));
        let clients: Vec<_> = (0..3)
            .map(|_| {
                let (errors, running) = (Arc::clone(&errors), Arc::clone(&running));
                thread::spawn(move || {
                    let mut done = 0;
                    while running.load(Ordering::SeqCst) && done < 20_000 {
                        if let Err(e) = which(port) {
                            errors.lock().unwrap().push(e.to_string());
                        }
                        done += 1;
                        thread::sleep(Duration::from_millis(10));
                    }
                })
            })
            .collect();
        let wait_served = |i: usize, more: usize, within: Duration| {
            let start = served[i].load(Ordering::SeqCst);
            eventually(within, || served[i].load(Ordering::SeqCst) >= start + more)
        };
        assert!(
            wait_served(1, 5, SLACK),
            "{target:?}: backend 1 never served"
        );

        let killed = Instant::now();
        backends[1].kill();
        let name = format!(
            "backend 127.0.0.1:{} is DOWN: {fall} failed checks",
            ports[1]
        );
        let out_budget = Duration::from_secs_f64(interval * f64::from(fall) + 0.5) + SLACK;
        expect_line(&mut proxy, &name, out_budget, target);
        let out_after = killed.elapsed();
        // Out: while it is DOWN the others serve everyone, and rsp tries it no more.
        let tried = format!("backend 127.0.0.1:{} failed", ports[1]);
        let tries = proxy.output().matches(&tried).count();
        assert!(wait_served(0, 5, SLACK) && wait_served(2, 5, SLACK));
        assert_eq!(
            proxy.output().matches(&tried).count(),
            tries,
            "{target:?}: a DOWN backend was tried:\n{}",
            proxy.output()
        );

        let restarted = Instant::now();
        backends[1] = Restartable::start(1, ports[1], Arc::clone(&served[1]));
        let up = format!("backend 127.0.0.1:{} is UP: {rise} good checks", ports[1]);
        let in_budget = Duration::from_secs_f64(interval * f64::from(rise)) + SLACK;
        expect_line(&mut proxy, &up, in_budget, target);
        let in_after = restarted.elapsed();
        assert!(
            wait_served(1, 5, SLACK),
            "{target:?}: backend 1 is UP but gets no clients"
        );
        running.store(false, Ordering::SeqCst);
        for c in clients {
            c.join().unwrap();
        }
        let errors = errors.lock().unwrap();
        let total: usize = served.iter().map(|s| s.load(Ordering::SeqCst)).sum();
        println!(
            "{target:?}: {total} requests, {} client errors; DOWN {:.2} s after the kill \
             (fall × interval = {:.1} s), UP {:.2} s after the restart (rise × interval = {:.1} s)",
            errors.len(),
            out_after.as_secs_f64(),
            interval * f64::from(fall),
            in_after.as_secs_f64(),
            interval * f64::from(rise)
        );
        assert!(errors.is_empty(), "{target:?}: client errors: {errors:?}");
    }
}

// ---------------------------------------------------------------------------------------
// A hanging backend and a 500 backend are taken out; flapping is held by `fall`
// ---------------------------------------------------------------------------------------

#[test]
fn a_hanging_backend_and_a_500_backend_are_taken_out() {
    for target in Target::rsp_modes() {
        let good = Named::healthy(0);
        let hung = Arc::new(Mutex::new(Vec::new()));
        let held = Arc::clone(&hung);
        // Accepts and reads, never answers: only the send/expect check can tell.
        let hanging = Backend::start(move |stream| held.lock().unwrap().push(stream));
        let failing = Named::start(2, |_| "500 Internal Server Error");
        let ports = [good.backend.port, hanging.port, failing.backend.port];
        let mut proxy = target.start_with(&ports, &http_check(0.3, 0.5, 2, 2));
        let budget = Duration::from_secs_f64(2.0 * (0.3 + 0.5)) + SLACK;
        let hang = format!(
            "backend 127.0.0.1:{} is DOWN: 2 failed checks, last: timed out",
            ports[1]
        );
        expect_line(&mut proxy, &hang, budget, target);
        let five = format!(
            "backend 127.0.0.1:{} is DOWN: 2 failed checks, last: answered \"HTTP/1.0 500",
            ports[2]
        );
        expect_line(&mut proxy, &five, budget, target);
        for _ in 0..12 {
            assert_eq!(which(proxy.port).unwrap(), 0, "{target:?}");
        }
        assert_eq!(failing.served(), 0, "{target:?}");
    }
}

#[test]
fn a_backend_failing_every_second_probe_stays_up_with_fall_3() {
    for target in Target::rsp_modes() {
        let steady = Named::healthy(0);
        let flapping = Named::start(1, |n| if n % 2 == 1 { "503 Busy" } else { "200 OK" });
        let ports = [steady.backend.port, flapping.backend.port];
        let mut proxy = target.start_with(&ports, &http_check(0.2, 0.5, 2, 3));
        // Ten probes of the flapping backend: five failed, never two in a row.
        let probed = proxy.eventually(Duration::from_secs(2) + SLACK * 2, |_| {
            flapping.probes.load(Ordering::SeqCst) >= 10
        });
        assert!(probed, "{target:?}: fewer than 10 probes");
        assert!(
            proxy
                .wait_for_line(" is DOWN", Duration::from_millis(100))
                .is_none(),
            "{target:?}: a backend went DOWN on single failures:\n{}",
            proxy.output()
        );
        let answers: Vec<usize> = (0..8).map(|_| which(proxy.port).unwrap()).collect();
        assert!(answers.contains(&1), "{target:?}: {answers:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Weights and least connections
// ---------------------------------------------------------------------------------------

#[test]
fn weights_3_to_1_over_400_connections() {
    for target in Target::rsp_modes() {
        let (a, b) = (Named::healthy(0), Named::healthy(1));
        let text = format!(
            "listen = \"127.0.0.1:0\"\nbackends = {{ {{ \"127.0.0.1:{}\", weight = 3 }}, \"127.0.0.1:{}\" }}\nmode = \"{}\"\n",
            a.backend.port,
            b.backend.port,
            if target == Target::RspMio {
                "mio"
            } else {
                "threads"
            }
        );
        let path = common::temp_file("proxy.lua", &text);
        let proxy = common::Proxy::spawn(target.binary(), &[path.display().to_string()]);
        let port = proxy.port;
        let workers: Vec<_> = (0..4)
            .map(|_| {
                thread::spawn(move || (0..100).map(|_| which(port).unwrap()).collect::<Vec<_>>())
            })
            .collect();
        let mut counts = [0usize; 2];
        for w in workers {
            for i in w.join().unwrap() {
                counts[i] += 1;
            }
        }
        println!("{target:?}: weights 3:1 gave {counts:?}");
        assert!(
            counts[0].abs_diff(300) <= 20 && counts[1].abs_diff(100) <= 20,
            "{target:?}: {counts:?}"
        );
        assert_eq!(
            (a.served(), b.served()),
            (counts[0], counts[1]),
            "{target:?}"
        );
    }
}

/// A backend that says its name first (`A\n`), then waits for the client to close.
fn speaks_first(name: &'static str) -> Backend {
    Backend::start(move |mut stream| {
        if stream.write_all(format!("{name}\n").as_bytes()).is_ok() {
            let _ = stream.read(&mut [0u8; 64]); // until the client closes (or sends)
        }
    })
}

/// Opens a connection through rsp and reads which backend it reached.
fn hold(port: u16) -> (String, TcpStream) {
    let stream = common::connect(port);
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).unwrap();
    (line.trim().to_string(), stream)
}

#[test]
fn leastconn_sends_new_clients_to_the_backends_with_fewest_connections() {
    for target in Target::rsp_modes() {
        let backends = [speaks_first("A"), speaks_first("B"), speaks_first("C")];
        let ports: Vec<u16> = backends.iter().map(|b| b.port).collect();
        let proxy = target.start_with(&ports, "balance = \"leastconn\"\n");
        // 30 held connections: 10 each (ties broken in turn).
        let held: Vec<(String, TcpStream)> = (0..30).map(|_| hold(proxy.port)).collect();
        let on_a = held.iter().filter(|(n, _)| n == "A").count();
        assert_eq!(on_a, 10, "{target:?}: 30 connections over 3 idle backends");
        // Close those on B and C: A keeps 10, B and C have none.
        let (kept, closed): (Vec<_>, Vec<_>) = held.into_iter().partition(|(n, _)| n == "A");
        drop(closed);
        let ended = proxy.eventually(SLACK * 2, |p| p.output().matches(", eof").count() >= 20);
        assert!(
            ended,
            "{target:?}: rsp did not end 20 connections:\n{}",
            proxy.output()
        );
        let next: Vec<(String, TcpStream)> = (0..20).map(|_| hold(proxy.port)).collect();
        let names: Vec<&str> = next.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            !names.contains(&"A"),
            "{target:?}: A already had 10: {names:?}"
        );
        let on_b = names.iter().filter(|n| **n == "B").count();
        assert_eq!(on_b, 10, "{target:?}: {names:?}");
        drop((kept, next));
    }
}

// ---------------------------------------------------------------------------------------
// All backends down
// ---------------------------------------------------------------------------------------

#[test]
fn with_every_backend_down_clients_are_turned_away_at_once_with_one_warning() {
    for target in Target::rsp_modes() {
        let ports = [common::dead_port(), common::dead_port()];
        let extra = "health_check = { interval = 0.2, timeout = 0.5, rise = 1, fall = 1 }\n";
        let mut proxy = target.start_with(&ports, extra);
        expect_line(&mut proxy, "all 2 backends are DOWN", SLACK, target);
        for _ in 0..5 {
            let started = Instant::now();
            let mut stream = common::connect(proxy.port);
            let _ = stream.write_all(b"GET /client HTTP/1.0\r\n\r\n");
            let mut got = Vec::new();
            // EOF (a close) or a reset; never an answer, never a hang.
            let result = stream.read_to_end(&mut got);
            assert!(got.is_empty(), "{target:?}: got {got:?}");
            if let Err(e) = result {
                assert!(
                    !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ),
                    "{target:?}: the client hung: {e}"
                );
            }
            assert!(
                started.elapsed() < SLACK,
                "{target:?}: took {:?}",
                started.elapsed()
            );
        }
        let warnings = proxy.output().matches("backends are DOWN").count();
        assert_eq!(warnings, 1, "{target:?}:\n{}", proxy.output());
    }
}

/// The check thread stops with rsp: SIGTERM with a probe in flight (to a backend that
/// never answers) still exits 0 within the probe's timeout.
#[test]
fn the_check_thread_stops_on_shutdown() {
    for target in Target::rsp_modes() {
        let silent = Backend::start(|stream| {
            thread::sleep(Duration::from_secs(5));
            drop(stream);
        });
        let mut proxy = target.start_with(&[silent.port], &http_check(0.2, 1.0, 2, 3));
        let probing = eventually(SLACK, || silent.accepted.load(Ordering::SeqCst) >= 1);
        assert!(probing, "{target:?}: no probe");
        let started = Instant::now();
        proxy.signal("TERM");
        let status = proxy.wait_exit(Duration::from_secs(1) + SLACK);
        assert!(
            status.is_some_and(|s| s.success()),
            "{target:?}: {status:?} after {:?}:\n{}",
            started.elapsed(),
            proxy.output()
        );
    }
}
