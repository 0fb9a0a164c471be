//! An elastic pool of named threads fed by a bounded queue.
//!
//! Threads mode uses two: `worker` threads each serve one client at a time (and run its
//! backend → client direction), `copy` threads run the client → backend direction.
//!
//! **Elastic:** a pool starts with a few warm threads and starts another one only when a
//! job arrives and no thread is idle, up to its maximum (`workers`). A thread idle for
//! [`IDLE_EXIT`] exits, down to the warm few. So an idle rsp has a handful of threads, a
//! burst of clients gets as many threads as it needs, and a job never waits for a thread
//! to be created if one is free. (Starting all `workers` threads up front cost 2 × 256
//! threads at start, and `workers = 6000` would mean 12,000 threads doing nothing.)
//!
//! New threads are started by the pool's own `spawner` thread, never by the one that
//! submits a job: starting a thread takes ~25 µs, and the accept loop that submits
//! clients must stay free to accept (5,000 clients connecting at once overflowed the
//! listen backlog while the accept loop was busy starting threads).
//!
//! **Bounded:** when every thread is busy and `capacity` jobs wait, [`Pool::submit`] says
//! the queue is full and [`Pool::submit_timeout`] blocks: the accept loop stops accepting
//! and the kernel's listen backlog holds new clients. Nobody is dropped.
//!
//! **Panic-proof:** a panic in one job is caught and logged; the thread then takes the
//! next job, so a bug triggered by one connection never takes the process down.
//!
//! A `Mutex<VecDeque>` and two `Condvar`s, not a channel: a blocked thread sleeps in the
//! kernel at once. (crossbeam's channel spins and calls `sched_yield` before it sleeps;
//! with hundreds of waiting threads on two cores that was 12 `sched_yield`s per
//! connection, measured with `strace -c -f`.)

use crate::outcome::panic_message;
use std::collections::VecDeque;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Stack size of pool threads. The copy buffers live on the heap and the frames are
/// small, so 128 KiB is plenty (std's default is 2 MiB). Only touched pages cost memory,
/// but a smaller stack is a smaller mapping to create for each thread.
const STACK_SIZE: usize = 128 * 1024;

/// How long a thread waits for a job before it exits (unless it is one of the warm ones).
pub const IDLE_EXIT: Duration = Duration::from_secs(5);

/// How many threads a pool keeps even when idle, so a lone client never waits for a
/// thread to be created.
const WARM: usize = 4;

/// Why a job was not queued; the job comes back.
#[derive(Debug)]
pub enum Rejected<T> {
    /// Every thread is busy and `capacity` jobs are waiting.
    Full(T),
    /// The pool is shutting down.
    Closed(T),
}

/// What a job runs with.
type Handler<T> = dyn Fn(T) + Send + Sync;

/// The queue and its counters, behind one lock.
struct State<T> {
    /// Jobs waiting for a thread.
    queue: VecDeque<T>,
    /// Threads alive (busy, idle, or just being started).
    threads: usize,
    /// Threads waiting for a job.
    idle: usize,
    /// Threads being started that have not taken a job yet. A queued job is taken by an
    /// idle or a starting thread if `idle + starting >= queue.len()`; otherwise another
    /// thread is needed.
    starting: usize,
    /// Senders blocked in [`Pool::submit_timeout`], waiting for room.
    senders_waiting: usize,
    /// Whether the spawner waits for work: only then must a submitter wake it (a wake-up
    /// is a syscall, which the accept loop would otherwise make for every client of a
    /// burst).
    spawner_waiting: bool,
    /// Threads started so far, for their names.
    started: usize,
    /// Set when the last [`Pool`] handle is dropped: threads exit once the queue is empty.
    closed: bool,
}

