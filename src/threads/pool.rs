//! An elastic pool of named threads fed by a bounded `crossbeam_channel`. Threads mode
//! has two: `worker` threads serve one client each (and run its client → backend
//! direction), `copy` threads run the backend → client direction.
//!
//! - **Bounded:** when every thread is busy and `capacity` jobs wait, [`Pool::submit`]
//!   gives the job back and [`Pool::submit_timeout`] blocks: the accept loop stops
//!   accepting and the kernel's listen backlog holds new clients. Nobody is dropped.
//! - **Closing is dropping:** dropping the [`Pool`] drops the channel's `Sender`; the
//!   threads finish the queued jobs, `recv` says `Disconnected`, they exit.
//! - **Elastic, with a spare:** a thread that takes a job and leaves no thread idle (or
//!   fewer idle than jobs waiting) starts one more, up to `max_threads`, then runs the
//!   job. A thread idle for [`IDLE_EXIT`] exits, but never the last idle one, nor below
//!   `WARM`. So a job finds an idle thread unless the pool is at its maximum, and
//!   `workers = 6000` costs nothing until clients come. The submitter never starts a
//!   thread (~25 µs): the accept loop must stay free to accept (5,000 clients connecting
//!   at once overflowed the listen backlog while it was busy starting threads).
//! - **Panic-proof:** a panic in one job is caught and logged; the thread carries on.
//! - **When no thread can start** (`EAGAIN`: a cgroup's `pids.max`, `ulimit -u`, the
//!   kernel's thread limit), the pool remembers the error until a start succeeds; its
//!   [`Growth`] handle tells the accept loop, which then stops accepting until there is a
//!   thread for the next client (see [`wait_for_threads`]).
//!
//! What the channel costs: a receiver that finds it empty spins and calls `sched_yield` up
//! to 4 times before it sleeps: 10 `sched_yield`s and −2 % to +5 % CPU per new connection
//! against the `Mutex` + `Condvar` pool it replaced (README, "Dependencies, and why").

mod growth;

pub use growth::{Growth, wait_for_threads};

use crate::outcome::panic_message;
use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::Duration;

/// Stack size of pool threads: buffers live on the heap, so 128 KiB is plenty (std: 2 MiB).
const STACK_SIZE: usize = 128 * 1024;

/// How long a thread waits for a job before it exits (unless it is one of the warm ones).
pub const IDLE_EXIT: Duration = Duration::from_secs(5);

/// How many threads a pool keeps even when idle.
const WARM: usize = 4;

/// A handle to a running pool. Dropping it closes the pool.
pub struct Pool<T> {
    jobs: Sender<T>,
    shared: Arc<Shared<T>>,
}

/// What the pool's handles and threads share.
struct Shared<T> {
    name: String, // `worker` or `copy`: the threads are named `name-N`
    max_threads: usize,
    threads: AtomicUsize, // alive
    idle: AtomicUsize,    // waiting for a job (or just started, about to)
    started: AtomicUsize, // so far, for their names
    peak: AtomicUsize,    // the most threads busy at once, for the stats page
    /// Why the last thread start failed; `None` once one succeeds.
    start_error: Mutex<Option<String>>,
    /// The receiving end: a receiver does not keep the channel open, only senders do.
    jobs: Receiver<T>,
    handler: Box<dyn Fn(T) + Send + Sync>,
}

