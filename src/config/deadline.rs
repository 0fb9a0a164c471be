//! One time limit for everything reading a config does: the Lua, the checks, the
//! suggestions and the host-name lookups run on a thread of their own, and the caller
//! gives up on it at the limit, naming the step that was under way.

use std::cell::RefCell;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// rlua's error type as `src/config.rs` imports it: rsp names rlua in one line only.
use super::{ConfigError, Loaded, LuaError, TIMEOUT_MESSAGE, one_line, run_lua, validate};

/// A config runs in well under a second; past this it is stuck in a loop, or a name
/// server does not answer. The one limit covers every step of reading a config.
const TIME_LIMIT: Duration = Duration::from_secs(5);

/// What reading the config is doing now, shared with the thread that waits for it, so
/// the time-limit error can name the slow step: the key it concerns (or `""`) and what.
type Step = Arc<Mutex<(String, String)>>;

thread_local! {
    /// The reading thread's [`Step`]; `None` on any other thread.
    static STEP: RefCell<Option<Step>> = const { RefCell::new(None) };
}

/// Notes that reading the config now does `what` for `key` (`""` for none), e.g.
/// `resolving "db.internal:5432"` for `backends[2]`, for the error if the time runs out.
pub(crate) fn note_step(key: &str, what: impl FnOnce() -> String) {
    STEP.with(|step| {
        if let Some(step) = &*step.borrow()
            && let Ok(mut now) = step.lock()
        {
            *now = (key.to_string(), what());
        }
    });
}

/// The first step, which has its own time-limit message: [`TIMEOUT_MESSAGE`].
const RUNNING_LUA: &str = "running the Lua";

/// Reads the config on a thread of its own, given [`TIME_LIMIT`] for all of it: running
/// the chunk, reading the globals, dropping the Lua state, checking the values (with the
/// unknown-key suggestions) and resolving host names. If the time is up, the error comes
/// back at once, naming the step that was under way, and the thread is left behind,
/// stuck; the caller (`rsp` and `rsp --check`) then exits, which ends it.
///
/// The instruction hook in [`run_lua`] stops a plain endless loop with a Lua error, but
/// three things escape it, so this watchdog is the guarantee and the hook only the polite
/// first try: `pcall` catches the hook's error like any other and loops on; a `__gc`
/// finalizer runs when the state is dropped, after the hook is gone; and one long call
/// into C (`string.find` backtracking on a nasty pattern) never returns to Lua, where
/// hooks run. Nor can a name lookup (`getaddrinfo`) be given a timeout. Neither Lua nor a
/// lookup can be stopped from outside safely, so the thread is abandoned rather than
/// killed. The Lua state is created on that thread: `rlua::Lua` is not `Send`, the plain
/// values it returns are.
pub(super) fn read_with_deadline(source: &[u8], file: &str) -> Result<Loaded, ConfigError> {
    let deadline = Instant::now() + TIME_LIMIT;
    let (done, result) = std::sync::mpsc::channel();
    let (source, name) = (source.to_vec(), file.to_string());
    let step: Step = Arc::new(Mutex::new((String::new(), RUNNING_LUA.to_string())));
    let step_for_reader = Arc::clone(&step);
    let lua_error = |e: LuaError| ConfigError::Lua(one_line(&e, file));
    let reader = std::thread::Builder::new()
        .name("config".into())
        .spawn(move || {
            STEP.with(|s| *s.borrow_mut() = Some(step_for_reader));
            // `run_lua` has dropped its Lua state (finalizers and all) before this send.
            let loaded = run_lua(&source, &name, deadline)
                .map_err(|e| ConfigError::Lua(one_line(&e, &name)))
                .and_then(|globals| {
                    note_step("", || "checking the values".to_string());
                    validate::build(&name, &globals)
                });
            let _ = done.send(loaded);
        })
        .map_err(|e| lua_error(LuaError::external(e)))?;
    match result.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        // The thread has nothing left to do but end; waiting for it means rsp's thread
        // count is final by the time it prints its banner.
        Ok(loaded) => {
            let _ = reader.join();
            loaded
        }
        Err(RecvTimeoutError::Timeout) => {
            let (key, doing) = step.lock().map(|s| s.clone()).unwrap_or_default();
            let message = format!(
                "{doing} took more than {} seconds, the limit for reading a config",
                TIME_LIMIT.as_secs()
            );
            Err(match (key.as_str(), doing.as_str()) {
                (_, RUNNING_LUA) => lua_error(LuaError::runtime(TIMEOUT_MESSAGE)),
                ("", _) => ConfigError::Lua(format!("{file}: {message}")),
                _ => ConfigError::Value {
                    file: file.to_string(),
                    key,
                    message,
                },
            })
        }
        // The thread ended without sending: it panicked (a bug in rsp or rlua).
        Err(RecvTimeoutError::Disconnected) => Err(lua_error(LuaError::runtime(
            "rsp failed while reading the config (a bug; please report it)",
        ))),
    }
}