/// What the pool's handles and threads share.
struct Shared<T> {
    /// `worker` or `copy`: the threads are named `name-N`.
    name: String,
    /// The most threads at once.
    max_threads: usize,
    /// The most jobs waiting at once.
    capacity: usize,
    /// What each job is given to.
    handler: Box<Handler<T>>,
    state: Mutex<State<T>>,
    /// Signalled when a job is queued (or the pool closes).
    job_queued: Condvar,
    /// Signalled when a job leaves a full queue.
    room: Condvar,
    /// Signalled when a job waits and no thread is free: wakes the spawner.
    more_threads: Condvar,
}

impl<T> State<T> {
    /// Whether a queued job has no thread to take it and another may be started.
    fn needs_thread(&self, max_threads: usize) -> bool {
        self.queue.len() > self.idle + self.starting && self.threads < max_threads
    }
}

/// A handle to a running pool; clones share it. When the last handle is dropped the pool
/// closes: each thread finishes its current job and the queued ones, then exits.
pub struct Pool<T: Send + 'static> {
    /// Closes the pool when the last clone is dropped.
    closer: Arc<Closer<T>>,
}

impl<T: Send + 'static> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool {
            closer: Arc::clone(&self.closer),
        }
    }
}

impl<T: Send + 'static> std::fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({})", self.closer.0.name)
    }
}

/// The pool's shared state, closed on drop.
struct Closer<T>(Arc<Shared<T>>);

impl<T> Drop for Closer<T> {
    fn drop(&mut self) {
        lock(&self.0.state).closed = true;
        self.0.job_queued.notify_all();
        self.0.room.notify_all();
        self.0.more_threads.notify_all();
    }
}

impl<T: Send + 'static> Pool<T> {
    /// Starts a pool of up to `max_threads` threads named `name-0`, `name-1`, … that call
    /// `handler` on every job; up to `capacity` jobs may wait. A few threads start now.
    pub fn start<F>(
        name: &str,
        max_threads: usize,
        capacity: usize,
        handler: F,
    ) -> io::Result<Pool<T>>
    where
        F: Fn(T) + Send + Sync + 'static,
    {
        let max_threads = max_threads.max(1);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            max_threads,
            capacity: capacity.max(1),
            handler: Box::new(handler),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                threads: 0,
                idle: 0,
                starting: 0,
                senders_waiting: 0,
                spawner_waiting: false,
                started: 0,
                closed: false,
            }),
            job_queued: Condvar::new(),
            room: Condvar::new(),
            more_threads: Condvar::new(),
        });
        for _ in 0..WARM.min(max_threads) {
            let mut state = lock(&shared.state);
            state.threads += 1;
            state.starting += 1;
            drop(state);
            spawn(&shared)?;
        }
        let spawner = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("{name}-spawner"))
            .stack_size(STACK_SIZE)
            .spawn(move || run_spawner(&spawner))?;
        Ok(Pool {
            closer: Arc::new(Closer(shared)),
        })
    }

    /// Queues `job` for a thread; if none is idle, the spawner starts one (unless the
    /// pool is at its maximum). Never blocks: a full queue gives the job back.
    pub fn submit(&self, job: T) -> Result<(), Rejected<T>> {
        let shared = &self.closer.0;
        let mut state = lock(&shared.state);
        if state.closed {
            return Err(Rejected::Closed(job));
        }
        if state.queue.len() >= shared.capacity {
            return Err(Rejected::Full(job));
        }
        state.queue.push_back(job);
        let wake_spawner = state.spawner_waiting && state.needs_thread(shared.max_threads);
        let needs_thread = state.needs_thread(shared.max_threads);
        let idle = state.idle > 0;
        drop(state);
        if wake_spawner {
            shared.more_threads.notify_one();
        } else if !needs_thread && idle {
            shared.job_queued.notify_one();
        }
        Ok(())
    }

    /// [`Pool::submit`], but while the queue is full waits up to `timeout` for room.
    pub fn submit_timeout(&self, mut job: T, timeout: Duration) -> Result<(), Rejected<T>> {
        let deadline = Instant::now() + timeout;
        loop {
            job = match self.submit(job) {
                Err(Rejected::Full(job)) => job,
                done => return done,
            };
            let shared = &self.closer.0;
            let mut state = lock(&shared.state);
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Rejected::Full(job));
            }
            if state.queue.len() >= shared.capacity && !state.closed {
                state.senders_waiting += 1;
                state = match shared.room.wait_timeout(state, left) {
                    Ok((guard, _)) => guard,
                    Err(poisoned) => poisoned.into_inner().0,
                };
                state.senders_waiting -= 1;
            }
        }
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        lock(&self.closer.0.state).queue.len()
    }

    /// How many jobs may wait.
    pub fn capacity(&self) -> usize {
        self.closer.0.capacity
    }

    /// Threads alive now (busy or idle).
    pub fn threads(&self) -> usize {
        lock(&self.closer.0.state).threads
    }
}