impl<T: Send + 'static> Pool<T> {
    /// Starts a pool of up to `max_threads` threads named `name-0`, `name-1`, … that call
    /// `handler` on every job; up to `capacity` jobs may wait. A few threads start now.
    pub fn start<F>(name: &str, max_threads: usize, capacity: usize, handler: F) -> io::Result<Self>
    where
        F: Fn(T) + Send + Sync + 'static,
    {
        let (jobs, queue) = crossbeam_channel::bounded(capacity.max(1));
        let shared = Arc::new(Shared {
            name: name.to_string(),
            max_threads: max_threads.max(1),
            threads: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            start_error: Mutex::new(None),
            jobs: queue,
            handler: Box::new(handler),
        });
        for _ in 0..WARM {
            spawn(&shared)?;
        }
        Ok(Pool { jobs, shared })
    }

    /// Queues `job` for a thread. Never blocks: a full queue gives the job back.
    pub fn submit(&self, job: T) -> Result<(), TrySendError<T>> {
        self.jobs.try_send(job)
    }

    /// [`Pool::submit`], but while the queue is full waits up to `timeout` for room.
    pub fn submit_timeout(&self, job: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.jobs.send_timeout(job, timeout)
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        self.jobs.len()
    }

    /// How many jobs may wait.
    pub fn capacity(&self) -> usize {
        self.jobs.capacity().unwrap_or(usize::MAX)
    }

    /// The most threads at once.
    pub fn max_threads(&self) -> usize {
        self.shared.max_threads
    }

    /// Threads alive now (busy or idle).
    pub fn threads(&self) -> usize {
        self.shared.threads.load(SeqCst)
    }

    /// Threads running a job now.
    pub fn busy(&self) -> usize {
        let idle = self.shared.idle.load(SeqCst);
        self.threads().saturating_sub(idle)
    }

    /// A handle on whether this pool can start threads, for the accept loop.
    pub fn growth(&self) -> Growth {
        Growth::of(Arc::clone(&self.shared))
    }

    /// A handle that reads this pool's figures for the stats page, without keeping the
    /// pool's threads alive once the pool is closed.
    pub fn watch(&self) -> Watch<T> {
        Watch(Arc::downgrade(&self.shared))
    }
}

/// See [`Pool::watch`].
pub struct Watch<T>(Weak<Shared<T>>);

impl<T> Watch<T> {
    /// Threads, busy, the most busy at once, the maximum, jobs waiting; zeros once the
    /// pool is gone.
    pub fn figures(&self) -> crate::stats::PoolFigures {
        let Some(shared) = self.0.upgrade() else {
            return Default::default();
        };
        let threads = shared.threads.load(SeqCst);
        crate::stats::PoolFigures {
            threads,
            busy: threads.saturating_sub(shared.idle.load(SeqCst)),
            peak: shared.peak.load(SeqCst),
            max: shared.max_threads,
            queued: shared.jobs.len(),
        }
    }
}

/// Starts one more thread, counted as idle until it takes a job; does nothing if the
/// pool is at its maximum.
fn spawn<T: Send + 'static>(shared: &Arc<Shared<T>>) -> io::Result<()> {
    let room = |n: usize| (n < shared.max_threads).then_some(n + 1);
    if shared.threads.fetch_update(SeqCst, SeqCst, room).is_err() {
        note_start(shared, None); // at the maximum, so threads did start
        return Ok(());
    }
    shared.idle.fetch_add(1, SeqCst);
    let thread_name = format!("{}-{}", shared.name, shared.started.fetch_add(1, SeqCst));
    let for_thread = Arc::clone(shared);
    let started = thread::Builder::new()
        .name(thread_name.clone())
        .stack_size(STACK_SIZE)
        .spawn(move || run_thread(&for_thread, &thread_name));
    if started.is_err() {
        shared.idle.fetch_sub(1, SeqCst);
        shared.threads.fetch_sub(1, SeqCst);
    }
    note_start(shared, started.as_ref().err());
    started.map(drop)
}

/// Remembers whether the last thread start failed, and why (for [`Growth`]).
fn note_start<T>(shared: &Shared<T>, error: Option<&io::Error>) {
    if let Ok(mut last) = shared.start_error.lock() {
        *last = error.map(|e| e.to_string());
    }
}

