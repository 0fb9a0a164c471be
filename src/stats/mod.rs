//! The stats listener: a live HTML page (`GET /`), its JSON (`GET /stats.json`) and
//! Prometheus's `GET /metrics`, off unless `stats = "127.0.0.1:8001"` is set.
//!
//! The counters are always kept; each costs the data path one relaxed atomic add per
//! event (a connection to a backend, a chunk of bytes, a close). Everything else (adding
//! them up, the page, the text format) happens on the stats thread when a client asks.
//!
//! | part | module |
//! |---|---|
//! | the counters: per backend, and the process-wide ones | here |
//! | one consistent reading of every figure, for the page and `/metrics` | [`snapshot`] |
//! | the HTTP server: one thread, timeouts, bounded requests | [`server`] |
//! | the HTML page and its JSON | [`page`] |
//! | the Prometheus text format (the `prometheus-client` crate) | [`metrics`] |
//!
//! No authentication: the README says to keep `stats` on loopback, and `--check` warns
//! when it is not.

pub mod metrics;
pub mod page;
pub mod server;
pub mod snapshot;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::balancer::Node;
use crate::config::Backend;
use crate::outcome::Outcome;

/// How many [`Outcome`]s there are (their codes are 1 to this).
pub const OUTCOMES: usize = 8;

/// Every outcome, in code order.
pub fn outcomes() -> impl Iterator<Item = Outcome> {
    (1..=OUTCOMES as u8).filter_map(Outcome::from_code)
}

/// One counter per outcome.
type ByOutcome = [AtomicU64; OUTCOMES];

/// The counters of one backend. Each connection to it holds an `Arc` to them, so a
/// reload that drops the backend does not lose what its open connections still count.
/// Its open connections and its state are not counted here: they are its balancer
/// node's ([`Node::open`], [`Node::is_up`]), linked in [`Stats::for_backends`].
#[derive(Debug)]
pub struct BackendStats {
    /// The backend's text from the config (the `backend` label).
    pub name: String,
    /// Its address: a backend that stays in the config across a reload keeps its counters.
    pub addr: SocketAddr,
    /// Its node in the balancer that last had it (a reload keeps a node that stays).
    node: Mutex<Option<Arc<Node>>>,
    total: AtomicU64,
    connect_failures: AtomicU64,
    /// Bytes client → backend, backend → client.
    bytes: [AtomicU64; 2],
    outcomes: ByOutcome,
}

impl BackendStats {
    fn new(backend: &Backend) -> BackendStats {
        BackendStats {
            name: backend.name.clone(),
            addr: backend.addr,
            node: Mutex::new(None),
            total: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            bytes: Default::default(),
            outcomes: Default::default(),
        }
    }

    /// Counters for a backend named `test` (unit tests).
    pub fn for_test() -> BackendStats {
        let addr = ([127, 0, 0, 1], 1).into();
        BackendStats::new(&Backend {
            name: "test".into(),
            addr,
            weight: 1,
        })
    }

    /// Its balancer node, if it has been in one.
    pub fn node(&self) -> Option<Arc<Node>> {
        self.node.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A connection to this backend was made.
    pub fn connected(&self) {
        self.total.fetch_add(1, Relaxed);
    }

    /// A connect to this backend failed (the client may still reach another one).
    pub fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Relaxed);
    }

    /// `n` bytes were passed on client → backend (`up`) or backend → client.
    pub fn add_bytes(&self, up: bool, n: u64) {
        self.bytes[usize::from(!up)].fetch_add(n, Relaxed);
    }

    /// A connection to this backend ended with `outcome`.
    pub fn closed(&self, outcome: Outcome) {
        count(&self.outcomes, outcome);
    }
}

fn count(counters: &ByOutcome, outcome: Outcome) {
    counters[usize::from(outcome.to_code() - 1)].fetch_add(1, Relaxed);
}

/// A pool's figures (threads mode), read when the page asks.
#[derive(Debug, Clone, Copy, Default)]
pub struct PoolFigures {
    /// Threads alive.
    pub threads: usize,
    /// Threads running a job.
    pub busy: usize,
    /// The most threads that ran a job at once since start.
    pub peak: usize,
    /// The pool's maximum (`workers`).
    pub max: usize,
    /// Jobs waiting for a thread.
    pub queued: usize,
}

