//! The listening socket in the event loop: accept until `WouldBlock`, back off when out
//! of file descriptors, close at shutdown.
//!
//! Running out of fds (`EMFILE`) is the classic busy loop of event-driven servers: the
//! pending connection stays in the kernel's queue, so the listener stays readable and
//! `accept` fails again at once, forever. Here any accept error other than an aborted
//! connection takes the listener out of the poll set for [`ACCEPT_PAUSE`]; the clients
//! wait in the kernel's backlog meanwhile. Which errors pause, and the log line (at most
//! one per second for the process, whichever loop hits it), are shared with threads mode
//! ([`accept_error_pauses`]).

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use crate::listen::{ACCEPT_PAUSE, accept_error_pauses};

/// The listener and its back-off state.
#[derive(Debug)]
pub struct Listener {
    /// `None` after shutdown began: dropping it closes the port, new clients are refused.
    socket: Option<TcpListener>,
    /// The token the listener's events carry.
    token: Token,
    /// While paused after an error: when to poll the listener again.
    paused_until: Option<Instant>,
}

impl Listener {
    /// Takes over the bound `listener` (made non-blocking) and registers it under `token`.
    pub fn new(
        listener: std::net::TcpListener,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Listener> {
        listener.set_nonblocking(true)?;
        let mut socket = TcpListener::from_std(listener);
        registry.register(&mut socket, token, Interest::READABLE)?;
        Ok(Listener {
            socket: Some(socket),
            token,
            paused_until: None,
        })
    }

    /// The next pending client, or `None` when there is none left for now (or accepting
    /// is paused or closed). Call until `None`: the listener is edge-triggered. An error
    /// is logged unless `last_logged` (shared by the loops) says one was less than a second
    /// ago.
    pub fn accept(
        &mut self,
        registry: &Registry,
        last_logged: &Mutex<Option<Instant>>,
        now: Instant,
    ) -> Option<(TcpStream, SocketAddr)> {
        if self.paused_until.is_some() {
            return None;
        }
        loop {
            let result = self.socket.as_ref()?.accept();
            match result {
                Ok(client) => return Some(client),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(e) if pauses(&e, last_logged) => {
                    self.pause(registry, now);
                    return None;
                }
                Err(_) => {} // The client gave up while queued, or a signal: next one.
            }
        }
    }

    /// Stops polling the listener for [`ACCEPT_PAUSE`].
    fn pause(&mut self, registry: &Registry, now: Instant) {
        if let Some(socket) = &mut self.socket {
            let _ = registry.deregister(socket);
        }
        self.paused_until = Some(now + ACCEPT_PAUSE);
    }

    /// When [`Listener::on_tick`] has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Ends a pause that is over: the listener is polled again. Returns `true` if it did,
    /// and then the caller should [`Listener::accept`] (clients may be waiting already,
    /// and being edge-triggered there may be no new event for them).
    pub fn on_tick(&mut self, registry: &Registry, now: Instant) -> bool {
        match (self.paused_until, &mut self.socket) {
            (Some(until), Some(socket)) if now >= until => {
                self.paused_until = None;
                if let Err(e) = registry.register(socket, self.token, Interest::READABLE) {
                    log::error!("cannot poll the listener again: {e}; retrying");
                    self.paused_until = Some(now + ACCEPT_PAUSE);
                    return false;
                }
                true
            }
            _ => false,
        }
    }

    /// Ctrl-C: no new client joins the queue while the drain accepts the queued ones
    /// ([`crate::listen::stop_queueing`]).
    pub fn stop_queueing(&self) {
        if let Some(socket) = &self.socket
            && let Err(e) = crate::listen::stop_queueing(socket)
        {
            log::debug!("cannot shrink the listen backlog: {e}");
        }
    }

    /// Closes the listening socket: from now on connects to the port are refused.
    pub fn close(&mut self, registry: &Registry) {
        let paused = self.paused_until.take().is_some(); // Paused = already deregistered.
        if let Some(mut socket) = self.socket.take()
            && !paused
        {
            let _ = registry.deregister(&mut socket);
        }
    }
}

/// [`accept_error_pauses`] with the loops' shared "last logged" time.
fn pauses(e: &io::Error, last_logged: &Mutex<Option<Instant>>) -> bool {
    let mut last = last_logged.lock().unwrap_or_else(|e| e.into_inner());
    accept_error_pauses(e, &mut last)
}
