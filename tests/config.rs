//! rsp's config file (`proxy.lua`) and command line, tested against the real binary.
//!
//! Nearly everything here uses `rsp --check`, which reads the config and exits without
//! listening, so these tests open no sockets.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{run_to_exit, temp_file};

const RSP: &str = env!("CARGO_BIN_EXE_rsp");
/// Generous: the machine is shared with other builds and tests.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The smallest valid config; cases below add a line to it.
const VALID: &str = "listen = \"127.0.0.1:0\"\nbackends = { \"127.0.0.1:1\" }\n";
/// Every key rsp knows, in the order `--check` prints them.
const KEYS: [&str; 13] = [
    "listen",
    "backends",
    "workers",
    "buffer_size",
    "connect_timeout",
    "idle_timeout",
    "client_timeout",
    "backend_retry",
    "drain_timeout",
    "log_level",
    "mode",
    "loops",
    "max_buffered",
];

/// Runs `rsp --check` on a file holding `text`; returns the exit code and all output.
fn check(text: &str) -> (Option<i32>, String) {
    let path = temp_file("proxy.lua", text);
    run_to_exit(RSP, &["--check", path.to_str().unwrap()], TIMEOUT)
}

/// Asserts a failed run: exit 1, one non-empty line containing `expected`, no panic.
fn assert_one_line_error(code: Option<i32>, output: &str, expected: &str) {
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(code, Some(1), "expected exit 1, output:\n{output}");
    assert_eq!(lines.len(), 1, "expected one line, got:\n{output}");
    assert!(
        lines[0].contains(expected),
        "expected {expected:?} in:\n{output}"
    );
    assert!(!output.contains("panicked"), "{output}");
}

