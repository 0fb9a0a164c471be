//! What both modes share about the listening socket: binding it (with a large backlog),
//! the banner, the connection limit from the open-files limit, and what to do when
//! `accept` fails.
//!
//! Threads mode ([`crate::threads`]) and mio mode (`crate::event_loop`) both import
//! from here; nothing here imports from either mode.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// How long to pause after an accept error (such as running out of file descriptors)
/// before accepting again.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How often at most an accept error is logged.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(1);

/// The listen backlog: how many connected clients the kernel holds until we `accept`
/// them. std uses 128; a burst of more connects would overflow it, and each overflowed
/// client waits a 1 s SYN retry. Linux caps it at `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: i32 = 4096;

/// The banner every rsp binary prints once it listens; the tests wait for it.
pub fn banner(port: u16) -> String {
    format!("Started.  Listening on port {port}.")
}

/// Logs the banner at info level, or prints it if the log level hides info.
pub fn announce(port: u16) {
    if log::max_level() >= log::LevelFilter::Info {
        log::info!("{}", banner(port));
    } else {
        println!("{}", banner(port));
    }
}

/// Binds the listening socket (both modes use it); the error names the address.
///
/// Built with `socket2` rather than `TcpListener::bind` for a `LISTEN_BACKLOG` larger
/// than std's 128. `SO_REUSEADDR` as std sets it: a restart can bind the port again
/// while old connections are in TIME_WAIT.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let bind = || -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        Ok(socket.into())
    };
    bind().map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// How many connections fit in the open-files limit; both modes stop accepting there.
/// It lives with the machine's other limits, in [`crate::capacity`].
pub use crate::capacity::connection_limit;

/// Logs reaching the connection limit (`reached`) or getting below it again; both modes.
pub fn log_connection_limit(max: usize, reached: bool) {
    if reached {
        log::warn!(
            "At the connection limit ({max}, from the open-files limit): new clients wait \
             in the listen backlog."
        );
    } else {
        log::info!("Below the connection limit again; accepting.");
    }
}

/// Whether accept error `e` calls for a pause of [`ACCEPT_PAUSE`] (threads mode
/// sleeps, mio mode stops polling the listener); logs it if so, at most once per `ACCEPT_LOG_EVERY` since
/// `last_logged`. Both modes use it (mio mode pauses by not polling the listener).
pub fn accept_error_pauses(e: &io::Error, last_logged: &mut Option<Instant>) -> bool {
    if matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::Interrupted
    ) {
        return false;
    }
    let now = Instant::now();
    if last_logged.is_none_or(|t| now >= t + ACCEPT_LOG_EVERY) {
        *last_logged = Some(now);
        let level = if crate::fds::out_of_fds(e) {
            log::Level::Error
        } else {
            log::Level::Warn
        };
        log::log!(
            level,
            "accept failed: {e}; pausing accepts for {} ms",
            ACCEPT_PAUSE.as_millis()
        );
    }
    true
}
