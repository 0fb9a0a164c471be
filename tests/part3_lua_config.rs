//! Part 3's behaviour, as exercises: `make test-3` (or `cargo test --test part3_lua_config`).
//!
//! Parts 3 to 7 read the same Lua config (`part4 [--broken] <config.lua>`, `part5`, `part6`
//! and `part7 <config.lua>`), so these tests run against all of them.
//! `rsp` reads a different config (`proxy.lua`), which its own tests cover. A failure
//! names the target. `gives_error_on_long_requests`, the C's first test that takes a
//! config, runs against `rsp` too (Python's `http.server` is its backend: needs python3).
//!
//! What these tests cannot see: a config that loops forever (`while true do end`) hangs
//! the lessons, as it hung the C; nothing here times Lua out. And they only check that
//! `os` and `print` are missing, not every other function a config could call.
//!
//! Try this (each one: edit `lessons/part3_lua_config.rs`, `make test-3`, look, undo):
//! - In `load_config`, open the standard libraries and run the chunk in the real globals:
//!   `let lua = Lua::new();` (drop the `.map_err` after it), `let env = lua.globals();`
//!   in place of `create_table`, and delete the `.set_environment(env.clone())` line.
//!   `gives_error_messages_on_nonexistent_or_buggy_config_files` fails at once, on the
//!   config `home = os.getenv("HOME")`: no "Error parsing config file:" in "listenPort must
//!   be a string". The call ran: the file read your environment, and could as well have
//!   run `os.execute("rm -rf ~")`.
//! - In `load_config`, name the chunk `.set_name(path)` instead of `format!("@{path}")`.
//!   The same test fails at once, on the table left open: the message now says
//!   `[string "/…/bad.lua..."]:4:`, so the assertion that looks for `/…/bad.lua:4:` notices.

mod common;

use common::*;
use std::time::Duration;

/// How long a binary may take to fail on a bad config.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The binaries that read the part-3 config file: the lessons from part 3 on (not `rsp`,
/// whose `proxy.lua` is different), or a reader's proxy that follows part 3 or later.
fn config_targets() -> Vec<Target> {
    Target::lessons_from(3)
}

/// Runs `target` on the config `text`, expects it to exit 1 with a one-line message that
/// contains every string in `expected`, and returns the message.
fn assert_config_error(target: Target, text: &str, expected: &[&str]) -> String {
    let path = temp_file("bad.lua", text);
    let path = path.to_str().unwrap();
    let (code, output) = run_to_exit(target.binary(), &[path], EXIT_TIMEOUT);
    let wanted: Vec<String> = expected.iter().map(|e| e.replace("{path}", path)).collect();
    assert_eq!(
        code,
        Some(1),
        "{target:?} on {text:?}: exit code; output:\n{output}"
    );
    assert_eq!(
        output.lines().count(),
        1,
        "{target:?} on {text:?}: not one line:\n{output}"
    );
    for want in &wanted {
        assert!(
            output.contains(want),
            "{target:?} on {text:?}: no {want:?} in {output:?}"
        );
    }
    output
}

/// The C project's config test, extended: a missing file, a syntax error, a missing or
/// badly typed setting, and a call into a library that was never opened all give a
/// one-line message and exit status 1.
#[test]
fn gives_error_messages_on_nonexistent_or_buggy_config_files() {
    for target in config_targets() {
        // A file that does not exist (the C said "cannot open <path>: No such file...").
        let missing = "/definitely_does_not_exist";
        let (code, output) = run_to_exit(target.binary(), &[missing], EXIT_TIMEOUT);
        assert_eq!(
            code,
            Some(1),
            "{target:?}: missing file: exit code; output:\n{output}"
        );
        assert!(
            output.starts_with("Error parsing config file:") && output.contains(missing),
            "{target:?}: missing file: {output:?}"
        );

        // The C test's buggy file, then a table left open on line 3: the message names the
        // file and the line where Lua noticed, line 4 (the end of the file, where it still
        // expected the `}`).
        let buggy = "dfs'df';f'#as'\n";
        assert_config_error(target, buggy, &["Error parsing config file:", "{path}"]);
        let unclosed = "listenPort = \"0\"\nbackendAddress = \"127.0.0.1\"\nbackendPort = {\n";
        assert_config_error(
            target,
            unclosed,
            &["Error parsing config file:", "{path}:4:"],
        );

        // A missing setting, and settings of the wrong type.
        let no_backend_port = "listenPort = \"0\"\nbackendAddress = \"127.0.0.1\"\n";
        assert_config_error(target, no_backend_port, &["backendPort must be a string"]);
        let table = "listenPort = {}\nbackendAddress = \"127.0.0.1\"\nbackendPort = \"1\"\n";
        assert_config_error(target, table, &["listenPort must be a string"]);
        let boolean = "listenPort = \"0\"\nbackendAddress = true\nbackendPort = \"1\"\n";
        assert_config_error(target, boolean, &["backendAddress must be a string"]);

        // No standard library: `os` and `print` do not exist, so calling them is an error
        // while the file runs (and nothing is printed, nor executed).
        let os = "home = os.getenv(\"HOME\")\n";
        assert_config_error(target, os, &["Error parsing config file:", "os"]);
        let print = "print(\"hello from the config\")\n";
        let output = assert_config_error(target, print, &["Error parsing config file:"]);
        assert!(
            !output.contains("hello from the config"),
            "{target:?}: print ran"
        );

        // A value that is a string but not a port number is refused, naming the setting.
        let not_a_port = "listenPort = \"0\"\nbackendAddress = \"127.0.0.1\"\nbackendPort = 8.5\n";
        assert_config_error(target, not_a_port, &["backendPort"]);
    }
}