/// Like `run_to_exit`, but keeps stdout and stderr apart: (exit code, stdout, stderr).
fn run_split(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(RSP)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let out = read_all(Box::new(child.stdout.take().unwrap()));
    let err = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rsp {args:?} did not exit within {TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    (status.code(), out.join().unwrap(), err.join().unwrap())
}

/// Each broken config exits 1 with one line that names the line or the key at fault.
#[test]
fn gives_error_messages_on_nonexistent_or_buggy_config_files() {
    let missing = "/nonexistent-dir/proxy.lua";
    let (code, output) = run_to_exit(RSP, &["--check", missing], TIMEOUT);
    assert_one_line_error(
        code,
        &output,
        "Error parsing config file: cannot open /nonexistent-dir/proxy.lua: No such file or directory",
    );

    let valid = |extra: &str| format!("{VALID}{extra}\n");
    let cases: Vec<(String, &str)> = vec![
        // Lua errors: "Error parsing config file: <path>:<line>: …"
        (
            "listen = \"127.0.0.1:0\"\nbackends = {\n  \"127.0.0.1:1\"\nworkers = 4\n".into(),
            ".lua:4: '}' expected (to close '{' at line 2) near 'workers'",
        ),
        ("x = 1\nerror(\"boom\")\n".into(), ".lua:2: boom"),
        (
            "x = 1\n\nundefined_function()\n".into(),
            ".lua:3: attempt to call a nil value (global 'undefined_function')",
        ),
        (
            valid("os.execute(\"true\")"),
            ".lua:3: the 'os' library is not available in a config (only string, table and math are)",
        ),
        (
            valid("io.open(\"x\")"),
            ".lua:3: the 'io' library is not available",
        ),
        (valid("dofile(\"x\")"), ".lua:3: 'dofile' is not available"),
        // Values: "<path>: <key>: …"
        ("listen = \"127.0.0.1:0\"\n".into(), "backends: missing"),
        ("backends = { \"127.0.0.1:1\" }\n".into(), "listen: missing"),
        (
            "listen = \"127.0.0.1:0\"\nbackends = {}\n".into(),
            "backends: expected a list of \"host:port\" strings, got an empty table",
        ),
        (
            "listen = \"127.0.0.1:0\"\nbackends = 5\n".into(),
            "backends: expected a list of \"host:port\" strings, got number 5",
        ),
        (
            "listen = \"127.0.0.1:0\"\nbackends = { \"127.0.0.1:1\", true }\n".into(),
            "backends[2]: expected \"host:port\" or { \"host:port\", weight = N }, got boolean",
        ),
        (
            "listen = \"127.0.0.1:0\"\nbackends = { \"127.0.0.1:0\" }\n".into(),
            "backends[1]: \"127.0.0.1:0\": port 0 is not a valid backend port",
        ),
        (
            valid("workers = 0"),
            "workers: expected a whole number from 1 to 100000, got 0",
        ),
        (
            valid("workers = 1.5"),
            "workers: expected a whole number from 1 to 100000, got 1.5",
        ),
        (
            valid("buffer_size = 100"),
            "buffer_size: expected a whole number from 512",
        ),
        (
            valid("loops = 0"),
            "loops: expected a whole number from 1 to 1024",
        ),
        (valid("loops = 2.5"), "loops: expected a whole number"),
        (
            valid("max_buffered = 1.5"),
            "max_buffered: expected a whole number",
        ),
        (
            valid("connect_timeout = 0"),
            "connect_timeout: expected a number of seconds",
        ),
        (
            valid("idle_timeout = -1"),
            "idle_timeout: expected a number of seconds from 0",
        ),
        (
            valid("drain_timeout = math.huge"),
            "drain_timeout: expected a number of seconds",
        ),
        (
            "listen = \"nonsense\"\nbackends = { \"127.0.0.1:1\" }\n".into(),
            "listen: expected \"host:port\", e.g. \"127.0.0.1:8000\", got \"nonsense\"",
        ),
        (
            "listen = \"127.0.0.1:99999\"\nbackends = { \"127.0.0.1:1\" }\n".into(),
            "listen: \"127.0.0.1:99999\": the port must be a whole number from 0 to 65535",
        ),
        (
            "listen = 8000\nbackends = { \"127.0.0.1:1\" }\n".into(),
            "listen: expected a \"host:port\" string, got number 8000",
        ),
        (
            valid("mode = \"turbo\""),
            "mode: expected one of \"threads\", \"mio\", got string \"turbo\"",
        ),
        (
            valid("log_level = \"loud\""),
            "log_level: expected one of \"error\", \"warn\", \"info\", \"debug\", \"trace\"",
        ),
        (
            valid("listenPort = \"8000\""),
            "listenPort: cannot be mixed with 'listen'",
        ),
        (
            "listenPort = \"0\"\nbackendAddress = \"127.0.0.1\"\n".into(),
            "backendPort: missing (the part-3 form needs listenPort, backendAddress and backendPort)",
        ),
    ];
    for (text, expected) in &cases {
        let (code, output) = check(text);
        assert_one_line_error(code, &output, expected);
    }
}

/// A value error names the file first, as `<path>: <key>: <message>`.
#[test]
fn value_errors_start_with_the_path_and_key() {
    let path = temp_file("proxy.lua", &format!("{VALID}workers = 16384.5\n"));
    let path = path.to_str().unwrap();
    let (code, output) = run_to_exit(RSP, &["--check", path], TIMEOUT);
    let expected =
        format!("{path}: workers: expected a whole number from 1 to 100000, got 16384.5");
    assert_one_line_error(code, &output, &expected);
}

/// Without `--check` a broken config also stops rsp at once, before it listens.
#[test]
fn a_broken_config_stops_rsp_before_it_listens() {
    let path = temp_file("proxy.lua", "listen = \"127.0.0.1:0\"\n");
    let (code, output) = run_to_exit(RSP, &[path.to_str().unwrap()], TIMEOUT);
    assert_one_line_error(code, &output, "backends: missing");
}

/// The shipped `proxy.lua` is valid and sets every key but `loops` (one per CPU) and
/// `workers` (measured from the machine), whose defaults no number in a file can stand
/// for (the file shows them commented out).
#[test]
fn check_accepts_the_shipped_proxy_lua_and_prints_every_key() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.lua");
    let (code, output) = run_to_exit(RSP, &["--check", shipped], TIMEOUT);
    assert_eq!(code, Some(0), "{output}");
    assert!(!output.contains("warning"), "{output}");
    assert!(output.contains("listen = \"127.0.0.1:8000\""), "{output}");
    assert!(
        output.contains("backends = { \"127.0.0.1:8888\" }"),
        "{output}"
    );
    for key in KEYS {
        let line = output.lines().find(|l| l.starts_with(&format!("{key} = ")));
        let line = line.unwrap_or_else(|| panic!("no line for {key} in:\n{output}"));
        if key == "workers" {
            assert!(line.contains("  -- default: "), "{line}");
            continue;
        }
        assert!(
            key == "loops" || !line.contains("-- default"),
            "shipped file sets {key}: {line}"
        );
    }
}

