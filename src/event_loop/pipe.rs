//! One direction of a connection: read from the source, pass the bytes on to the
//! destination through a [`WriteQueue`], and pass the source's EOF on as a half-close.
//!
//! Three rules keep it correct and bounded:
//! - **Edge-triggered readiness is remembered.** mio reports "readable" once per change,
//!   not once per poll, so [`Pipe::readable`] keeps a report we have not used up yet (we
//!   were paused, or stopped early to let other connections run) until a read says
//!   `WouldBlock`, or until a short read shows the source is empty (only where that is
//!   provably so, see [`Pipe::pump`]).
//! - **High-water mark.** While more than `max_buffered` bytes wait for the destination,
//!   the source is not read; its kernel buffer fills and TCP slows the sender down. Reading
//!   resumes once the queue is below half of that.
//! - **Deferred close.** The source's EOF becomes `shutdown(Write)` on the destination only
//!   after every queued byte is written: the FIN must not overtake the data. (If the other
//!   direction is done already, the connection closes right away, and `close()` sends
//!   that FIN: the `shutdown` call is skipped, one syscall per connection.) A source's
//!   reset waits the same way: the pipe ends once its bytes are written, and the
//!   connection then passes the reset on.

use std::io::{self, ErrorKind, Read};
use std::net::Shutdown;

use mio::net::TcpStream;

use super::queue::WriteQueue;

/// At most this many reads per source per turn, so one busy connection cannot keep the
/// loop from the others. What is left is read on the next turn.
const READS_PER_TURN: usize = 16;

/// Whether a read that fills less than the buffer may be taken to mean "the socket is
/// empty" (see [`Pipe::pump`]). Linux's TCP `recv` returns short only when its receive
/// queue is empty or at an urgent-data mark, and urgent data also raises `EPOLLPRI`,
/// which turns the shortcut off for that pipe. Elsewhere we read until `WouldBlock`.
const SHORT_READ_DRAINS: bool = cfg!(any(target_os = "linux", target_os = "android"));

/// Which socket failed, and how.
#[derive(Debug)]
pub enum Fault {
    /// Reading from the source failed.
    Source(io::Error),
    /// Writing to (or shutting down) the destination failed.
    Dest(io::Error),
}

/// What a call to [`Pipe::pump`] did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pumped {
    /// Some bytes were read (the connection is not idle).
    pub moved: bool,
    /// It stopped at [`READS_PER_TURN`] with the source still readable: call again soon.
    pub more: bool,
}

/// Bytes flowing one way, `source → queue → destination`.
#[derive(Debug)]
pub struct Pipe {
    /// `"client -> backend"` or `"backend -> client"`, for the debug log lines.
    name: &'static str,
    /// Bytes read from the source but not yet taken by the destination.
    queue: WriteQueue,
    /// Bytes read from the source so far.
    read: u64,
    /// The source may have bytes (or an EOF) for us: set by a readable event, cleared when
    /// a read would block or came back short.
    pub readable: bool,
    /// An event said the source's peer closed its side (FIN or reset): a short read no
    /// longer means "empty", as the EOF after the bytes raises no new event.
    closing: bool,
    /// An event said the source has urgent data (TCP `MSG_OOB`, `EPOLLPRI`): a read
    /// stops short at its mark with more bytes behind it, so a short read no longer
    /// means "empty" for this pipe (for good: urgent data is rare, telnet or FTP `ABOR`).
    urgent: bool,
    /// The source sent its FIN (a 0-byte read), or reset (see `reset`).
    eof: bool,
    /// The source reset or vanished: a failed read, or a 0-byte read after
    /// [`Pipe::source_failed`]. Its end is passed on as a reset, not a FIN.
    reset: bool,
    /// The source failed: every read from here on ends in a reset (see
    /// [`Pipe::source_failed`]).
    source_failed: bool,
    /// The destination failed: the queue was dropped and the source is no longer read
    /// (its bytes have nowhere to go).
    abandoned: bool,
    /// We passed that FIN on: `shutdown(Write)` on the destination.
    shut: bool,
    /// The queue went over `max_buffered`: the source is not read until it drains to half.
    paused: bool,
}

impl Pipe {
    /// An empty pipe; `name` shows in its log lines.
    pub fn new(name: &'static str) -> Pipe {
        Pipe {
            name,
            queue: WriteQueue::default(),
            read: 0,
            readable: false,
            closing: false,
            urgent: false,
            eof: false,
            reset: false,
            source_failed: false,
            abandoned: false,
            shut: false,
            paused: false,
        }
    }

    /// A readable event for the source; `closed` if it also said the peer closed its side,
    /// `urgent` if it said urgent data is waiting.
    pub fn on_readable(&mut self, closed: bool, urgent: bool) {
        self.readable = true;
        self.closing |= closed;
        self.urgent |= urgent;
    }

    /// Bytes the destination has taken so far (read minus still queued).
    pub fn delivered(&self) -> u64 {
        self.read - self.queue.len() as u64
    }

