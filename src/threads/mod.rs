//! Threads mode, the card's design: a blocking accept loop hands each client to a worker
//! pool; each worker connects to a backend and runs the two copy directions, one on a
//! copy thread, so a blocked `write_all` in one direction never holds up the other.
//! On Ctrl-C: serve the clients already in the listen backlog, close the listener,
//! drain, and return.
//!
//! The accept loop does nothing else, so a slow backend or a slow client never delays
//! the next `accept()`. Per-connection problems are logged where they happen and never
//! come back up here.
//!
//! | part | module |
//! |---|---|
//! | an elastic pool of threads fed by a bounded crossbeam channel | [`pool`] |
//! | one client, served by a worker: connect, relay, summary | [`worker`] |
//! | one connection's shared state: sockets, clocks, counters | [`conn`] |
//! | the copy loop for one direction, half-close, idle check | [`relay`] |
//! | what Ctrl-C waits for and cuts | [`registry`] |
//! | the clients in the listen backlog at Ctrl-C | [`backlog`] |

pub mod backlog;
pub mod conn;
pub mod pool;
pub mod registry;
pub mod relay;
pub mod worker;

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::listen::{
    ACCEPT_PAUSE, accept_error_pauses, announce, connection_limit, listen, log_connection_limit,
};
use crate::outcome::Outcome;
use crate::reload::Current;
use crate::shutdown::{self, ListenerWake, Shutdown};
use crate::stats::{Live, ModeFigures};
use backlog::Backlog;
use crossbeam_channel::{SendTimeoutError, TrySendError};
use pool::{Growth, Pool, wait_for_threads};
use registry::Registry;
use relay::RelaySettings;
use worker::{Accepted, Context, CopyJob};

/// How often an accept loop blocked on a full queue checks for Ctrl-C.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// Runs threads mode until Ctrl-C (or SIGTERM), then drains and returns `Ok`. New
/// clients get the configuration in force in `current` (SIGHUP reloads it).
pub fn run(current: Arc<Current>) -> io::Result<()> {
    let config = current.get().config.clone();
    let listener = listen(config.listen)?;
    let local = listener.local_addr()?;
    let shutdown = Shutdown::new();
    let wake = ListenerWake::new(local);
    let waking = Arc::clone(&wake);
    shutdown.install_handler(move || waking.wake())?;
    let stopper = Arc::clone(&shutdown);
    crate::reload::watch_signals(Arc::clone(&current), move || stopper.signal())?;

    let workers = config.workers.max(1);
    let copiers: Pool<CopyJob> = Pool::start("copy", workers, workers, |job: CopyJob| job())?;
    let copy_growth = copiers.growth();
    let copy_watch = copiers.watch();
    let ctx = Context {
        current: Arc::clone(&current),
        copiers,
    };
    let pool = Pool::start("worker", workers, workers, move |job| {
        worker::serve(&ctx, job)
    })?;
    let registry = Registry::new();
    // A second Ctrl-C resets every connection before the process exits (see `shutdown`),
    // and gives their threads until `deadline` to log their summaries.
    let open = Arc::clone(&registry);
    shutdown.on_second_signal(move |deadline| {
        let cut = open.cut_all(Outcome::Shutdown);
        open.wait_empty(deadline.saturating_duration_since(Instant::now()));
        cut
    });
    let in_force = Arc::clone(&current);
    registry.start_idle_check(move || RelaySettings::of(&in_force.get().config).tick())?;
    let (worker_watch, capacity) = (pool.watch(), pool.capacity());
    let (open, stopping) = (Arc::downgrade(&registry), Arc::clone(&shutdown));
    current.stats().set_view(move || {
        let workers = worker_watch.figures();
        Live {
            open: open.upgrade().map_or(0, |r| r.len()),
            draining: stopping.is_stopping(),
            mode: ModeFigures::Threads {
                workers,
                copiers: copy_watch.figures(),
                queued: workers.queued,
                handoff_full: workers.queued >= capacity,
            },
        }
    });
    let limit = connection_limit();
    announce(local.port());

    let growth = [pool.growth(), copy_growth];
    let pending = accept_loop(
        &listener, &pool, &growth, &registry, &shutdown, limit, &wake,
    );
    let deadline = Instant::now() + config.drain_timeout;
    let backlog = Backlog {
        listener,
        wake: &wake,
        limit,
    };
    backlog.serve(pending, &registry, &pool, deadline);
    // From here on, new connections are refused.
    drain(&registry, deadline, &shutdown);
    Ok(())
}