/// One event loop's gauges (mio mode): the loop stores them now and then, the stats
/// thread reads them.
#[derive(Debug, Default)]
pub struct LoopGauge {
    /// Connections open in this loop.
    pub conns: AtomicUsize,
    /// Bytes queued for slow readers, both directions of every connection.
    pub queued: AtomicUsize,
    /// Directions paused because their queue reached `max_buffered`.
    pub paused: AtomicUsize,
}

impl LoopGauge {
    /// Connections, bytes queued, paused directions.
    pub fn read(&self) -> [usize; 3] {
        [
            self.conns.load(Relaxed),
            self.queued.load(Relaxed),
            self.paused.load(Relaxed),
        ]
    }
}

/// What only the mode can tell, read by the stats thread through [`Stats::set_view`].
#[derive(Debug, Clone)]
pub enum ModeFigures {
    /// Threads mode.
    Threads {
        /// The worker pool.
        workers: PoolFigures,
        /// The copy pool.
        copiers: PoolFigures,
        /// Clients handed off and waiting for a worker.
        queued: usize,
        /// Whether the accept loop is blocked on a full hand-off (new clients wait in the
        /// listen backlog).
        handoff_full: bool,
    },
    /// Mio mode: per loop, connections, bytes queued, paused directions.
    Mio {
        /// One entry per loop.
        loops: Vec<[usize; 3]>,
        /// `max_buffered`, per direction.
        max_buffered: usize,
    },
}

/// What the mode reports: open connections, whether it drains, its own figures.
#[derive(Debug, Clone)]
pub struct Live {
    /// Connections open (accepted and not yet closed).
    pub open: usize,
    /// Whether a shutdown began (no longer accepting, draining).
    pub draining: bool,
    /// The mode's own figures.
    pub mode: ModeFigures,
}

/// The mode's report function.
type View = Box<dyn Fn() -> Live + Send + Sync>;

/// The process's counters; shared by `Arc`.
pub struct Stats {
    started: Instant,
    /// Every backend configured since start, in order of first appearance.
    backends: Mutex<Vec<Arc<BackendStats>>>,
    /// Connections that never reached a backend, by outcome.
    unserved: ByOutcome,
    /// Reloads that applied, and reloads refused (a bad config).
    reloads: [AtomicU64; 2],
    /// The most connections open at once (`listen::connection_limit`), if known.
    pub limit: Option<usize>,
    view: OnceLock<View>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats").finish_non_exhaustive()
    }
}

impl Stats {
    /// Fresh counters, with the uptime counting from now.
    pub fn new(limit: Option<usize>) -> Arc<Stats> {
        Arc::new(Stats {
            started: Instant::now(),
            backends: Mutex::new(Vec::new()),
            unserved: Default::default(),
            reloads: Default::default(),
            limit,
            view: OnceLock::new(),
        })
    }

    /// The counters for each of a balancer's `nodes`, in order, each linked to its node:
    /// those of a backend already known (same address and name) are kept, so they survive
    /// a reload.
    pub fn for_backends(&self, nodes: &[Arc<Node>]) -> Vec<Arc<BackendStats>> {
        let mut known = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .iter()
            .map(|node| {
                let b = node.backend();
                let same = |s: &&Arc<BackendStats>| s.addr == b.addr && s.name == b.name;
                let stats = match known.iter().find(same) {
                    Some(found) => Arc::clone(found),
                    None => {
                        let new = Arc::new(BackendStats::new(b));
                        known.push(Arc::clone(&new));
                        new
                    }
                };
                *stats.node.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(node));
                stats
            })
            .collect()
    }

    /// Every backend configured since start.
    pub fn all_backends(&self) -> Vec<Arc<BackendStats>> {
        self.backends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A connection ended without a backend (every connect failed, or it was cut first).
    pub fn unserved(&self, outcome: Outcome) {
        count(&self.unserved, outcome);
    }

    /// A reload applied (`ok`) or was refused.
    pub fn reloaded(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Relaxed);
    }

    /// Sets the mode's report function (once; later calls are ignored).
    pub fn set_view(&self, view: impl Fn() -> Live + Send + Sync + 'static) {
        let _ = self.view.set(Box::new(view));
    }
}
