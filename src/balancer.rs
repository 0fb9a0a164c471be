//! The load balancer: which backend the next client goes to.
//!
//! Each backend is a [`Node`]: its address and weight from the config, and its state in
//! atomics, readable from any thread. A client goes to a backend that is **available**:
//!
//! - the health checks say it is UP (always, when `health_check` is off; the checks run
//!   on their own thread, in [`crate::health`], and set it with [`Node::set_up`]);
//! - and no client connect to it failed within the last `backend_retry` (the passive
//!   check: a failed connect skips it at once, without waiting for a probe; a successful
//!   connect, or a good probe, ends the skip early).
//!
//! Among the available ones, `balance = "roundrobin"` picks by smooth weighted round
//! robin (nginx's algorithm: weights 3:1 give A A B A, A A B A…, interleaved, not in
//! bursts) and `"leastconn"` picks the one with the fewest open connections for its
//! weight, ties broken in turn. If none is available, every backend is tried anyway, and
//! one warning line says so: a check can be wrong, and a client is better served by a try
//! than by a refusal.
//!
//! The balancer only decides; it never connects. [`Balancer::plan`] gives the backends to
//! try for one client as [`Lease`]s: a lease counts one open connection on its backend
//! for as long as it lives, so the count drops exactly once, when the lease is dropped,
//! however the connection ends (threads mode holds it in the worker, mio mode in the
//! connection). The counts are the balancer's own, shared by every worker or loop.
//!
//! Nodes are `Arc`s, so a new list of backends (a reload) can keep the nodes of the
//! backends that stay, counts and state included, and in-flight leases keep theirs.

mod node;

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Backend;
use node::tick;
pub use node::{Lease, Node};

/// How clients are spread over the available backends (`balance` in `proxy.lua`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round robin (the default).
    RoundRobin,
    /// The fewest open connections per unit of weight; ties in turn.
    LeastConn,
}

impl Balance {
    /// The name used in `proxy.lua`: `"roundrobin"` or `"leastconn"`.
    pub fn name(self) -> &'static str {
        match self {
            Balance::RoundRobin => "roundrobin",
            Balance::LeastConn => "leastconn",
        }
    }
}

/// The backends to try for one client, in order, each at most once: the one picked
/// (already leased, so a concurrent pick sees it counted), then the others in turn.
#[derive(Debug)]
pub struct Plan {
    first: Option<Lease>,
    rest: std::vec::IntoIter<Arc<Node>>,
}

impl Iterator for Plan {
    type Item = Lease;

    fn next(&mut self) -> Option<Lease> {
        self.first
            .take()
            .or_else(|| self.rest.next().map(Lease::new))
    }
}

/// The state one pick reads and updates, under one lock.
#[derive(Debug)]
struct Pick {
    /// Smooth weighted round robin's current weight per backend.
    current: Vec<i64>,
    /// Where the next search for a least-connections tie starts.
    next: usize,
}

/// Picks a backend per client; shared by reference by every worker or loop.
#[derive(Debug)]
pub struct Balancer {
    nodes: Vec<Arc<Node>>,
    balance: Balance,
    /// Locked once per client, for a pass over the backends; never across a connect.
    pick: Mutex<Pick>,
    /// How long a backend is skipped after a failed connect.
    retry: Duration,
    /// Whether "all backends are DOWN" was logged last (not yet recovered).
    all_down: AtomicBool,
}

impl Balancer {
    /// A balancer over `backends` (never empty: the config checks that), skipping a failed
    /// backend for `retry`.
    pub fn new(backends: Vec<Backend>, retry: Duration, balance: Balance) -> Balancer {
        let nodes: Vec<Arc<Node>> = backends
            .into_iter()
            .map(|b| Arc::new(Node::new(b)))
            .collect();
        let pick = Mutex::new(Pick {
            current: vec![0; nodes.len()],
            next: 0,
        });
        Balancer {
            nodes,
            balance,
            pick,
            retry,
            all_down: AtomicBool::new(false),
        }
    }

