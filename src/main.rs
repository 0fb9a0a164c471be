//! The `rsp` binary: parses the command line and runs the proxy.
//!
//! ```text
//! rsp [CONFIG]           run the proxy (CONFIG defaults to proxy.lua)
//! rsp --check [CONFIG]   print the resolved configuration, or the error, and exit
//! ```
//!
//! Exit codes: 0 success, 1 a bad config or a failed start, 2 a bad command line.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: rsp [CONFIG]           run the proxy with CONFIG (default: proxy.lua)
       rsp --check [CONFIG]   check CONFIG, print the resolved configuration, exit
       rsp --help             show this help
       rsp --version          show the version";

/// How long a normal exit waits for queued log lines to be written.
const LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

/// What the command line asked for.
enum Command {
    Run(PathBuf),
    Check(PathBuf),
    Help,
    Version,
}

/// Reads the arguments after the program name; `Err` holds what was wrong with them.
fn parse_args(args: &[OsString]) -> Result<Command, String> {
    let default = || PathBuf::from("proxy.lua");
    // Arguments that are not UTF-8 can still be paths, so only flags are compared as text.
    let flag = |arg: &OsString| {
        arg.to_str()
            .filter(|a| a.starts_with('-'))
            .map(str::to_owned)
    };
    match args {
        [] => Ok(Command::Run(default())),
        [one] => match flag(one).as_deref() {
            None => Ok(Command::Run(PathBuf::from(one))),
            Some("--help" | "-h") => Ok(Command::Help),
            Some("--version" | "-V") => Ok(Command::Version),
            Some("--check") => Ok(Command::Check(default())),
            Some(other) => Err(format!("unknown option '{other}'")),
        },
        [first, path] if first == "--check" && flag(path).is_none() => {
            Ok(Command::Check(PathBuf::from(path)))
        }
        _ => match args.iter().filter_map(flag).find(|f| f != "--check") {
            Some(other) => Err(format!("unexpected option '{other}'")),
            None => Err("expected at most one config file".to_string()),
        },
    }
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match parse_args(&args) {
        Ok(Command::Help) => print_stdout(USAGE),
        Ok(Command::Version) => print_stdout(&format!("rsp {}", env!("CARGO_PKG_VERSION"))),
        Ok(Command::Check(path)) => check(&path),
        Ok(Command::Run(path)) => run(&path),
        Err(problem) => {
            eprintln!("rsp: {problem}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// `rsp --check`: like `nginx -t`, prints the resolved configuration or the one-line error.
fn check(path: &std::path::Path) -> ExitCode {
    match rsp::config::load(path) {
        Ok(loaded) => {
            print_warnings(&loaded.warnings);
            let header = format!("-- {}: OK. The resolved configuration:", path.display());
            print_stdout(&format!("{header}\n{}", loaded.describe().trim_end()))
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::from(1)
        }
    }
}

/// Loads the config, starts logging and runs the proxy until Ctrl-C.
fn run(path: &std::path::Path) -> ExitCode {
    let loaded = match rsp::config::load(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(1);
        }
    };
    // The logger starts after the config is read (the level is in it), so warnings are
    // printed straight to stderr.
    print_warnings(&loaded.warnings);
    rsp::logging::init(loaded.config.log_level);
    let result = rsp::server::run(loaded.config, Some(path.to_path_buf()));
    // Lines are written by a thread of their own (`logging`): let it finish, but never
    // wait long for a log nobody reads.
    rsp::logging::flush(LOG_FLUSH);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rsp: {error}");
            ExitCode::from(1)
        }
    }
}

fn print_warnings(warnings: &[String]) {
    for warning in warnings {
        eprintln!("{warning}");
    }
}

/// Prints `text` and a newline to stdout. `println!` would panic if stdout were closed
/// (e.g. `rsp --check | head -1`); here a failed write is only reported in the exit code.
fn print_stdout(text: &str) -> ExitCode {
    match writeln!(std::io::stdout(), "{text}") {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}
