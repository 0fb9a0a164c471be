//! rsp, the Really Simple Proxy: a TCP reverse proxy and load balancer.
//!
//! A client connects; rsp picks a backend round-robin, connects to it and copies bytes
//! both ways until both sides are done. It passes half-closes on, lets a slow reader set
//! the pace, and ends only the connection that failed.
//!
//! # Layout
//! Two modes, two rooms: `threads/` and `event_loop/`, one folder each; what both share
//! sits at the top. Each module holds one concept:
//!
//! | concept | module |
//! |---|---|
//! | reading `proxy.lua` (all the Lua code) | [`config`] |
//! | timestamped log lines, written by one thread through a bounded queue | [`logging`] |
//! | picking the mode from the config | [`server`] |
//! | the listening socket, banner, connection limit, accept errors | [`listen`] |
//! | what the machine can hold: the open-files limit, the default `workers` | [`capacity`] |
//! | Ctrl-C / SIGTERM flag, waking a blocked loop, the drain's log lines | [`shutdown`] |
//! | which backend: weighted round robin or least connections, skipping those down | [`balancer`] |
//! | active health checks on their own thread: UP/DOWN after `rise`/`fall` probes | [`health`] |
//! | running out of file descriptors: recognising it, the retry pace | [`fds`] |
//! | how a connection ended, its one-line summary | [`outcome`] |
//! | counters, the stats page and `/metrics` (`stats = "127.0.0.1:8001"`) | [`stats`] |
//! | the config in force, reloaded on SIGHUP; the SIGTERM/SIGHUP thread | [`reload`] |
//! | `mode = "threads"`: accept loop, worker pool, two blocking copies | [`threads`] |
//! | `mode = "mio"`: event loops, one per core, each for the connections it accepted (feature `mio`) | `event_loop` |
//!
//! The modes import from the shared modules, never from each other or from [`server`].
//! The binary in `src/main.rs` only parses the command line, calls [`logging::init`] and
//! [`server::run`].
#![forbid(unsafe_code)]

pub mod balancer;
pub mod capacity;
pub mod config;
#[cfg(feature = "mio")]
pub mod event_loop;
pub mod fds;
pub mod health;
pub mod listen;
pub mod logging;
pub mod outcome;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod stats;
pub mod threads;
