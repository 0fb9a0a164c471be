//! What this machine lets one rsp process hold: the open-files limit both modes stop
//! accepting at, and the default for `workers` (threads mode), derived from the machine
//! rather than picked for a demo.
//!
//! Everything here reads Linux's `/proc` and `/sys`, including the limits of the
//! process's own cgroups ([`cgroup`]); where a file is missing (another OS, a
//! locked-down container) that bound is simply left out.

pub mod cgroup;

use std::fs;
use std::path::Path;

use cgroup::{Cgroups, Room};

/// Fds the connection limit leaves for everything else (a backend connect under way,
/// a log file, the Ctrl-C wake-up connection).
const SPARE_FDS: u64 = 16;

/// Threads the `workers` bound leaves for everything else: the accept loop, the pools'
/// spawners, the idle check, the Ctrl-C handler, the log writer, the main thread.
const SPARE_THREADS: u64 = 16;

/// Memory one idle connection costs in threads mode, as a cgroup charges it: the touched
/// pages of two thread stacks (a worker and a copy thread) and their bookkeeping (about
/// 20 KiB of RSS), plus kernel memory (two thread kernel stacks, two sockets' buffers
/// and structures), which RSS does not show but the OOM killer counts. Copy buffers come
/// only with the first byte. Measured by `bench/conn_memory.py` (README, "How many
/// connections threads mode holds").
pub const IDLE_CONNECTION_BYTES: u64 = 72 * 1024;

/// The memory bound uses all but 1/`MEMORY_RESERVE` of the memory left: the rest is for
/// everything that is not an idle connection (the pools' spare threads, the first bytes'
/// copy buffers, the log). In a 32 MiB cgroup, a bound with nothing kept back let rsp
/// take 440 idle connections (31.8 MiB charged) and then be OOM-killed as they turned
/// over; with a quarter kept back it held 335 (24.5 MiB, at most 25.7) through the
/// turnover, and the 8 MiB left would hold the buffers of 64 busy connections.
pub const MEMORY_RESERVE: u64 = 4;

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
///   `kernel.threads-max`, `kernel.pid_max` (every thread takes a pid) and half of
///   `vm.max_map_count` (each thread's stack is a mapping plus a guard page), which are
///   ceilings shared with the rest of the machine, so this is what rsp could reach alone;
///   and of what is left under the limits that count tasks already running: the cgroup's
///   `pids.max` less `pids.current`, and `RLIMIT_NPROC` (`ulimit -u`) less the tasks the
///   user runs now (the kernel does not apply it to root);
/// - memory: `IDLE_CONNECTION_BYTES` per idle connection, from `MemAvailable` or what
///   the cgroup's memory limit leaves, whichever is smaller, less `MEMORY_RESERVE` (a
///   busy connection also holds two `buffer_size` buffers; idle ones are what a pool
///   fills up with).
///
/// Past the bound, new clients wait in the listen backlog and the log says so, rather
/// than the process failing to start a thread, or being OOM-killed, mid-connection.
pub fn default_workers() -> DefaultWorkers {
    default_workers_in(&Cgroups::of_this_process())
}

