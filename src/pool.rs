//! A fixed pool of named threads fed by a bounded channel.
//!
//! Threads mode uses two: `worker` threads each serve one client at a time (and run its
//! backend → client direction), `copy` threads run the client → backend direction. A
//! bounded channel is the backpressure: when every thread is busy and the queue is full,
//! `send` blocks, so the accept loop stops accepting and the kernel's listen backlog holds
//! new clients. Nobody is dropped.
//!
//! A panic in one job is caught and logged; the thread then takes the next job, so a bug
//! triggered by one connection never takes the process down or shrinks the pool.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Sender, bounded};

/// Stack size of pool threads: the copy buffers live on the heap, so frames are small.
const STACK_SIZE: usize = 512 * 1024;

/// A running pool; jobs of type `T` go in through [`Pool::sender`].
#[derive(Debug)]
pub struct Pool<T> {
    /// The channel's sending end. Dropping the pool drops it: each thread finishes its
    /// current job, sees the channel closed and exits.
    sender: Sender<T>,
    /// How many jobs may wait in the channel.
    capacity: usize,
}

impl<T: Send + 'static> Pool<T> {
    /// Starts `size` threads named `name-0`, `name-1`, … that call `handler` on every job;
    /// up to `capacity` jobs may wait.
    pub fn start<F>(name: &str, size: usize, capacity: usize, handler: F) -> io::Result<Pool<T>>
    where
        F: Fn(T) + Send + Sync + 'static,
    {
        let (sender, receiver) = bounded::<T>(capacity);
        let handler = Arc::new(handler);
        for i in 0..size.max(1) {
            let receiver = receiver.clone();
            let handler = Arc::clone(&handler);
            let thread_name = format!("{name}-{i}");
            thread::Builder::new()
                .name(thread_name.clone())
                .stack_size(STACK_SIZE)
                .spawn(move || {
                    for job in receiver.iter() {
                        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| handler(job))) {
                            log::error!(
                                "{thread_name}: a job panicked ({}); the thread carries on",
                                panic_message(&*panic)
                            );
                        }
                    }
                })?;
        }
        Ok(Pool { sender, capacity })
    }

    /// The channel into the pool.
    pub fn sender(&self) -> &Sender<T> {
        &self.sender
    }

    /// How many jobs may wait in the channel.
    pub fn capacity(&self) -> usize {
        self.capacity
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
    use std::time::Duration;

    #[test]
    fn jobs_run_and_a_panic_does_not_kill_the_thread() {
        let (done, results) = crossbeam_channel::unbounded();
        let pool = Pool::start("test", 1, 4, move |n: u32| {
            if n == 1 {
                panic!("job 1 fails");
            }
            done.send(n).unwrap();
        })
        .unwrap();
        for n in 0..3 {
            pool.sender().send(n).unwrap();
        }
        let got: Vec<u32> = (0..2)
            .map(|_| results.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert_eq!(got, [0, 2]);
    }

    #[test]
    fn a_full_pool_blocks_the_sender() {
        let (release_tx, release) = crossbeam_channel::bounded::<()>(0);
        let pool = Pool::start("test", 1, 1, move |_: ()| {
            let _ = release.recv_timeout(Duration::from_secs(5));
        })
        .unwrap();
        pool.sender().send(()).unwrap(); // taken by the thread, which blocks
        // Depending on timing the thread may not have taken the first job yet.
        let mut queued = 1;
        while pool.sender().try_send(()).is_ok() {
            queued += 1;
            assert!(queued <= 2, "queue holds more than capacity + one running");
        }
        release_tx.send(()).unwrap();
    }
}
