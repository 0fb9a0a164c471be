//! What the accept loop needs to know about a pool: whether a client accepted now would
//! find a thread, and, when a thread start has failed (`EAGAIN`: a cgroup's `pids.max`,
//! `ulimit -u`, the kernel's thread limit), a way to try again. [`wait_for_threads`] is
//! the accept loop's wait: clients wait in the listen backlog rather than accepted and
//! unserved.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::thread;
use std::time::Duration;

use super::{Shared, spawn};

/// Whether a pool can take one more job now, and a way to try starting a thread; shared
/// with the accept loop, which must not accept clients no thread can serve. Cloning is
/// cheap.
#[derive(Clone)]
pub struct Growth(Arc<dyn Grow>);

impl Growth {
    /// The handle for the pool that `shared` belongs to.
    pub(super) fn of<T: Send + 'static>(shared: Arc<Shared<T>>) -> Growth {
        Growth(shared)
    }
}

/// [`Growth`] for any pool, whatever its job type.
trait Grow: Send + Sync {
    /// Why the last thread start failed, if it did and none has started since.
    fn start_error(&self) -> Option<String>;
    /// Whether a job queued now would find a thread: one is idle for it (or the pool is
    /// at its maximum, which is the accept loop's other wait, not this one).
    fn ready(&self) -> bool;
    /// Starts one more thread now.
    fn try_start(self: Arc<Self>) -> io::Result<()>;
}

impl<T: Send + 'static> Grow for Shared<T> {
    fn start_error(&self) -> Option<String> {
        self.start_error.lock().ok()?.clone()
    }

    fn ready(&self) -> bool {
        self.idle.load(SeqCst) > self.jobs.len() || self.threads.load(SeqCst) >= self.max_threads
    }

    fn try_start(self: Arc<Self>) -> io::Result<()> {
        spawn(&self)
    }
}

impl Growth {
    /// A client accepted now would wait for a thread that cannot start: a start failed
    /// (and none has succeeded since) and no thread is idle.
    fn blocked(&self) -> bool {
        self.0.start_error().is_some() && !self.0.ready()
    }
}

/// Called by the accept loop before it accepts: while a pool in `pools` cannot take a
/// client (a thread start failed and no thread is idle), waits, trying to start a thread
/// every `pause`, so new clients wait in the listen backlog rather than accepted and
/// unserved. Logs one warning when that begins (`*starved` becomes true) and one line
/// once a thread could start again. Returns `false` if `stopping()` became true meanwhile.
pub fn wait_for_threads(
    pools: &[Growth],
    pause: Duration,
    stopping: impl Fn() -> bool,
    starved: &mut bool,
) -> bool {
    while let Some(pool) = pools.iter().find(|p| p.blocked()) {
        if !*starved {
            *starved = true;
            let why = pool.0.start_error().unwrap_or_default();
            log::warn!(
                "Cannot start a thread ({why}): not accepting new clients until one can be \
                 started; they wait in the listen backlog."
            );
        }
        if stopping() {
            return false;
        }
        thread::sleep(pause);
        let _ = Arc::clone(&pool.0).try_start();
    }
    if *starved && pools.iter().all(|p| p.0.start_error().is_none()) {
        *starved = false;
        log::info!("Threads can be started again; accepting new clients.");
    }
    true
}
