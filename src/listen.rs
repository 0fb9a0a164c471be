//! What both modes share about the listening socket: binding it (with a large backlog;
//! one socket per event loop in mio mode), the banner, the connection limit from the open-files limit, and what to do when
//! `accept` fails.
//!
//! Threads mode ([`crate::threads`]) and mio mode (`crate::event_loop`) both import
//! from here; nothing here imports from either mode.

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use socket2::{Domain, SockRef, Socket, Type};

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
    bind(addr, false).map_err(|e| cannot_listen(addr, e))
}

/// Binds `n` listening sockets to one port with `SO_REUSEPORT`, one per event loop: the
/// kernel then hands each new client to one of them (by a hash of its address and port),
/// so the loops share the work without sharing a socket. `n == 1` is plain [`listen`].
///
/// With `SO_REUSEPORT` a second rsp started on the same port by the same user would join
/// the group and silently take a share of the clients, where one socket would fail with
/// "address in use". So the first socket is bound and listening *without* it: a plain
/// listener cannot share its port, and the kernel checks that at `listen` under a lock,
/// so of two rsp starting at once exactly one gets the port, and the other fails with
/// "Address already in use". Only then is `SO_REUSEPORT` turned on for that socket,
/// and the others join its group. (The earlier design bound a probe without
/// `SO_REUSEPORT`, closed it, then bound the group: two rsp started at the same moment
/// both passed the probe and both ran, in 9 of 300 trials. A socket set up with
/// `SO_REUSEPORT` from the start by another program of the same user can still join;
/// that is what the option means.)
pub fn listen_many(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    let first = listen(addr)?;
    if n <= 1 {
        return Ok(vec![first]);
    }
    let addr = first.local_addr()?; // port 0: the port the OS chose
    SockRef::from(&first)
        .set_reuse_port(true)
        .map_err(|e| cannot_listen(addr, e))?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(bind(addr, true).map_err(|e| cannot_listen(addr, e))?);
    }
    Ok(all)
}

/// A listening socket on `addr`, in the `SO_REUSEPORT` group of that port if `reuse_port`.
fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    // Urgent data (TCP `MSG_OOB`: telnet, FTP `ABOR`, rlogin) stays in the byte stream,
    // in order, so rsp passes it on like any other byte instead of silently dropping it.
    // Accepted sockets inherit the option from the listener (no syscall per client);
    // backend sockets set it themselves.
    socket.set_out_of_band_inline(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Ctrl-C: stops the kernel from queueing new clients on `listener` while the drain
/// accepts the ones already queued (they connected before the signal and are served).
/// It sets the listen backlog to 0: Linux then completes no new connect while a client
/// is queued; the new client's SYN is dropped and retried, and once the listener closes
/// it is refused. (With the queue empty one more may slip in; the drain serves it.)
pub fn stop_queueing(listener: &impl std::os::fd::AsFd) -> io::Result<()> {
    socket2::SockRef::from(listener).listen(0)
}

/// `cannot listen on 127.0.0.1:80: Permission denied (os error 13)`, same kind as `e`.
fn cannot_listen(addr: SocketAddr, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    #[test]
    fn stop_queueing_keeps_the_queued_and_lets_no_new_client_in() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let queued = TcpStream::connect(addr).unwrap();
        stop_queueing(&listener).unwrap();
        let late = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        assert!(late.is_err(), "a new client was queued after stop_queueing");
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer, queued.local_addr().unwrap());
    }

    #[test]
    fn accepted_sockets_keep_urgent_data_inline() {
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // Inherited from the listener: no setsockopt per client.
        assert!(SockRef::from(&accepted).out_of_band_inline().unwrap());
    }

    #[test]
    fn listen_many_binds_one_port_n_times() {
        let listeners = listen_many("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        assert_eq!(ports.len(), 3);
        assert!(
            ports[0] != 0 && ports.iter().all(|p| *p == ports[0]),
            "{ports:?}"
        );
    }

    #[test]
    fn listen_many_refuses_a_port_in_use() {
        // A port held by another group (a second rsp, say) is "in use", not shared.
        let first = listen_many("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let taken = first[0].local_addr().unwrap();
        let e = listen_many(taken, 2).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::AddrInUse, "{e}");
        assert!(e.to_string().starts_with("cannot listen on"), "{e}");
    }

    #[test]
    fn of_groups_bound_at_the_same_moment_exactly_one_gets_the_port() {
        // Two threads stand in for two rsp processes of the same user. 200 rounds of a
        // few syscalls each: fast. (The probe-then-group design let both in on some.)
        for round in 0..200 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let start = std::sync::Barrier::new(2);
            let results: Vec<io::Result<Vec<TcpListener>>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            listen_many(addr, 4)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let won = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(won, 1, "round {round}: {won} groups got port {port}");
            let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
            assert_eq!(lost.kind(), ErrorKind::AddrInUse, "round {round}: {lost}");
        }
    }
}
