//! The load balancer: which backend the next client goes to.
//!
//! Round-robin over `backends`. A backend that fails to connect is marked down and skipped
//! for `backend_retry`; after that it gets traffic again (and is marked down again if it
//! still fails). If every backend is marked down, all are tried anyway: a stale mark must
//! never turn clients away from a backend that has come back.
//!
//! The balancer only decides; it never connects. Threads mode connects with a blocking
//! `connect_timeout`, mio mode with a non-blocking connect, and both report back with
//! [`Balancer::mark_down`] and [`Balancer::mark_up`]. It is shared by reference between
//! threads (`&Balancer` is `Sync`), or shared by the event loops.

use std::io;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::Backend;

/// Round-robin backend choice with a "down" mark per backend.
#[derive(Debug)]
pub struct Balancer {
    /// The backends from the config, in config order.
    backends: Vec<Backend>,
    /// Counts clients; client `n` starts its search at backend `n % len`.
    next: AtomicUsize,
    /// Per backend, until when it is skipped (`None` = up). A mutex is enough: it is
    /// locked once per client for a few nanoseconds, never across a connect.
    down_until: Mutex<Vec<Option<Instant>>>,
    /// How long a failed backend is skipped.
    retry: Duration,
}

impl Balancer {
    /// A balancer over `backends` (never empty: the config checks that), skipping a failed
    /// backend for `retry`.
    pub fn new(backends: Vec<Backend>, retry: Duration) -> Balancer {
        let down_until = Mutex::new(vec![None; backends.len()]);
        Balancer {
            backends,
            next: AtomicUsize::new(0),
            down_until,
            retry,
        }
    }

    /// The backend at `index` (an index from [`Balancer::plan`]).
    pub fn backend(&self, index: usize) -> &Backend {
        &self.backends[index]
    }

    /// The backends to try for one new client, in order: each at most once, round-robin,
    /// skipping those marked down, or every one of them if all are marked down.
    pub fn plan(&self) -> Vec<usize> {
        self.plan_at(Instant::now())
    }

    /// [`Balancer::plan`] as of `now` (for tests).
    pub fn plan_at(&self, now: Instant) -> Vec<usize> {
        let len = self.backends.len();
        if len == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % len;
        let rotation: Vec<usize> = (0..len).map(|k| (start + k) % len).collect();
        let down = self.lock();
        let up: Vec<usize> = rotation
            .iter()
            .copied()
            .filter(|&i| down[i].is_none_or(|until| until <= now))
            .collect();
        if up.is_empty() { rotation } else { up }
    }

    /// Records that connecting to backend `index` failed: skip it for `backend_retry`.
    pub fn mark_down(&self, index: usize) {
        self.mark_down_at(index, Instant::now());
    }

    /// [`Balancer::mark_down`] as of `now` (for tests).
    pub fn mark_down_at(&self, index: usize, now: Instant) {
        self.lock()[index] = Some(now + self.retry);
    }

    /// How long a backend that failed is skipped (`backend_retry`).
    pub fn retry(&self) -> Duration {
        self.retry
    }

    /// Records and logs that connecting client `id` to backend `index` failed with `error`
    /// (both modes call this). Returns whether to try the next backend. Running out of
    /// file descriptors is our problem, not the backend's: it is not marked down, and the
    /// answer is `false` (another backend would fail alike).
    pub fn connect_failed(&self, id: u64, index: usize, error: &io::Error) -> bool {
        let name = &self.backends[index].name;
        if crate::fds::out_of_fds(error) {
            log::error!("conn {id}: cannot connect to backend {name}: {error}");
            return false;
        }
        log::warn!(
            "conn {id}: backend {name} failed: {error}; skipping it for {} s",
            self.retry.as_secs_f64()
        );
        self.mark_down(index);
        true
    }

    /// Records that backend `index` accepted a connection: it is up.
    pub fn mark_up(&self, index: usize) {
        self.lock()[index] = None;
    }

    /// Whether backend `index` is marked down right now.
    pub fn is_down(&self, index: usize) -> bool {
        self.lock()[index].is_some_and(|until| until > Instant::now())
    }

    /// After a reload: takes over `old`'s state for each backend that stays (same address
    /// and name): its down mark, and where the round robin stands.
    pub fn keep_state_from(&mut self, old: &Balancer) {
        let old_down = old.lock().clone();
        let down = self.down_until.get_mut().unwrap_or_else(|e| e.into_inner());
        for (i, backend) in self.backends.iter().enumerate() {
            if let Some(j) = old.backends.iter().position(|o| o == backend) {
                down[i] = old_down[j];
            }
        }
        *self.next.get_mut() = old.next.load(Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Instant>>> {
        // A panic while holding this lock cannot leave the Vec half-written (each update
        // is one store), so a poisoned lock is still safe to use.
        self.down_until.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(n: u16, retry_secs: u64) -> Balancer {
        let backends = (0..n)
            .map(|i| Backend {
                name: format!("127.0.0.1:{}", 9000 + i),
                addr: ([127, 0, 0, 1], 9000 + i).into(),
            })
            .collect();
        Balancer::new(backends, Duration::from_secs(retry_secs))
    }

    #[test]
    fn round_robin_starts_at_the_next_backend_each_time() {
        let b = balancer(3, 10);
        let firsts: Vec<usize> = (0..6).map(|_| b.plan()[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(b.plan(), [0, 1, 2]);
        assert_eq!(b.plan(), [1, 2, 0]);
    }

    #[test]
    fn a_down_backend_is_skipped_until_its_retry_time() {
        let b = balancer(3, 10);
        let now = Instant::now();
        b.mark_down_at(1, now);
        for _ in 0..6 {
            assert!(!b.plan_at(now).contains(&1));
        }
        assert!(b.plan_at(now + Duration::from_secs(11)).contains(&1));
    }

    #[test]
    fn if_all_are_down_all_are_tried() {
        let b = balancer(2, 10);
        let now = Instant::now();
        b.mark_down_at(0, now);
        b.mark_down_at(1, now);
        let mut plan = b.plan_at(now);
        plan.sort();
        assert_eq!(plan, [0, 1]);
    }

    #[test]
    fn mark_up_brings_a_backend_back_at_once() {
        let b = balancer(2, 10);
        b.mark_down(0);
        assert!(b.is_down(0));
        b.mark_up(0);
        assert!(!b.is_down(0));
        assert_eq!(b.plan().len(), 2);
    }

    #[test]
    fn a_reload_keeps_the_state_of_backends_that_stay() {
        let old = balancer(3, 10);
        old.mark_down(1);
        let kept = old.backends[1].clone();
        let new_one = Backend {
            name: "127.0.0.1:9100".into(),
            addr: ([127, 0, 0, 1], 9100).into(),
        };
        let mut new = Balancer::new(vec![new_one, kept], Duration::from_secs(10));
        new.keep_state_from(&old);
        assert!(!new.is_down(0), "a new backend starts up");
        assert!(
            new.is_down(1),
            "the down mark of a backend that stays was lost"
        );
    }

    #[test]
    fn shared_between_threads_it_spreads_clients_evenly() {
        let b = balancer(2, 10);
        let counts = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..100).map(|_| b.plan()[0]).collect::<Vec<_>>()))
                .collect();
            let mut counts = [0usize; 2];
            for h in handles {
                for i in h.join().unwrap() {
                    counts[i] += 1;
                }
            }
            counts
        });
        assert_eq!(counts, [200, 200]);
    }
}
