//! An elastic pool of named threads fed by a bounded `crossbeam_channel`.
//!
//! Threads mode uses two: `worker` threads each serve one client at a time (and run its
//! client → backend direction), `copy` threads run the backend → client direction.
//!
//! **Bounded:** the jobs wait in a `crossbeam_channel::bounded` channel. When every thread
//! is busy and `capacity` jobs wait, [`Pool::submit`] gives the job back and
//! [`Pool::submit_timeout`] blocks: the accept loop stops accepting and the kernel's
//! listen backlog holds new clients. Nobody is dropped.
//!
//! **Closing is dropping:** when the last [`Pool`] handle (the last `Sender`) is dropped,
//! the channel closes; each thread finishes the queued jobs, then its `recv` says
//! `Disconnected` and it exits. No flag, no extra wake-up.
//!
//! **Elastic:** a pool starts with a few warm threads and grows only when a job waits
//! with no idle thread to take it, up to `max_threads`. A thread whose `recv_timeout`
//! gets nothing for [`IDLE_EXIT`] exits, down to the warm few. So an idle rsp has a
//! handful of threads, and `workers = 6000` does not mean 12,000 threads doing nothing.
//! New threads are started by the pool's `spawner` thread, never by the one that submits
//! a job: starting a thread takes ~25 µs, and the accept loop must stay free to accept
//! (5,000 clients connecting at once overflowed the listen backlog while the accept loop
//! was busy starting threads).
//!
//! **Panic-proof:** a panic in one job is caught and logged; the thread takes the next.
//!
//! **What the channel costs.** A crossbeam receiver that finds the channel empty spins
//! briefly and calls `sched_yield` up to 4 times before it sleeps on a futex (its
//! `Backoff`); a `Mutex` + `Condvar` queue sleeps at once. Measured through
//! `ab -n 20000 -c 50` against the `Mutex` + `Condvar` pool this replaced, interleaved
//! rounds on a busy 2-core machine: see README, "Dependencies, and why".

use crate::outcome::panic_message;
use crossbeam_channel::{
    Receiver, RecvTimeoutError, SendTimeoutError, Sender, TrySendError, bounded,
};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst, fence};
use std::thread;
use std::time::Duration;

/// Stack size of pool threads. The copy buffers live on the heap and the frames are
/// small, so 128 KiB is plenty (std's default is 2 MiB). Only touched pages cost memory,
/// but a smaller stack is a smaller mapping to create for each thread.
const STACK_SIZE: usize = 128 * 1024;

/// How long a thread waits for a job before it exits (unless it is one of the warm ones).
pub const IDLE_EXIT: Duration = Duration::from_secs(5);

/// How many threads a pool keeps even when idle, so a lone client never waits for a
/// thread to be created.
const WARM: usize = 4;

/// A handle to a running pool; clones share it. Dropping the last one closes the pool.
pub struct Pool<T> {
    jobs: Sender<T>,
    /// Wakes the spawner; `bounded(1)`, so a burst of wake-ups is one.
    grow: Sender<()>,
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool {
            jobs: self.jobs.clone(),
            grow: self.grow.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

/// What the pool's handles, its threads and its spawner share.
struct Shared<T> {
    /// `worker` or `copy`: the threads are named `name-N`.
    name: String,
    max_threads: usize,
    /// Threads alive.
    threads: AtomicUsize,
    /// Threads waiting for a job, or started and about to: a job needs a new thread only
    /// if more jobs wait than this.
    idle: AtomicUsize,
    /// Threads started so far, for their names.
    started: AtomicUsize,
    /// The job queue's receiving end (a receiver does not keep the channel open: only
    /// the [`Pool`] handles' senders do).
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
        let (jobs, queue) = bounded(capacity.max(1));
        let (grow, wake) = bounded(1);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            max_threads: max_threads.max(1),
            threads: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            jobs: queue,
            handler: Box::new(handler),
        });
        for _ in 0..WARM {
            spawn(&shared)?;
        }
        let spawner = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("{name}-spawner"))
            .stack_size(STACK_SIZE)
            .spawn(move || run_spawner(&spawner, &wake))?;
        Ok(Pool { jobs, grow, shared })
    }

    /// Queues `job` for a thread. Never blocks: a full queue gives the job back.
    pub fn submit(&self, job: T) -> Result<(), TrySendError<T>> {
        self.jobs.try_send(job)?;
        self.grow_if_needed();
        Ok(())
    }

    /// [`Pool::submit`], but while the queue is full waits up to `timeout` for room.
    pub fn submit_timeout(&self, job: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.jobs.send_timeout(job, timeout)?;
        self.grow_if_needed();
        Ok(())
    }

    /// Wakes the spawner if the job just queued has no thread to take it. (The submitter
    /// never starts a thread itself: see the module doc.)
    fn grow_if_needed(&self) {
        if self.shared.needs_thread() {
            let _ = self.grow.try_send(()); // Full: the spawner is awake already.
        }
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        self.jobs.len()
    }

    /// How many jobs may wait.
    pub fn capacity(&self) -> usize {
        self.jobs.capacity().unwrap_or(usize::MAX)
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
}

impl<T> Shared<T> {
    /// Whether a queued job has no thread to take it and another may be started.
    ///
    /// A submitter asks after its send, a thread after it takes a job or gives up
    /// waiting, each after changing what the other reads (SeqCst, and a fence on both
    /// sides): so at least one of them sees a job waiting with nobody idle to take it.
    fn needs_thread(&self) -> bool {
        fence(SeqCst);
        self.jobs.len() > self.idle.load(SeqCst) && self.threads.load(SeqCst) < self.max_threads
    }
}