    /// Bytes queued for the destination, and whether the source is paused (stats page).
    pub fn backlog(&self) -> (usize, bool) {
        (self.queue.len(), self.paused)
    }

    /// Bytes read from the source so far.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// The source reset or vanished, though its error may have gone to the other
    /// direction's write (then a read sees only the end): read what it sent before to the
    /// end, and pass that end on as a reset. A reset socket never blocks a read.
    pub fn source_failed(&mut self) {
        self.source_failed = true;
        self.readable = true;
        self.closing = true;
    }

    /// The destination reset or vanished: nothing more can reach it. Drops what is
    /// queued and stops reading the source.
    pub fn abandon(&mut self) {
        self.abandoned = true;
        self.queue = WriteQueue::default();
    }

    /// Whether this direction is finished: EOF read, queue written, FIN passed on (or, for
    /// a reset source, ready to pass the reset on); or abandoned.
    pub fn is_done(&self) -> bool {
        self.shut || self.abandoned
    }

    /// Reads from `src` and sends to `dst` until the source would block, ends, the queue
    /// is over `max_buffered`, or the turn is up. `buf` is the loop's one read buffer.
    /// `last`: the other direction is done (see [`Pipe::pass_eof_on`]).
    ///
    /// On Linux, a read that fills less than `buf` emptied the socket's receive queue, so
    /// the next read would only say `WouldBlock`: we skip it (one `recv` fewer per
    /// message, about a quarter of the syscalls of a small request and response). Bytes
    /// that arrive later raise a new edge-triggered event. Two exceptions, where bytes or
    /// an EOF are already there and no new event comes: when an event said the peer
    /// closed, we read on until the 0-byte read; when an event said urgent data is waiting
    /// (a read stops short at its mark even with `SO_OOBINLINE`), we read on until
    /// `WouldBlock`. See [`SHORT_READ_DRAINS`].
    pub fn pump(
        &mut self,
        src: &TcpStream,
        dst: &TcpStream,
        buf: &mut [u8],
        max_buffered: usize,
        id: u64,
        last: bool,
    ) -> Result<Pumped, Fault> {
        let mut pumped = Pumped::default();
        let mut reads = 0;
        while self.readable && !self.eof && !self.paused && !self.abandoned {
            if reads == READS_PER_TURN {
                pumped.more = true;
                break;
            }
            reads += 1;
            match (&*src).read(buf) {
                Ok(0) => {
                    self.eof = true;
                    self.reset = self.source_failed;
                }
                Ok(n) => {
                    pumped.moved = true;
                    self.read += n as u64;
                    if SHORT_READ_DRAINS && n < buf.len() && !self.closing && !self.urgent {
                        self.readable = false; // Short read: the socket is empty.
                    }
                    self.queue.send(dst, &buf[..n]).map_err(Fault::Dest)?;
                    if self.queue.len() > max_buffered {
                        self.paused = true;
                        log::debug!(
                            "conn {id}: {} paused, {} bytes queued",
                            self.name,
                            self.queue.len()
                        );
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Every byte before the reset was read: pass it on after them.
                    (self.eof, self.reset) = (true, true);
                    self.pass_eof_on(dst, last)?;
                    return Err(Fault::Source(e));
                }
            }
        }
        self.pass_eof_on(dst, last)?;
        Ok(pumped)
    }

    /// The destination is writable again: writes what is queued, resumes reading once
    /// the queue is below half the high-water mark. Returns whether any byte was written.
    /// `last`: the other direction is done (see [`Pipe::pass_eof_on`]).
    pub fn flush(
        &mut self,
        dst: &TcpStream,
        max_buffered: usize,
        id: u64,
        last: bool,
    ) -> Result<bool, Fault> {
        if self.queue.is_empty() || self.abandoned {
            return Ok(false);
        }
        let written = self.queue.flush(dst).map_err(Fault::Dest)?;
        if self.paused && self.queue.len() <= max_buffered / 2 {
            self.paused = false;
            log::debug!(
                "conn {id}: {} resumed, {} bytes queued",
                self.name,
                self.queue.len()
            );
        }
        self.pass_eof_on(dst, last)?;
        Ok(written > 0)
    }

    /// Half-close: once the source has ended and the queue is empty, `shutdown(Write)` on
    /// the destination (its peer reads EOF); the other direction keeps going. If it is
    /// the `last` direction, the loop closes the connection next, and `close()` sends the
    /// FIN itself. A source that reset gets no FIN passed on: the connection closes next
    /// and resets the destination.
    fn pass_eof_on(&mut self, dst: &TcpStream, last: bool) -> Result<(), Fault> {
        if self.eof && !self.shut && self.queue.is_empty() {
            self.shut = true;
            if last || self.reset {
                return Ok(());
            }
            // Fails only if the destination was reset (`NotConnected`).
            dst.shutdown(Shutdown::Write).map_err(Fault::Dest)?;
        }
        Ok(())
    }
}
