//! The configuration: `proxy.lua` read once at start into a plain Rust struct.

use std::net::SocketAddr;
use std::time::Duration;

/// How rsp moves bytes: one thread per direction, or one mio event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A pool of worker threads, blocking copies (the default).
    Threads,
    /// One event-loop thread with per-direction write queues.
    Mio,
}

/// One backend as the user wrote it and as it resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The text from the config, e.g. `"localhost:8888"`, used in log lines.
    pub name: String,
    /// The address resolved once at start.
    pub addr: SocketAddr,
}

/// Everything rsp needs to run, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to accept clients; port 0 lets the OS choose.
    pub listen: SocketAddr,
    /// Backends, chosen round-robin; never empty.
    pub backends: Vec<Backend>,
    /// Threads mode: connections served at once.
    pub workers: usize,
    /// Bytes per read in the copy loop.
    pub buffer_size: usize,
    /// How long a backend connect may take.
    pub connect_timeout: Duration,
    /// Close a connection with no bytes either way for this long; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// How long a backend that failed to connect is skipped.
    pub backend_retry: Duration,
    /// How long Ctrl-C waits for open connections.
    pub drain_timeout: Duration,
    /// error | warn | info | debug | trace.
    pub log_level: log::LevelFilter,
    /// Threads or mio.
    pub mode: Mode,
    /// Mio mode: bytes queued per direction before the source is paused.
    pub max_buffered: usize,
}