/// The spawner: starts threads while jobs wait with no thread to take them; exits when
/// the pool closes (every [`Pool`] handle, and so every `grow` sender, is gone).
fn run_spawner<T: Send + 'static>(shared: &Arc<Shared<T>>, wake: &Receiver<()>) {
    while wake.recv().is_ok() {
        while shared.needs_thread() {
            if let Err(e) = spawn(shared) {
                // The job stays queued for the threads that exist (at least the warm ones).
                log::error!(
                    "cannot start a {} thread: {e}; retrying in 1 s",
                    shared.name
                );
                thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Starts one more thread, counted as idle until it takes a job; does nothing if the
/// pool is at its maximum.
fn spawn<T: Send + 'static>(shared: &Arc<Shared<T>>) -> io::Result<()> {
    let room = |n: usize| (n < shared.max_threads).then_some(n + 1);
    if shared.threads.fetch_update(SeqCst, SeqCst, room).is_err() {
        return Ok(());
    }
    shared.idle.fetch_add(1, SeqCst);
    let n = shared.started.fetch_add(1, SeqCst);
    let thread_name = format!("{}-{n}", shared.name);
    let for_thread = Arc::clone(shared);
    let started = thread::Builder::new()
        .name(thread_name.clone())
        .stack_size(STACK_SIZE)
        .spawn(move || run_thread(&for_thread, &thread_name));
    if started.is_err() {
        shared.idle.fetch_sub(1, SeqCst);
        shared.threads.fetch_sub(1, SeqCst);
    }
    started.map(drop)
}

/// A pool thread: run jobs as they come; after [`IDLE_EXIT`] with none, exit unless only
/// the warm threads are left; once the pool is closed and the queue empty, exit.
fn run_thread<T: Send + 'static>(shared: &Arc<Shared<T>>, name: &str) {
    loop {
        match shared.jobs.recv_timeout(IDLE_EXIT) {
            Ok(job) => {
                shared.idle.fetch_sub(1, SeqCst);
                // A job queued just before we stopped counting as idle may have counted
                // on us: start its thread (we are a pool thread, not the accept loop).
                if shared.needs_thread()
                    && let Err(e) = spawn(shared)
                {
                    log::error!("cannot start a {} thread: {e}", shared.name);
                }
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (shared.handler)(job))) {
                    let message = panic_message(&*panic);
                    log::error!("{name}: a job panicked ({message}); the thread carries on");
                }
                shared.idle.fetch_add(1, SeqCst);
            }
            Err(RecvTimeoutError::Timeout) => {
                let retire = |n: usize| (n > WARM).then(|| n - 1);
                if shared.threads.fetch_update(SeqCst, SeqCst, retire).is_ok() {
                    shared.idle.fetch_sub(1, SeqCst);
                    if !shared.needs_thread() {
                        return;
                    }
                    // A job came just as we gave up, perhaps counting on us: stay.
                    shared.threads.fetch_add(1, SeqCst);
                    shared.idle.fetch_add(1, SeqCst);
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    shared.idle.fetch_sub(1, SeqCst);
    shared.threads.fetch_sub(1, SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn jobs_run_and_a_panic_does_not_kill_the_thread() {
        let (done, results) = crossbeam_channel::unbounded();
        let pool = Pool::start("test", 1, 4, move |n: u32| {
            if n == 1 {
                panic!("job 1 fails");
            }
            done.send(n).unwrap();
        })
        .unwrap();
        for n in 0..3 {
            pool.submit(n).unwrap();
        }
        let got: Vec<u32> = (0..2)
            .map(|_| results.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert_eq!(got, [0, 2]);
    }

    #[test]
    fn a_full_pool_rejects_then_blocks_the_sender() {
        let (release_tx, release) = crossbeam_channel::unbounded::<()>();
        let pool = Pool::start("test", 1, 1, move |_: ()| {
            let _ = release.recv_timeout(Duration::from_secs(5));
        })
        .unwrap();
        pool.submit(()).unwrap(); // taken by the thread, which blocks
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.queued() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.busy(), 1);
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
    fn threads_start_on_demand_and_idle_ones_exit() {
        use std::sync::atomic::AtomicUsize;
        let running = Arc::new(AtomicUsize::new(0));
        let (release_tx, release) = crossbeam_channel::unbounded::<()>();
        let counter = Arc::clone(&running);
        let pool = Pool::start("test", 20, 20, move |_: ()| {
            counter.fetch_add(1, SeqCst);
            let _ = release.recv_timeout(Duration::from_secs(10));
        })
        .unwrap();
        assert_eq!(pool.threads(), WARM);
        for _ in 0..10 {
            pool.submit(()).unwrap();
        }
        // Every job runs at once: none waits for another to finish. (A job that came as a
        // thread stopped being idle may have made the pool start one extra.)
        let deadline = Instant::now() + Duration::from_secs(10);
        while running.load(SeqCst) < 10 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(running.load(SeqCst), 10, "jobs running after 10 s");
        assert!((10..=10 + WARM).contains(&pool.threads()));
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
    fn dropping_the_last_handle_finishes_queued_jobs_then_the_threads_exit() {
        let (done, results) = crossbeam_channel::unbounded();
        let pool = Pool::start("test", 2, 8, move |n: u32| done.send(n).unwrap()).unwrap();
        for n in 0..8 {
            pool.submit(n).unwrap();
        }
        drop(pool);
        // The results channel closes once every thread (each holding the handler) is gone.
        let mut got = Vec::new();
        loop {
            match results.recv_timeout(Duration::from_secs(10)) {
                Ok(n) => got.push(n),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("threads still alive after 10 s"),
            }
        }
        got.sort_unstable();
        assert_eq!(got, (0..8).collect::<Vec<_>>());
    }
}