/// Locks the state. Every update under the lock is a few plain assignments and the
/// handler never runs under it, so a poisoned lock still holds consistent state.
fn lock<T>(state: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The spawner: starts threads while jobs wait with no thread to take them.
fn run_spawner<T: Send + 'static>(shared: &Arc<Shared<T>>) {
    let mut state = lock(&shared.state);
    while !state.closed {
        if !state.needs_thread(shared.max_threads) {
            state.spawner_waiting = true;
            state = shared
                .more_threads
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
            state.spawner_waiting = false;
            continue;
        }
        state.threads += 1;
        state.starting += 1;
        drop(state); // Starting a thread takes tens of µs: not under the lock.
        if let Err(e) = spawn(shared) {
            let mut state = lock(&shared.state);
            state.threads -= 1;
            state.starting -= 1;
            drop(state);
            // The job stays queued for the threads that exist (at least the warm ones).
            log::error!(
                "cannot start a {} thread: {e}; retrying in 1 s",
                shared.name
            );
            thread::sleep(Duration::from_secs(1));
        }
        state = lock(&shared.state);
    }
}

/// Starts one more thread (the caller has counted it in `threads` and `starting`).
fn spawn<T: Send + 'static>(shared: &Arc<Shared<T>>) -> io::Result<()> {
    let n = {
        let mut state = lock(&shared.state);
        state.started += 1;
        state.started - 1
    };
    let thread_name = format!("{}-{n}", shared.name);
    let shared = Arc::clone(shared);
    thread::Builder::new()
        .name(thread_name.clone())
        .stack_size(STACK_SIZE)
        .spawn(move || run_thread(&shared, &thread_name))
        .map(drop)
}

/// A pool thread: run queued jobs; when there are none, wait up to [`IDLE_EXIT`] for one,
/// then exit unless only the warm threads are left.
fn run_thread<T>(shared: &Shared<T>, thread_name: &str) {
    let mut state = lock(&shared.state);
    state.starting -= 1;
    loop {
        if let Some(job) = state.queue.pop_front() {
            if state.senders_waiting > 0 {
                shared.room.notify_one();
            }
            drop(state);
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (shared.handler)(job))) {
                log::error!(
                    "{thread_name}: a job panicked ({}); the thread carries on",
                    panic_message(&*panic)
                );
            }
            state = lock(&shared.state);
            continue;
        }
        if state.closed {
            break;
        }
        state.idle += 1;
        let timed_out;
        (state, timed_out) = match shared.job_queued.wait_timeout(state, IDLE_EXIT) {
            Ok((guard, wait)) => (guard, wait.timed_out()),
            Err(poisoned) => {
                let (guard, wait) = poisoned.into_inner();
                (guard, wait.timed_out())
            }
        };
        state.idle -= 1;
        if timed_out && state.queue.is_empty() && state.threads > WARM {
            break;
        }
    }
    state.threads -= 1;
}

