//! Picks the mode: [`run`] sets up what both modes share, then hands the configuration
//! to threads mode ([`crate::threads`]) or to mio mode (`crate::event_loop`). Neither mode
//! imports this module. What both share: the configuration in force, which SIGHUP reloads
//! ([`crate::reload`]), with its balancer and the health checks of that balancer; the
//! counters ([`crate::stats`]) and the stats listener if `stats` is set.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, Mode};
use crate::reload::Current;
use crate::stats::Stats;

/// Runs the proxy described by `config` until Ctrl-C (or SIGTERM), then returns `Ok`.
/// Errors only if it cannot start (e.g. the listen address is taken). SIGHUP reads
/// `path` again (`None`: SIGHUP changes nothing).
pub fn run(config: Config, path: Option<PathBuf>) -> io::Result<()> {
    let stats = Stats::new(crate::listen::connection_limit());
    let stats_addr = config.stats;
    let mode = config.mode;
    let current = Current::new(config, path, stats.clone());
    current.start_health_checks()?;
    if let Some(addr) = stats_addr {
        crate::stats::server::start(addr, stats, current.clone())?;
    }
    let result = match mode {
        Mode::Threads => crate::threads::run(Arc::clone(&current)),
        #[cfg(feature = "mio")]
        Mode::Mio => crate::event_loop::run(Arc::clone(&current)),
        #[cfg(not(feature = "mio"))]
        Mode::Mio => Err(io::Error::other("mio mode needs the `mio` feature")),
    };
    // Stops (and joins) the check thread, after the mode has drained; a reload from now on
    // starts none.
    current.stop_health_checks();
    result
}
