//! Reload on SIGHUP, in both modes: open connections are untouched (a 100 MiB transfer
//! across 5 reloads arrives byte-identical), no client is refused or reset while rsp
//! reloads, new clients go to the new backends, a broken config changes nothing, and
//! counters survive.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A config for `target` in front of `backends`, plus `extra`, and rsp started on it.
fn start(target: Target, backends: &[u16], extra: &str) -> (Proxy, PathBuf) {
    let path = rsp_config(backends, &config_extra(target, extra));
    let proxy = Proxy::spawn(target.binary(), &[path.display().to_string()]);
    (proxy, path)
}

fn config_extra(target: Target, extra: &str) -> String {
    format!("mode = \"{}\"\n{extra}", config_mode(target))
}

/// The `mode` rsp runs in for `target`.
fn config_mode(target: Target) -> &'static str {
    match target {
        Target::RspMio => "mio",
        _ => "threads",
    }
}

/// Rewrites the config at `path` for `backends` plus `extra` (same form as [`start`]).
fn rewrite(path: &Path, target: Target, backends: &[u16], extra: &str) {
    let fresh = rsp_config(backends, &config_extra(target, extra));
    std::fs::rename(fresh, path).unwrap();
}

/// The reload summary lines so far (`reload: backends +1 -0, …`), not its warnings.
fn reloads(proxy: &Proxy) -> usize {
    proxy
        .output()
        .lines()
        .filter(|l| l.contains("] reload: ") && !l.contains("cannot change"))
        .count()
}

/// Sends SIGHUP and waits for the reload's summary line (the `n`-th).
fn reload(proxy: &Proxy, n: usize) {
    proxy.signal("HUP");
    let done = proxy.eventually(Duration::from_secs(20), |p| reloads(p) >= n);
    assert!(done, "no reload line #{n}; output:\n{}", proxy.output());
}

/// A transfer of 100 MiB from the backend stays in flight across 5 reloads (each changes
/// a timeout) and arrives byte for byte.
#[test]
fn a_100_mib_transfer_across_5_reloads_arrives_byte_identical() {
    const SIZE: usize = 100 << 20;
    let data = Arc::new(random_bytes(SIZE, 21));
    let expected = sha256(&data);
    for target in Target::rsp_modes() {
        let body = Arc::clone(&data);
        let backend = Backend::start(move |mut stream| {
            let _ = stream.write_all(&body);
        });
        let (proxy, path) = start(target, &[backend.port], "");
        let (go_on, wait) = mpsc::channel::<()>();
        let port = proxy.port;
        let reader = thread::spawn(move || {
            let mut client = connect(port);
            let mut got = vec![0u8; 1 << 20];
            client.read_exact(&mut got).unwrap();
            wait.recv().unwrap(); // In flight until the reloads are done.
            client.read_to_end(&mut got).unwrap();
            got
        });
        for i in 1..=5 {
            rewrite(
                &path,
                target,
                &[backend.port],
                &format!("idle_timeout = {}", 100 + i),
            );
            reload(&proxy, i);
        }
        go_on.send(()).unwrap();
        let got = reader.join().unwrap();
        assert_eq!(got.len(), SIZE, "{target:?}");
        assert_eq!(sha256(&got), expected, "{target:?}: the bytes differ");
        let out = proxy.output();
        assert!(out.contains("reload: idle_timeout 104 → 105"), "{out}");
    }
}

