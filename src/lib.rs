//! rsp, the Really Simple Proxy: a TCP reverse proxy and load balancer.
//!
//! A client connects; rsp picks a backend round-robin, connects to it and copies bytes
//! both ways until both sides are done. It passes half-closes on, lets a slow reader set
//! the pace, and ends only the connection that failed.
//!
//! # Layout
//! Each module holds one concept:
//!
//! | concept | module |
//! |---|---|
//! | reading `proxy.lua` (all the Lua code) | [`config`] |
//! | timestamped log lines | [`logging`] |
//! | bind, banner, accept loop, drain on Ctrl-C | [`server`] |
//! | Ctrl-C / SIGTERM flag and waking the accept loop | [`shutdown`] |
//! | an elastic pool of threads behind a bounded queue | [`pool`] |
//! | one client, served by a worker: connect, relay, summary | [`worker`] |
//! | round-robin backends, skipping those that failed | [`balancer`] |
//! | running out of file descriptors: recognising it, the retry pace | [`fds`] |
//! | one connection's shared state: sockets, clocks, counters | [`conn`] |
//! | the copy loop for one direction, half-close, idle check | [`relay`] |
//! | what Ctrl-C waits for and cuts | [`registry`] |
//! | how a connection ended, its one-line summary | [`outcome`] |
//! | `mode = "mio"`: one event loop for every connection (feature `mio`) | `event_loop` |
//!
//! Threads mode uses all of them. `balancer`, `fds`, `logging`, `outcome` and `shutdown` make no
//! assumption about threads and are shared with the mio event-loop mode.
//!
//! The binary in `src/main.rs` only parses the command line, calls [`logging::init`] and
//! [`server::run`].
#![forbid(unsafe_code)]

pub mod balancer;
pub mod config;
pub mod conn;
#[cfg(feature = "mio")]
pub mod event_loop;
pub mod fds;
pub mod logging;
pub mod outcome;
pub mod pool;
pub mod registry;
pub mod relay;
pub mod server;
pub mod shutdown;
pub mod worker;
