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

use signal_hook::consts::{SIGHUP, SIGTERM};
use signal_hook::iterator::Signals;

use crate::balancer::{Balancer, Lease};
use crate::config::{self, Config};
use crate::health::Checker;
use crate::stats::{BackendStats, Stats};
use changes::{changes, keep_fixed};

mod changes;

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
