//! Reload on SIGHUP: read `proxy.lua` again and apply it to new connections.
//!
//! [`Current`] holds the configuration in force ([`InForce`]): the config, a balancer
//! over its backends and their counters. A new connection takes the `Arc` in force when
//! it starts and keeps it to its end, so a reload never touches an open connection: it
//! only swaps the `Arc` that the next connections take.
//!
//! A reload runs on the signal thread ([`watch_signals`]), never in a signal handler or
//! on the data path. It reads the file with the same sandbox and time limit as at start
//! ([`crate::config::load`]). A bad file changes nothing: one error line (file, line,
//! reason) and rsp keeps serving. Keys that cannot change in place (`listen`, `mode`,
//! `loops`, `workers`, `stats`, `log_level`, `drain_timeout`) keep their old value, one
//! warning line each. `balance`, `weights` and `health_check` apply: a new balancer
//! ([`Balancer::reloaded`]) keeps the node of each backend that stays (same name and
//! address), so its health state (UP/DOWN), its skip after a failed connect and its
//! count of open connections carry over, and connections in flight keep counting on it;
//! it keeps its counters too. The health-check thread follows: the old one is stopped
//! and one is started on the new backends (with the new `health_check`, if any). One
//! info line says what changed.
//!
//! Why `signal-hook` for SIGHUP and SIGTERM, and `ctrlc` only for Ctrl-C: `ctrlc`'s
//! `termination` feature sends SIGTERM *and* SIGHUP to the Ctrl-C handler, and a SIGHUP
//! handler installed after it would still call it (signal-hook chains to the handler it
//! replaces), so a HUP would both reload and stop rsp. Without that feature `ctrlc` only
//! takes SIGINT; one `signal-hook` thread takes SIGTERM (the same stop as Ctrl-C) and
//! SIGHUP (a reload).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGTERM};
use signal_hook::iterator::Signals;

use crate::balancer::{Balancer, Lease};
use crate::config::{self, Config};
use crate::health::Checker;
use crate::stats::{BackendStats, Stats};

/// The configuration new connections get.
#[derive(Debug)]
pub struct InForce {
    /// The settings.
    pub config: Config,
    /// The balancer over `config.backends` (their nodes, index for index).
    pub balancer: Arc<Balancer>,
    /// The counters of `config.backends`, index for index.
    pub backends: Vec<Arc<BackendStats>>,
}

impl InForce {
    /// The counters of `lease`'s backend (a lease from this balancer: `backends` and the
    /// balancer's nodes are made together, index for index, and never empty).
    pub fn stats_of(&self, lease: &Lease) -> Arc<BackendStats> {
        let nodes = self.balancer.nodes();
        let index = nodes.iter().position(|n| Arc::ptr_eq(n, lease.node()));
        Arc::clone(&self.backends[index.unwrap_or(0)])
    }
}

/// The configuration in force, swapped whole by a reload.
#[derive(Debug)]
pub struct Current {
    now: RwLock<Arc<InForce>>,
    /// Bumped by each reload that applied: an event loop compares it once per turn.
    generation: AtomicU64,
    /// The config file, read again on SIGHUP; `None`: reload is off.
    path: Option<PathBuf>,
    stats: Arc<Stats>,
    /// The health checks of the balancer in force (`None` inside once stopped for good).
    health: Mutex<Health>,
}

/// The health-check thread in force, and whether the checks were stopped for good.
#[derive(Debug, Default)]
struct Health {
    checker: Option<Checker>,
    stopped: bool,
}

impl Current {
    /// `config` in force, read from `path` (`None`: never reloaded), counted in `stats`.
    pub fn new(config: Config, path: Option<PathBuf>, stats: Arc<Stats>) -> Arc<Current> {
        let balancer = Arc::new(Balancer::new(
            config.backends.clone(),
            config.backend_retry,
            config.balance,
        ));
        let backends = stats.for_backends(balancer.nodes());
        let now = RwLock::new(Arc::new(InForce {
            config,
            balancer,
            backends,
        }));
        Arc::new(Current {
            now,
            generation: AtomicU64::new(0),
            path,
            stats,
            health: Mutex::default(),
        })
    }

