-- The sample config for lesson part 6 (`make run-6`): part 3's config, with a list of
-- backends and the health-check settings. Like part 3's, it is a Lua chunk run with no
-- standard library: it may only set variables.

-- The port the proxy listens on (127.0.0.1 only; "0" asks the kernel for a free one).
listenPort = "8000"

-- The backends, as "host:port", in the order round robin takes them. `make run-6` starts
-- demo backends on 8888 and 8889; start the third yourself with
-- `cargo run --bin demo_backend -- 8890`, and stop it again, to watch the checks.
-- (Part 3's backendAddress and backendPort still work, for a single backend.)
backends = { "127.0.0.1:8888", "127.0.0.1:8889", "127.0.0.1:8890" }

-- Seconds between two probes of a backend (fractions allowed). A probe may take as long.
check_interval = 2

-- Probe with an HTTP GET of this path, answered 2xx or 3xx (the demo backend answers
-- "/"). Without it, a probe is a TCP connect, which a backend answering 500 passes.
check_path = "/"

-- Failed probes in a row that take a backend out (DOWN), good ones that bring it back.
fall = 3
rise = 2

-- The worker pool of part 5: clients served at once.
workers = 8
