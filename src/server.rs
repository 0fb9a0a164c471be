//! The server: bind, print the banner, accept clients and hand them to the worker pool;
//! on Ctrl-C close the listener, drain, and return.
//!
//! The accept loop does nothing else, so a slow backend or a slow client never delays
//! the next `accept()`. Per-connection problems are logged where they happen and never
//! come back up here.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::balancer::Balancer;
use crate::config::{Config, Mode};
use crate::outcome::Outcome;
use crate::pool::{Pool, Rejected};
use crate::registry::Registry;
use crate::relay::RelaySettings;
use crate::shutdown::{self, Shutdown};
use crate::worker::{self, Accepted, Context, CopyJob};

/// How often an accept loop blocked on a full queue checks for Ctrl-C.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// How long to pause after an accept error (such as running out of file descriptors)
/// before accepting again.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How often at most an accept error is logged.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// The listen backlog: how many connected clients the kernel holds until we `accept`
/// them. std uses 128; a burst of more connects would overflow it, and each overflowed
/// client waits a 1 s SYN retry. Linux caps it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: i32 = 4096;

/// Runs the proxy described by `config` until Ctrl-C (or SIGTERM), then returns `Ok`.
/// Errors only if it cannot start (e.g. the listen address is taken).
pub fn run(config: Config) -> io::Result<()> {
    match config.mode {
        Mode::Threads => run_threads(config),
        #[cfg(feature = "mio")]
        Mode::Mio => crate::event_loop::run(config),
        #[cfg(not(feature = "mio"))]
        Mode::Mio => Err(io::Error::other("mio mode needs the `mio` feature")),
    }
}

/// The banner every rsp binary prints once it listens; the tests wait for it.
pub fn banner(port: u16) -> String {
    format!("Started.  Listening on port {port}.")
}

/// Logs the banner at info level, or prints it if the log level hides info.
pub fn announce(port: u16) {
    if log::max_level() >= log::LevelFilter::Info {
        log::info!("{}", banner(port));
    } else {
        println!("{}", banner(port));
    }
}

/// Binds the listening socket (both modes use it); the error names the address.
///
/// Built with `socket2` rather than `TcpListener::bind` for a `LISTEN_BACKLOG` larger
/// than std's 128. `SO_REUSEADDR` as std sets it: a restart can bind the port again
/// while old connections are in TIME_WAIT.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let bind = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        Ok(socket.into())
    };
    bind().map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Fds the connection limit leaves for everything else (a backend connect under way,
/// a log file, the Ctrl-C wake-up connection).
const SPARE_FDS: usize = 16;

/// How many connections fit in this process's open-files limit (`ulimit -n`): each
/// holds two fds (client and backend), after the fds open now and `SPARE_FDS`. Both
/// modes stop accepting at this limit, so no client is accepted without an fd left for
/// its backend; new clients wait in the listen backlog until a connection closes.
/// `None` if `/proc` cannot tell: running out then shows as accept or connect errors,
/// which are handled too.
pub fn connection_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    // "Max open files            20000                20000                files"
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft: usize = line.split_whitespace().nth(3)?.parse().ok()?; // or "unlimited"
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count();
    let limit = (soft.saturating_sub(open + SPARE_FDS) / 2).max(1);
    log::debug!("Connection limit: {limit} (open-files limit {soft}, {open} fds open)");
    Some(limit)
}

fn run_threads(config: Config) -> io::Result<()> {
    let listener = listen(config.listen)?;
    let local = listener.local_addr()?;
    let shutdown = Shutdown::new();
    let wake_addr = shutdown::wake_address(local);
    shutdown.install_handler(move || shutdown::wake_listener(wake_addr))?;

    let workers = config.workers.max(1);
    let copiers: Pool<CopyJob> = Pool::start("copy", workers, workers, |job: CopyJob| job())?;
    let relay = RelaySettings {
        buffer_size: config.buffer_size,
        idle_timeout: config.idle_timeout,
    };
    let ctx = Context {
        balancer: Balancer::new(config.backends.clone(), config.backend_retry),
        connect_timeout: config.connect_timeout,
        relay,
        copiers,
    };
    let pool = Pool::start("worker", workers, workers, move |job| {
        worker::serve(&ctx, job)
    })?;
    let registry = Registry::new();
    if let (Some(limit), Some(tick)) = (relay.idle_timeout, relay.tick()) {
        registry.start_idle_check(limit, tick)?;
    }
    let limit = connection_limit();
    announce(local.port());

    let pending = accept_loop(&listener, &pool, &registry, &shutdown, limit);
    drop(listener); // from here on, new connections are refused
    drain(&registry, pending, &pool, config.drain_timeout);
    Ok(())
}

