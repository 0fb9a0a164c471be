//! The load-balancing keys: `balance`, a backend's `weight`
//! (`backends = { "a:80", { "b:80", weight = 3 } }`) and the `health_check` table, and how
//! `--check` shows them.

use super::validate::{Checker, MAX_SECONDS, Raw, shown};
use super::{Backend, Config, ConfigError};
use crate::balancer::Balance;
use crate::health::Settings;

/// The largest `weight` (HAProxy's too).
const MAX_WEIGHT: u64 = 256;
/// The largest `rise` or `fall`: more probes than that in a row is surely a mistake.
const MAX_STREAK: u64 = 100;
/// The keys of the `health_check` table.
const CHECK_KEYS: [&str; 6] = ["interval", "timeout", "rise", "fall", "send", "expect"];

impl Checker<'_> {
    /// Reads `balance` and `health_check` into `config`.
    pub(super) fn balancing(&mut self, config: &mut Config) -> Result<(), ConfigError> {
        if let Some(name) = self.choice("balance", &["roundrobin", "leastconn"])? {
            config.balance = match name {
                "leastconn" => Balance::LeastConn,
                _ => Balance::RoundRobin,
            };
        }
        if let Some(value) = self.get("health_check") {
            config.health_check = Some(self.health_check(value)?);
        }
        Ok(())
    }

    /// One item of `backends` (named `key`, e.g. `backends[2]`): `"host:port"`, or
    /// `{ "host:port", weight = N }`. Returns the text and the weight (1 if not set).
    pub(super) fn weighted<'r>(
        &self,
        key: &str,
        item: &'r Raw,
    ) -> Result<(&'r str, u32), ConfigError> {
        let shape = "expected \"host:port\" or { \"host:port\", weight = N }";
        let (name, named) = match item {
            Raw::Str(name) => return Ok((name, 1)),
            Raw::Table { items, named, .. } => match items.as_slice() {
                [Raw::Str(name)] => (name, named),
                _ => return Err(self.error(key, format!("{shape}, got {item}"))),
            },
            _ => return Err(self.error(key, format!("{shape}, got {item}"))),
        };
        let mut weight = 1;
        for (name, value) in named {
            if name != "weight" {
                let msg = format!("unknown key '{name}' (expected weight)");
                return Err(self.error(key, msg));
            }
            let n =
                whole(value, 1, MAX_WEIGHT).map_err(|e| self.error(&format!("{key}.weight"), e))?;
            weight = n as u32;
        }
        Ok((name, weight))
    }

    /// The `health_check` table: every key optional, the others at their defaults.
    fn health_check(&self, value: &Raw) -> Result<Settings, ConfigError> {
        let named = match value {
            Raw::Table { items, named, .. } if items.is_empty() => named,
            _ => {
                let msg = format!(
                    "expected a table such as {}, got {value}",
                    show_health_check(Some(&Settings::default()))
                );
                return Err(self.error("health_check", msg));
            }
        };
        let mut settings = Settings::default();
        for (name, value) in named {
            let key = format!("health_check.{name}");
            let error = |e: String| self.error(&key, e);
            match name.as_str() {
                "interval" => settings.interval = seconds(value).map_err(error)?,
                "timeout" => settings.timeout = seconds(value).map_err(error)?,
                "rise" => settings.rise = whole(value, 1, MAX_STREAK).map_err(error)? as u32,
                "fall" => settings.fall = whole(value, 1, MAX_STREAK).map_err(error)? as u32,
                "send" => settings.send = Some(text(value).map_err(error)?),
                "expect" => settings.expect = Some(text(value).map_err(error)?),
                _ => {
                    let msg = format!(
                        "unknown key '{name}' (expected {} or {})",
                        CHECK_KEYS[..5].join(", "),
                        CHECK_KEYS[5]
                    );
                    return Err(self.error("health_check", msg));
                }
            }
        }
        Ok(settings)
    }
}

/// A whole number from `min` to `max`.
fn whole(value: &Raw, min: u64, max: u64) -> Result<u64, String> {
    match value {
        Raw::Number(n) if n.fract() == 0.0 && *n >= min as f64 && *n <= max as f64 => Ok(*n as u64),
        _ => Err(format!(
            "expected a whole number from {min} to {max}, got {}",
            shown(value)
        )),
    }
}

/// A number of seconds, more than 0 and at most a year.
fn seconds(value: &Raw) -> Result<std::time::Duration, String> {
    match value {
        Raw::Number(n) if *n > 0.0 && *n <= MAX_SECONDS => {
            Ok(std::time::Duration::from_secs_f64(*n))
        }
        _ => Err(format!(
            "expected a number of seconds more than 0 and up to {MAX_SECONDS}, got {}",
            shown(value)
        )),
    }
}

/// A non-empty string.
fn text(value: &Raw) -> Result<String, String> {
    match value {
        Raw::Str(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(format!("expected a non-empty string, got {value}")),
    }
}

/// A backend as `--check` shows it: `"a:80"`, or `{ "a:80", weight = 3 }`.
pub(super) fn show_backend(backend: &Backend) -> String {
    match backend.weight {
        1 => format!("\"{}\"", backend.name),
        w => format!("{{ \"{}\", weight = {w} }}", backend.name),
    }
}

/// The `health_check` table as `--check` shows it (the defaults when `None`), as Lua.
pub(crate) fn show_health_check(settings: Option<&Settings>) -> String {
    let defaults = Settings::default();
    let s = settings.unwrap_or(&defaults);
    let mut fields = vec![
        format!("interval = {}", s.interval.as_secs_f64()),
        format!("timeout = {}", s.timeout.as_secs_f64()),
        format!("rise = {}", s.rise),
        format!("fall = {}", s.fall),
    ];
    // Rust's escapes (\r, \n, \", \\, \u{…}) are Lua's too.
    if let Some(send) = &s.send {
        fields.push(format!("send = {send:?}"));
    }
    if let Some(expect) = &s.expect {
        fields.push(format!("expect = {expect:?}"));
    }
    format!("{{ {} }}", fields.join(", "))
}
