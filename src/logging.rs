//! Logging set-up: timestamped lines through `simplelog`, written off the data path.
//!
//! Every line looks like the C original's: `[2026-11-26 15:30:01.123456 +0000] message`,
//! the timestamp in square brackets first (the C's `test_log_has_timestamp` reads it so):
//! local time if the offset can be read (it must be read before threads start), else UTC.
//! No `[INFO]` tag, as in the C: info, debug and trace go to stdout, warnings and errors to
//! stderr, so the stream tells the severity. Everything in rsp logs through the `log`
//! macros, so the level set in `proxy.lua` silences whatever is below it.
//!
//! # Never blocking on the log
//! A write to stdout blocks when nobody reads it (a stuck `| tee`, a full journald pipe, a
//! terminal paused with Ctrl-S). Written on a worker, an event loop or the signal handler,
//! that would stop the proxy. So `simplelog` formats each line where it is logged (the
//! timestamp is the event's), into a [`LineSink`] that only `try_send`s the line on a
//! bounded crossbeam channel of [`QUEUE_LINES`]; one `log-writer` thread writes the lines
//! out in order. When the queue is full the line is dropped and counted; once the writer
//! has caught up it logs "N log lines dropped" (a warning). [`flush`] waits, for a bounded
//! time, until what is queued is written: `main` calls it before exiting.

use std::io::Write;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use log::{Level, LevelFilter, Log, Metadata, Record};
use simplelog::{Config, ConfigBuilder, WriteLogger};

/// Lines held for the writer at most; more are dropped (and counted). About 0.5 MB of
/// summary lines: a burst of thousands of connections ending at once, while the writer
/// waits for its turn on a busy CPU, still fits.
pub const QUEUE_LINES: usize = 4096;

/// Which stream a line goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// What the writer thread is asked to do.
enum Message {
    /// Write one formatted line (or lines) to a stream.
    Line(Stream, Vec<u8>),
    /// Everything queued before this is written: say so.
    Flush(Sender<()>),
}

/// The queue's sending end, for [`flush`]; set by [`init`].
static QUEUE: OnceLock<Sender<Message>> = OnceLock::new();

/// Starts the logger at `level` and its writer thread. Call it once, first thing in
/// `main`, before any other thread starts; a second call (only one logger per process)
/// is ignored.
pub fn init(level: LevelFilter) {
    let mut builder = ConfigBuilder::new();
    builder
        // A `time` format description: `[name]` is a field, `[[` a literal bracket.
        .set_time_format_custom(simplelog::format_description!(
            "[[[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6] [offset_hour sign:mandatory][offset_minute]]"
        ))
        .set_max_level(LevelFilter::Off) // no level tag
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off);
    // Reading the local UTC offset is refused once other threads run; UTC is the fallback.
    let _ = builder.set_time_offset_to_local();
    let config = builder.build();
    if QUEUE.get().is_some() {
        return;
    }
    let (tx, rx) = crossbeam_channel::bounded(QUEUE_LINES);
    let dropped = Arc::new(AtomicU64::new(0));
    let logger = Split {
        level,
        out: sink_logger(level, config.clone(), Stream::Stdout, &tx, &dropped),
        err: sink_logger(level, config, Stream::Stderr, &tx, &dropped),
    };
    if log::set_boxed_logger(Box::new(logger)).is_err() {
        return; // a logger is already set: keep it
    }
    log::set_max_level(level);
    let _ = QUEUE.set(tx);
    let started = thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_lines(&rx, &dropped));
    if let Err(e) = started {
        // Without the writer every line is dropped (counted); say so once, directly.
        eprintln!("rsp: cannot start the log writer thread: {e}");
    }
}

