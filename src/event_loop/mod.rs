//! rsp's `mode = "mio"`: every connection served by an event loop, one loop per core.
//!
//! # How it works
//! In each loop, one [`mio::Poll`] watches the listener, a [`mio::Waker`] (Ctrl-C) and
//! both sockets of every connection. Each turn of the loop (module `one_loop`) waits for
//! events, then: accepts every pending client (module `listener`), lets each connection
//! with an event move what it can (`connection`, `connect`, `pipe`, `queue`), and acts on
//! passed deadlines (`timers`: connect, idle and client timeouts, the accept back-off,
//! the drain). Nothing ever blocks, so
//! one slow client or dead backend cannot hold up the others. A connection is a record in
//! a map: two sockets and a few counters, no thread, no stack, no buffer while idle; all
//! connections of a loop share one read buffer, since a read is passed on (or queued) at
//! once.
//!
//! # One loop per core
//! A proxy mostly waits, and the work per event is a `read`, a `write` and some
//! bookkeeping, so one loop on one core moves far more bytes than a client and a backend
//! on the same machine produce. But one core is its limit: on a machine with more, many
//! short requests or new connections saturate that one core while the others idle. So
//! rsp runs `loops` event loops (by default one per CPU it may use), each on its own
//! thread with its own `Poll` and its own listening socket, all bound to the same port
//! with `SO_REUSEPORT` ([`crate::listen::listen_many`]): the kernel hands each new client
//! to one of the sockets by a hash of its address and port. The loops share only the
//! balancer (already thread-safe), the count of open connections (the limit from the
//! open-files limit is the process's, not a loop's), the connection ids, the Ctrl-C
//! wake-up and the rate limit of the accept-error log line (module `shared`); a
//! connection stays on the loop that accepted it (module `one_loop`), so its two
//! directions still need no lock. The trade-off: the kernel spreads connections, not work, and a busy loop
//! cannot hand work to an idle one, so a few heavy connections that happen to share a
//! loop share its core while another loop idles. `loops = 1` is a single loop.
//!
//! # Shutdown
//! Ctrl-C wakes every loop. Each one accepts the clients already queued in its
//! listener's backlog (with `SO_REUSEPORT` each socket has its own backlog, and closing a
//! listener resets what is queued in it; those clients connected before the signal, so
//! they are served like the others), closes its listener and drains its connections. At
//! the connection limit a loop keeps its listener open (its backlog set to 0, so nobody
//! new joins the queue) and accepts the rest as connections close, until the queue is
//! empty or the drain time is over. The drain is logged once for the process
//! ([`DrainLog`]): its start when the last listener has closed, its end when every loop is
//! done. A second Ctrl-C: every loop resets its connections and reports how many to the
//! signal handler (a loop already done reported when it ended), which logs the total and
//! ends the process.

mod connect;
mod connection;
mod listener;
mod one_loop;
mod pipe;
mod queue;
mod shared;
mod timers;

use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::thread;

use mio::{Poll, Waker};

use crate::reload::Current;
use crate::shutdown::{DrainLog, Shutdown};
use crate::stats::{Live, LoopGauge, ModeFigures};
use one_loop::{EventLoop, WAKER};
use shared::Shared;

/// Runs the proxy in mio mode until Ctrl-C (or SIGTERM), then drains and returns `Ok`.
/// Errors only if it cannot start (e.g. the listen address is taken), or if an event loop
/// fails (then the other loops drain first). New clients get the configuration in force
/// in `current` (SIGHUP reloads it).
pub fn run(current: Arc<Current>) -> io::Result<()> {
    let config = current.get().config.clone();
    let n = config.loops.max(1);
    let listeners = crate::listen::listen_many(config.listen, n)?;
    let port = listeners[0].local_addr()?.port();
    let mut polls = Vec::with_capacity(n);
    let mut wakers = Vec::with_capacity(n);
    for _ in 0..n {
        let poll = Poll::new()?;
        wakers.push(Waker::new(poll.registry(), WAKER)?);
        polls.push(poll);
    }
    let shared = Arc::new(Shared {
        current: Arc::clone(&current),
        gauges: (0..n).map(|_| LoopGauge::default()).collect(),
        gauges_wanted: config.stats.is_some(),
        open: AtomicUsize::new(0),
        max_conns: crate::listen::connection_limit().unwrap_or(usize::MAX),
        limit_logged: AtomicBool::new(false),
        accept_error_logged: Mutex::new(None),
        next_id: AtomicU64::new(1),
        wakers,
        drain: DrainLog::new(n),
        drain_timeout: config.drain_timeout,
        ended: crossbeam_channel::bounded(n),
    });
    let shutdown = Shutdown::new();
    // A second Ctrl-C: every loop resets its connections and reports (see
    // `EventLoop::run`); the handler waits for every loop, but not past its deadline.
    let exiting = Arc::clone(&shared);
    shutdown.on_second_signal(move |deadline| exiting.cut_everywhere(deadline));
    let waking = Arc::clone(&shared);
    shutdown.install_handler(move || waking.wake_all())?;
    let stopper = Arc::clone(&shutdown);
    crate::reload::watch_signals(Arc::clone(&current), move || stopper.signal())?;
    let (seen, stopping) = (Arc::downgrade(&shared), Arc::clone(&shutdown));
    let max_buffered = config.max_buffered;
    current.stats().set_view(move || {
        let shared = seen.upgrade();
        let loops = shared.as_ref().map_or(Vec::new(), |s| {
            s.gauges.iter().map(LoopGauge::read).collect()
        });
        Live {
            open: shared.as_ref().map_or(0, |s| s.open()),
            draining: stopping.is_stopping(),
            mode: ModeFigures::Mio {
                loops,
                max_buffered,
            },
        }
    });
    let mut loops = Vec::with_capacity(n);
    for (index, (poll, listener)) in polls.into_iter().zip(listeners).enumerate() {
        loops.push(EventLoop::new(
            index,
            poll,
            listener,
            &config,
            Arc::clone(&shared),
        )?);
    }
    // Loop 0 runs on this thread (so `loops = 1` is one thread, as before), the others on
    // their own.
    let first = loops.remove(0);
    let mut others = Vec::with_capacity(n - 1);
    for event_loop in loops {
        let shutdown = Arc::clone(&shutdown);
        others.push(
            thread::Builder::new()
                .name(format!("rsp-loop-{}", event_loop.index))
                .spawn(move || event_loop.run_to_end(&shutdown))?,
        );
    }
    crate::listen::announce(port);
    let mut result = first.run_to_end(&shutdown);
    for other in others {
        // `run_to_end` catches panics, so `join` fails only if logging itself panicked.
        let done = other
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("an event loop thread panicked")));
        result = result.and(done);
    }
    if shutdown.is_exiting() {
        crate::shutdown::wait_for_exit(); // the signal handler logs the end and exits
    }
    shared.drain.finish();
    result
}