/// A one-shot hand-over of a value from one thread to another: [`handover`] gives the
/// sending and the receiving half. Threads mode's worker waits on it for the copy
/// thread's result. If the sending half is dropped without sending (its job was dropped
/// unrun, or panicked), the receiver gets `None` instead of waiting forever.
pub fn handover<V>() -> (Giver<V>, Taker<V>) {
    let slot = Arc::new(Slot {
        value: Mutex::new(SlotState::Empty),
        filled: Condvar::new(),
    });
    (
        Giver {
            slot: Arc::clone(&slot),
        },
        Taker { slot },
    )
}

/// The sending half of a [`handover`].
pub struct Giver<V> {
    slot: Arc<Slot<V>>,
}

/// The receiving half of a [`handover`].
pub struct Taker<V> {
    slot: Arc<Slot<V>>,
}

struct Slot<V> {
    value: Mutex<SlotState<V>>,
    filled: Condvar,
}

enum SlotState<V> {
    Empty,
    /// Empty, and the taker sleeps until it is filled.
    Waiting,
    Given(V),
    Dropped,
    Taken,
}

impl<V> Slot<V> {
    fn put(&self, value: SlotState<V>) {
        let mut state = self.value.lock().unwrap_or_else(|e| e.into_inner());
        let waiting = matches!(*state, SlotState::Waiting);
        if waiting || matches!(*state, SlotState::Empty) {
            *state = value;
            drop(state);
            if waiting {
                self.filled.notify_one(); // A syscall: only when someone sleeps.
            }
        }
    }
}

impl<V> Giver<V> {
    /// Hands `value` over and wakes the taker.
    pub fn give(self, value: V) {
        self.slot.put(SlotState::Given(value));
    }
}

impl<V> Drop for Giver<V> {
    fn drop(&mut self) {
        self.slot.put(SlotState::Dropped); // A no-op after `give`.
    }
}

impl<V> Taker<V> {
    /// Waits for the value; `None` if the giver was dropped without giving one.
    pub fn take(self) -> Option<V> {
        let mut state = self.slot.value.lock().unwrap_or_else(|e| e.into_inner());
        while matches!(*state, SlotState::Empty | SlotState::Waiting) {
            *state = SlotState::Waiting;
            state = self
                .slot
                .filled
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        match std::mem::replace(&mut *state, SlotState::Taken) {
            SlotState::Given(value) => Some(value),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        pool.submit(()).unwrap(); // waits in the queue
        assert!(matches!(pool.submit(()), Err(Rejected::Full(()))));
        let waited = Instant::now();
        let result = pool.submit_timeout((), Duration::from_millis(100));
        assert!(matches!(result, Err(Rejected::Full(()))));
        assert!(waited.elapsed() >= Duration::from_millis(100));
        release_tx.send(()).unwrap(); // one job ends: room for one more
        assert!(pool.submit_timeout((), Duration::from_secs(5)).is_ok());
        for _ in 0..3 {
            release_tx.send(()).unwrap();
        }
    }

    #[test]
    fn threads_start_on_demand_and_idle_ones_exit() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = Arc::new(AtomicUsize::new(0));
        let (release_tx, release) = crossbeam_channel::unbounded::<()>();
        let counter = Arc::clone(&running);
        let pool = Pool::start("test", 20, 20, move |_: ()| {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = release.recv_timeout(Duration::from_secs(10));
        })
        .unwrap();
        assert_eq!(pool.threads(), WARM);
        for _ in 0..10 {
            pool.submit(()).unwrap();
        }
        // Every job runs at once: none waits for another to finish. (A warm thread that
        // was not waiting yet when a job came may have made the pool start one extra.)
        let deadline = Instant::now() + Duration::from_secs(10);
        while running.load(Ordering::SeqCst) < 10 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(running.load(Ordering::SeqCst), 10);
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
    fn a_handover_passes_a_value_or_says_it_was_dropped() {
        let (giver, taker) = handover();
        let sender = thread::spawn(move || giver.give(42));
        assert_eq!(taker.take(), Some(42));
        sender.join().unwrap();
        let (giver, taker) = handover::<u32>();
        drop(giver);
        assert_eq!(taker.take(), None);
    }
}
