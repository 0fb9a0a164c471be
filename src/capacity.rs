//! What this machine lets one rsp process hold: the open-files limit both modes stop
//! accepting at, and the default for `workers` (threads mode), derived from the machine
//! rather than picked for a demo.
//!
//! Everything here reads Linux's `/proc` and `/sys`; where a file is missing (another
//! OS, a locked-down container) that bound is simply left out.

use std::fs;

/// Fds the connection limit leaves for everything else (a backend connect under way,
/// a log file, the Ctrl-C wake-up connection).
const SPARE_FDS: u64 = 16;

/// Threads the `workers` bound leaves for everything else: the accept loop, the pools'
/// spawners, the idle check, the Ctrl-C handler, the log writer, the main thread.
const SPARE_THREADS: u64 = 16;

/// Resident memory one idle connection costs in threads mode: the touched pages of two
/// thread stacks (a worker and a copy thread) and their bookkeeping; copy buffers come
/// only with the first byte. Measured as RSS growth while holding 2,000 and 5,000 idle
/// connections (release build, 2026-12): 19.7 KiB each both times.
const IDLE_CONNECTION_BYTES: u64 = 20 * 1024;

/// The largest `workers` a config may set; the default never goes above it either.
pub const MAX_WORKERS: u64 = 100_000;

/// What `workers` is when the config does not set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultWorkers {
    /// The number of connections threads mode serves at once.
    pub workers: usize,
    /// The limit it came from, for `rsp --check`: `open-files limit 20,000`.
    pub why: String,
}

/// The default `workers`: as many connections as this process can really hold at once,
/// the smallest of four bounds, so that by default threads mode is stopped by the machine
/// and not by a number (600 idle clients took every worker of a 256-thread pool):
///
/// - fds: two per connection (client and backend) from the open-files limit, after the
///   fds open now ([`connection_limit`], which both modes also stop accepting at);
/// - threads: two per connection (a worker and a copy thread), from the smallest of
///   `kernel.threads-max`, `kernel.pid_max` (every thread takes a pid), `RLIMIT_NPROC`
///   (the user's threads, `ulimit -u`) and half of `vm.max_map_count` (each thread's
///   stack is a mapping plus a guard page). These are ceilings shared with the rest of
///   the machine, so this is what rsp could reach alone;
/// - memory: `IDLE_CONNECTION_BYTES` per idle connection, from `MemAvailable` or the
///   cgroup's memory limit less its usage, whichever is smaller (a busy connection also
///   holds two `buffer_size` buffers; idle ones are what a pool fills up with).
///
/// Past the bound, new clients wait in the listen backlog and the log says so, rather
/// than the process failing to start a thread or running out of fds mid-connection.
pub fn default_workers() -> DefaultWorkers {
    let mut bounds: Vec<(u64, String)> = Vec::new();
    if let Some(soft) = soft_limit("Max open files")
        && let Some(limit) = connection_limit()
    {
        bounds.push((
            limit as u64,
            format!("open-files limit {}, 2 fds per connection", thousands(soft)),
        ));
    }
    let threads = [
        read_number("/proc/sys/kernel/threads-max").map(|n| (n, "kernel.threads-max")),
        read_number("/proc/sys/kernel/pid_max").map(|n| (n, "kernel.pid_max")),
        soft_limit("Max processes").map(|n| (n, "RLIMIT_NPROC (ulimit -u)")),
        read_number("/proc/sys/vm/max_map_count").map(|n| (n / 2, "vm.max_map_count / 2")),
    ];
    if let Some((n, name)) = threads.into_iter().flatten().min_by_key(|(n, _)| *n) {
        let limit = n.saturating_sub(SPARE_THREADS) / 2;
        bounds.push((
            limit,
            format!("{name} {}, 2 threads per connection", thousands(n)),
        ));
    }
    if let Some((bytes, name)) = available_memory() {
        let limit = bytes / IDLE_CONNECTION_BYTES;
        let gib = bytes as f64 / f64::from(1 << 30);
        bounds.push((
            limit,
            format!("{name} {gib:.1} GiB at 20 KiB per idle connection"),
        ));
    }
    let (workers, why) = bounds
        .into_iter()
        .min_by_key(|(n, _)| *n)
        // Not Linux, or /proc hidden: the pool's old fixed size, and say so.
        .unwrap_or((256, "the machine's limits could not be read".to_string()));
    let (workers, why) = match workers {
        0 => (1, why),
        n if n > MAX_WORKERS => (MAX_WORKERS, format!("the largest allowed; {why}")),
        n => (n, why),
    };
    DefaultWorkers {
        workers: workers as usize,
        why,
    }
}

/// How many connections fit in this process's open-files limit (`ulimit -n`): each
/// holds two fds (client and backend), after the fds open now and `SPARE_FDS`. Both
/// modes stop accepting at this limit, so no client is accepted without an fd left for
/// its backend; new clients wait in the listen backlog until a connection closes.
/// `None` if `/proc` cannot tell: running out then shows as accept or connect errors,
/// which are handled too.
pub fn connection_limit() -> Option<usize> {
    let soft = soft_limit("Max open files")?;
    let open = fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    let limit = (soft.saturating_sub(open + SPARE_FDS) / 2).max(1);
    log::debug!("Connection limit: {limit} (open-files limit {soft}, {open} fds open)");
    Some(limit as usize)
}

/// A soft limit from `/proc/self/limits` by its name there, e.g. `Max open files`;
/// `None` if unknown or `unlimited`.
fn soft_limit(name: &str) -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    // "Max open files            20000                20000                files"
    let line = limits.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

/// The bytes this process may still use: the smaller of `MemAvailable` and the cgroup's
/// limit less its usage (v2, or v1's `memory` controller), with the name of the one used.
fn available_memory() -> Option<(u64, &'static str)> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|text| {
        // "MemAvailable:   23996380 kB"
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((kib * 1024, "MemAvailable"))
    });
    let cgroup = [
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ]
    .into_iter()
    .find_map(|(max, current)| {
        // v2 writes "max" for no limit (no number: skipped); v1 a number near 2^63.
        let max = read_number(max).filter(|&m| m < 1 << 60)?;
        Some((
            max.saturating_sub(read_number(current)?),
            "cgroup memory limit",
        ))
    });
    [available, cgroup]
        .into_iter()
        .flatten()
        .min_by_key(|(n, _)| *n)
}

/// A file holding one number, such as `/proc/sys/kernel/pid_max`.
fn read_number(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `9984` as `9,984`: how `--check` and the README write large numbers.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(9984), "9,984");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn the_default_is_within_range_and_says_why() {
        let d = default_workers();
        assert!((1..=MAX_WORKERS as usize).contains(&d.workers), "{d:?}");
        assert!(!d.why.is_empty());
    }
}
