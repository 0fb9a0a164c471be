//! The stats listener, in both modes: exact counts on `/metrics`, the page in a real
//! browser (headless Chromium) while traffic flows, and bad requests to the stats port.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const STATS: &str = "stats = \"127.0.0.1:0\"\n";

/// Six connections over three backends: two each, counted exactly on `/metrics`.
#[test]
fn metrics_count_six_connections_over_three_backends_as_two_each() {
    for target in Target::rsp_modes() {
        let backends = [Backend::hello(), Backend::hello(), Backend::hello()];
        let ports: Vec<u16> = backends.iter().map(|b| b.port).collect();
        let mut proxy = target.start_with(&ports, STATS);
        let stats = stats_port(&mut proxy);
        for _ in 0..6 {
            assert_hello(&http_get(proxy.port, "/").unwrap());
        }
        // The summary is counted as the connection closes, just after the client's EOF.
        let text = eventually_metrics(stats, |text| {
            ports.iter().all(|p| eof_count(text, *p) == 2.0)
                && metric(text, "rsp_connections_open", "") == Some(0.0)
        });
        for port in &ports {
            let b = format!("backend=\"127.0.0.1:{port}\"");
            assert_eq!(eof_count(&text, *port), 2.0, "{target:?}:\n{text}");
            let opened = metric(&text, "rsp_backend_connections_opened_total", &b);
            assert_eq!(opened, Some(2.0), "{target:?}:\n{text}");
            assert_eq!(metric(&text, "rsp_backend_up", &b), Some(1.0));
            assert_eq!(metric(&text, "rsp_backend_connections_open", &b), Some(0.0));
            let down = format!("{b},direction=\"to_client\"");
            assert!(metric(&text, "rsp_bytes_total", &down).unwrap_or(0.0) > 0.0);
        }
        assert_eq!(metric(&text, "rsp_connections_open", ""), Some(0.0));
        assert!(
            !text.contains("127.0.0.1:0\""),
            "a client address in a label?"
        );
        assert!(
            text.contains("# TYPE rsp_connections_total counter"),
            "{text}"
        );
    }
}

/// Garbage and a huge request to the stats port get `400` and a close; a client that
/// sends nothing holds only the stats thread; rsp serves throughout.
#[test]
fn bad_requests_to_the_stats_port_get_400_and_rsp_keeps_serving() {
    for target in Target::rsp_modes() {
        let backend = Backend::hello();
        let mut proxy = target.start_with(&[backend.port], STATS);
        let stats = stats_port(&mut proxy);
        let silent = connect(stats); // Holds the stats thread for up to 2 s.
        assert_hello(&http_get(proxy.port, "/").unwrap());

        let mut garbage = connect(stats);
        garbage.write_all(b"\x16\x03\x01 garbage\r\n\r\n").unwrap();
        let answer = read_all(&mut garbage, "the answer to garbage").unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{target:?}: {answer:?}");

        let mut huge = connect(stats);
        let writer = {
            let mut huge = huge.try_clone().unwrap();
            thread::spawn(move || {
                let line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(1 << 20));
                let _ = huge.write_all(line.as_bytes()); // cut short by the close
            })
        };
        let mut head = [0u8; 12];
        huge.read_exact(&mut head)
            .expect("an answer to a huge request");
        assert_eq!(&head, b"HTTP/1.1 400", "{target:?}");
        writer.join().unwrap();

        assert_hello(&http_get(proxy.port, "/").unwrap());
        assert!(metrics(stats).contains("rsp_uptime_seconds"));
        drop(silent);
    }
}

/// Headless Chromium loads the page while clients come and go; two dumps of its DOM a
/// few seconds apart show different connection counts.
#[test]
fn the_page_in_a_real_browser_shows_the_numbers_change_under_load() {
    // CI installs Chromium (.ci/run) and must run this; a reader's machine may not have it.
    if !std::path::Path::new("/usr/bin/chromium").exists() && std::env::var_os("CI").is_none() {
        skip(
            "the stats page in a real browser: /usr/bin/chromium is not installed (apt install chromium)",
        );
        return;
    }
    for target in Target::rsp_modes() {
        let backend = Backend::hello();
        let mut proxy = target.start_with(&[backend.port], STATS);
        let stats = stats_port(&mut proxy);
        let stop = Arc::new(AtomicBool::new(false));
        let load = {
            let (stop, port) = (stop.clone(), proxy.port);
            thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    assert_hello(&http_get(port, "/").unwrap());
                    thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let first = total_on_page(stats, &format!("{target:?}"));
        thread::sleep(Duration::from_secs(1));
        let second = total_on_page(stats, &format!("{target:?}"));
        stop.store(true, Ordering::SeqCst);
        load.join().unwrap();
        assert!(second > first, "{target:?}: total {first} then {second}");
    }
}

/// Loads the page in headless Chromium, lets it run, dumps its DOM and returns the total
/// connections shown for the one backend.
fn total_on_page(stats: u16, what: &str) -> u64 {
    let profile = temp_file("chromium-profile", "");
    std::fs::remove_file(&profile).unwrap();
    let output = Command::new("/usr/bin/chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            &format!("--user-data-dir={}", profile.display()),
            "--virtual-time-budget=3000",
            "--dump-dom",
            &format!("http://127.0.0.1:{stats}/"),
        ])
        .output()
        .expect("run /usr/bin/chromium (the Debian package `chromium`)");
    let _ = std::fs::remove_dir_all(&profile);
    let dom = String::from_utf8_lossy(&output.stdout);
    let total = dom
        .split("<td class=\"total\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .and_then(|n| n.parse().ok());
    total.unwrap_or_else(|| {
        panic!(
            "{what}: no backend total on the page; DOM:\n{dom}\nstderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// `rsp --check` on a config with `extra`: its exit code and output.
fn check(extra: &str) -> (Option<i32>, String) {
    let path = rsp_config(&[8888], extra).display().to_string();
    run_to_exit(Target::Rsp.binary(), &["--check", &path], CLIENT_TIMEOUT)
}

/// `--check` prints `stats`, and warns when it is reachable from other machines; a bad
/// value is a one-line error naming the key.
#[test]
fn check_warns_about_a_stats_address_off_loopback() {
    let (code, out) = check("stats = \"0.0.0.0:8001\"");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("warning: stats = \"0.0.0.0:8001\" is reachable from other machines"));
    assert!(
        out.lines().any(|l| l == "stats = \"0.0.0.0:8001\""),
        "{out}"
    );
    let (code, out) = check("stats = \"127.0.0.1:8001\"");
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("warning"), "{out}");
    let (code, out) = check("stats = 8001");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(": stats: expected a \"host:port\" string, got number 8001"),
        "{out}"
    );
}
