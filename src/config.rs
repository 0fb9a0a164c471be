//! The configuration: `proxy.lua` read once at start into a plain Rust struct.
//!
//! All the Lua code of rsp lives in this file: [`load`] runs the config, as text only (no
//! bytecode, which Lua does not verify), in a fresh Lua state that has only the `string`,
//! `table` and `math` libraries, copies every global the file set into plain Rust
//! values, and drops the state (an `rlua::Lua` is not `Send`, a
//! [`Config`] is). Checking those values and filling in defaults is plain Rust, in
//! `src/config/validate.rs` (numbers, names, unknown keys) and `src/config/address.rs`
//! (`listen`, `backends` and the blog's part-3 keys). rlua 0.20 is a thin wrapper over
//! mlua 0.9, so moving to mlua means changing the one `use rlua::…` line below.
//!
//! Every error is one line that says where: `Error parsing config file: proxy.lua:3: …`
//! for Lua errors, `proxy.lua: workers: …` for a bad value.

mod address;
mod balance;
pub(crate) use balance::show_health_check;
mod deadline;
mod validate;

pub(crate) use deadline::note_step;
use deadline::read_with_deadline;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use rlua::{
    ChunkMode, Error as LuaError, Function, HookTriggers, Lua, LuaOptions, Result as LuaResult,
    StdLib, Value,
};

use validate::Raw;

/// How rsp moves bytes: one thread per direction, or one mio event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A pool of worker threads, blocking copies (the default).
    Threads,
    /// Event loops (`loops` of them, one thread each) with per-direction write queues.
    Mio,
}

impl Mode {
    /// The name used in `proxy.lua`: `"threads"` or `"mio"`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Threads => "threads",
            Mode::Mio => "mio",
        }
    }
}

/// One backend as the user wrote it and as it resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The text from the config, e.g. `"localhost:8888"`, used in log lines.
    pub name: String,
    /// The address resolved once at start.
    pub addr: SocketAddr,
    /// Its share of clients against the others' (`{ "host:port", weight = 3 }`); 1 if
    /// not set.
    pub weight: u32,
}

/// Everything rsp needs to run, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to accept clients; port 0 lets the OS choose.
    pub listen: SocketAddr,
    /// Backends, chosen round-robin; never empty.
    pub backends: Vec<Backend>,
    /// Threads mode: connections served at once. Defaults to what the machine can hold
    /// ([`crate::capacity::default_workers`]).
    pub workers: usize,
    /// Bytes per read in the copy loop. The default, 64 KiB, moved a 100 MiB download
    /// 1.3-1.4x faster than 16 KiB in both modes (fewer, larger reads and writes; 128 KiB
    /// gave 1.65x, but threads mode holds one buffer per direction of a busy connection).
    pub buffer_size: usize,
    /// How long a backend connect may take.
    pub connect_timeout: Duration,
    /// Close a connection with no bytes either way for this long; `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Close a connection on which no byte has moved either way this long after the
    /// client was accepted; `None` = never. After the first byte either way only
    /// `idle_timeout` applies.
    pub client_timeout: Option<Duration>,
    /// How long a backend that failed to connect is skipped.
    pub backend_retry: Duration,
    /// How long Ctrl-C waits for open connections.
    pub drain_timeout: Duration,
    /// error | warn | info | debug | trace.
    pub log_level: log::LevelFilter,
    /// Threads or mio.
    pub mode: Mode,
    /// Mio mode: bytes queued per direction before the source is paused.
    pub max_buffered: usize,
    /// Mio mode: event loops, each on its own thread; the default is one per CPU this
    /// process may use.
    pub loops: usize,
    /// Where the stats page and `/metrics` listen ([`crate::stats`]); `None` = off.
    pub stats: Option<SocketAddr>,
    /// How clients are spread over the backends.
    pub balance: crate::balancer::Balance,
    /// Active health checks (`health_check = { … }`); `None` = off.
    pub health_check: Option<crate::health::Settings>,
}

impl Config {
    /// A config for `listen` and `backends` with every other key at its default. This is
    /// the one place the defaults are written down (the README's table repeats them);
    /// `workers` is measured from the machine ([`crate::capacity::default_workers`]).
    pub fn with_defaults(listen: SocketAddr, backends: Vec<Backend>) -> Config {
        Config {
            listen,
            backends,
            workers: crate::capacity::default_workers().workers,
            buffer_size: 64 * 1024,
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Some(Duration::from_secs(300)),
            client_timeout: Some(Duration::from_secs(30)),
            backend_retry: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            log_level: log::LevelFilter::Info,
            mode: Mode::Threads,
            max_buffered: 256 * 1024,
            loops: default_loops(),
            stats: None,
            balance: crate::balancer::Balance::RoundRobin,
            health_check: None,
        }
    }
}

