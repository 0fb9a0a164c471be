//! Picks the mode: [`run`] makes the balancer and starts the health checks (what both
//! modes share), then hands the configuration to threads mode ([`crate::threads`]) or to
//! mio mode (`crate::event_loop`). Neither mode imports this module.

use std::io;
use std::sync::Arc;

use crate::balancer::Balancer;
use crate::config::{Config, Mode};
use crate::health::Checker;

/// Runs the proxy described by `config` until Ctrl-C (or SIGTERM), then returns `Ok`.
/// Errors only if it cannot start (e.g. the listen address is taken).
pub fn run(config: Config) -> io::Result<()> {
    let balancer = Arc::new(Balancer::new(
        config.backends.clone(),
        config.backend_retry,
        config.balance,
    ));
    // Stops (and joins) the check thread when dropped, after the mode has drained.
    let _checker = Checker::start(&balancer, config.health_check.as_ref())?;
    match config.mode {
        Mode::Threads => crate::threads::run(config, balancer),
        #[cfg(feature = "mio")]
        Mode::Mio => crate::event_loop::run(config, balancer),
        #[cfg(not(feature = "mio"))]
        Mode::Mio => Err(io::Error::other("mio mode needs the `mio` feature")),
    }
}
