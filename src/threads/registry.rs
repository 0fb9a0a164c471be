//! The open-connection registry (threads mode): what Ctrl-C waits for and, after the
//! drain timeout, cuts; and what the idle check looks through.
//!
//! The accept loop [`Registry::admit`]s each client and gets a [`Ticket`] that travels
//! with it to a worker. While the worker connects to a backend, the socket it connects
//! is registered ([`Ticket::connecting`]) so a cut can abandon the connect; once connected
//! the worker [`Ticket::attach`]es the [`Connection`], so the registry can shut its
//! sockets down. Dropping the ticket (when the worker is done, or while unwinding from a
//! panic) removes the entry: nothing leaks.
//!
//! The cut and the ticket's steps never miss each other: [`Registry::cut_all`] sets its
//! flag and takes its snapshot under the `open` lock, and each ticket step checks the
//! flag and updates its entry under the same lock. So a connection is either in the
//! snapshot or sees the flag, never neither.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use socket2::Socket;

use crate::outcome::Outcome;
use crate::threads::conn::Connection;

/// Every connection accepted and not yet closed.
#[derive(Debug, Default)]
pub struct Registry {
    /// The last connection id handed out; ids start at 1.
    last_id: AtomicU64,
    /// Open connections by id; `None` until the backend is connected.
    open: Mutex<HashMap<u64, Option<Arc<Connection>>>>,
    /// Signalled when a connection closes while someone waits, for [`Registry::wait_below`].
    closed: Condvar,
    /// Threads waiting in [`Registry::wait_below`]; changed only under the `open` lock, so
    /// a closing connection knows whether to signal `closed` (a syscall saved otherwise).
    waiting: AtomicUsize,
    /// Set by [`Registry::cut_all`]: connections attached later are cut at once. Only
    /// set and read under the `open` lock (an atomic only so that `Registry` needs no
    /// second lock for it).
    cutting: AtomicBool,
    /// The sockets workers are connecting to backends, by connection id, so that
    /// [`Registry::cut_all`] can abandon those connects. Only changed under the `open`
    /// lock (then this one), like `cutting`.
    connecting: Mutex<HashMap<u64, Arc<Socket>>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// Registers a newly accepted client and returns its ticket (with its id).
    pub fn admit(self: &Arc<Self>) -> Ticket {
        let id = self.last_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(id, None);
        Ticket {
            id,
            registry: Arc::clone(self),
        }
    }

    /// How many connections are open (accepted, queued or being served).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits up to `timeout` for every connection to close; returns whether they did.
    pub fn wait_empty(&self, timeout: Duration) -> bool {
        self.wait_below(1, timeout)
    }

