//! Ctrl-C and SIGTERM: stop accepting, let open connections drain, exit.
//!
//! The `ctrlc` crate runs our handler on its own thread for Ctrl-C (SIGINT); SIGTERM
//! runs the same handler from the signal thread of [`crate::reload`] (`ctrlc` takes only
//! SIGINT, so that SIGHUP can reload). The main thread may be blocked in `accept()`, and
//! a flag alone would not wake it, so the handler also calls a `wake` function: threads
//! mode connects to its own listen address ([`ListenerWake`]), an event loop would use
//! its `mio::Waker`. What to do after waking (accept the backlog, close the listener,
//! drain, cut) is up to the mode; this module only owns the flag and the signal handler.
//! The handler sets its flags and wakes the mode *before* it logs: a log line may have to
//! wait (see [`crate::logging`]), a stop must not.
//!
//! A second signal (Ctrl-C or SIGTERM, in any mix) exits with status 130 (128 + SIGINT),
//! as shells do, within [`SECOND_SIGNAL_LIMIT`], after the mode has reset every open
//! connection ([`Shutdown::on_second_signal`]): a process that just exits would close
//! them with a FIN, and a cut-off transfer would look complete. Its last log line says
//! how many connections it cut.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

/// The exit status used when a second signal cuts the drain short.
pub const SECOND_SIGNAL_EXIT_CODE: i32 = 130;

/// A second signal ends the process within this time, whatever the log is doing.
pub const SECOND_SIGNAL_LIMIT: Duration = Duration::from_secs(1);

/// Of [`SECOND_SIGNAL_LIMIT`], the time the mode gets to reset its connections (and let
/// their summary lines be logged)...
const SECOND_SIGNAL_CUT: Duration = Duration::from_millis(600);

/// ... then until this time the log gets to be written out; the rest is for the exit
/// itself (the kernel closing thousands of sockets and threads takes a while).
const SECOND_SIGNAL_FLUSH: Duration = Duration::from_millis(800);

/// What the second signal runs before the process exits (see [`Shutdown::on_second_signal`]).
type ExitHook = Box<dyn Fn(Instant) -> usize + Send>;

/// What a signal runs: the first one stops, the second exits.
type Handler = Arc<dyn Fn() + Send + Sync>;

/// The "we are shutting down" flag, shared by the signal handler and the server.
#[derive(Default)]
pub struct Shutdown {
    /// Set by the first signal; the accept loop checks it after every wake-up.
    stopping: AtomicBool,
    /// Set by the second signal, just before its hook runs.
    exiting: AtomicBool,
    /// Signals received so far; the second one exits the process.
    signals: AtomicUsize,
    /// Run by the second signal before exiting: resets the open connections.
    exit_hook: Mutex<Option<ExitHook>>,
    /// What a signal does (set by [`Shutdown::install_handler`]); SIGTERM arrives on the
    /// signal thread of [`crate::reload`] and runs it through [`Shutdown::signal`]. Not
    /// locked while it runs: a second signal on the other thread must not wait for it.
    handler: std::sync::OnceLock<Handler>,
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shutdown")
            .field("stopping", &self.stopping)
            .field("exiting", &self.exiting)
            .field("signals", &self.signals)
            .finish_non_exhaustive()
    }
}

impl Shutdown {
    /// A fresh flag, not stopping.
    pub fn new() -> Arc<Shutdown> {
        Arc::new(Shutdown::default())
    }

    /// Whether a shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Whether a second signal came: the process is about to exit.
    pub fn is_exiting(&self) -> bool {
        self.exiting.load(Ordering::SeqCst)
    }

