//! Running out of file descriptors: how to recognise it and how fast to try again.
//! Both modes use it, for accepts and for backend connects.
//!
//! Out of fds is rsp's problem, not the backend's: a connect that fails for want of an
//! fd does not mark the backend down; it is tried again every [`RETRY`] instead, so the
//! client waits a little rather than being dropped at once.

use std::io;
use std::time::Duration;

/// How often a connect that failed for want of a file descriptor is tried again.
pub const RETRY: Duration = Duration::from_millis(50);

/// Whether `e` is Linux's "too many open files" (`EMFILE` per process, `ENFILE`
/// system-wide), which `io::ErrorKind` does not name.
pub fn out_of_fds(e: &io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE))
}

/// Logs, once per connection, that connection `id` waits for a free fd.
pub fn log_waiting(id: u64) {
    log::warn!("conn {id}: out of file descriptors; waiting for one to free up");
}