    /// After a reload: a balancer over `backends` that keeps `old`'s node for each backend
    /// that stays (same name and address), so its health state, skip and open-connection
    /// count carry over, and leases in flight keep counting on it. A new weight applies to
    /// the node at once.
    pub fn reloaded(
        backends: Vec<Backend>,
        retry: Duration,
        balance: Balance,
        old: &Balancer,
    ) -> Balancer {
        let mut new = Balancer::new(backends, retry, balance);
        for node in &mut new.nodes {
            let b = node.backend();
            let same = |o: &&Arc<Node>| o.backend().name == b.name && o.backend().addr == b.addr;
            if let Some(kept) = old.nodes.iter().find(same) {
                kept.set_weight(b.weight);
                *node = Arc::clone(kept);
            }
        }
        new
    }

    /// Every backend, in config order.
    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    /// The backends to try for one new client (see [`Plan`]).
    pub fn plan(&self) -> Plan {
        self.plan_at(Instant::now())
    }

    /// [`Balancer::plan`] as of `now` (for tests).
    pub fn plan_at(&self, now: Instant) -> Plan {
        let now = tick(now);
        let len = self.nodes.len();
        let mut available: Vec<usize> = (0..len)
            .filter(|&i| self.nodes[i].available_at(now))
            .collect();
        self.note_all_down(available.is_empty());
        if available.is_empty() {
            available = (0..len).collect(); // try them all anyway
        }
        let mut pick = self.lock();
        let Some(chosen) = (match self.balance {
            Balance::RoundRobin => self.smooth_weighted(&mut pick, &available),
            Balance::LeastConn => self.least_connections(&mut pick, &available),
        }) else {
            return Plan {
                first: None,
                rest: Vec::new().into_iter(),
            };
        };
        let first = Lease::new(Arc::clone(&self.nodes[chosen]));
        drop(pick);
        // The others in config order after the chosen one, wrapping around.
        let at = available.iter().position(|&i| i == chosen).unwrap_or(0);
        let rest: Vec<Arc<Node>> = (1..available.len())
            .map(|k| Arc::clone(&self.nodes[available[(at + k) % available.len()]]))
            .collect();
        Plan {
            first: Some(first),
            rest: rest.into_iter(),
        }
    }