/// Clients connect as fast as they can while rsp reloads 10 times: every one is served.
#[test]
fn a_tight_connect_loop_across_10_reloads_sees_no_refused_or_reset_connection() {
    for target in Target::rsp_modes() {
        let (a, b) = (Backend::hello(), Backend::hello());
        let (proxy, path) = start(target, &[a.port], "");
        let stop = Arc::new(AtomicBool::new(false));
        let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let client = {
            let (stop, served, failed, port) =
                (stop.clone(), served.clone(), failed.clone(), proxy.port);
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut errors = Vec::new();
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                        s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
                        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                        let mut answer = Vec::new();
                        s.read_to_end(&mut answer)?;
                        Ok(answer)
                    }) {
                        Ok(answer) if body(&answer) == HELLO.as_bytes() => {
                            served.fetch_add(1, Ordering::SeqCst);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            errors.push(format!("{other:?}"));
                        }
                    }
                }
                errors
            })
        };
        for i in 1..=10 {
            let backends = if i % 2 == 0 { [a.port] } else { [b.port] };
            rewrite(&path, target, &backends, &format!("connect_timeout = {i}"));
            reload(&proxy, i);
            // Two more clients served: the second one came after the reload.
            let before = served.load(Ordering::SeqCst);
            let more = proxy.eventually(Duration::from_secs(20), |_| {
                served.load(Ordering::SeqCst) >= before + 2 || failed.load(Ordering::SeqCst) > 0
            });
            assert!(more, "{target:?}: the client loop stalled");
        }
        stop.store(true, Ordering::SeqCst);
        let errors = client.join().unwrap();
        let (served, failed) = (served.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
        println!("{target:?}: 10 reloads, {served} clients served, {failed} failed");
        assert_eq!(failed, 0, "{target:?}: {errors:?}");
        assert!(served > 0, "{target:?}: no client served");
        assert!(a.accepted.load(Ordering::SeqCst) > 0 && b.accepted.load(Ordering::SeqCst) > 0);
    }
}

/// A reload that replaces backend A by B: new clients go to B, and a connection open to
/// A carries on to its end.
#[test]
fn a_reload_from_a_to_b_sends_new_clients_to_b_while_a_finishes() {
    for target in Target::rsp_modes() {
        let (a, b) = (Backend::echo(), Backend::hello());
        let (proxy, path) = start(target, &[a.port], "");
        let mut open = connect(proxy.port);
        open.write_all(b"before ").unwrap();
        let mut echoed = [0u8; 7];
        open.read_exact(&mut echoed).unwrap();
        rewrite(&path, target, &[b.port], "");
        reload(&proxy, 1);
        assert!(
            proxy.output().contains("reload: backends +1 -1"),
            "{}",
            proxy.output()
        );
        for _ in 0..4 {
            assert_hello(&http_get(proxy.port, "/").unwrap());
        }
        assert_eq!(b.accepted.load(Ordering::SeqCst), 4, "{target:?}");
        assert_eq!(a.accepted.load(Ordering::SeqCst), 1, "{target:?}");
        open.write_all(b"and after").unwrap();
        open.shutdown(Shutdown::Write).unwrap();
        let rest = read_all(&mut open, "the rest of A's echo").unwrap();
        assert_eq!(rest, b"and after", "{target:?}");
    }
}

/// A config with a syntax error changes nothing: one error line with file and line, and
/// rsp serves on. Keys that need a restart keep their value, with a warning each.
#[test]
fn a_broken_config_on_reload_changes_nothing_and_says_where() {
    for target in Target::rsp_modes() {
        let backend = Backend::hello();
        let (mut proxy, path) = start(target, &[backend.port], "");
        std::fs::write(&path, "listen = \"127.0.0.1:0\"\nbackends = {\n").unwrap();
        proxy.signal("HUP");
        let line = proxy.wait_for_line("reload failed", Duration::from_secs(20));
        let line = line.unwrap_or_else(|| panic!("no error line:\n{}", proxy.output()));
        // Lua shortens a long path to "...end/of/it"; its end and the line are kept.
        assert!(
            line.contains("proxy.lua:3: unexpected symbol near <eof>"),
            "{target:?}: {line}"
        );
        assert_hello(&http_get(proxy.port, "/").unwrap());

        // The other mode where this build has it (without the `mio` feature a config
        // with `mode = "mio"` is an error), and a loop count that is not the default.
        let other = match target {
            Target::RspMio => "threads",
            _ if cfg!(feature = "mio") => "mio",
            _ => "threads",
        };
        let loops = thread::available_parallelism().map_or(1, |n| n.get()) + 1;
        let extra = format!("listen = \"127.0.0.1:1\"\nmode = \"{other}\"\nloops = {loops}\n");
        std::fs::write(&path, rsp_config_text(backend.port) + &extra).unwrap();
        reload(&proxy, 1);
        let out = proxy.output();
        let mut fixed = vec!["listen", "loops"];
        if other != config_mode(target) {
            fixed.push("mode");
        }
        for key in fixed {
            let warning = format!("reload: {key} cannot change without a restart");
            assert_eq!(out.matches(&warning).count(), 1, "{target:?}:\n{out}");
        }
        assert_hello(&http_get(proxy.port, "/").unwrap());
        assert!(proxy.child.try_wait().unwrap().is_none(), "rsp exited");
    }
}

