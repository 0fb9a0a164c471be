//! The write path of one direction: write now, queue what the socket did not take, flush
//! the queue when the socket is writable again.
//!
//! This is the fix of blog part 4. A non-blocking `write` may take fewer bytes than asked,
//! or none (`WouldBlock`, C's `EAGAIN`), when the receiver is slower than the sender; the
//! C code ignored that and lost bytes. Two rules make it correct:
//! - whatever the socket does not take goes into the queue, and
//! - while the queue is non-empty, new bytes go behind it, never straight to the socket
//!   (otherwise they would overtake the queued ones).
//!
//! Memory: an empty queue owns no heap memory. Chunks are allocated only for bytes that
//! had to wait, and the chunk list itself is dropped as soon as it drains, so an idle
//! connection costs nothing here.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Write};

/// Bytes read from one side that the other side has not taken yet, in order.
#[derive(Debug, Default)]
pub struct WriteQueue {
    /// Chunks in arrival order; the front one may be partly written already.
    chunks: VecDeque<Vec<u8>>,
    /// How many bytes of the front chunk are already written.
    offset: usize,
    /// Bytes still waiting: the sum of the chunk lengths minus `offset`.
    len: usize,
}

impl WriteQueue {
    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sends `data` to `dest`: straight away if nothing is queued, and whatever the socket
    /// does not take now (or everything, if something is queued) goes to the back of the
    /// queue. An error means `dest` failed (reset, broken pipe).
    pub fn send<W: Write>(&mut self, mut dest: W, data: &[u8]) -> io::Result<()> {
        let written = if self.is_empty() {
            write_until_full(&mut dest, data)?
        } else {
            0 // The ordering rule: never overtake queued bytes.
        };
        if written < data.len() {
            self.chunks.push_back(data[written..].to_vec());
            self.len += data.len() - written;
        }
        Ok(())
    }

    /// Writes queued bytes to `dest` until the queue is empty or the socket is full.
    /// Returns how many bytes were written. An error means `dest` failed.
    pub fn flush<W: Write>(&mut self, mut dest: W) -> io::Result<usize> {
        let mut total = 0;
        while let Some(front) = self.chunks.front() {
            let rest = &front[self.offset..];
            let n = write_until_full(&mut dest, rest)?;
            total += n;
            self.len -= n;
            if n < rest.len() {
                self.offset += n; // The socket is full: wait for the next writable event.
                break;
            }
            self.chunks.pop_front();
            self.offset = 0;
        }
        if self.chunks.is_empty() {
            // Give the memory back: a drained queue should cost an idle connection nothing.
            self.chunks = VecDeque::new();
        }
        Ok(total)
    }
}

/// Writes as much of `data` as the socket takes right now and returns the count: all of
/// it, or less when the socket's send buffer is full (`WouldBlock`).
fn write_until_full<W: Write>(dest: &mut W, data: &[u8]) -> io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match dest.write(&data[written..]) {
            // A socket never takes 0 bytes of a non-empty buffer unless it is broken.
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket stand-in that takes at most `room` bytes, then says `WouldBlock`.
    struct Slow {
        taken: Vec<u8>,
        room: usize,
    }

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room).min(3); // Short writes too.
            if n == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            self.room -= n;
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn queued_bytes_are_never_overtaken() {
        let mut dest = Slow {
            taken: Vec::new(),
            room: 5,
        };
        let mut queue = WriteQueue::default();
        queue.send(&mut dest, b"hello world").unwrap();
        assert_eq!(dest.taken, b"hello");
        assert_eq!(queue.len(), 6);
        dest.room = 100; // Room again, but the queue is not empty: this must wait.
        queue.send(&mut dest, b"!").unwrap();
        assert_eq!(dest.taken, b"hello");
        assert_eq!(queue.flush(&mut dest).unwrap(), 7);
        assert_eq!(dest.taken, b"hello world!");
        assert!(queue.is_empty());
        assert_eq!(
            queue.chunks.capacity(),
            0,
            "a drained queue frees its memory"
        );
    }

    #[test]
    fn flush_stops_when_the_socket_is_full() {
        let mut dest = Slow {
            taken: Vec::new(),
            room: 0,
        };
        let mut queue = WriteQueue::default();
        queue.send(&mut dest, b"abcdef").unwrap();
        dest.room = 4;
        assert_eq!(queue.flush(&mut dest).unwrap(), 4);
        assert_eq!(queue.len(), 2);
        dest.room = 10;
        assert_eq!(queue.flush(&mut dest).unwrap(), 2);
        assert_eq!(dest.taken, b"abcdef");
    }
}
