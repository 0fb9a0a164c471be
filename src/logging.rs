//! Logging set-up: timestamped lines through `simplelog`.
//!
//! Every line looks like `[2026-11-26T15:30:01.123456789+01:00] INFO  message` (RFC 3339:
//! date, time to the nanosecond, UTC offset): local time if the offset can be read (it
//! must be read before threads start), else UTC (`Z`). simplelog's custom formats need
//! the `time` crate as a direct dependency for its macro; RFC 3339 needs nothing more. Info, debug and
//! trace go to stdout, warnings and errors to stderr. Everything in rsp logs through the
//! `log` macros, so the level set in `proxy.lua` silences whatever is below it.

use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};

/// Starts the logger at `level`. Call it once, first thing in `main`, before any thread
/// starts; a second call (only one logger per process) is ignored.
pub fn init(level: LevelFilter) {
    let mut builder = ConfigBuilder::new();
    builder
        .set_time_format_rfc3339()
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off);
    // Reading the local UTC offset is refused once other threads run; UTC is the fallback.
    let _ = builder.set_time_offset_to_local();
    let config = builder.build();
    // An error here only means a logger is already set, which is fine.
    let _ = TermLogger::init(level, config, TerminalMode::Mixed, ColorChoice::Auto);
}
