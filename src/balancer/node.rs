//! One backend's live state ([`Node`]) and one connection counted on it ([`Lease`]).
//!
//! Everything in a node is an atomic, so any thread reads it without a lock: the workers
//! and event loops (is it available? how many open?), the health checks (which set UP
//! and DOWN), and anything that reports on the backends.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::config::Backend;

/// One backend and its live state. Every field is readable from any thread.
#[derive(Debug)]
pub struct Node {
    backend: Backend,
    /// Connections leased to it now: connecting or connected.
    open: AtomicUsize,
    /// What the health checks say (always true with checks off).
    up: AtomicBool,
    /// Skipped until this [`tick`] after a failed connect; 0 = not skipped.
    skip_until: AtomicU64,
    /// Its weight now: the config's, or a reload's (see [`super::Balancer::reloaded`]).
    weight: AtomicU32,
}

impl Node {
    pub(super) fn new(backend: Backend) -> Node {
        Node {
            weight: AtomicU32::new(backend.weight),
            backend,
            open: AtomicUsize::new(0),
            up: AtomicBool::new(true),
            skip_until: AtomicU64::new(0),
        }
    }

    /// The backend as configured (name, address; its weight as first configured: a
    /// reload may change it, see [`Node::weight`]).
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Connections open to it now (connecting or connected).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Whether the health checks say it is UP (always true with checks off).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Sets the health-check verdict; returns whether it changed. Called by the checks.
    pub fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::SeqCst) != up
    }

    /// Whether a failed client connect has it skipped right now.
    pub fn is_skipped(&self) -> bool {
        self.skipped_at(tick(Instant::now()))
    }

    pub(super) fn skipped_at(&self, now: u64) -> bool {
        self.skip_until.load(Ordering::Relaxed) > now
    }

    /// Ends a skip early: a client connect or a probe just succeeded.
    pub fn clear_skip(&self) {
        if self.skip_until.load(Ordering::Relaxed) != 0 {
            self.skip_until.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn skip_until(&self, until: Instant) {
        self.skip_until.store(tick(until), Ordering::Relaxed);
    }

    pub(super) fn available_at(&self, now: u64) -> bool {
        self.is_up() && !self.skipped_at(now)
    }

    /// Its weight in force (at least 1).
    pub fn weight(&self) -> u64 {
        u64::from(self.weight.load(Ordering::Relaxed).max(1))
    }

    pub(super) fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }
}

/// Nanoseconds since the first call, plus one (so 0 can mean "never"): an `Instant` that
/// fits an atomic.
pub(super) fn tick(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    at.saturating_duration_since(epoch).as_nanos() as u64 + 1
}

/// One open connection counted on one backend, from the pick until it is dropped.
#[derive(Debug)]
pub struct Lease(Arc<Node>);

impl Lease {
    pub(super) fn new(node: Arc<Node>) -> Lease {
        node.open.fetch_add(1, Ordering::SeqCst);
        Lease(node)
    }

    /// The backend this lease is on.
    pub fn backend(&self) -> &Backend {
        &self.0.backend
    }

    /// Its node (state and counts).
    pub fn node(&self) -> &Arc<Node> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}
