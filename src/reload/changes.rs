//! What a reload changes: the keys that need a restart put back ([`keep_fixed`]), and the
//! one line that says what changed ([`changes`]).

use std::time::Duration;

use crate::config::{self, Config};

/// Puts back the keys that cannot change in place, with one warning line each.
pub(super) fn keep_fixed(old: &Config, new: &mut Config) {
    let check = |key: &str, differs: bool, old: String| {
        if differs {
            log::warn!("reload: {key} cannot change without a restart; it stays {old}");
        }
    };
    check("listen", old.listen != new.listen, old.listen.to_string());
    check("mode", old.mode != new.mode, old.mode.name().into());
    check("loops", old.loops != new.loops, old.loops.to_string());
    check(
        "workers",
        old.workers != new.workers,
        old.workers.to_string(),
    );
    let stats = old.stats.map_or("off".to_string(), |a| a.to_string());
    check("stats", old.stats != new.stats, stats);
    let level = old.log_level.as_str().to_lowercase();
    check("log_level", old.log_level != new.log_level, level);
    let drain = old.drain_timeout != new.drain_timeout;
    check(
        "drain_timeout",
        drain,
        old.drain_timeout.as_secs_f64().to_string(),
    );
    new.listen = old.listen;
    new.mode = old.mode;
    new.loops = old.loops;
    new.workers = old.workers;
    new.stats = old.stats;
    new.log_level = old.log_level;
    new.drain_timeout = old.drain_timeout;
}

/// `backends +1 -0, idle_timeout 300 → 60`, or `no change`.
pub(super) fn changes(old: &Config, new: &Config) -> String {
    let same = |a: &config::Backend, b: &config::Backend| a.addr == b.addr && a.name == b.name;
    let added = new
        .backends
        .iter()
        .filter(|b| !old.backends.iter().any(|o| same(o, b)));
    let removed = old
        .backends
        .iter()
        .filter(|o| !new.backends.iter().any(|b| same(o, b)));
    let (added, removed) = (added.count(), removed.count());
    let mut parts = Vec::new();
    let names = |c: &Config| -> Vec<(String, std::net::SocketAddr)> {
        c.backends
            .iter()
            .map(|b| (b.name.clone(), b.addr))
            .collect()
    };
    if added + removed > 0 {
        parts.push(format!("backends +{added} -{removed}"));
    } else if names(old) != names(new) {
        parts.push("backends reordered".to_string());
    }
    let weight =
        |c: &Config, b: &config::Backend| c.backends.iter().find(|o| same(o, b)).map(|o| o.weight);
    let reweighted = new
        .backends
        .iter()
        .filter(|b| weight(old, b).is_some_and(|w| w != b.weight));
    match reweighted.count() {
        0 => {}
        n => parts.push(format!("weights of {n} backend(s)")),
    }
    for ((key, a), (_, b)) in settings(old).into_iter().zip(settings(new)) {
        if a != b {
            parts.push(format!("{key} {a} → {b}"));
        }
    }
    match parts.is_empty() {
        true => "no change".to_string(),
        false => parts.join(", "),
    }
}

/// The keys a reload can change (besides `backends`), as `--check` prints them.
fn settings(c: &Config) -> [(&'static str, String); 8] {
    let secs = |d: Duration| d.as_secs_f64().to_string();
    let off = |d: Option<Duration>| d.map_or("0".to_string(), secs);
    [
        ("connect_timeout", secs(c.connect_timeout)),
        ("idle_timeout", off(c.idle_timeout)),
        ("client_timeout", off(c.client_timeout)),
        ("backend_retry", secs(c.backend_retry)),
        ("buffer_size", c.buffer_size.to_string()),
        ("max_buffered", c.max_buffered.to_string()),
        ("balance", c.balance.name().to_string()),
        (
            "health_check",
            c.health_check
                .as_ref()
                .map_or("off".to_string(), |h| config::show_health_check(Some(h))),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;

    fn backend(port: u16) -> Backend {
        Backend {
            name: format!("127.0.0.1:{port}"),
            addr: ([127, 0, 0, 1], port).into(),
            weight: 1,
        }
    }

    fn config(ports: &[u16]) -> Config {
        let backends = ports.iter().map(|p| backend(*p)).collect();
        Config::with_defaults(([127, 0, 0, 1], 0).into(), backends)
    }

    #[test]
    fn the_reload_line_says_what_changed() {
        let old = config(&[1, 2]);
        let mut new = config(&[2, 3, 4]);
        new.idle_timeout = Some(Duration::from_secs(60));
        assert_eq!(changes(&old, &new), "backends +2 -1, idle_timeout 300 → 60");
        assert_eq!(changes(&old, &config(&[2, 1])), "backends reordered");
        assert_eq!(changes(&old, &old.clone()), "no change");
        let mut heavier = config(&[1, 2]);
        heavier.backends[1].weight = 3;
        heavier.balance = crate::balancer::Balance::LeastConn;
        assert_eq!(
            changes(&old, &heavier),
            "weights of 1 backend(s), balance roundrobin → leastconn"
        );
    }

    #[test]
    fn keys_that_need_a_restart_keep_their_old_value() {
        let old = config(&[1]);
        let mut new = config(&[1]);
        new.listen = ([127, 0, 0, 1], 9).into();
        new.workers = old.workers + 1;
        new.idle_timeout = None;
        keep_fixed(&old, &mut new);
        assert_eq!((new.listen, new.workers), (old.listen, old.workers));
        assert_eq!(new.idle_timeout, None, "a key that can change was put back");
    }
}
