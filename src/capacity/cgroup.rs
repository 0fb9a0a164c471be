//! The limits of this process's own control groups (cgroups), v1 and v2: memory and
//! tasks. A container (docker `--memory`, `--pids-limit`) or a systemd unit
//! (`MemoryMax=`, `TasksMax=`) sets these, and the kernel enforces them: past the
//! memory limit the OOM killer ends rsp, past the tasks limit a thread cannot start.
//!
//! `/proc/self/cgroup` says which group the process is in, per hierarchy:
//!
//! ```text
//! 4:memory:/process_api/969d07a6          v1: hierarchy id, controllers, path
//! 8:pids:/
//! 0::/system.slice/rsp.service            v2: one hierarchy, no controller list
//! ```
//!
//! A v1 controller is mounted at `<root>/<controllers>` (`/sys/fs/cgroup/memory`), v2 at
//! `<root>` itself. Every group from the process's own up to the mount's top is read,
//! since a parent's limit binds its children too; a group that is not there is skipped
//! (in a container without a cgroup namespace, `/proc/self/cgroup` names a path on the
//! host, and the container sees its own group at the top of the mount).

use std::fs;
use std::path::{Path, PathBuf};

/// Where the cgroup file systems are mounted, and which groups this process is in.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// Normally `/sys/fs/cgroup`; a test points it at a tree of its own.
    root: PathBuf,
    /// The text of `/proc/self/cgroup` (or a test's).
    membership: String,
}

/// What one limit leaves: the room left under the tightest group's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// The limit less what is in use (bytes, or tasks).
    pub free: u64,
    /// The limit itself.
    pub limit: u64,
    /// What the group uses now (this process included).
    pub used: u64,
    /// The file the limit came from: `memory.max`, `memory.limit_in_bytes`, `pids.max`.
    pub file: &'static str,
}

impl Cgroups {
    /// The groups of the running process, from `/proc/self/cgroup` and `/sys/fs/cgroup`.
    pub fn of_this_process() -> Cgroups {
        let membership = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Cgroups::new("/sys/fs/cgroup", &membership)
    }

    /// Groups as `membership` (the format of `/proc/self/cgroup`) says, mounted under `root`.
    pub fn new(root: impl Into<PathBuf>, membership: &str) -> Cgroups {
        Cgroups {
            root: root.into(),
            membership: membership.to_string(),
        }
    }

    /// Memory: v2's `memory.max` less `memory.current`, or v1's `memory.limit_in_bytes`
    /// less `memory.usage_in_bytes`. `None` if no group has a limit.
    pub fn memory(&self) -> Option<Room> {
        let (dirs, v2) = self.groups("memory")?;
        match v2 {
            true => tightest(&dirs, "memory.max", "memory.current"),
            false => tightest(&dirs, "memory.limit_in_bytes", "memory.usage_in_bytes"),
        }
    }

    /// Tasks (threads count, each is a task): `pids.max` less `pids.current`, v1 or v2.
    pub fn tasks(&self) -> Option<Room> {
        let (dirs, _) = self.groups("pids")?;
        tightest(&dirs, "pids.max", "pids.current")
    }

    /// The directories of this process's group for `controller` and of its ancestors up
    /// to the mount's top, deepest first, and whether it is v2. A v1 hierarchy with the
    /// controller wins over v2 (a "hybrid" host mounts both, with the controllers on v1).
    fn groups(&self, controller: &str) -> Option<(Vec<PathBuf>, bool)> {
        let mut v2 = None;
        for line in self.membership.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                v2 = Some(path);
            } else if controllers.split(',').any(|c| c == controller) {
                let mount = [controllers, controller]
                    .into_iter()
                    .map(|name| self.root.join(name))
                    .find(|dir| dir.is_dir())?;
                return Some((ancestors(&mount, path), false));
            }
        }
        Some((ancestors(&self.root, v2?), true))
    }
}

/// `mount/path` and each parent up to `mount`, deepest first, those that exist.
fn ancestors(mount: &Path, path: &str) -> Vec<PathBuf> {
    let mut dir = mount.join(path.trim_start_matches('/'));
    let mut dirs = Vec::new();
    loop {
        if dir.is_dir() {
            dirs.push(dir.clone());
        }
        if dir == mount || !dir.pop() || !dir.starts_with(mount) {
            return dirs;
        }
    }
}

/// The least room any of `dirs` leaves under its `max_file` limit.
fn tightest(dirs: &[PathBuf], max_file: &'static str, used_file: &str) -> Option<Room> {
    dirs.iter()
        .filter_map(|dir| {
            // v2 writes "max" for no limit (not a number: skipped); v1 a number near 2^63.
            let limit = read_number(&dir.join(max_file)).filter(|&n| n < 1 << 60)?;
            let used = read_number(&dir.join(used_file)).unwrap_or(0);
            Some(Room {
                free: limit.saturating_sub(used),
                limit,
                used,
                file: max_file,
            })
        })
        .min_by_key(|room| room.free)
}

/// A file holding one number, such as `pids.max`.
pub(super) fn read_number(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}