/// The wrong number of arguments prints a usage line and exits 1.
#[test]
fn gives_usage_on_wrong_arguments() {
    for target in config_targets() {
        for args in [&[][..], &["a.lua", "b.lua", "c.lua"][..]] {
            let (code, output) = run_to_exit(target.binary(), args, EXIT_TIMEOUT);
            assert_eq!(
                code,
                Some(1),
                "{target:?} {args:?}: exit code; output:\n{output}"
            );
            assert!(output.contains("Usage:"), "{target:?} {args:?}: {output:?}");
        }
    }
}

/// Starts `target` on the config `text` and checks that it proxies a request.
fn assert_proxies_with(target: Target, text: &str) {
    let path = temp_file("good.lua", text);
    let proxy = Proxy::spawn(target.binary(), &[path.display().to_string()]);
    let response = http_get(proxy.port, "/")
        .unwrap_or_else(|e| panic!("{target:?} on {text:?}: request failed: {e}"));
    assert_eq!(body(&response), HELLO.as_bytes(), "{target:?} on {text:?}");
}

/// The C tests wrote their config with no newline between the settings (their Python
/// `writelines` added none); it works because Lua needs no separator between statements.
#[test]
fn accepts_a_config_written_as_the_c_tests_wrote_it() {
    let backend = Backend::hello();
    let port = backend.port;
    let text = format!("listenPort = \"0\"backendAddress = \"127.0.0.1\"backendPort = \"{port}\"");
    for target in config_targets() {
        assert_proxies_with(target, &text);
    }
}

/// Numbers are accepted where strings are expected, as the C's `lua_isstring` accepted
/// them; and a config may compute its values, since it is a Lua program.
#[test]
fn accepts_numbers_for_the_ports() {
    let backend = Backend::hello();
    let port = backend.port;
    let text = format!(
        "-- ports as numbers\nlistenPort = 0\nbackendAddress = \"127.0.\" .. 0 .. \".1\"\n\
         backendPort = {} + 1\n",
        port - 1
    );
    for target in config_targets() {
        assert_proxies_with(target, &text);
    }
}

/// The C's `test_gives_error_on_long_requests` (`fc189d6`, added in September 2013, before
/// blog part 3), with the C's backend, Python's `http.server`. The client sends one endless
/// request line until a send fails, then reads. `http.server` gives up after 64 KiB,
/// answers `HTTP/1.0 414`, and closes with the rest of the request unread, so its kernel
/// resets the connection. A proxy whose write to the backend fails must still deliver
/// what the backend sent before its reset (the 414), and only then reset the client. Runs
/// against every part from 3 on and `rsp` in each mode.
#[test]
fn gives_error_on_long_requests() {
    let backend = PythonBackend::start();
    for target in Target::from_part(3) {
        let proxy = target.start(backend.port);
        let answer = send_long_request(proxy.port).unwrap_or_else(|e| panic!("{target:?}: {e}"));
        let start = String::from_utf8_lossy(&answer[..answer.len().min(60)]);
        assert!(
            answer.starts_with(b"HTTP/1.0 414 "),
            "{target:?}: the client read {} B ({start:?}), not the backend's 414",
            answer.len()
        );
    }
}