/// A config's text without its `mode`, listening on port 0 in front of one backend.
fn rsp_config_text(backend: u16) -> String {
    std::fs::read_to_string(rsp_config(&[backend], "")).unwrap()
}

/// The counters on `/metrics` of a backend that stays are the same after a reload.
#[test]
fn counters_on_metrics_survive_a_reload() {
    for target in Target::rsp_modes() {
        let (a, b) = (Backend::hello(), Backend::hello());
        let stats_key = "stats = \"127.0.0.1:0\"";
        let (mut proxy, path) = start(target, &[a.port], stats_key);
        let stats = stats_port(&mut proxy);
        for _ in 0..4 {
            assert_hello(&http_get(proxy.port, "/").unwrap());
        }
        let counted = |text: &str| eof_count(text, a.port) == 4.0;
        let before = eventually_metrics(stats, counted);
        rewrite(&path, target, &[a.port, b.port], stats_key);
        reload(&proxy, 1);
        let after = metrics(stats);
        assert_eq!(
            eof_count(&after, a.port),
            4.0,
            "{target:?}: before\n{before}\nafter\n{after}"
        );
        assert_eq!(
            metric(&after, "rsp_reloads_total", "result=\"ok\""),
            Some(1.0)
        );
        for _ in 0..2 {
            assert_hello(&http_get(proxy.port, "/").unwrap());
        }
        let both = |t: &str| eof_count(t, a.port) + eof_count(t, b.port) == 6.0;
        let text = eventually_metrics(stats, both);
        assert!(eof_count(&text, b.port) >= 1.0, "{target:?}:\n{text}");
    }
}

/// A reload keeps the health state of a backend that stays (its node is reused: a DOWN
/// backend stays DOWN, with no second DOWN line, as a fresh node starting UP would give),
/// and the health checks follow the new backends: one added by the reload is probed.
#[test]
fn a_reload_keeps_health_states_and_probes_a_new_backend() {
    for target in Target::rsp_modes() {
        let live = Backend::hello();
        let (down, added) = (dead_port(), dead_port());
        let extra = "stats = \"127.0.0.1:0\"\nbackend_retry = 60\n\
                     health_check = { interval = 0.2, timeout = 0.5, rise = 2, fall = 1 }";
        let (mut proxy, path) = start(target, &[live.port, down], extra);
        let stats = stats_port(&mut proxy);
        let down_line = format!("backend 127.0.0.1:{down} is DOWN");
        let seen = proxy.wait_for_line(&down_line, Duration::from_secs(20));
        assert!(
            seen.is_some(),
            "{target:?}: no DOWN line:\n{}",
            proxy.output()
        );
        let health = |text: &str, port: u16| {
            let labels = format!("backend=\"127.0.0.1:{port}\"");
            metric(text, "rsp_backend_health_up", &labels)
        };
        assert_eq!(health(&metrics(stats), down), Some(0.0), "{target:?}");

        rewrite(&path, target, &[live.port, down, added], extra);
        reload(&proxy, 1);
        let text = metrics(stats);
        assert_eq!(
            health(&text, down),
            Some(0.0),
            "{target:?}: DOWN lost:\n{text}"
        );
        let added_line = format!("backend 127.0.0.1:{added} is DOWN");
        let probed = proxy.wait_for_line(&added_line, Duration::from_secs(20));
        assert!(
            probed.is_some(),
            "{target:?}: the new backend was never probed"
        );
        for _ in 0..4 {
            assert_hello(&http_get(proxy.port, "/").unwrap());
        }
        let out = proxy.output();
        assert_eq!(out.matches(&down_line).count(), 1, "{target:?}:\n{out}");
        let threads = proxy.eventually(Duration::from_secs(10), |p| {
            p.thread_names()
                .iter()
                .filter(|n| *n == "health-check")
                .count()
                == 1
        });
        assert!(threads, "{target:?}: not one health-check thread");
    }
}