    /// Starts the health checks of the balancer in force, if `health_check` is set.
    pub fn start_health_checks(&self) -> std::io::Result<()> {
        let now = self.get();
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if !health.stopped {
            health.checker = None; // stops a thread already running first
            health.checker = Some(Checker::start(
                &now.balancer,
                now.config.health_check.as_ref(),
            )?);
        }
        Ok(())
    }

    /// Stops the health checks for good (at shutdown): a reload after this starts none.
    pub fn stop_health_checks(&self) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        health.stopped = true;
        health.checker = None; // dropping it stops and joins the thread
    }

    /// What is in force now; kept by a connection from its start to its end.
    pub fn get(&self) -> Arc<InForce> {
        Arc::clone(&self.now.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many reloads applied so far.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The process's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Reads the config file again and applies it, or logs why not.
    pub fn reload(&self) {
        let Some(path) = &self.path else { return };
        match self.reload_from(path) {
            Ok(changes) => {
                self.stats.reloaded(true);
                log::info!("reload: {changes}");
                if let Err(error) = self.start_health_checks() {
                    log::error!("reload: cannot start the health checks: {error}");
                }
            }
            Err(error) => {
                self.stats.reloaded(false);
                log::error!("reload failed, keeping the running config: {error}");
            }
        }
    }

    /// Applies the file at `path`; returns what changed, or the config's error line.
    fn reload_from(&self, path: &Path) -> Result<String, config::ConfigError> {
        let loaded = config::load(path)?;
        for warning in &loaded.warnings {
            log::warn!("reload: {warning}");
        }
        let old = self.get();
        let mut new = loaded.config;
        if loaded.defaulted.contains(&"workers") {
            new.workers = old.config.workers; // Measured from the machine: not a change.
        }
        keep_fixed(&old.config, &mut new);
        let balancer = Balancer::reloaded(
            new.backends.clone(),
            new.backend_retry,
            new.balance,
            &old.balancer,
        );
        let changes = changes(&old.config, &new);
        let backends = self.stats.for_backends(balancer.nodes());
        let next = Arc::new(InForce {
            config: new,
            balancer: Arc::new(balancer),
            backends,
        });
        *self.now.write().unwrap_or_else(|e| e.into_inner()) = next;
        self.generation.fetch_add(1, Ordering::Release);
        Ok(changes)
    }
}

/// Puts back the keys that cannot change in place, with one warning line each.
fn keep_fixed(old: &Config, new: &mut Config) {
    let check = |key: &str, differs: bool, old: String| {
        if differs {
            log::warn!("reload: {key} cannot change without a restart; it stays {old}");
        }
    };
    check("listen", old.listen != new.listen, old.listen.to_string());
    check("mode", old.mode != new.mode, old.mode.name().into());
    check("loops", old.loops != new.loops, old.loops.to_string());
    check(
        "workers",
        old.workers != new.workers,
        old.workers.to_string(),
    );
    let stats = old.stats.map_or("off".to_string(), |a| a.to_string());
    check("stats", old.stats != new.stats, stats);
    let level = old.log_level.as_str().to_lowercase();
    check("log_level", old.log_level != new.log_level, level);
    let drain = old.drain_timeout != new.drain_timeout;
    check(
        "drain_timeout",
        drain,
        old.drain_timeout.as_secs_f64().to_string(),
    );
    new.listen = old.listen;
    new.mode = old.mode;
    new.loops = old.loops;
    new.workers = old.workers;
    new.stats = old.stats;
    new.log_level = old.log_level;
    new.drain_timeout = old.drain_timeout;
}

/// `backends +1 -0, idle_timeout 300 → 60`, or `no change`.
fn changes(old: &Config, new: &Config) -> String {
    let same = |a: &config::Backend, b: &config::Backend| a.addr == b.addr && a.name == b.name;
    let added = new
        .backends
        .iter()
        .filter(|b| !old.backends.iter().any(|o| same(o, b)));
    let removed = old
        .backends
        .iter()
        .filter(|o| !new.backends.iter().any(|b| same(o, b)));
    let (added, removed) = (added.count(), removed.count());
    let mut parts = Vec::new();
    let names = |c: &Config| -> Vec<(String, std::net::SocketAddr)> {
        c.backends
            .iter()
            .map(|b| (b.name.clone(), b.addr))
            .collect()
    };
    if added + removed > 0 {
        parts.push(format!("backends +{added} -{removed}"));
    } else if names(old) != names(new) {
        parts.push("backends reordered".to_string());
    }
    let weight =
        |c: &Config, b: &config::Backend| c.backends.iter().find(|o| same(o, b)).map(|o| o.weight);
    let reweighted = new
        .backends
        .iter()
        .filter(|b| weight(old, b).is_some_and(|w| w != b.weight));
    match reweighted.count() {
        0 => {}
        n => parts.push(format!("weights of {n} backend(s)")),
    }
    for ((key, a), (_, b)) in settings(old).into_iter().zip(settings(new)) {
        if a != b {
            parts.push(format!("{key} {a} → {b}"));
        }
    }
    match parts.is_empty() {
        true => "no change".to_string(),
        false => parts.join(", "),
    }
}

/// The keys a reload can change (besides `backends`), as `--check` prints them.
fn settings(c: &Config) -> [(&'static str, String); 8] {
    let secs = |d: Duration| d.as_secs_f64().to_string();
    let off = |d: Option<Duration>| d.map_or("0".to_string(), secs);
    [
        ("connect_timeout", secs(c.connect_timeout)),
        ("idle_timeout", off(c.idle_timeout)),
        ("client_timeout", off(c.client_timeout)),
        ("backend_retry", secs(c.backend_retry)),
        ("buffer_size", c.buffer_size.to_string()),
        ("max_buffered", c.max_buffered.to_string()),
        ("balance", c.balance.name().to_string()),
        (
            "health_check",
            c.health_check
                .as_ref()
                .map_or("off".to_string(), |h| config::show_health_check(Some(h))),
        ),
    ]
}

/// Starts the signal thread: SIGTERM calls `stop` (as Ctrl-C does), SIGHUP reloads.
pub fn watch_signals(
    current: Arc<Current>,
    stop: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                match signal {
                    SIGHUP => current.reload(),
                    _ => stop(),
                }
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;

    fn backend(port: u16) -> Backend {
        Backend {
            name: format!("127.0.0.1:{port}"),
            addr: ([127, 0, 0, 1], port).into(),
            weight: 1,
        }
    }

    fn config(ports: &[u16]) -> Config {
        let backends = ports.iter().map(|p| backend(*p)).collect();
        Config::with_defaults(([127, 0, 0, 1], 0).into(), backends)
    }

    #[test]
    fn the_reload_line_says_what_changed() {
        let old = config(&[1, 2]);
        let mut new = config(&[2, 3, 4]);
        new.idle_timeout = Some(Duration::from_secs(60));
        assert_eq!(changes(&old, &new), "backends +2 -1, idle_timeout 300 → 60");
        assert_eq!(changes(&old, &config(&[2, 1])), "backends reordered");
        assert_eq!(changes(&old, &old.clone()), "no change");
        let mut heavier = config(&[1, 2]);
        heavier.backends[1].weight = 3;
        heavier.balance = crate::balancer::Balance::LeastConn;
        assert_eq!(
            changes(&old, &heavier),
            "weights of 1 backend(s), balance roundrobin → leastconn"
        );
    }

    #[test]
    fn keys_that_need_a_restart_keep_their_old_value() {
        let old = config(&[1]);
        let mut new = config(&[1]);
        new.listen = ([127, 0, 0, 1], 9).into();
        new.workers = old.workers + 1;
        new.idle_timeout = None;
        keep_fixed(&old, &mut new);
        assert_eq!((new.listen, new.workers), (old.listen, old.workers));
        assert_eq!(new.idle_timeout, None, "a key that can change was put back");
    }
}