/// A config with only `listen` and `backends` shows every other key as a default.
#[test]
fn check_marks_the_keys_left_out_as_defaults() {
    let (code, output) = check(VALID);
    assert_eq!(code, Some(0), "{output}");
    let loops = rsp::config::default_loops().to_string(); // One per CPU: the machine's.
    for (key, value) in [
        ("buffer_size", "65536"),
        ("connect_timeout", "2"),
        ("idle_timeout", "300"),
        ("client_timeout", "30"),
        ("backend_retry", "10"),
        ("drain_timeout", "10"),
        ("log_level", "\"info\""),
        ("mode", "\"threads\""),
        ("max_buffered", "262144"),
        ("loops", loops.as_str()),
    ] {
        let line = format!("{key} = {value}  -- default");
        assert!(
            output.lines().any(|l| l == line),
            "no {line:?} in:\n{output}"
        );
    }
    assert!(output.contains("listen = \"127.0.0.1:0\"\n"), "{output}");
    // The machine-derived default says where it came from (tests/faults.rs checks the
    // number): "workers = 9989  -- default: open-files limit 20,000, 2 fds per connection".
    let workers = output
        .lines()
        .find(|l| l.starts_with("workers = "))
        .unwrap();
    assert!(workers.contains("  -- default: "), "{workers}");
}

/// A small explicit `workers` is used, with a warning: that many silent clients take the
/// whole pool. Not in mio mode, where `workers` means nothing.
#[test]
fn a_small_worker_pool_is_used_with_a_warning() {
    let (code, output) = check(&format!("{VALID}workers = 8\n"));
    assert_eq!(code, Some(0), "{output}");
    assert!(output.lines().any(|l| l == "workers = 8"), "{output}");
    assert!(
        output.contains(".lua: warning: workers = 8 is low: 8 clients that send nothing"),
        "{output}"
    );
    let (_, output) = check(&format!("{VALID}workers = 256\n"));
    assert!(!output.contains("warning"), "{output}");
    if cfg!(feature = "mio") {
        let (_, output) = check(&format!("{VALID}workers = 8\nmode = \"mio\"\n"));
        assert!(!output.contains("warning"), "{output}");
    }
}

/// Values that were set are shown as set, fractions of seconds included.
#[test]
fn check_shows_the_values_that_were_set() {
    let extra = "workers = 300\nconnect_timeout = 0.5\nidle_timeout = 0\nclient_timeout = 0\n\
                 log_level = \"debug\"\n";
    let (code, output) = check(&format!("{VALID}{extra}"));
    assert_eq!(code, Some(0), "{output}");
    for line in [
        "workers = 300",
        "connect_timeout = 0.5",
        "idle_timeout = 0",
        "client_timeout = 0",
        "log_level = \"debug\"",
    ] {
        assert!(
            output.lines().any(|l| l == line),
            "no {line:?} in:\n{output}"
        );
    }
}

/// The blog's part-3 keys still work, strings or numbers, listening on 127.0.0.1.
#[test]
fn accepts_the_part3_keys() {
    for text in [
        "listenPort = \"8000\"\nbackendAddress = \"127.0.0.1\"\nbackendPort = \"8888\"\n",
        "listenPort = 8000\nbackendAddress = \"127.0.0.1\"\nbackendPort = 8888\n",
    ] {
        let (code, output) = check(text);
        assert_eq!(code, Some(0), "{output}");
        assert!(output.contains("listen = \"127.0.0.1:8000\""), "{output}");
        assert!(
            output.contains("backends = { \"127.0.0.1:8888\" }"),
            "{output}"
        );
        assert!(!output.contains("warning"), "{output}");
    }
}

/// An unknown key is a warning with the closest known key, not an error.
#[test]
fn warns_about_unknown_keys_with_a_suggestion() {
    let (code, output) = check(&format!("{VALID}worker = 3\nbanana = 1\n"));
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains(".lua: warning: unknown key 'worker' (did you mean 'workers'?)"),
        "{output}"
    );
    assert!(
        output.contains("warning: unknown key 'banana' (ignored)"),
        "{output}"
    );
    let workers = output
        .lines()
        .find(|l| l.starts_with("workers = "))
        .unwrap();
    assert!(workers.contains("  -- default: "), "{output}");
}