/// The default `loops`: the CPUs this process may use (`available_parallelism` reads the
/// affinity mask and cgroup quota), or 1 if that cannot be told.
pub fn default_loops() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A config as read from a file: the settings, plus what `--check` and `main` report.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The settings, checked and with defaults filled in.
    pub config: Config,
    /// One line per unknown global, e.g. `proxy.lua: warning: unknown key 'worker' (did you
    /// mean 'workers'?)`. The logger is not running yet when these are made, so `main`
    /// prints them.
    pub warnings: Vec<String>,
    /// The keys the file did not set, whose values are defaults.
    pub defaulted: Vec<&'static str>,
    /// Why the default `workers` is what it is (`open-files limit 20,000`), shown by
    /// `--check` when the file did not set it.
    pub workers_why: String,
}

impl Loaded {
    /// The resolved configuration as a valid `proxy.lua`, one key per line, with keys the
    /// file did not set marked `-- default`. Printed by `rsp --check`.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let secs = |d: Duration| d.as_secs_f64().to_string();
        let names: Vec<String> = c.backends.iter().map(balance::show_backend).collect();
        let lines = [
            ("listen", format!("\"{}\"", c.listen)),
            ("backends", format!("{{ {} }}", names.join(", "))),
            ("workers", c.workers.to_string()),
            ("buffer_size", c.buffer_size.to_string()),
            ("connect_timeout", secs(c.connect_timeout)),
            ("idle_timeout", c.idle_timeout.map_or("0".into(), secs)),
            ("client_timeout", c.client_timeout.map_or("0".into(), secs)),
            ("backend_retry", secs(c.backend_retry)),
            ("drain_timeout", secs(c.drain_timeout)),
            (
                "log_level",
                format!("\"{}\"", c.log_level.as_str().to_lowercase()),
            ),
            ("mode", format!("\"{}\"", c.mode.name())),
            ("loops", c.loops.to_string()),
            ("max_buffered", c.max_buffered.to_string()),
            ("balance", format!("\"{}\"", c.balance.name())),
            (
                "health_check",
                balance::show_health_check(c.health_check.as_ref()),
            ),
            (
                "stats",
                c.stats.map_or("nil".into(), |a| format!("\"{a}\"")),
            ),
        ];
        let mut out = String::new();
        for (key, value) in lines {
            if key == "health_check" && self.defaulted.contains(&key) {
                // Off: shown commented out, so the description still reads back the same.
                out += &format!("-- {key} = {value}  -- default: off; set it to turn checks on\n");
                continue;
            }
            out += &format!("{key} = {value}");
            if key == "workers" && self.defaulted.contains(&key) {
                out += &format!("  -- default: {}", self.workers_why);
            } else if self.defaulted.contains(&key) {
                out += "  -- default";
            } else if key == "backends" {
                let addrs: Vec<String> = c.backends.iter().map(|b| b.addr.to_string()).collect();
                out += &format!("  -- resolved to {}", addrs.join(", "));
            }
            out += "\n";
        }
        out
    }
}

/// Why a config could not be loaded. Its `Display` is the one line `main` prints.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read.
    Open {
        /// The path as given.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Lua could not run the file: a syntax or runtime error, already one line that starts
    /// with `path:line:` when Lua knows the line.
    Lua(String),
    /// A key has a value rsp cannot use.
    Value {
        /// The config file's path, as given.
        file: String,
        /// The key, e.g. `workers` or `backends[2]`.
        key: String,
        /// What was expected and what was found.
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Open { path, source } => {
                // "No such file or directory (os error 2)": the errno adds nothing for a user.
                let text = source.to_string();
                let text = text.split(" (os error").next().unwrap_or_default();
                write!(f, "Error parsing config file: cannot open {path}: {text}")
            }
            ConfigError::Lua(message) => write!(f, "Error parsing config file: {message}"),
            ConfigError::Value { file, key, message } => write!(f, "{file}: {key}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Open { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Reads, runs and checks the config file at `path`, resolving every address once.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let source = std::fs::read(path).map_err(|source| ConfigError::Open {
        path: path.display().to_string(),
        source,
    })?;
    parse(&source, &path.display().to_string())
}

