//! The accept loop.

use crate::config::Config;

/// Runs the proxy until Ctrl-C.
pub fn run(_config: Config) -> std::io::Result<()> {
    Ok(())
}
