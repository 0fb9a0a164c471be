//! Checking the values a config set and turning them into a [`Config`]: plain Rust, no Lua.
//!
//! Numbers arrive as `f64` on purpose: reading `16384.5` straight into a `usize` would
//! silently give 16384, so every whole-number key is checked for a fraction here.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::{Config, ConfigError, Loaded, Mode};
use crate::capacity;

/// A value copied out of Lua, so that checking it needs no Lua state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Raw {
    /// Any Lua number (integers are exact up to 2^53, far past every range here).
    Number(f64),
    /// A Lua string.
    Str(String),
    /// A table: its list part `[1..n]`, whether that was all it held, and its string
    /// keys (`health_check = { interval = 2 }`).
    Table {
        items: Vec<Raw>,
        only_list: bool,
        named: Vec<(String, Raw)>,
    },
    /// Anything else, by Lua type name: `boolean`, `function`, a nested table…
    Other(&'static str),
}

impl fmt::Display for Raw {
    /// How a found value is shown after "got": `number 5`, `string "abc"`, `boolean`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Raw::Number(n) => write!(f, "number {n}"),
            Raw::Str(s) => write!(f, "string {s:?}"),
            Raw::Table {
                only_list: false, ..
            } => write!(f, "a table with named keys"),
            Raw::Table { items, .. } if items.is_empty() => write!(f, "an empty table"),
            Raw::Table { .. } => write!(f, "table"),
            Raw::Other(kind) => write!(f, "{kind}"),
        }
    }
}

