//! rsp, the Really Simple Proxy: a TCP reverse proxy and load balancer.
//!
//! # Layout
//! - [`config`]: reads `proxy.lua` (all Lua code lives there) into a plain [`config::Config`].
//! - [`server`]: binds, prints the banner, runs the accept loop.
//!
//! The binary in `src/main.rs` only parses the command line and calls [`server::run`].
#![forbid(unsafe_code)]

pub mod config;
pub mod logging;
pub mod server;
