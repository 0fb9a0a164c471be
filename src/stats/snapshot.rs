//! One reading of every figure, taken on the stats thread for one request: the page's
//! JSON and `/metrics` are both made from a [`Snapshot`], so they always agree.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{BackendStats, Live, ModeFigures, OUTCOMES, Stats, outcomes};
use crate::reload::Current;

/// A backend's figures.
#[derive(Debug, Clone)]
pub struct BackendFigures {
    /// Its name from the config (the `backend` label).
    pub name: String,
    /// `up`; `down` (the health checks say so); `skipped` (a client connect to it
    /// failed, for `backend_retry`); or `removed` (dropped by a reload, its connections
    /// still open).
    pub state: &'static str,
    /// Its weight (`backends = { { "host:port", weight = N } }`).
    pub weight: u64,
    /// Connections open to it (its balancer node's count).
    pub open: u64,
    /// Connections made to it since start.
    pub total: u64,
    /// Connects to it that failed.
    pub connect_failures: u64,
    /// Bytes client → backend.
    pub bytes_up: u64,
    /// Bytes backend → client.
    pub bytes_down: u64,
    /// Connections that ended, by outcome (in [`outcomes`] order).
    pub outcomes: [u64; OUTCOMES],
}

/// Everything the page and `/metrics` show.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Seconds since start.
    pub uptime: f64,
    /// `threads` or `mio`.
    pub mode: &'static str,
    /// The connection limit, if known.
    pub limit: Option<usize>,
    /// What the mode reports (open connections, drain, its own figures).
    pub live: Option<Live>,
    /// The backends in force, then those removed with connections still open.
    pub backends: Vec<BackendFigures>,
    /// Connections that ended without a backend, by outcome.
    pub unserved: [u64; OUTCOMES],
    /// Reloads applied, reloads refused.
    pub reloads: [u64; 2],
}

impl Snapshot {
    /// Reads every counter now.
    pub fn take(stats: &Stats, current: &Current) -> Snapshot {
        let now = current.get();
        let mut backends: Vec<BackendFigures> =
            now.backends.iter().map(|b| figures(b, None)).collect();
        for retired in stats.all_backends() {
            let in_force = now.backends.iter().any(|b| Arc::ptr_eq(b, &retired));
            if !in_force && retired.node().is_some_and(|n| n.open() > 0) {
                backends.push(figures(&retired, Some("removed")));
            }
        }
        Snapshot {
            uptime: stats.started.elapsed().as_secs_f64(),
            mode: now.config.mode.name(),
            limit: stats.limit,
            live: stats.view.get().map(|view| view()),
            backends,
            unserved: read(&stats.unserved),
            reloads: [
                stats.reloads[0].load(Relaxed),
                stats.reloads[1].load(Relaxed),
            ],
        }
    }

    /// Connections ended by outcome over every backend and none.
    pub fn outcome_totals(&self) -> Vec<(&'static str, u64)> {
        outcomes()
            .enumerate()
            .map(|(i, o)| {
                let sum: u64 = self.backends.iter().map(|b| b.outcomes[i]).sum();
                (o.as_str(), sum + self.unserved[i])
            })
            .collect()
    }

    /// The mode's figures, if the mode has reported yet.
    pub fn mode_figures(&self) -> Option<&ModeFigures> {
        self.live.as_ref().map(|l| &l.mode)
    }
}

/// `b`'s figures; its state from its node unless `state` is given.
fn figures(b: &BackendStats, state: Option<&'static str>) -> BackendFigures {
    let node = b.node();
    let state = state.unwrap_or(match &node {
        Some(n) if !n.is_up() => "down",
        Some(n) if n.is_skipped() => "skipped",
        _ => "up",
    });
    BackendFigures {
        name: b.name.clone(),
        state,
        weight: node.as_ref().map_or(1, |n| n.weight()),
        open: node.as_ref().map_or(0, |n| n.open() as u64),
        total: b.total.load(Relaxed),
        connect_failures: b.connect_failures.load(Relaxed),
        bytes_up: b.bytes[0].load(Relaxed),
        bytes_down: b.bytes[1].load(Relaxed),
        outcomes: read(&b.outcomes),
    }
}

fn read(counters: &super::ByOutcome) -> [u64; OUTCOMES] {
    std::array::from_fn(|i| counters[i].load(Relaxed))
}