/// A pool thread: run jobs as they come; exit after [`IDLE_EXIT`] without one (unless it
/// is the last idle thread or one of the warm ones), or once the pool is closed and the
/// queue is empty.
fn run_thread<T: Send + 'static>(shared: &Arc<Shared<T>>, name: &str) {
    loop {
        match shared.jobs.recv_timeout(IDLE_EXIT) {
            Ok(job) => {
                let idle = shared.idle.fetch_sub(1, SeqCst) - 1;
                let busy = shared.threads.load(SeqCst).saturating_sub(idle);
                shared.peak.fetch_max(busy, SeqCst);
                if (idle == 0 || shared.jobs.len() > idle)
                    && let Err(e) = spawn(shared)
                {
                    // Queued jobs wait for a thread that exists; the next taker tries again,
                    // and the accept loop stops accepting (`wait_for_threads`) and says so.
                    log::debug!("cannot start a {} thread: {e}", shared.name);
                }
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (shared.handler)(job))) {
                    let message = panic_message(&*panic);
                    log::error!("{name}: a job panicked ({message}); the thread carries on");
                }
                shared.idle.fetch_add(1, SeqCst);
            }
            // Leave only if another thread stays idle (so a job never waits while the pool
            // could grow) and more than the warm ones stay.
            Err(RecvTimeoutError::Timeout) if decrement_above(&shared.idle, 1) => {
                if decrement_above(&shared.threads, WARM) {
                    return;
                }
                shared.idle.fetch_add(1, SeqCst);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    shared.idle.fetch_sub(1, SeqCst);
    shared.threads.fetch_sub(1, SeqCst);
}

/// Takes one from `counter` if it is above `floor`; returns whether it did.
fn decrement_above(counter: &AtomicUsize, floor: usize) -> bool {
    let above = |n: usize| (n > floor).then(|| n - 1);
    counter.fetch_update(SeqCst, SeqCst, above).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_full_pool_rejects_then_blocks_the_sender() {
        let (release_tx, release) = crossbeam_channel::unbounded::<()>();
        let pool = Pool::start("test", 1, 1, move |_: ()| {
            let _ = release.recv_timeout(Duration::from_secs(5));
        })
        .unwrap();
        pool.submit(()).unwrap(); // taken by the thread, which blocks
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.busy() < 1 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.busy(), 1, "job not taken after 5 s");
        pool.submit(()).unwrap(); // waits in the queue
        assert!(matches!(pool.submit(()), Err(TrySendError::Full(()))));
        let waited = Instant::now();
        let result = pool.submit_timeout((), Duration::from_millis(100));
        assert!(matches!(result, Err(SendTimeoutError::Timeout(()))));
        assert!(waited.elapsed() >= Duration::from_millis(100));
        release_tx.send(()).unwrap(); // one job ends: room for one more
        assert!(pool.submit_timeout((), Duration::from_secs(5)).is_ok());
        for _ in 0..3 {
            release_tx.send(()).unwrap();
        }
    }

    #[test]
    fn threads_start_on_demand_keep_a_spare_and_idle_ones_exit() {
        let (release_tx, release) = crossbeam_channel::unbounded::<()>();
        let pool = Pool::start("test", 20, 20, move |_: ()| {
            let _ = release.recv_timeout(Duration::from_secs(10));
        })
        .unwrap();
        assert_eq!(pool.threads(), WARM);
        for _ in 0..10 {
            pool.submit(()).unwrap();
        }
        // Every job runs at once (none waits for another to finish), and one more thread
        // waits idle for the next job. Generous deadline: the machine may be busy.
        let deadline = Instant::now() + Duration::from_secs(10);
        while (pool.busy() < 10 || pool.threads() < 11) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.busy(), 10, "jobs running after 10 s");
        assert!(
            (11..=11 + WARM).contains(&pool.threads()),
            "{}",
            pool.threads()
        );
        for _ in 0..10 {
            release_tx.send(()).unwrap();
        }
        let deadline = Instant::now() + IDLE_EXIT * 4;
        while pool.threads() > WARM && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            pool.threads(),
            WARM,
            "idle threads exit down to the warm ones"
        );
    }

    #[test]
    fn a_panic_spares_the_thread_and_dropping_the_pool_finishes_the_queue() {
        let (done, results) = crossbeam_channel::unbounded();
        let pool = Pool::start("test", 1, 8, move |n: u32| {
            assert_ne!(n, 1, "job 1 fails");
            done.send(n).unwrap();
        })
        .unwrap();
        for n in 0..4 {
            pool.submit(n).unwrap();
        }
        drop(pool);
        // `results` closes once the thread (which holds the handler) has exited.
        let mut got = Vec::new();
        loop {
            match results.recv_timeout(Duration::from_secs(10)) {
                Ok(n) => got.push(n),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("pool thread alive 10 s after the drop"),
            }
        }
        assert_eq!(got, [0, 2, 3]);
    }
}