    /// Sets what the second signal runs (on the handler's thread) before the process
    /// exits: it must reset every open connection (`SO_LINGER` 0), as `exit` closes the
    /// sockets and a plain close sends a FIN, and return how many it cut. It may wait (for
    /// the connections' threads or event loops) until the deadline it is given, no longer.
    pub fn on_second_signal(&self, hook: impl Fn(Instant) -> usize + Send + 'static) {
        *self.exit_hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(hook));
    }

    /// Begins the shutdown (as the first signal does); returns `true` the first time.
    pub fn begin(&self) -> bool {
        !self.stopping.swap(true, Ordering::SeqCst)
    }

    /// Runs what Ctrl-C runs (for SIGTERM, which `ctrlc` does not take: see
    /// [`crate::reload`]).
    pub fn signal(&self) {
        if let Some(handler) = self.handler.get() {
            handler();
        }
    }

    /// Installs the process's Ctrl-C handler (SIGTERM comes through [`Shutdown::signal`]).
    /// The first signal sets the flag, calls `wake`, then logs; the second sets `exiting`,
    /// runs the hook set with [`Shutdown::on_second_signal`], logs how many connections it
    /// cut and exits with [`SECOND_SIGNAL_EXIT_CODE`] within [`SECOND_SIGNAL_LIMIT`]. Fails
    /// if a handler is already installed (the `ctrlc` crate allows one per process).
    pub fn install_handler<F>(self: &Arc<Self>, wake: F) -> io::Result<()>
    where
        F: Fn() + Send + Sync + 'static,
    {
        let this = Arc::clone(self);
        let handler = move || {
            if this.signals.fetch_add(1, Ordering::SeqCst) == 0 {
                this.begin();
                wake();
                log::info!(
                    "Signal received: stopping. A second Ctrl-C resets every connection and exits."
                );
            } else {
                this.exit_now();
            }
        };
        let _ = self.handler.set(Arc::new(handler));
        let this = Arc::clone(self);
        ctrlc::set_handler(move || this.signal())
            .map_err(|e| io::Error::other(format!("cannot install the Ctrl-C handler: {e}")))
    }

    /// The second signal: resets every connection (the hook), logs how many, writes out
    /// what the log can take in the time left, and exits.
    fn exit_now(&self) -> ! {
        let start = Instant::now();
        self.exiting.store(true, Ordering::SeqCst);
        let hook = self.exit_hook.lock().unwrap_or_else(|e| e.into_inner());
        let cut = hook
            .as_ref()
            .map_or(0, |hook| hook(start + SECOND_SIGNAL_CUT));
        log::warn!("Second signal: {cut} connection(s) cut (reset); exiting.");
        crate::logging::flush(
            (start + SECOND_SIGNAL_FLUSH).saturating_duration_since(Instant::now()),
        );
        std::process::exit(SECOND_SIGNAL_EXIT_CODE);
    }
}

/// For a thread that finished its part of the drain but finds that a second signal came
/// meanwhile: the signal handler is cutting the connections and will end the process with
/// [`SECOND_SIGNAL_EXIT_CODE`] (and the right last log line); returning would exit 0.
pub fn wait_for_exit() -> ! {
    loop {
        std::thread::park();
    }
}

/// Logs the start of a drain: `open` connections get up to `timeout` to finish.
pub fn log_drain_start(open: usize, timeout: Duration) {
    log::info!(
        "Shutting down: no longer accepting; waiting up to {:.1} s for {open} open connection(s).",
        timeout.as_secs_f64()
    );
}

/// Logs the end of a drain that began with `open` connections and had to cut `cut` of
/// them at the timeout.
pub fn log_drain_end(open: usize, cut: usize) {
    if cut == 0 {
        log::info!("All {open} connection(s) drained; exiting.");
    } else {
        log::info!(
            "Drain timeout: {} connection(s) drained, {cut} cut; exiting.",
            open.saturating_sub(cut)
        );
    }
}

/// The drain of several event loops, logged as one: mio mode runs `loops` loops, each
/// closing its own listening socket and draining its own connections, but the log says
/// once that the process stopped accepting and once that it is done, as threads mode does.
#[derive(Debug)]
pub struct DrainLog {
    /// The listeners still open; the drain's start is logged when the last one closes.
    /// Only then is "no longer accepting" true (until then another loop still accepts).
    listening: AtomicUsize,
    /// Connections open when the drain's start was logged, and those cut at the timeout.
    counts: Mutex<(usize, usize)>,
}

impl DrainLog {
    /// For `loops` listeners.
    pub fn new(loops: usize) -> DrainLog {
        DrainLog {
            listening: AtomicUsize::new(loops),
            counts: Mutex::new((0, 0)),
        }
    }

    /// One listener closed. If it was the last, logs the drain's start with `open()`
    /// connections open in the whole process, each given up to `timeout`.
    pub fn listener_closed(&self, open: impl FnOnce() -> usize, timeout: Duration) {
        if self.listening.fetch_sub(1, Ordering::SeqCst) == 1 {
            let open = open();
            self.lock().0 = open;
            log_drain_start(open, timeout);
        }
    }

