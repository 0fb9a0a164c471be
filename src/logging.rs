//! Logging set-up: timestamped lines through `simplelog`.
//!
//! Every line looks like the C original's: `[2026-11-26 15:30:01.123456 +0000] message`,
//! the timestamp in square brackets first (the C's `test_log_has_timestamp` reads it so):
//! local time if the offset can be read (it must be read before threads start), else UTC.
//! No `[INFO]` tag, as in the C: info, debug and trace go to stdout, warnings and errors to
//! stderr, so the stream tells the severity. Everything in rsp logs through the `log`
//! macros, so the level set in `proxy.lua` silences whatever is below it.

use std::io::IsTerminal;

use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};

/// Starts the logger at `level`. Call it once, first thing in `main`, before any thread
/// starts; a second call (only one logger per process) is ignored.
pub fn init(level: LevelFilter) {
    let mut builder = ConfigBuilder::new();
    builder
        // A `time` format description: `[name]` is a field, `[[` a literal bracket.
        .set_time_format_custom(simplelog::format_description!(
            "[[[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6] [offset_hour sign:mandatory][offset_minute]]"
        ))
        .set_max_level(LevelFilter::Off) // no level tag
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off);
    // Reading the local UTC offset is refused once other threads run; UTC is the fallback.
    let _ = builder.set_time_offset_to_local();
    let config = builder.build();
    // An error here only means a logger is already set, which is fine.
    // Colours only for a person at a terminal, never in a file or a test's pipe.
    let color = if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let _ = TermLogger::init(level, config, TerminalMode::Mixed, color);
}
