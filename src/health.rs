//! Active health checks: one thread probes every backend every `interval`, and moves it
//! DOWN after `fall` failed probes in a row and back UP after `rise` good ones.
//!
//! ```text
//!        fall failed probes in a row
//!   UP ─────────────────────────────► DOWN
//!    ◄──────────────────────────────
//!        rise good probes in a row
//! ```
//!
//! A probe is a TCP connect within `timeout`; with `send` it writes those bytes, and with
//! `expect` it reads until it has that many bytes (or the backend closes) and requires the
//! answer to start with them: HAProxy's `tcp-check send`/`expect` style, enough for
//! `GET /health HTTP/1.0` → `HTTP/1.0 200`. The whole probe, connect to answer, gets
//! `timeout`; a backend that accepts and never answers fails it.
//!
//! The checks only set each node's verdict ([`Node::set_up`]); the data path reads it with
//! one atomic load per backend per client, so a slow probe never slows a client. Probes
//! run one after another on this one thread, each due `interval` after its last start;
//! backends that time out delay the others' probes by up to `timeout` each. A good probe
//! also ends a passive skip (a client connect that failed): the backend has just
//! accepted a connection, as a client's would be.
//!
//! Every change is one log line: `backend 127.0.0.1:8889 is DOWN: 3 failed checks, last:
//! connection refused` or `backend 127.0.0.1:8889 is UP: 2 good checks`. The thread ends
//! when its [`Checker`] is dropped: at once between probes, or when the probe under way
//! ends. Dropping waits for that up to [`STOP_WAIT`] (a probe's `timeout` may be long, and
//! a connect cannot be interrupted), then lets the thread finish on its own.
//!
//! The checker belongs to the configuration in force ([`crate::reload::Current`]): a
//! reload drops it and starts one on the new balancer, whose nodes for the backends that
//! stay are the old ones, so their UP/DOWN state carries over (a streak under way starts
//! again). Shutdown stops it for good.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::balancer::{Balancer, Node};

/// The `health_check` table of `proxy.lua`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Time between the starts of two probes of one backend.
    pub interval: Duration,
    /// How long one probe may take, connect to answer.
    pub timeout: Duration,
    /// Good probes in a row that bring a DOWN backend UP.
    pub rise: u32,
    /// Failed probes in a row that take an UP backend DOWN.
    pub fall: u32,
    /// Bytes written once connected, if any.
    pub send: Option<String>,
    /// What the answer must start with, if anything.
    pub expect: Option<String>,
}

impl Default for Settings {
    /// `{ interval = 2, timeout = 1, rise = 2, fall = 3 }`: a plain TCP connect.
    fn default() -> Settings {
        Settings {
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            send: None,
            expect: None,
        }
    }
}

/// The longest a [`Checker`]'s drop waits for a probe under way to end.
pub const STOP_WAIT: Duration = Duration::from_secs(2);

