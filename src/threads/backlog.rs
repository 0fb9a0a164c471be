//! Threads mode at Ctrl-C: the clients the kernel had already connected, waiting in the
//! listen backlog (or handed to the accept loop just then), are served before the listener
//! closes. Closing it at once would reset them unserved, although they connected before
//! the signal; meanwhile no new client joins the queue ([`stop_queueing`]).

use std::io::ErrorKind;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Instant;

use crate::listen::{accept_error_pauses, stop_queueing};
use crate::outcome::{Outcome, Summary};
use crate::shutdown::ListenerWake;
use crate::threads::pool::Pool;
use crate::threads::registry::Registry;
use crate::threads::worker::Accepted;

/// The listener at Ctrl-C, with the clients the kernel has already connected waiting in
/// its backlog. They connected before the signal, so the drain serves them too; closing
/// the listener at once would reset them unserved.
pub struct Backlog<'a> {
    /// The listening socket; closed when the backlog is served.
    pub listener: TcpListener,
    /// To tell the signal handler's wake-up connection from a client.
    pub wake: &'a ListenerWake,
    /// The connection limit (see [`crate::listen::connection_limit`]).
    pub limit: Option<usize>,
}

impl Backlog<'_> {
    /// Hands `pending` and every client queued in the backlog to the workers, as they
    /// have room (and under the connection limit), until the backlog is empty or the
    /// drain's `deadline`; then closes the listener (dropping `self`). Meanwhile no new
    /// client joins the queue ([`stop_queueing`]).
    pub fn serve(
        self,
        mut pending: Option<Accepted>,
        registry: &Arc<Registry>,
        pool: &Pool<Accepted>,
        deadline: Instant,
    ) {
        let nonblocking = self.listener.set_nonblocking(true);
        if nonblocking
            .and_then(|()| stop_queueing(&self.listener))
            .is_err()
        {
            return; // cannot tell when the backlog is empty: close it now, as before
        }
        let mut last_logged = None;
        loop {
            let left = || deadline.saturating_duration_since(Instant::now());
            if let Some(job) = pending.take()
                && let Err(e) = pool.submit_timeout(job, left())
            {
                return unserved(e.into_inner());
            }
            if let Some(max) = self.limit
                && !registry.wait_below(max, left())
            {
                return;
            }
            match self.listener.accept() {
                Ok((_, addr)) if self.wake.is_wake(addr) => {}
                Ok((client, addr)) => pending = Some(super::accept(registry, client, addr)),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if accept_error_pauses(&e, &mut last_logged) => return,
                Err(_) => {} // a client that gave up while queued: the next one
            }
        }
    }
}

/// A client accepted at Ctrl-C that no worker could take before the drain's deadline: it
/// is closed (nothing moved on it) and logged as cut by the shutdown.
fn unserved(job: Accepted) {
    Summary {
        id: job.ticket.id(),
        client: job.addr,
        backend: "-".into(),
        up: 0,
        down: 0,
        duration: job.accepted_at.elapsed(),
        outcome: Outcome::Shutdown,
    }
    .log();
}