    /// nginx's smooth weighted round robin: each candidate's current weight grows by its
    /// weight; the largest is chosen and lowered by the sum of the weights.
    fn smooth_weighted(&self, pick: &mut Pick, candidates: &[usize]) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for &i in candidates {
            let weight = self.nodes[i].weight() as i64;
            pick.current[i] += weight;
            total += weight;
            if best.is_none_or(|b| pick.current[i] > pick.current[b]) {
                best = Some(i);
            }
        }
        let best = best?;
        pick.current[best] -= total;
        Some(best)
    }

    /// The candidate with the fewest open connections per unit of weight; among equals,
    /// the first at or after the one after the last choice.
    fn least_connections(&self, pick: &mut Pick, candidates: &[usize]) -> Option<usize> {
        let len = self.nodes.len();
        let mut best: Option<(usize, u64, u64)> = None; // (index, open, weight)
        for k in 0..len {
            let i = (pick.next + k) % len;
            if !candidates.contains(&i) {
                continue;
            }
            let (open, weight) = (self.nodes[i].open() as u64, self.nodes[i].weight());
            // open/weight < best_open/best_weight, without division.
            if best.is_none_or(|(_, bo, bw)| open * bw < bo * weight) {
                best = Some((i, open, weight));
            }
        }
        let (chosen, _, _) = best?;
        pick.next = (chosen + 1) % len;
        Some(chosen)
    }

    /// Logs the moment no backend is available ("all DOWN"), once until one is again.
    /// Called per pick (one relaxed load when nothing changed) and by the health checks.
    pub fn note_all_down(&self, all_down: bool) {
        if self.all_down.load(Ordering::Relaxed) == all_down
            || self.all_down.swap(all_down, Ordering::SeqCst) == all_down
        {
            return;
        }
        match (all_down, self.nodes.as_slice()) {
            (true, [only]) => log::warn!(
                "backend {} is DOWN or skipped, and it is the only one: clients are sent to \
                 it anyway",
                only.backend().name
            ),
            (true, nodes) => log::warn!(
                "all {} backends are DOWN or skipped: each client tries every one of them in \
                 turn anyway",
                nodes.len()
            ),
            (false, _) => log::info!("backends are available again: clients go only to those"),
        }
    }

    /// Whether no backend is available right now (see the module doc).
    pub fn none_available(&self) -> bool {
        let now = tick(Instant::now());
        !self.nodes.iter().any(|n| n.available_at(now))
    }

    /// How long a backend that failed is skipped (`backend_retry`).
    pub fn retry(&self) -> Duration {
        self.retry
    }

    /// Records and logs that connecting client `id` to `lease`'s backend failed with
    /// `error` (both modes call this). Returns whether to try the next backend. Running out
    /// of file descriptors is our problem, not the backend's: it is not skipped, and the
    /// answer is `false` (another backend would fail alike).
    pub fn connect_failed(&self, id: u64, lease: &Lease, error: &io::Error) -> bool {
        let name = &lease.backend().name;
        if crate::fds::out_of_fds(error) {
            log::error!("conn {id}: cannot connect to backend {name}: {error}");
            return false;
        }
        log::warn!(
            "conn {id}: backend {name} failed: {error}; skipping it for {} s",
            self.retry.as_secs_f64()
        );
        lease.node().skip_until(Instant::now() + self.retry);
        true
    }

    /// Records that `lease`'s backend accepted a connection: any skip ends.
    pub fn connected(&self, lease: &Lease) {
        lease.node().clear_skip();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pick> {
        // A panic while holding this lock leaves at worst a skewed current weight, so a
        // poisoned lock is still safe to use.
        self.pick.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer_with(weights: &[u32], balance: Balance) -> Balancer {
        let backends = weights
            .iter()
            .zip(9000u16..)
            .map(|(&weight, port)| Backend {
                name: format!("127.0.0.1:{port}"),
                addr: ([127, 0, 0, 1], port).into(),
                weight,
            })
            .collect();
        Balancer::new(backends, Duration::from_secs(10), balance)
    }

    fn balancer(n: usize) -> Balancer {
        balancer_with(&vec![1; n], Balance::RoundRobin)
    }

    /// The index of a lease's backend.
    fn index(lease: &Lease) -> usize {
        usize::from(lease.backend().addr.port() - 9000)
    }

    fn order(plan: Plan) -> Vec<usize> {
        plan.map(|l| index(&l)).collect()
    }

    fn skip(b: &Balancer, i: usize, until: Instant) {
        b.nodes[i].skip_until(until);
    }

    #[test]
    fn round_robin_starts_at_the_next_backend_each_time() {
        let b = balancer(3);
        let firsts: Vec<usize> = (0..6).map(|_| index(&b.plan().next().unwrap())).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        assert_eq!(order(b.plan()), [0, 1, 2]);
        assert_eq!(order(b.plan()), [1, 2, 0]);
    }

    #[test]
    fn weights_interleave() {
        let b = balancer_with(&[3, 1], Balance::RoundRobin);
        let firsts: Vec<usize> = (0..8).map(|_| index(&b.plan().next().unwrap())).collect();
        assert_eq!(firsts, [0, 0, 1, 0, 0, 0, 1, 0]);
    }

    #[test]
    fn a_skipped_backend_is_left_out_until_its_retry_time() {
        let b = balancer(3);
        let now = Instant::now();
        skip(&b, 1, now + Duration::from_secs(10));
        for _ in 0..6 {
            assert!(!order(b.plan_at(now)).contains(&1));
        }
        assert!(order(b.plan_at(now + Duration::from_secs(11))).contains(&1));
    }

    #[test]
    fn a_backend_the_checks_call_down_is_left_out() {
        let b = balancer(2);
        assert!(b.nodes[0].set_up(false));
        for _ in 0..4 {
            assert_eq!(order(b.plan()), [1]);
        }
        assert!(b.nodes[0].set_up(true));
        assert_eq!(order(b.plan()).len(), 2);
    }

    #[test]
    fn if_none_is_available_all_are_tried() {
        let b = balancer(2);
        let now = Instant::now();
        b.nodes[0].set_up(false);
        skip(&b, 1, now + Duration::from_secs(10));
        let mut plan = order(b.plan_at(now));
        plan.sort();
        assert_eq!(plan, [0, 1]);
        assert!(b.none_available());
    }

    #[test]
    fn a_success_ends_the_skip() {
        let b = balancer(2);
        skip(&b, 0, Instant::now() + Duration::from_secs(10));
        assert!(b.nodes[0].is_skipped());
        b.nodes[0].clear_skip();
        assert!(!b.nodes[0].is_skipped());
        assert_eq!(order(b.plan()).len(), 2);
    }

    #[test]
    fn a_reload_keeps_the_nodes_of_backends_that_stay() {
        let old = balancer(3);
        let held = old.plan().next().unwrap(); // on backend 0
        skip(&old, 1, Instant::now() + Duration::from_secs(60));
        old.nodes[2].set_up(false);
        let mut kept: Vec<Backend> = old.nodes.iter().map(|n| n.backend().clone()).collect();
        kept[1].weight = 5;
        let new_one = Backend {
            name: "127.0.0.1:9100".into(),
            addr: ([127, 0, 0, 1], 9100).into(),
            weight: 1,
        };
        kept.push(new_one);
        let new = Balancer::reloaded(kept, old.retry, Balance::LeastConn, &old);
        assert_eq!(new.nodes[0].open(), 1, "an open connection was lost");
        assert!(new.nodes[1].is_skipped() && new.nodes[1].weight() == 5);
        assert!(!new.nodes[2].is_up(), "a DOWN backend came back UP");
        assert!(new.nodes[3].is_up() && new.nodes[3].open() == 0);
        drop(held);
        assert_eq!(
            new.nodes[0].open(),
            0,
            "the lease in flight counts on the same node"
        );
    }

    #[test]
    fn leases_count_open_connections_and_drop_once() {
        let b = balancer(2);
        let mut plan = b.plan();
        let first = plan.next().unwrap();
        assert_eq!(first.node().open(), 1);
        let second = plan.next().unwrap();
        assert_eq!(second.node().open(), 1);
        drop(plan);
        drop(first);
        drop(second);
        assert!(b.nodes.iter().all(|n| n.open() == 0));
    }

    #[test]
    fn leastconn_picks_the_emptiest_and_breaks_ties_in_turn() {
        let b = balancer_with(&[1, 1, 1], Balance::LeastConn);
        let held: Vec<Lease> = (0..4).map(|_| b.plan().next().unwrap()).collect();
        let counts: Vec<usize> = b.nodes.iter().map(|n| n.open()).collect();
        assert_eq!(counts, [2, 1, 1]);
        // 0 has 2; 1 and 2 have 1 each: the next two go to 1 and 2.
        let next: Vec<Lease> = (0..2).map(|_| b.plan().next().unwrap()).collect();
        let mut got: Vec<usize> = next.iter().map(index).collect();
        got.sort();
        assert_eq!(got, [1, 2]);
        drop((held, next));
        assert!(b.nodes.iter().all(|n| n.open() == 0));
    }

    #[test]
    fn shared_between_threads_it_spreads_clients_evenly_and_counts_exactly() {
        let b = balancer(2);
        let counts = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        (0..100)
                            .map(|_| index(&b.plan().next().unwrap()))
                            .collect::<Vec<_>>()
                    })
                })
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
        assert!(b.nodes.iter().all(|n| n.open() == 0));
    }
}