/// [`default_workers`] with the cgroup limits read from `cgroups` (a test's fake tree).
pub fn default_workers_in(cgroups: &Cgroups) -> DefaultWorkers {
    let mut bounds: Vec<(u64, String)> = Vec::new();
    if let Some(soft) = soft_limit("Max open files")
        && let Some(limit) = connection_limit()
    {
        bounds.push((
            limit as u64,
            format!("open-files limit {}, 2 fds per connection", thousands(soft)),
        ));
    }
    let mut threads: Vec<(u64, String)> = [
        read_number("/proc/sys/kernel/threads-max").map(|n| (n, "kernel.threads-max".into())),
        read_number("/proc/sys/kernel/pid_max").map(|n| (n, "kernel.pid_max".into())),
        read_number("/proc/sys/vm/max_map_count").map(|n| (n / 2, "vm.max_map_count / 2".into())),
    ]
    .into_iter()
    .flatten()
    .map(|(n, name): (u64, String)| (n, format!("{name} {}", thousands(n))))
    .collect();
    if let Some(room) = cgroups.tasks() {
        threads.push((room.free, in_use("cgroup", room, thousands)));
    }
    if let Some((room, tasks)) = nproc_room() {
        let name = format!(
            "RLIMIT_NPROC (ulimit -u) {} ({} tasks of this user running)",
            thousands(room.limit),
            thousands(tasks)
        );
        threads.push((room.free, name));
    }
    if let Some((n, name)) = threads.into_iter().min_by_key(|(n, _)| *n) {
        let limit = n.saturating_sub(SPARE_THREADS) / 2;
        bounds.push((limit, format!("{name}, 2 threads per connection")));
    }
    if let Some((bytes, name)) = available_memory(cgroups) {
        let limit = (bytes - bytes / MEMORY_RESERVE) / IDLE_CONNECTION_BYTES;
        let each = IDLE_CONNECTION_BYTES / 1024;
        bounds.push((
            limit,
            format!("{name} at {each} KiB per idle connection, 1/{MEMORY_RESERVE} kept back"),
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

/// `cgroup pids.max 100 (37 in use)`: a limit, shown with `show`, and its use.
fn in_use(kind: &str, room: Room, show: impl Fn(u64) -> String) -> String {
    format!(
        "{kind} {} {} ({} in use)",
        room.file,
        show(room.limit),
        show(room.used)
    )
}

/// What `RLIMIT_NPROC` leaves, and the tasks (threads) the user runs now: the limit
/// counts every task of the user's real uid, not only this process's. `None` if there is
/// no limit, or the kernel does not apply it: to root, or with `CAP_SYS_ADMIN` or
/// `CAP_SYS_RESOURCE`.
fn nproc_room() -> Option<(Room, u64)> {
    let limit = soft_limit("Max processes")?;
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let uid = status_field(&status, "Uid:")?;
    let caps = status_field(&status, "CapEff:").and_then(|c| u64::from_str_radix(c, 16).ok());
    const EXEMPT: u64 = 1 << 21 | 1 << 24; // CAP_SYS_ADMIN, CAP_SYS_RESOURCE
    if uid == "0" || caps.is_some_and(|c| c & EXEMPT != 0) {
        return None;
    }
    let tasks = user_tasks(uid);
    let room = Room {
        free: limit.saturating_sub(tasks),
        limit,
        used: tasks,
        file: "RLIMIT_NPROC",
    };
    Some((room, tasks))
}

/// The first word after `name` in a `/proc/…/status` text (`Uid:` gives the real uid).
fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    line[name.len()..].split_whitespace().next()
}

/// The threads of every process whose real uid is `uid`, from `/proc/<pid>/status`.
fn user_tasks(uid: &str) -> u64 {
    let Ok(entries) = fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| fs::read_to_string(e.path().join("status")).ok())
        .filter(|status| status_field(status, "Uid:") == Some(uid))
        .filter_map(|status| status_field(&status, "Threads:")?.parse::<u64>().ok())
        .sum()
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

/// The bytes this process may still use: the smaller of `MemAvailable` and what its
/// cgroup's memory limit leaves, with what it came from.
fn available_memory(cgroups: &Cgroups) -> Option<(u64, String)> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|text| {
        // "MemAvailable:   23996380 kB"
        let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((kib * 1024, format!("MemAvailable {}", size(kib * 1024))))
    });
    let cgroup = cgroups
        .memory()
        .map(|room| (room.free, in_use("cgroup", room, size)));
    [available, cgroup]
        .into_iter()
        .flatten()
        .min_by_key(|(n, _)| *n)
}

/// `33554432` as `32.0 MiB`, `25769803776` as `24.0 GiB`.
fn size(bytes: u64) -> String {
    match bytes >= 1 << 30 {
        true => format!("{:.1} GiB", bytes as f64 / f64::from(1 << 30)),
        false => format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20)),
    }
}

/// A file holding one number, such as `/proc/sys/kernel/pid_max`.
fn read_number(path: &str) -> Option<u64> {
    cgroup::read_number(Path::new(path))
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
