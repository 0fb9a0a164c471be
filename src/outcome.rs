//! How one connection ended, and the one log line that sums it up.
//!
//! Both modes (threads and mio) end every connection by building a [`Summary`] and logging
//! it once at info level, so the log looks the same whichever mode moved the bytes.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a connection ended; the last word of its summary line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides closed their half normally (a 0-byte read each way).
    Eof,
    /// Reading from or writing to the client failed (reset, broken pipe).
    ClientReset,
    /// Reading from or writing to the backend failed (reset, broken pipe).
    BackendReset,
    /// No byte moved in either direction for `idle_timeout`.
    IdleTimeout,
    /// No byte moved either way for `client_timeout` after the client was accepted.
    ClientTimeout,
    /// No backend accepted the connection.
    ConnectFailed,
    /// Ctrl-C's drain timeout ran out while the connection was still open.
    Shutdown,
    /// A bug: the code serving this connection panicked (logged separately).
    InternalError,
}

impl Outcome {
    /// The words used in the log line.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Eof => "eof",
            Outcome::ClientReset => "client reset",
            Outcome::BackendReset => "backend reset",
            Outcome::IdleTimeout => "idle timeout",
            Outcome::ClientTimeout => "client timeout",
            Outcome::ConnectFailed => "connect failed",
            Outcome::Shutdown => "shutdown",
            Outcome::InternalError => "internal error",
        }
    }

    /// A small number for storing an outcome in an atomic; `0` means "none yet".
    pub fn to_code(self) -> u8 {
        match self {
            Outcome::Eof => 1,
            Outcome::ClientReset => 2,
            Outcome::BackendReset => 3,
            Outcome::IdleTimeout => 4,
            Outcome::ConnectFailed => 5,
            Outcome::Shutdown => 6,
            Outcome::InternalError => 7,
            Outcome::ClientTimeout => 8,
        }
    }

    /// The inverse of [`Outcome::to_code`]; `None` for `0` or an unknown code.
    pub fn from_code(code: u8) -> Option<Outcome> {
        Some(match code {
            1 => Outcome::Eof,
            2 => Outcome::ClientReset,
            3 => Outcome::BackendReset,
            4 => Outcome::IdleTimeout,
            5 => Outcome::ConnectFailed,
            6 => Outcome::Shutdown,
            7 => Outcome::InternalError,
            8 => Outcome::ClientTimeout,
            _ => return None,
        })
    }
}

/// How a connection's two sockets are closed: `true` for a reset (`SO_LINGER` 0, an RST),
/// `false` for a normal close (a FIN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    /// Reset the client.
    pub client: bool,
    /// Reset the backend.
    pub backend: bool,
}

impl Outcome {
    /// The one rule for how a connection ends, in both modes. `moved`: a byte moved on the
    /// connection, either way, at any time.
    /// - A peer's reset is passed on as a reset to the other peer, after the bytes it sent
    ///   before it (the caller's job: it ends the connection only then).
    /// - A connection rsp ends on its own (idle or client timeout, the drain's deadline, a
    ///   second signal, a panic) is reset both ways once a byte has moved: a truncated
    ///   transfer must never look complete, and rsp cannot tell a pause between requests
    ///   from a pause inside one. With nothing moved, both get a plain close.
    /// - Otherwise (`eof`, `connect failed`) a FIN: a peer's own FIN passed on.
    pub fn ends(self, moved: bool) -> Ends {
        let (client, backend) = match self {
            Outcome::ClientReset => (false, true),
            Outcome::BackendReset => (true, false),
            Outcome::IdleTimeout
            | Outcome::ClientTimeout
            | Outcome::Shutdown
            | Outcome::InternalError => (moved, moved),
            Outcome::Eof | Outcome::ConnectFailed => (false, false),
        };
        Ends { client, backend }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything the per-connection log line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The connection's number, counted from 1 since start; ties its log lines together.
    pub id: u64,
    /// Who connected to us.
    pub client: SocketAddr,
    /// The backend's name from the config, or `-` if none was connected.
    pub backend: String,
    /// Bytes copied client → backend.
    pub up: u64,
    /// Bytes copied backend → client.
    pub down: u64,
    /// From accept to close.
    pub duration: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

impl Summary {
    /// Logs this summary: one info line per connection, after an error line if no
    /// backend could be reached (the client is turned away: worth more than info).
    pub fn log(&self) {
        if self.outcome == Outcome::ConnectFailed {
            log::error!(
                "conn {}: no backend accepted the connection; closing the client",
                self.id
            );
        }
        log::info!("{self}");
    }
}

impl fmt::Display for Summary {
    /// `conn 17 127.0.0.1:51234 -> 127.0.0.1:8888: 78 B up, 11534336 B down, 1.234 s, eof`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conn {} {} -> {}: {} B up, {} B down, {:.3} s, {}",
            self.id,
            self.client,
            self.backend,
            self.up,
            self.down,
            self.duration.as_secs_f64(),
            self.outcome
        )
    }
}

/// The text of a panic payload (`panic!("...")` gives a `&str` or a `String`).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_line_has_every_field() {
        let summary = Summary {
            id: 17,
            client: "127.0.0.1:51234".parse().unwrap(),
            backend: "127.0.0.1:8888".into(),
            up: 78,
            down: 11_534_336,
            duration: Duration::from_millis(1234),
            outcome: Outcome::Eof,
        };
        assert_eq!(
            summary.to_string(),
            "conn 17 127.0.0.1:51234 -> 127.0.0.1:8888: 78 B up, 11534336 B down, 1.234 s, eof"
        );
    }

    #[test]
    fn a_cut_is_a_reset_both_ways_once_a_byte_moved() {
        let both = |o: Outcome, moved| {
            let ends = o.ends(moved);
            (ends.client, ends.backend)
        };
        for cut in [
            Outcome::IdleTimeout,
            Outcome::ClientTimeout,
            Outcome::Shutdown,
            Outcome::InternalError,
        ] {
            assert_eq!(both(cut, true), (true, true), "{cut}");
            assert_eq!(both(cut, false), (false, false), "{cut}");
        }
        assert_eq!(both(Outcome::ClientReset, true), (false, true));
        assert_eq!(both(Outcome::BackendReset, true), (true, false));
        assert_eq!(both(Outcome::Eof, true), (false, false));
    }

    #[test]
    fn codes_round_trip() {
        for code in 1..=8 {
            let outcome = Outcome::from_code(code).unwrap();
            assert_eq!(outcome.to_code(), code);
        }
        assert_eq!(Outcome::from_code(0), None);
    }
}