/// Accepts clients until a shutdown begins, never more than `limit` open at once (see
/// [`connection_limit`]), nor while a pool in `growth` cannot start a thread for the next
/// one. Returns a client that was accepted but not yet queued when the shutdown began
/// (the drain still serves it).
fn accept_loop(
    listener: &TcpListener,
    pool: &Pool<Accepted>,
    growth: &[Growth],
    registry: &Arc<Registry>,
    shutdown: &Shutdown,
    limit: Option<usize>,
    wake: &ListenerWake,
) -> Option<Accepted> {
    let mut saturated = false;
    let mut at_limit = false;
    let mut starved = false;
    let mut last_logged: Option<Instant> = None;
    loop {
        if let Some(max) = limit
            && !wait_for_room(registry, max, shutdown, &mut at_limit)
        {
            return None;
        }
        if !wait_for_threads(
            growth,
            ACCEPT_PAUSE,
            || shutdown.is_stopping(),
            &mut starved,
        ) {
            return None;
        }
        let accepted = listener.accept();
        if shutdown.is_stopping() {
            // The handler's wake-up connection, or a client queued before it: served.
            let client = accepted.ok().filter(|(_, addr)| !wake.is_wake(*addr));
            return client.map(|(client, addr)| accept(registry, client, addr));
        }
        let (client, addr) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                accept_failed(&e, &mut last_logged);
                continue;
            }
        };
        let job = accept(registry, client, addr);
        if let Err(job) = hand_off(pool, job, &mut saturated, shutdown) {
            return job;
        }
    }
}

/// A client just accepted: admitted to the registry, on its way to a worker.
fn accept(
    registry: &Arc<Registry>,
    client: std::net::TcpStream,
    addr: std::net::SocketAddr,
) -> Accepted {
    Accepted {
        client,
        addr,
        ticket: registry.admit(),
        accepted_at: Instant::now(),
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
        Err(TrySendError::Full(job)) => job,
        Err(TrySendError::Disconnected(_)) => return Err(None),
    };
    if !*saturated {
        *saturated = true;
        log::warn!(
            "All {} workers are busy and {} clients wait for one: new clients wait in the \
             listen backlog. Raise `workers` in proxy.lua if this happens often.",
            pool.max_threads(), // a full channel: a spare thread would have taken a job
            pool.queued()
        );
    }
    loop {
        match pool.submit_timeout(job, SHUTDOWN_POLL) {
            Ok(()) => return Ok(()),
            Err(SendTimeoutError::Timeout(back)) if shutdown.is_stopping() => {
                return Err(Some(back));
            }
            Err(SendTimeoutError::Timeout(back)) => job = back,
            Err(SendTimeoutError::Disconnected(_)) => return Err(None),
        }
    }
}

/// Waits until `deadline` for open connections to finish, then cuts the rest. A second
/// signal meanwhile ends the process from the signal handler instead.
fn drain(registry: &Registry, deadline: Instant, shutdown: &Shutdown) {
    let open = registry.len();
    shutdown::log_drain_start(open, deadline.saturating_duration_since(Instant::now()));
    let left = deadline.saturating_duration_since(Instant::now());
    if registry.wait_empty(left) {
        if shutdown.is_exiting() {
            shutdown::wait_for_exit(); // emptied by the second signal's cut
        }
        shutdown::log_drain_end(open, 0);
        return;
    }
    let cut = registry.cut_all(Outcome::Shutdown);
    // Cut sockets wake their threads at once; give them a moment to log their summaries.
    registry.wait_empty(Duration::from_secs(1));
    if shutdown.is_exiting() {
        shutdown::wait_for_exit();
    }
    shutdown::log_drain_end(open, cut);
}