/// A found value after "got" in a range error: a number bare (`got 16384.5`), else typed.
pub(super) fn shown(value: &Raw) -> String {
    match value {
        Raw::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// The keys rsp reads, in the order `--check` prints them.
const KEYS: [&str; 16] = [
    "listen",
    "backends",
    "workers",
    "buffer_size",
    "connect_timeout",
    "idle_timeout",
    "client_timeout",
    "backend_retry",
    "drain_timeout",
    "log_level",
    "mode",
    "loops",
    "max_buffered",
    "balance",
    "health_check",
    "stats",
];
/// The blog's part-3 keys, still accepted so a reader's part-3 config runs unchanged.
pub(super) const PART3_KEYS: [&str; 3] = ["listenPort", "backendAddress", "backendPort"];
/// The longest timeout accepted, one year: larger values are surely a mistake.
pub(super) const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;
/// The most event loops: far more than the cores of any machine rsp will meet; each loop
/// is a thread and a listening socket.
const MAX_LOOPS: u64 = 1024;
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Checks every key in `values` (the globals a config set) and builds the [`Loaded`].
pub(super) fn build(file: &str, values: &BTreeMap<String, Raw>) -> Result<Loaded, ConfigError> {
    let mut c = Checker {
        file,
        values,
        defaulted: Vec::new(),
    };
    let (listen, backends) = c.addresses()?;
    let mut config = Config::with_defaults(listen, backends);
    let machine = capacity::default_workers();
    config.workers = machine.workers;
    let mut warnings = Vec::new();
    if let Some(n) = c.whole("workers", 1, capacity::MAX_WORKERS)? {
        config.workers = n as usize;
        if n < FEW_WORKERS {
            warnings.push(few_workers_warning(file, n, &machine));
        }
    }
    if let Some(n) = c.whole("buffer_size", 512, 16 << 20)? {
        config.buffer_size = n as usize;
    }
    if let Some(d) = c.seconds("connect_timeout", false)? {
        config.connect_timeout = d;
    }
    if let Some(d) = c.seconds("idle_timeout", true)? {
        config.idle_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(d) = c.seconds("client_timeout", true)? {
        config.client_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(d) = c.seconds("backend_retry", true)? {
        config.backend_retry = d;
    }
    if let Some(d) = c.seconds("drain_timeout", true)? {
        config.drain_timeout = d;
    }
    if let Some(level) = c.choice("log_level", &LOG_LEVELS)? {
        // Cannot fail: `choice` only returns one of LOG_LEVELS, all names `log` knows.
        config.log_level = level.parse().unwrap_or(log::LevelFilter::Info);
    }
    if let Some(mode) = c.choice("mode", &["threads", "mio"])? {
        if mode == "mio" && !cfg!(feature = "mio") {
            let msg = "\"mio\" needs rsp built with the 'mio' feature (cargo build --features mio)";
            return Err(c.error("mode", msg));
        }
        config.mode = if mode == "mio" {
            Mode::Mio
        } else {
            Mode::Threads
        };
    }
    if let Some(n) = c.whole("loops", 1, MAX_LOOPS)? {
        config.loops = n as usize;
    }
    if let Some(n) = c.whole("max_buffered", 1024, 1 << 30)? {
        config.max_buffered = n as usize;
    }
    c.balancing(&mut config)?;
    if config.mode != Mode::Threads {
        warnings.clear(); // `workers` is a threads-mode setting.
    }
    config.stats = c.stats()?;
    if let Some(addr) = config.stats.filter(|a| !a.ip().is_loopback()) {
        warnings.push(format!(
            "{file}: warning: stats = \"{addr}\" is reachable from other machines; the stats \
             page has no authentication (keep it on loopback, e.g. \"127.0.0.1:8001\")"
        ));
    }
    warnings.extend(unknown_key_warnings(file, values));
    Ok(Loaded {
        config,
        warnings,
        defaulted: c.defaulted,
        workers_why: machine.why,
    })
}

/// Below this many `workers`, `--check` (and start-up) warn. Each connection holds a
/// worker from accept to close, idle or not, so `workers` silent clients take the whole
/// pool: a few hundred is what one laptop opens in a second (a browser alone keeps six per
/// site), and what a slowloris needs against the old default of 256. A pool that small
/// is a test or a deliberate cap; the warning says what it risks and what the machine
/// could hold instead.
const FEW_WORKERS: u64 = 256;

/// `proxy.lua: warning: workers = 8 is low: …`
fn few_workers_warning(file: &str, n: u64, machine: &capacity::DefaultWorkers) -> String {
    format!(
        "{file}: warning: workers = {n} is low: {n} clients that send nothing take every \
         worker and the next client waits in the backlog; left unset it would be {} ({})",
        capacity::thousands(machine.workers as u64),
        machine.why
    )
}

fn is_known(key: &str) -> bool {
    KEYS.contains(&key) || PART3_KEYS.contains(&key)
}

/// The most unknown keys warned about one by one; the rest are counted in one line, so a
/// config that sets 60,000 globals gets a few lines, not 50 MB of them.
const MAX_UNKNOWN_WARNINGS: usize = 10;

/// The longest key name shown in a warning; longer ones are cut with `…`.
const SHOWN_KEY_CHARS: usize = 40;

/// One warning per unknown global (functions are helpers, not keys), at most
/// `MAX_UNKNOWN_WARNINGS` of them and then a count of the rest.
fn unknown_key_warnings(file: &str, values: &BTreeMap<String, Raw>) -> Vec<String> {
    let unknown: Vec<&String> = values
        .iter()
        .filter(|(key, value)| !is_known(key) && **value != Raw::Other("function"))
        .map(|(key, _)| key)
        .collect();
    let mut warnings: Vec<String> = unknown
        .iter()
        .take(MAX_UNKNOWN_WARNINGS)
        .map(|key| unknown_key_warning(file, key))
        .collect();
    if unknown.len() > MAX_UNKNOWN_WARNINGS {
        let more = capacity::thousands((unknown.len() - MAX_UNKNOWN_WARNINGS) as u64);
        warnings.push(format!(
            "{file}: warning: {more} more unknown keys (ignored)"
        ));
    }
    warnings
}

/// `proxy.lua: warning: unknown key 'worker' (did you mean 'workers'?)`
fn unknown_key_warning(file: &str, key: &str) -> String {
    let shown: String = match key.chars().count() > SHOWN_KEY_CHARS {
        true => key.chars().take(SHOWN_KEY_CHARS).chain(['…']).collect(),
        false => key.to_string(),
    };
    match suggest(key) {
        Some(known) => format!("{file}: warning: unknown key '{shown}' (did you mean '{known}'?)"),
        None => format!("{file}: warning: unknown key '{shown}' (ignored)"),
    }
}

/// The known key closest to `key`, if it is close enough to be a likely typo.
fn suggest(key: &str) -> Option<&'static str> {
    // At most 3 edits, and an edit changes the length by at most 1: a name more than 3
    // longer than every known key cannot match, and is not compared (an 800-character
    // name would cost 800 × 15 steps per known key).
    let longest = KEYS.iter().chain(PART3_KEYS.iter()).map(|k| k.len()).max();
    if key.chars().count() > longest.unwrap_or(0) + 3 {
        return None;
    }
    let key = key.to_lowercase();
    let allowed = (key.chars().count() / 3).clamp(1, 3);
    KEYS.iter()
        .chain(PART3_KEYS.iter())
        .map(|known| (levenshtein(&key, &known.to_lowercase()), *known))
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

/// The number of one-character edits that turn `a` into `b`.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// Reads keys one by one, remembering which ones the file left out.
pub(super) struct Checker<'a> {
    pub(super) file: &'a str,
    pub(super) values: &'a BTreeMap<String, Raw>,
    pub(super) defaulted: Vec<&'static str>,
}

impl<'a> Checker<'a> {
    pub(super) fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Value {
            file: self.file.to_string(),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// The value of `key`, or `None` (and `key` noted as defaulted) if the file left it out.
    pub(super) fn get(&mut self, key: &'static str) -> Option<&'a Raw> {
        let value = self.values.get(key);
        if value.is_none() {
            self.defaulted.push(key);
        }
        value
    }

    /// A whole number from `min` to `max`.
    fn whole(&mut self, key: &'static str, min: u64, max: u64) -> Result<Option<u64>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value {
            Raw::Number(n) if n.fract() == 0.0 && *n >= min as f64 && *n <= max as f64 => {
                Ok(Some(*n as u64))
            }
            _ => Err(self.error(
                key,
                format!(
                    "expected a whole number from {min} to {max}, got {}",
                    shown(value)
                ),
            )),
        }
    }

    /// A finite number of seconds, at most a year; zero only if `zero_ok`.
    fn seconds(
        &mut self,
        key: &'static str,
        zero_ok: bool,
    ) -> Result<Option<Duration>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value {
            Raw::Number(n) if (*n > 0.0 || (zero_ok && *n == 0.0)) && *n <= MAX_SECONDS => {
                Ok(Some(Duration::from_secs_f64(*n)))
            }
            _ => {
                let low = if zero_ok {
                    "from 0"
                } else {
                    "more than 0 and up"
                };
                let msg = format!(
                    "expected a number of seconds {low} to {MAX_SECONDS}, got {}",
                    shown(value)
                );
                Err(self.error(key, msg))
            }
        }
    }

    /// One of the strings in `allowed`.
    pub(super) fn choice(
        &mut self,
        key: &'static str,
        allowed: &[&'static str],
    ) -> Result<Option<&'static str>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        if let Raw::Str(text) = value
            && let Some(found) = allowed.iter().find(|a| **a == text.as_str())
        {
            return Ok(Some(found));
        }
        Err(self.error(
            key,
            format!(
                "expected one of \"{}\", got {value}",
                allowed.join("\", \"")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_closest_known_key() {
        assert_eq!(suggest("worker"), Some("workers"));
        assert_eq!(suggest("Workers"), Some("workers"));
        assert_eq!(suggest("buffersize"), Some("buffer_size"));
        assert_eq!(suggest("listenport"), Some("listenPort"));
        assert_eq!(suggest("mod"), Some("mode"));
        assert_eq!(suggest("banana"), None);
        assert_eq!(suggest("x"), None);
        assert_eq!(suggest(&"w".repeat(800)), None);
    }

    #[test]
    fn many_unknown_keys_give_a_few_lines() {
        let values: BTreeMap<String, Raw> = (0..25)
            .map(|i| (format!("{}{i}", "k".repeat(100)), Raw::Number(1.0)))
            .collect();
        let warnings = unknown_key_warnings("p.lua", &values);
        assert_eq!(warnings.len(), MAX_UNKNOWN_WARNINGS + 1, "{warnings:?}");
        assert!(
            warnings[0].contains(&format!("'{}…'", "k".repeat(40))),
            "{warnings:?}"
        );
        assert_eq!(
            warnings[10],
            "p.lua: warning: 15 more unknown keys (ignored)"
        );
    }

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("same", "same"), 0);
    }

    fn check_whole(value: Raw) -> Result<Option<u64>, ConfigError> {
        let values = BTreeMap::from([("workers".to_string(), value)]);
        let mut c = Checker {
            file: "p.lua",
            values: &values,
            defaulted: Vec::new(),
        };
        c.whole("workers", 1, 100_000)
    }

    #[test]
    fn whole_numbers_must_be_whole_and_in_range() {
        assert_eq!(check_whole(Raw::Number(256.0)).unwrap(), Some(256));
        for bad in [0.0, 1.5, 100_001.0, f64::NAN, f64::INFINITY, -3.0] {
            let e = check_whole(Raw::Number(bad)).unwrap_err().to_string();
            assert!(
                e.starts_with("p.lua: workers: expected a whole number from 1 to 100000, got"),
                "{e}"
            );
        }
        let e = check_whole(Raw::Str("8".into())).unwrap_err().to_string();
        assert!(e.ends_with("got string \"8\""), "{e}");
    }
}