    /// Waits up to `timeout` until fewer than `max` connections are open; returns whether
    /// they are.
    pub fn wait_below(&self, max: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut open = self.lock();
        while open.len() >= max {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.waiting.fetch_add(1, Ordering::Relaxed);
            open = match self.closed.wait_timeout(open, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        true
    }

    /// Cuts every open connection with `reason`, and any attached from now on; abandons
    /// every connect under way (its worker then logs the connection as cut); returns how
    /// many were open. Setting the flag and taking the snapshot is one step under the
    /// `open` lock (see the module docs).
    pub fn cut_all(&self, reason: Outcome) -> usize {
        let (open, connecting) = {
            let open = self.lock();
            self.cutting.store(true, Ordering::SeqCst);
            let conns: Vec<Option<Arc<Connection>>> = open.values().cloned().collect();
            let connecting: Vec<Arc<Socket>> = self.lock_connecting().values().cloned().collect();
            (conns, connecting)
        };
        for conn in open.iter().flatten() {
            conn.cut(reason);
        }
        for socket in connecting {
            // Shutting down a socket that is still connecting aborts the connect (the
            // worker's `connect_timeout` returns an error at once). It sends nothing.
            let _ = socket.shutdown(Shutdown::Both);
        }
        open.len()
    }

    /// Whether [`Registry::cut_all`] has run.
    pub fn is_cutting(&self) -> bool {
        let _open = self.lock();
        self.cutting.load(Ordering::SeqCst)
    }

    fn lock_connecting(&self) -> MutexGuard<'_, HashMap<u64, Arc<Socket>>> {
        // Single inserts and removes only: a map behind a poisoned lock is consistent.
        self.connecting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts every connection idle for `idle` or longer ([`Connection::cut_if_idle`]),
    /// and every one whose client has said nothing for `client` since it was accepted
    /// ([`Connection::cut_if_silent`]); `None` skips that check.
    /// Each connection is held to the timeouts in force when it was accepted.
    pub fn cut_idle(&self) {
        let open: Vec<Arc<Connection>> = self.lock().values().flatten().cloned().collect();
        for conn in open {
            let (idle, client) = (conn.settings.idle_timeout, conn.settings.client_timeout);
            let cut = client.is_some_and(|limit| conn.cut_if_silent(limit));
            if let (false, Some(limit)) = (cut, idle) {
                conn.cut_if_idle(limit);
            }
        }
    }

    /// Starts the idle check: a thread that calls [`Registry::cut_idle`] every `tick()`
    /// (asked again each time: a reload may change it; `None`: 1 s, nothing to cut) for
    /// as long as the registry exists. One thread for all connections: the copy threads
    /// block in `read` without a timeout, so they cost nothing while idle.
    pub fn start_idle_check(
        self: &Arc<Self>,
        tick: impl Fn() -> Option<Duration> + Send + 'static,
    ) -> io::Result<()> {
        let registry = Arc::downgrade(self);
        thread::Builder::new()
            .name("idle-check".into())
            .spawn(move || {
                while let Some(registry) = registry.upgrade() {
                    registry.cut_idle();
                    drop(registry);
                    thread::sleep(tick().unwrap_or(Duration::from_secs(1)));
                }
            })
            .map(drop)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Option<Arc<Connection>>>> {
        // Each update is a single insert or remove, so a map behind a poisoned lock is
        // still consistent.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One open connection's place in the [`Registry`]; dropping it removes the entry.
#[derive(Debug)]
pub struct Ticket {
    /// The connection id.
    id: u64,
    /// The registry to remove ourselves from.
    registry: Arc<Registry>,
}

impl Ticket {
    /// The connection id, counted from 1.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Makes `conn` reachable for the drain timeout's cut. If the cut already happened,
    /// `conn` is cut at once. The check and the insert are one step (see the module docs).
    pub fn attach(&self, conn: Arc<Connection>) {
        let cutting = {
            let mut open = self.registry.lock();
            open.insert(self.id, Some(Arc::clone(&conn)));
            self.registry.cutting.load(Ordering::SeqCst)
        };
        if cutting {
            conn.cut(Outcome::Shutdown);
        }
    }

    /// Registers `socket`, about to connect to a backend, so that a cut abandons the
    /// connect; `Err(Shutdown)` if the cut already happened (then do not connect). Call
    /// [`Ticket::connected`] when the connect is over, whatever its result.
    pub fn connecting(&self, socket: &Arc<Socket>) -> Result<(), Outcome> {
        let _open = self.registry.lock();
        if self.registry.cutting.load(Ordering::SeqCst) {
            return Err(Outcome::Shutdown);
        }
        self.registry
            .lock_connecting()
            .insert(self.id, Arc::clone(socket));
        Ok(())
    }

    /// The connect registered with [`Ticket::connecting`] is over: forgets its socket.
    pub fn connected(&self) {
        let _open = self.registry.lock();
        self.registry.lock_connecting().remove(&self.id);
    }

    /// Whether the connections were cut ([`Registry::cut_all`]): a connect that failed
    /// meanwhile was abandoned, not refused by the backend.
    pub fn is_cut(&self) -> bool {
        self.registry.is_cutting()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut open = self.registry.lock();
        open.remove(&self.id);
        self.registry.lock_connecting().remove(&self.id);
        let waiting = self.registry.waiting.load(Ordering::Relaxed) > 0;
        drop(open);
        if waiting {
            self.registry.closed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_count_and_remove_themselves() {
        let registry = Registry::new();
        let a = registry.admit();
        let b = registry.admit();
        assert_eq!((a.id(), b.id()), (1, 2));
        assert_eq!(registry.len(), 2);
        drop(a);
        assert!(!registry.wait_empty(Duration::from_millis(10)));
        let waiter = std::thread::spawn(move || drop(b));
        assert!(registry.wait_empty(Duration::from_secs(5)));
        waiter.join().unwrap();
        assert!(registry.is_empty());
    }

    #[test]
    fn waits_until_below_a_limit() {
        let registry = Registry::new();
        let a = registry.admit();
        let _b = registry.admit();
        assert!(registry.wait_below(3, Duration::ZERO));
        assert!(!registry.wait_below(2, Duration::from_millis(10)));
        let closer = std::thread::spawn(move || drop(a));
        assert!(registry.wait_below(2, Duration::from_secs(5)));
        closer.join().unwrap();
    }

    #[test]
    fn a_cut_abandons_connects_and_refuses_new_ones() {
        let registry = Registry::new();
        let ticket = registry.admit();
        let socket =
            Arc::new(Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap());
        assert_eq!(ticket.connecting(&socket), Ok(()));
        assert!(!ticket.is_cut());
        assert_eq!(registry.cut_all(Outcome::Shutdown), 1);
        assert!(ticket.is_cut());
        assert_eq!(ticket.connecting(&socket), Err(Outcome::Shutdown));
        ticket.connected();
        drop(ticket);
        assert!(registry.is_empty());
        assert!(registry.lock_connecting().is_empty());
    }

    #[test]
    fn a_panicking_worker_still_removes_its_entry() {
        let registry = Registry::new();
        let ticket = registry.admit();
        let result = std::thread::spawn(move || {
            let _ticket = ticket;
            panic!("boom");
        })
        .join();
        assert!(result.is_err());
        assert!(registry.is_empty());
    }
}