    /// A loop cut `n` connections at the drain timeout.
    pub fn cut(&self, n: usize) {
        self.lock().1 += n;
    }

    /// Every loop is done: logs the drain's end.
    pub fn finish(&self) {
        let (open, cut) = *self.lock();
        log_drain_end(open, cut);
    }

    /// The counts; a panic elsewhere while they were held cannot leave them half-written.
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, usize)> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where to connect to reach a listener bound to `listen`: the same port, on loopback if
/// the listener is bound to every interface (`0.0.0.0` or `::` cannot be connected to).
pub fn wake_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// Wakes a thread blocked in `accept()` by connecting to its listener once, and remembers
/// the address it connected from, so that the accept loop can tell this connection (to be
/// dropped) from a client's (to be served: it connected before the listener closed).
#[derive(Debug)]
pub struct ListenerWake {
    /// Where to connect: [`wake_address`] of the listener.
    target: SocketAddr,
    /// The wake-up connection's own address, once it is made.
    from: Mutex<Option<SocketAddr>>,
}

impl ListenerWake {
    /// For the listener bound to `listen`.
    pub fn new(listen: SocketAddr) -> Arc<ListenerWake> {
        Arc::new(ListenerWake {
            target: wake_address(listen),
            from: Mutex::new(None),
        })
    }

    /// Connects to the listener (bound first, so its address is known before the listener
    /// can accept it). A failure is logged: the accept loop then wakes with its next client.
    pub fn wake(&self) {
        if let Err(e) = self.connect() {
            log::warn!("could not wake the accept loop on {}: {e}", self.target);
        }
    }

    fn connect(&self) -> io::Result<()> {
        let socket = Socket::new(Domain::for_address(self.target), Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(self.target.ip(), 0).into())?;
        let from = socket.local_addr()?.as_socket();
        *self.from.lock().unwrap_or_else(|e| e.into_inner()) = from;
        socket.connect_timeout(&self.target.into(), Duration::from_secs(1))
    }

    /// Whether a connection accepted from `peer` is the wake-up connection.
    pub fn is_wake(&self, peer: SocketAddr) -> bool {
        *self.from.lock().unwrap_or_else(|e| e.into_inner()) == Some(peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn begin_is_true_only_once() {
        let s = Shutdown::new();
        assert!(!s.is_stopping());
        assert!(s.begin());
        assert!(!s.begin());
        assert!(s.is_stopping());
    }

    #[test]
    fn the_drain_starts_when_the_last_listener_closes() {
        let drain = DrainLog::new(3);
        let asked = AtomicUsize::new(0);
        let open = || {
            asked.fetch_add(1, Ordering::SeqCst);
            7
        };
        drain.listener_closed(open, Duration::from_secs(1));
        drain.listener_closed(open, Duration::from_secs(1));
        assert_eq!(
            asked.load(Ordering::SeqCst),
            0,
            "logged before every loop closed"
        );
        drain.listener_closed(open, Duration::from_secs(1));
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        drain.cut(2);
        drain.cut(1);
        assert_eq!(*drain.lock(), (7, 3));
    }

    #[test]
    fn wake_address_uses_loopback_for_any_address() {
        let any: SocketAddr = "0.0.0.0:8000".parse().unwrap();
        assert_eq!(wake_address(any), "127.0.0.1:8000".parse().unwrap());
        let any6: SocketAddr = "[::]:8000".parse().unwrap();
        assert_eq!(wake_address(any6), "[::1]:8000".parse().unwrap());
        let one: SocketAddr = "127.0.0.2:8000".parse().unwrap();
        assert_eq!(wake_address(one), one);
    }

    #[test]
    fn a_wake_unblocks_accept_and_is_told_from_a_client() {
        let listener = TcpListener::bind("0.0.0.0:0").unwrap();
        let wake = ListenerWake::new(listener.local_addr().unwrap());
        let client = std::net::TcpStream::connect(wake.target).unwrap();
        let waking = Arc::clone(&wake);
        let waker = std::thread::spawn(move || waking.wake());
        let (_, first) = listener.accept().unwrap();
        let (_, second) = listener.accept().unwrap();
        waker.join().unwrap();
        assert_eq!(first, client.local_addr().unwrap());
        assert!(!wake.is_wake(first), "a client taken for the wake-up");
        assert!(wake.is_wake(second), "the wake-up taken for a client");
    }
}