/// Runs and checks config `source`; `file` names it in messages (normally its path).
///
/// Nothing in the file can make this take much longer than 5 seconds, whatever step is
/// slow: see `read_with_deadline` in `src/config/deadline.rs`.
pub fn parse(source: &[u8], file: &str) -> Result<Loaded, ConfigError> {
    read_with_deadline(source, file)
}

/// Far more memory than any config needs, so a runaway config fails instead of swapping.
const MEMORY_LIMIT: usize = 64 * 1024 * 1024;
/// Base-library functions that read files; a config gets none (the C's had no libraries).
const REMOVED_FUNCTIONS: [&str; 3] = ["dofile", "loadfile", "require"];

/// `load` for a config: Lua's own, but text only. Lua does not verify bytecode, so a
/// crafted binary chunk can crash the process or escape the sandbox; mode `"t"` makes
/// `load` refuse one ("attempt to load a binary chunk"). An `env` argument is passed on
/// only if given: `load(s, name, mode, nil)` and `load(s, name, mode)` differ in Lua.
const TEXT_ONLY_LOAD: &str = r#"
local load, select = load, select
return function(chunk, name, _, ...)
  if select('#', ...) > 0 then return load(chunk, name, "t", (...)) end
  return load(chunk, name, "t")
end"#;

/// Runs the file and returns every global it set, as plain Rust values. The hook stops
/// Lua code at `deadline`.
fn run_lua(source: &[u8], file: &str, deadline: Instant) -> LuaResult<BTreeMap<String, Raw>> {
    let lua = Lua::new_with(
        StdLib::STRING | StdLib::TABLE | StdLib::MATH,
        LuaOptions::default(),
    )?;
    lua.set_memory_limit(MEMORY_LIMIT)?;
    for name in REMOVED_FUNCTIONS {
        lua.globals().set(name, Value::Nil)?;
    }
    let text_only_load: Function = lua.load(TEXT_ONLY_LOAD).set_mode(ChunkMode::Text).eval()?;
    lua.globals().set("load", text_only_load)?;
    // Lua's own globals (print, string, _G, …) are not config keys: remember them.
    let builtins: HashSet<String> = global_names(&lua)?.into_iter().collect();
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(100_000),
        move |_, _| match Instant::now() > deadline {
            true => Err(LuaError::runtime(TIMEOUT_MESSAGE)),
            false => Ok(()),
        },
    );
    // Text only, like `load`: a precompiled file is refused, not run unverified.
    lua.load(source)
        .set_name(format!("@{file}"))
        .set_mode(ChunkMode::Text)
        .exec()?;
    // The hook stays on while the globals are read: a metatable's `__index` can run Lua.
    let mut values = BTreeMap::new();
    for pair in lua.globals().pairs::<Value, Value>() {
        let (key, value) = pair?;
        if let Value::String(key) = key {
            let key = key.to_string_lossy().into_owned();
            if !builtins.contains(&key) {
                values.insert(key, to_raw(&value, 2)?);
            }
        }
    }
    // Removed before the state is dropped: the drop runs finalizers with no Lua caller.
    lua.remove_hook();
    Ok(values)
}

const TIMEOUT_MESSAGE: &str = "the config ran for more than 5 seconds (an endless loop?)";

/// The names of the string keys of the globals table.
fn global_names(lua: &Lua) -> LuaResult<Vec<String>> {
    let mut names = Vec::new();
    for pair in lua.globals().pairs::<Value, Value>() {
        if let (Value::String(name), _) = pair? {
            names.push(name.to_string_lossy().into_owned());
        }
    }
    Ok(names)
}

/// Copies a Lua value out of the state. Tables are copied `depth` levels deep: a global
/// and one table inside it (`backends = { { "host:port", weight = 3 } }`); nothing in a
/// config nests deeper.
fn to_raw(value: &Value, depth: u8) -> LuaResult<Raw> {
    Ok(match value {
        Value::Integer(i) => Raw::Number(*i as f64),
        Value::Number(n) => Raw::Number(*n),
        Value::String(s) => Raw::Str(s.to_string_lossy().into_owned()),
        Value::Table(table) if depth > 0 => {
            let mut items = Vec::new();
            for item in table.clone().sequence_values::<Value>() {
                items.push(to_raw(&item?, depth - 1)?);
            }
            let mut named = Vec::new();
            for pair in table.clone().pairs::<Value, Value>() {
                if let (Value::String(key), value) = pair? {
                    named.push((
                        key.to_string_lossy().into_owned(),
                        to_raw(&value, depth - 1)?,
                    ));
                }
            }
            let only_list = table.clone().pairs::<Value, Value>().count() == items.len();
            Raw::Table {
                items,
                only_list,
                named,
            }
        }
        other => Raw::Other(other.type_name()),
    })
}

