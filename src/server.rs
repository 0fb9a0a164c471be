//! Picks the mode: [`run`] hands the configuration to threads mode ([`crate::threads`])
//! or to mio mode (`crate::event_loop`). Neither mode imports this module.

use std::io;

use crate::config::{Config, Mode};

/// Runs the proxy described by `config` until Ctrl-C (or SIGTERM), then returns `Ok`.
/// Errors only if it cannot start (e.g. the listen address is taken).
pub fn run(config: Config) -> io::Result<()> {
    match config.mode {
        Mode::Threads => crate::threads::run(config),
        #[cfg(feature = "mio")]
        Mode::Mio => crate::event_loop::run(config),
        #[cfg(not(feature = "mio"))]
        Mode::Mio => Err(io::Error::other("mio mode needs the `mio` feature")),
    }
}