/// The running check thread. Dropping it stops and joins the thread.
#[derive(Debug)]
pub struct Checker {
    /// Dropped to tell the thread to stop.
    stop: Option<Sender<()>>,
    /// Disconnects when the thread ends (its sender is dropped).
    ended: Option<Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checker {
    /// Starts checking `balancer`'s backends, or does nothing if `settings` is `None`
    /// (`health_check` not set).
    pub fn start(balancer: &Arc<Balancer>, settings: Option<&Settings>) -> io::Result<Checker> {
        let Some(settings) = settings.cloned() else {
            return Ok(Checker {
                stop: None,
                ended: None,
                thread: None,
            });
        };
        let (stop, stopped) = crossbeam_channel::bounded(0);
        let (ending, ended) = crossbeam_channel::bounded::<()>(0);
        let balancer = Arc::clone(balancer);
        let thread = thread::Builder::new()
            .name("health-check".into())
            .spawn(move || {
                let _ending = ending; // dropped when the thread ends, however it ends
                run(&balancer, &settings, &stopped);
            })?;
        Ok(Checker {
            stop: Some(stop),
            ended: Some(ended),
            thread: Some(thread),
        })
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        drop(self.stop.take()); // the thread's `recv_deadline` sees the disconnect
        let (Some(thread), Some(ended)) = (self.thread.take(), self.ended.take()) else {
            return;
        };
        match ended.recv_timeout(STOP_WAIT) {
            Err(RecvTimeoutError::Timeout) => {
                log::debug!("a health check is still under way; not waiting for it");
            }
            _ => {
                let _ = thread.join(); // it has ended: this returns at once
            }
        }
    }
}

/// One backend's run of results: good (`> 0`) or failed (`< 0`) probes in a row.
#[derive(Debug, Clone, Copy, Default)]
struct Streak(i64);

impl Streak {
    fn record(&mut self, good: bool) {
        self.0 = match (good, self.0) {
            (true, n) if n > 0 => n + 1,
            (true, _) => 1,
            (false, n) if n < 0 => n - 1,
            (false, _) => -1,
        };
    }
}

/// The check thread: probes each backend when it is due, until `stopped` disconnects.
fn run(balancer: &Balancer, settings: &Settings, stopped: &Receiver<()>) {
    let nodes = balancer.nodes();
    let mut streaks = vec![Streak::default(); nodes.len()];
    let mut due = vec![Instant::now(); nodes.len()];
    loop {
        let next = due.iter().min().copied().unwrap_or_else(Instant::now);
        match stopped.recv_deadline(next) {
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        for (i, node) in nodes.iter().enumerate() {
            let started = Instant::now();
            if due[i] > started {
                continue;
            }
            // The next probe is due an interval after this one started, or now if this
            // one took longer than that.
            due[i] = (due[i] + settings.interval).max(started);
            let result = probe(node, settings);
            streaks[i].record(result.is_ok());
            judge(balancer, node, settings, streaks[i], result.err());
        }
    }
}

/// Applies one probe's result to `node`: ends a skip on success, changes state after
/// `rise` or `fall` in a row, and logs each change.
fn judge(
    balancer: &Balancer,
    node: &Node,
    settings: &Settings,
    streak: Streak,
    error: Option<String>,
) {
    let name = &node.backend().name;
    match error {
        None => {
            node.clear_skip();
            if streak.0 >= i64::from(settings.rise) && node.set_up(true) {
                log::info!("backend {name} is UP: {} good checks", streak.0);
                balancer.note_all_down(balancer.none_available());
            }
        }
        Some(error) => {
            if -streak.0 >= i64::from(settings.fall) && node.set_up(false) {
                log::warn!(
                    "backend {name} is DOWN: {} failed checks, last: {error}",
                    -streak.0
                );
                balancer.note_all_down(balancer.none_available());
            }
        }
    }
}

/// One probe of `node`: connect, then send and expect if set, all within `timeout`.
/// `Err` is why it failed, in words for the log line.
fn probe(node: &Node, settings: &Settings) -> Result<(), String> {
    let deadline = Instant::now() + settings.timeout;
    let timed_out = || format!("timed out after {} s", settings.timeout.as_secs_f64());
    let mut stream =
        TcpStream::connect_timeout(&node.backend().addr, settings.timeout).map_err(|e| match e
            .kind()
        {
            io::ErrorKind::TimedOut => timed_out(),
            _ => words(&e),
        })?;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
    };
    if let Some(send) = &settings.send {
        stream
            .set_write_timeout(Some(left().ok_or_else(timed_out)?))
            .map_err(|e| words(&e))?;
        stream
            .write_all(send.as_bytes())
            .map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
                _ => words(&e),
            })?;
    }
    let Some(expect) = &settings.expect else {
        return Ok(());
    };
    let expect = expect.as_bytes();
    let mut answer = Vec::with_capacity(expect.len());
    let mut buf = [0u8; 512];
    while answer.len() < expect.len() {
        stream
            .set_read_timeout(Some(left().ok_or_else(timed_out)?))
            .map_err(|e| words(&e))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(timed_out());
            }
            Err(e) => return Err(words(&e)),
        }
    }
    if answer.starts_with(expect) {
        return Ok(());
    }
    if answer.is_empty() {
        return Err("closed without answering".into());
    }
    let got = String::from_utf8_lossy(&answer[..answer.len().min(expect.len().max(40))]);
    Err(format!(
        "answered {:?}, expected {:?}",
        got.trim_end(),
        String::from_utf8_lossy(expect)
    ))
}

/// An I/O error as the log's words: "connection refused", not "Connection refused (os
/// error 111)".
fn words(error: &io::Error) -> String {
    let text = error.to_string();
    let text = text.split(" (os error").next().unwrap_or_default();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaks_count_runs_of_one_kind() {
        let mut s = Streak::default();
        for good in [true, true, false, false, false, true] {
            s.record(good);
        }
        assert_eq!(s.0, 1);
        s.record(false);
        assert_eq!(s.0, -1);
    }

    #[test]
    fn errors_read_as_words() {
        let e = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(words(&e), "connection refused");
        assert_eq!(
            words(&io::Error::from_raw_os_error(111)),
            "connection refused"
        );
    }
}