/// Lua's error as one line: no "runtime error: " prefix, no stack traceback, and a clear
/// sentence for the libraries a config does not get.
fn one_line(error: &LuaError, file: &str) -> String {
    let text = match error {
        LuaError::SyntaxError { message, .. } => message.clone(),
        LuaError::RuntimeError(message) => message.clone(),
        LuaError::CallbackError { cause, .. } => return one_line(cause, file),
        LuaError::MemoryError(_) => format!("{file}: the config used more than 64 MiB"),
        other => other.to_string(),
    };
    let text = text.split("stack traceback:").next().unwrap_or_default();
    let text: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let text = text.join(" ");
    if let Some(start) = text.find("attempt to load a binary chunk") {
        // From the file itself there is no line; from `assert(load(…))`, there may be.
        let place = match &text[..start] {
            "" => format!("{file}: "),
            place => place.to_string(),
        };
        return format!(
            "{place}precompiled Lua (bytecode) is refused: a config, and anything it \
             loads, must be Lua source text"
        );
    }
    if let Some(text) = missing_library(&text) {
        return text;
    }
    match text.as_str() {
        // `error()` or `error(nil)`: nothing to show but where.
        "" | "nil" => format!("{file}: error raised without a message"),
        // `error("x", 0)`, `error({})` or our time limit: Lua gave no position.
        // (Lua shortens a long file name to "...end/of/name.lua:3:".)
        _ if !text.starts_with(&format!("{file}:")) && !text.starts_with("...") => {
            format!("{file}: {text}")
        }
        _ => text,
    }
}

/// Rewrites `proxy.lua:3: attempt to index a nil value (global 'os')` to say why.
fn missing_library(text: &str) -> Option<String> {
    const LIBRARIES: [&str; 6] = ["os", "io", "debug", "package", "utf8", "coroutine"];
    let start = text.find("attempt to ")?;
    let name = text[start..]
        .split("(global '")
        .nth(1)?
        .split('\'')
        .next()?;
    let what = if LIBRARIES.contains(&name) {
        format!("the '{name}' library is")
    } else if REMOVED_FUNCTIONS.contains(&name) {
        format!("'{name}' is")
    } else {
        return None;
    };
    Some(format!(
        "{}{what} not available in a config (only string, table and math are)",
        &text[..start]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(source: &str) -> String {
        parse(source.as_bytes(), "proxy.lua")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn rewrites_missing_libraries() {
        assert_eq!(
            error("listen = 1\nos.execute('true')"),
            "Error parsing config file: proxy.lua:2: the 'os' library is not available in \
             a config (only string, table and math are)"
        );
        assert!(error("io.open('x')").contains(":1: the 'io' library is not available"));
        assert!(error("dofile('x')").contains(":1: 'dofile' is not available"));
    }

    #[test]
    fn lua_errors_are_one_line_with_the_line_number() {
        let e = error("x = 1\nerror('boom')");
        assert_eq!(e, "Error parsing config file: proxy.lua:2: boom");
        let e = error("backends = {\n\"a:1\"\nworkers = 3");
        assert!(
            e.starts_with("Error parsing config file: proxy.lua:3: '}' expected"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn an_endless_loop_is_stopped() {
        let e = error("while true do end");
        assert!(e.contains("proxy.lua: the config ran for more than"), "{e}");
    }

    #[test]
    fn describe_marks_defaults_and_reads_back() {
        let src = "listen = '127.0.0.1:0'\nbackends = { '127.0.0.1:1' }\nworkers = 3\n";
        let loaded = parse(src.as_bytes(), "p.lua").unwrap();
        let text = loaded.describe();
        assert!(text.contains("workers = 3\n"), "{text}");
        assert!(text.contains("buffer_size = 65536  -- default\n"), "{text}");
        // The description is itself a config that gives the same settings.
        let again = parse(text.as_bytes(), "p.lua").unwrap();
        assert_eq!(
            again.describe().replace("  -- default", ""),
            text.replace("  -- default", "")
        );
    }
}