/// Accepts clients until a shutdown begins, never more than `limit` open at once (see
/// [`connection_limit`]). Returns a client that was accepted but not yet queued when the
/// shutdown began (the drain still serves it).
fn accept_loop(
    listener: &TcpListener,
    pool: &Pool<Accepted>,
    registry: &Arc<Registry>,
    shutdown: &Shutdown,
    limit: Option<usize>,
) -> Option<Accepted> {
    let mut saturated = false;
    let mut at_limit = false;
    let mut last_logged: Option<Instant> = None;
    loop {
        if let Some(max) = limit
            && !wait_for_room(registry, max, shutdown, &mut at_limit)
        {
            return None;
        }
        let accepted = listener.accept();
        if shutdown.is_stopping() {
            return None; // the handler's wake-up connection, or a client just too late
        }
        let (client, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                accept_failed(&e, &mut last_logged);
                continue;
            }
        };
        let job = Accepted {
            client,
            addr,
            ticket: registry.admit(),
            accepted_at: Instant::now(),
        };
        if let Err(job) = hand_off(pool, job, &mut saturated, shutdown) {
            return job;
        }
    }
}

/// Waits while `max` connections are open; logs once when the limit is reached and once
/// when there is room again. `false` if a shutdown began meanwhile.
fn wait_for_room(
    registry: &Registry,
    max: usize,
    shutdown: &Shutdown,
    at_limit: &mut bool,
) -> bool {
    while !registry.wait_below(max, SHUTDOWN_POLL) {
        if !*at_limit {
            *at_limit = true;
            log_connection_limit(max, true);
        }
        if shutdown.is_stopping() {
            return false;
        }
    }
    if *at_limit {
        *at_limit = false;
        log_connection_limit(max, false);
    }
    true
}

/// Logs reaching the connection limit (`reached`) or getting below it again; both modes.
pub fn log_connection_limit(max: usize, reached: bool) {
    if reached {
        log::warn!(
            "At the connection limit ({max}, from the open-files limit): new clients wait \
             in the listen backlog."
        );
    } else {
        log::info!("Below the connection limit again; accepting.");
    }
}

/// Handles an accept error. A client that gave up while queued (or a signal) is simply
/// skipped. Anything else, above all running out of fds (`EMFILE`), would fail again at
/// once, as the client stays queued: pause [`ACCEPT_PAUSE`] so we do not spin, and log
/// at most once per `ACCEPT_LOG_EVERY`. Open connections go on meanwhile; queued
/// clients wait in the backlog and are accepted once fds are free again.
fn accept_failed(e: &io::Error, last_logged: &mut Option<Instant>) {
    if accept_error_pauses(e, last_logged) {
        thread::sleep(ACCEPT_PAUSE);
    }
}

/// Whether accept error `e` calls for a pause of [`ACCEPT_PAUSE`] (see
/// `accept_failed`); logs it if so, at most once per `ACCEPT_LOG_EVERY` since
/// `last_logged`. Both modes use it (mio mode pauses by not polling the listener).
pub fn accept_error_pauses(e: &io::Error, last_logged: &mut Option<Instant>) -> bool {
    if matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::Interrupted
    ) {
        return false;
    }
    let now = Instant::now();
    if last_logged.is_none_or(|t| now >= t + ACCEPT_LOG_EVERY) {
        *last_logged = Some(now);
        let level = if crate::fds::out_of_fds(e) {
            log::Level::Error
        } else {
            log::Level::Warn
        };
        log::log!(
            level,
            "accept failed: {e}; pausing accepts for {} ms",
            ACCEPT_PAUSE.as_millis()
        );
    }
    true
}

/// Queues `job` for a worker, blocking while the queue is full. Logs once when the pool
/// becomes saturated and once when it has room again. `Err` means the accept loop must
/// stop (shutdown began, with the job if it is still unserved).
fn hand_off(
    pool: &Pool<Accepted>,
    job: Accepted,
    saturated: &mut bool,
    shutdown: &Shutdown,
) -> Result<(), Option<Accepted>> {
    let mut job = match pool.submit(job) {
        Ok(()) => {
            if *saturated && pool.queued() <= pool.capacity() / 2 {
                *saturated = false;
                log::info!("Workers have room again; accepting at full speed.");
            }
            return Ok(());
        }
        Err(Rejected::Full(job)) => job,
        Err(Rejected::Closed(_)) => return Err(None),
    };
    if !*saturated {
        *saturated = true;
        log::warn!(
            "All workers are busy and the queue is full: new clients wait in the listen backlog."
        );
    }
    loop {
        match pool.submit_timeout(job, SHUTDOWN_POLL) {
            Ok(()) => return Ok(()),
            Err(Rejected::Full(back)) if shutdown.is_stopping() => return Err(Some(back)),
            Err(Rejected::Full(back)) => job = back,
            Err(Rejected::Closed(_)) => return Err(None),
        }
    }
}

/// Waits up to `timeout` for open connections to finish, then cuts the rest.
fn drain(registry: &Registry, pending: Option<Accepted>, pool: &Pool<Accepted>, timeout: Duration) {
    let open = registry.len();
    shutdown::log_drain_start(open, timeout);
    let deadline = Instant::now() + timeout;
    if let Some(job) = pending {
        // Accepted before the signal: it still deserves service if a worker frees up.
        let _ = pool.submit_timeout(job, timeout);
    }
    let left = deadline.saturating_duration_since(Instant::now());
    if registry.wait_empty(left) {
        shutdown::log_drain_end(open, 0);
        return;
    }
    let cut = registry.cut_all(Outcome::Shutdown);
    // Cut sockets wake their threads at once; give them a moment to log their summaries.
    registry.wait_empty(Duration::from_secs(1));
    shutdown::log_drain_end(open, cut);
}