/// `mode = "mio"` needs the `mio` feature; without it the error names the feature.
#[test]
fn mode_mio_depends_on_the_mio_feature() {
    let (code, output) = check(&format!("{VALID}mode = \"mio\"\n"));
    if cfg!(feature = "mio") {
        assert_eq!(code, Some(0), "{output}");
        assert!(output.contains("mode = \"mio\"\n"), "{output}");
    } else {
        assert_one_line_error(
            code,
            &output,
            "mode: \"mio\" needs rsp built with the 'mio' feature",
        );
    }
}

/// `--help` and `--version` print to stdout and exit 0.
#[test]
fn help_and_version_exit_zero() {
    let (code, out, err) = run_split(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("usage: rsp [CONFIG]"), "{out}");
    assert!(err.is_empty(), "{err}");
    let (code, out, _) = run_split(&["--version"]);
    assert_eq!(code, Some(0));
    assert_eq!(out.trim(), format!("rsp {}", env!("CARGO_PKG_VERSION")));
}

/// A bad command line prints the usage on stderr and exits 2.
#[test]
fn a_bad_command_line_exits_2_with_usage_on_stderr() {
    for args in [
        &["--bogus"][..],
        &["a.lua", "b.lua"],
        &["--check", "a.lua", "b.lua"],
    ] {
        let (code, out, err) = run_split(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(err.contains("usage: rsp [CONFIG]"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A reader's part-3 config runs unchanged under rsp and proxies traffic.
#[test]
fn runs_a_part3_config_unchanged() {
    let backend = common::Backend::hello();
    let text = format!(
        "listenPort = \"0\"\nbackendAddress = \"127.0.0.1\"\nbackendPort = \"{}\"\n",
        backend.port
    );
    let path = temp_file("part3.lua", &text);
    let proxy = common::Proxy::spawn(RSP, &[path.display().to_string()]);
    common::assert_hello(&common::http_get(proxy.port, "/").unwrap());
}

/// A listen address already in use ends rsp with one `rsp: …` line and exit code 1.
#[test]
fn a_listen_address_in_use_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = format!("listen = \"127.0.0.1:{port}\"\nbackends = {{ \"127.0.0.1:1\" }}\n");
    let path = temp_file("proxy.lua", &text);
    let (code, output) = run_to_exit(RSP, &[path.to_str().unwrap()], TIMEOUT);
    assert_one_line_error(code, &output, &format!("127.0.0.1:{port}"));
    assert!(output.starts_with("rsp: "), "{output}");
}

/// rsp's limit on how long a config may run (`TIME_LIMIT` in src/config.rs).
const CONFIG_TIME_LIMIT: Duration = Duration::from_secs(5);

/// Runs `hostile` (after a valid `listen` and `backends`) with `rsp --check` and with a
/// plain `rsp`: each must exit 1 with the one time-limit line within the limit plus a
/// second (the promise in the README), process start-up included.
fn assert_stopped_in_time(hostile: &str) {
    let path = temp_file("proxy.lua", &format!("{VALID}{hostile}\n"));
    let path = path.to_str().unwrap();
    let bound = CONFIG_TIME_LIMIT + Duration::from_secs(1);
    for args in [vec!["--check", path], vec![path]] {
        let started = Instant::now();
        // `run_to_exit` kills rsp and fails with "did not exit within 6s" if it hangs.
        let (code, output) = run_to_exit(RSP, &args, bound);
        let took = started.elapsed();
        assert!(
            took <= bound,
            "rsp {args:?} took {took:?}, more than {bound:?}"
        );
        assert_one_line_error(code, &output, "the config ran for more than 5 seconds");
    }
}

/// `pcall` catches the instruction hook's error, so the hook alone cannot stop this loop.
#[test]
fn a_loop_that_catches_the_time_limit_error_is_still_stopped() {
    assert_stopped_in_time("while true do pcall(function() while true do end end) end");
}

/// A finalizer runs when the Lua state is dropped, after the config has run.
#[test]
fn an_endless_finalizer_is_stopped() {
    assert_stopped_in_time("setmetatable({}, {__gc = function() while true do end end})");
}

/// One long call into C (pattern backtracking): Lua's instruction hooks never run in C.
#[test]
fn an_endless_call_into_c_is_stopped() {
    assert_stopped_in_time(
        "string.find(string.rep(\"a\", 40), string.rep(\"a?\", 40) .. string.rep(\"a\", 40))",
    );
}

/// The load-balancing keys: `balance`, a backend's `weight`, `health_check`. `--check`
/// shows them, the check settings with their defaults even when checks are off.
#[test]
fn check_shows_balance_weights_and_health_check_settings() {
    let (code, output) = check(VALID);
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output
            .lines()
            .any(|l| l == "balance = \"roundrobin\"  -- default"),
        "{output}"
    );
    // Off, shown commented out (the description still reads back as the same config).
    assert!(
        output.lines().any(|l| l.starts_with(
            "-- health_check = { interval = 2, timeout = 1, rise = 2, fall = 3 }  -- default: off"
        )),
        "{output}"
    );
    let text = "listen = \"127.0.0.1:0\"\n\
                backends = { \"127.0.0.1:1\", { \"127.0.0.1:2\", weight = 3 } }\n\
                balance = \"leastconn\"\n\
                health_check = { interval = 0.5, fall = 5, send = \"GET /health HTTP/1.0\\r\\n\\r\\n\", expect = \"HTTP/1.0 200\" }\n";
    let (code, output) = check(text);
    assert_eq!(code, Some(0), "{output}");
    for line in [
        "backends = { \"127.0.0.1:1\", { \"127.0.0.1:2\", weight = 3 } }  -- resolved to 127.0.0.1:1, 127.0.0.1:2",
        "balance = \"leastconn\"",
        "health_check = { interval = 0.5, timeout = 1, rise = 2, fall = 5, send = \"GET /health HTTP/1.0\\r\\n\\r\\n\", expect = \"HTTP/1.0 200\" }",
    ] {
        assert!(
            output.lines().any(|l| l == line),
            "no {line:?} in:\n{output}"
        );
    }
}

/// Each bad value of a load-balancing key is one line naming the key and what was wrong.
#[test]
fn bad_balance_weight_and_health_check_values_are_one_line_errors() {
    for (line, expected) in [
        (
            "balance = \"random\"",
            "balance: expected one of \"roundrobin\", \"leastconn\", got string \"random\"",
        ),
        (
            "backends = { { \"127.0.0.1:1\", weight = 0 } }",
            "backends[1].weight: expected a whole number from 1 to 256, got 0",
        ),
        (
            "backends = { { \"127.0.0.1:1\", weight = 2.5 } }",
            "backends[1].weight: expected a whole number from 1 to 256, got 2.5",
        ),
        (
            "backends = { { \"127.0.0.1:1\", wieght = 2 } }",
            "backends[1]: unknown key 'wieght' (expected weight)",
        ),
        (
            "backends = { { weight = 2 } }",
            "backends[1]: expected \"host:port\" or { \"host:port\", weight = N }",
        ),
        (
            "backends = { true }",
            "backends[1]: expected \"host:port\" or { \"host:port\", weight = N }, got boolean",
        ),
        (
            "health_check = 5",
            "health_check: expected a table such as { interval = 2, timeout = 1, rise = 2, fall = 3 }, got number 5",
        ),
        (
            "health_check = { \"x\" }",
            "health_check: expected a table such as",
        ),
        (
            "health_check = { intervall = 2 }",
            "health_check: unknown key 'intervall' (expected interval, timeout, rise, fall, send or expect)",
        ),
        (
            "health_check = { interval = 0 }",
            "health_check.interval: expected a number of seconds more than 0",
        ),
        (
            "health_check = { timeout = -1 }",
            "health_check.timeout: expected a number of seconds more than 0",
        ),
        (
            "health_check = { rise = 0 }",
            "health_check.rise: expected a whole number from 1 to 100, got 0",
        ),
        (
            "health_check = { fall = 1.5 }",
            "health_check.fall: expected a whole number from 1 to 100, got 1.5",
        ),
        (
            "health_check = { send = 3 }",
            "health_check.send: expected a non-empty string, got number 3",
        ),
        (
            "health_check = { expect = \"\" }",
            "health_check.expect: expected a non-empty string",
        ),
    ] {
        // `backends` lines replace VALID's (a global set twice keeps the last value).
        let (code, output) = check(&format!("{VALID}{line}\n"));
        assert_one_line_error(code, &output, expected);
    }
}

// ---- Issue 18: text only, and one time limit for everything reading a config does ----

/// A config that has `load` turn `bytecode_expr` (a Lua expression) into a function and
/// calls it; on success it would set `workers = 7`.
fn loading(bytecode_expr: &str) -> String {
    format!("{VALID}local chunk = {bytecode_expr}\nassert(load(chunk, 'x', 'b'))()\n")
}

/// A valid chunk's bytecode from `string.dump`, inside the config.
const DUMPED: &str = "string.dump(function() workers = 7 end)";

/// Lua does not verify bytecode, so a binary chunk is a way out of the sandbox (and
/// corrupt ones crashed rsp with SIGSEGV): a config loads text only, whether the
/// bytecode is valid or corrupt, and whether it comes through `load` or is the file.
#[test]
fn bytecode_is_refused_valid_or_corrupt() {
    let refused = "precompiled Lua (bytecode) is refused";
    let (code, output) = check(&loading(DUMPED));
    assert_one_line_error(code, &output, refused);
    assert!(
        output.contains(".lua:4: "),
        "names the line of the load: {output}"
    );
    // Every byte after the header shifted: corrupt in every instruction and constant.
    let corrupt = format!(
        "{DUMPED}:gsub('()(.)', function(i, c) return i > 32 and string.char((c:byte() + 7) \
         % 256) or c end)"
    );
    let (code, output) = check(&loading(&corrupt));
    assert_one_line_error(code, &output, refused);
    // `load` with no mode argument (Lua's default "bt"), and with an env table.
    let no_mode = format!("{VALID}assert(load({DUMPED}))()\n");
    let (code, output) = check(&no_mode);
    assert_one_line_error(code, &output, refused);
    let with_env = format!("{VALID}assert(load({DUMPED}, 'x', 'bt', {{}}))()\n");
    let (code, output) = check(&with_env);
    assert_one_line_error(code, &output, refused);
    // Text still loads, with and without an env (`load(s, n, m, nil)` is not `load(s)`).
    let text = format!("{VALID}load('workers = 300')()\nload('x = 1', 'x', 't', {{}})()\n");
    let (code, output) = check(&text);
    assert_eq!(code, Some(0), "{output}");
    assert!(output.contains("\nworkers = 300\n"), "{output}");
    // The file itself precompiled (as `luac` would write it).
    let lua = rlua::Lua::new();
    let compiled = lua.load(VALID).into_function().unwrap().dump(false);
    let path = std::env::temp_dir().join(format!("rsp-{}-compiled.luac", std::process::id()));
    std::fs::write(&path, &compiled).unwrap();
    let (code, output) = run_to_exit(RSP, &["--check", path.to_str().unwrap()], TIMEOUT);
    let _ = std::fs::remove_file(&path);
    assert_one_line_error(code, &output, refused);
}

/// A small fuzz: mutated bytecode (through `load` and as the file), random bytes and long
/// garbage each give exit 1 and one line, never a signal. Bounded: 72 runs of `--check`.
/// (Before bytecode was refused, `load` ran the mutated chunks of seeds 17, 27 and 34 and
/// rsp died of SIGABRT, SIGSEGV and SIGSEGV; several others ran and exited 0.)
#[test]
fn fuzzed_configs_give_one_line_and_exit_1() {
    let lua = rlua::Lua::new();
    let compiled = lua
        .load("listen = '127.0.0.1:0' backends = { '127.0.0.1:1' } for i = 1, 9 do end")
        .into_function()
        .unwrap()
        .dump(false);
    let dir = std::env::temp_dir();
    for seed in 1..=36u64 {
        let noise = common::random_bytes(64, seed);
        // Mutated inside the config: a few bytes of a dumped function changed.
        let mutate = format!(
            "(function() local b = {{ {DUMPED}:byte(1, -1) }} math.randomseed({seed}) \
             for _ = 1, {} do local i = math.random(1, #b) b[i] = math.random(0, 255) end \
             return string.char(table.unpack(b)) end)()",
            1 + seed % 4
        );
        let mut mutated = compiled.clone();
        for (i, byte) in noise.iter().take(1 + seed as usize % 4).enumerate() {
            let at = (usize::from(*byte) * 7 + i * 31) % mutated.len();
            mutated[at] = noise[63 - i];
        }
        let long_garbage: Vec<u8> = common::random_bytes(1 << 20, seed)
            .into_iter()
            .map(|b| b' ' + b % 95)
            .collect();
        let files: [(&str, Vec<u8>); 4] = [
            ("in-config", loading(&mutate).into_bytes()),
            ("mutated", mutated),
            (
                "random",
                common::random_bytes(200 + seed as usize * 50, seed),
            ),
            ("garbage", long_garbage),
        ];
        // Every kind for the first 12 seeds, then only the cheap in-config one.
        for (kind, bytes) in files
            .into_iter()
            .filter(|(k, _)| seed <= 12 || *k == "in-config")
        {
            let path = dir.join(format!("rsp-{}-fuzz-{kind}-{seed}.lua", std::process::id()));
            std::fs::write(&path, &bytes).unwrap();
            let (code, output) = run_to_exit(RSP, &["--check", path.to_str().unwrap()], TIMEOUT);
            let _ = std::fs::remove_file(&path);
            let lines = output.lines().filter(|l| !l.trim().is_empty()).count();
            assert!(
                code == Some(1) && lines == 1 && !output.contains("panicked"),
                "{kind} seed {seed}: exit {code:?} (None = killed by a signal), output:\n{output}"
            );
        }
    }
}

/// 60,000 globals with 800-character names: the unknown-key suggestions compared each
/// with every key after the Lua time limit had stopped (84 s and 50 MB of warnings).
/// Now `--check` is done within the limit plus a second, with a few lines of warnings.
#[test]
fn sixty_thousand_long_keys_stop_within_the_time_limit() {
    let text = format!(
        "{VALID}local pad = string.rep('x', 795)\nfor i = 1, 60000 do _G[pad .. i] = i end\n"
    );
    let path = temp_file("proxy.lua", &text);
    let bound = CONFIG_TIME_LIMIT + Duration::from_secs(1);
    let started = Instant::now();
    // `run_to_exit` kills rsp and fails if it is still running at 3 × the bound.
    let (code, output) = run_to_exit(RSP, &["--check", path.to_str().unwrap()], bound * 3);
    let took = started.elapsed();
    assert!(took <= bound, "took {took:?}, more than {bound:?}");
    assert_eq!(code, Some(0), "{}", &output[..output.len().min(2000)]);
    let warnings = output.lines().filter(|l| l.contains("warning:")).count();
    assert!(
        warnings <= 11 && output.contains("59,990 more unknown keys"),
        "{warnings} warning lines; {}",
        &output[..output.len().min(2000)]
    );
}

/// A name server that never answers: the lookups of the backends' names count against
/// the config time limit, and the error names the lookup under way. Run as root in a
/// mount namespace of its own (`unshare -m`) whose `/etc/resolv.conf` points at a UDP
/// socket of this test that reads and never replies (port 53, as resolv.conf names no
/// port, on one of loopback's many addresses); skipped where that cannot be made.
/// (Before: looked up after the limit, one name after the other; here 12 s for the first
/// name, which then failed; a slow answer for each of six names took 18 s.)
#[test]
fn a_name_server_that_never_answers_is_stopped_at_the_time_limit() {
    let Ok(silent) = std::net::UdpSocket::bind("127.83.18.1:53") else {
        println!("skipped: cannot bind a silent name server on 127.83.18.1:53 (needs root)");
        return;
    };
    let resolv = temp_file(
        "resolv.conf",
        "nameserver 127.83.18.1\noptions timeout:4 attempts:3\n",
    );
    let names = ["a", "b", "c"].map(|n| format!("\"{n}.rsp-slow-dns.test:80\""));
    let config = temp_file(
        "proxy.lua",
        &format!(
            "listen = \"127.0.0.1:0\"\nbackends = {{ {} }}\n",
            names.join(", ")
        ),
    );
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec {RSP} --check {}",
        resolv.display(),
        config.display()
    );
    let probe = Command::new("unshare").args(["-m", "true"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        println!("skipped: cannot make a mount namespace with unshare -m");
        return;
    }
    let bound = CONFIG_TIME_LIMIT + Duration::from_secs(1);
    let started = Instant::now();
    let (code, output) = run_to_exit("unshare", &["-m", "sh", "-c", &script], bound * 3);
    let took = started.elapsed();
    drop(silent);
    assert!(
        took <= bound,
        "took {took:?}, more than {bound:?}: {output}"
    );
    assert_one_line_error(
        code,
        &output,
        ": backends[1]: resolving \"a.rsp-slow-dns.test:80\" took more than 5 seconds",
    );
}
