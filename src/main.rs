//! The `rsp` binary: parses the command line and runs the proxy.
#![forbid(unsafe_code)]

fn main() {}
