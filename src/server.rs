//! Picks the mode: [`run`] hands the configuration to threads mode ([`crate::threads`])
//! or to mio mode (`crate::event_loop`). Neither mode imports this module. It also sets
//! up what both modes share around the data path: the counters ([`crate::stats`]), the
//! stats listener if `stats` is set, and the configuration in force, which SIGHUP
//! reloads ([`crate::reload`]).

use std::io;
use std::path::PathBuf;

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
    if let Some(addr) = stats_addr {
        crate::stats::server::start(addr, stats, current.clone())?;
    }
    match mode {
        Mode::Threads => crate::threads::run(current),
        #[cfg(feature = "mio")]
        Mode::Mio => crate::event_loop::run(current),
        #[cfg(not(feature = "mio"))]
        Mode::Mio => Err(io::Error::other("mio mode needs the `mio` feature")),
    }
}
