//! Logging set-up.

/// Starts the logger at `level`.
pub fn init(_level: log::LevelFilter) {}