/// Waits up to `timeout` until every line logged before the call is written out.
/// Returns whether it was (`false` if the sink is blocked, or there is no logger).
pub fn flush(timeout: Duration) -> bool {
    let Some(queue) = QUEUE.get() else {
        return false;
    };
    let deadline = std::time::Instant::now() + timeout;
    let (done, written) = crossbeam_channel::bounded(1);
    queue.send_deadline(Message::Flush(done), deadline).is_ok()
        && written.recv_deadline(deadline).is_ok()
}

/// A `simplelog` [`WriteLogger`] that formats into a [`LineSink`] for `stream`.
fn sink_logger(
    level: LevelFilter,
    config: Config,
    stream: Stream,
    queue: &Sender<Message>,
    dropped: &Arc<AtomicU64>,
) -> Box<WriteLogger<LineSink>> {
    let sink = LineSink {
        stream,
        queue: queue.clone(),
        dropped: Arc::clone(dropped),
        line: Vec::new(),
    };
    WriteLogger::new(level, config, sink)
}

/// Sends warnings and errors to the stderr logger and the rest to the stdout one (what
/// `simplelog`'s `TermLogger` does in its `Mixed` mode, which writes directly).
struct Split {
    level: LevelFilter,
    out: Box<WriteLogger<LineSink>>,
    err: Box<WriteLogger<LineSink>>,
}

impl Log for Split {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        match record.level() {
            Level::Error | Level::Warn => self.err.log(record),
            _ => self.out.log(record),
        }
    }

    fn flush(&self) {
        self.out.flush();
        self.err.flush();
    }
}

/// Where `simplelog` writes a formatted line: gathered until its newline, then handed to
/// the writer thread with `try_send`, so logging never waits for the sink. A line the
/// full queue cannot take is dropped and counted.
struct LineSink {
    stream: Stream,
    queue: Sender<Message>,
    dropped: Arc<AtomicU64>,
    /// The line being formatted (`simplelog` writes it in pieces).
    line: Vec<u8>,
}

impl Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        if self.line.ends_with(b"\n") {
            self.flush()?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.line.is_empty() {
            return Ok(());
        }
        let line = std::mem::take(&mut self.line);
        match self.queue.try_send(Message::Line(self.stream, line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// The writer thread: writes each line in order (this is the only place that may block
/// on the sink); once the queue is empty, reports the lines dropped meanwhile.
fn write_lines(queue: &Receiver<Message>, dropped: &AtomicU64) {
    while let Ok(message) = queue.recv() {
        match message {
            Message::Line(stream, line) => write_to(stream, &line),
            Message::Flush(done) => {
                let _ = std::io::stdout().flush();
                let _ = std::io::stderr().flush();
                let _ = done.try_send(());
            }
        }
        if queue.is_empty() {
            let n = dropped.swap(0, Ordering::Relaxed);
            if n > 0 {
                log::warn!("{n} log lines dropped: the log output was blocked.");
            }
        }
    }
}

/// Writes `line` to `stream`. A failed write (stdout closed) is ignored: the proxy goes on
/// without its log rather than stopping.
fn write_to(stream: Stream, line: &[u8]) {
    let _ = match stream {
        Stream::Stdout => std::io::stdout().lock().write_all(line),
        Stream::Stderr => std::io::stderr().lock().write_all(line),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_sent_whole_and_a_full_queue_drops_and_counts() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let dropped = Arc::new(AtomicU64::new(0));
        let mut sink = LineSink {
            stream: Stream::Stdout,
            queue: tx,
            dropped: Arc::clone(&dropped),
            line: Vec::new(),
        };
        write!(sink, "[time] ").unwrap();
        assert!(rx.is_empty(), "sent before the line was complete");
        writeln!(sink, "one").unwrap();
        writeln!(sink, "two").unwrap(); // the queue is full: dropped, counted
        assert_eq!(dropped.load(Ordering::Relaxed), 1);
        match rx.try_recv() {
            Ok(Message::Line(Stream::Stdout, line)) => assert_eq!(line, b"[time] one\n"),
            _ => panic!("no line queued"),
        }
        assert!(rx.is_empty());
    }
}
