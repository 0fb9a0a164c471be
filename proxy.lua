-- proxy.lua: rsp's configuration. Run `rsp` (or `rsp proxy.lua`) to use it, and
-- `rsp --check proxy.lua` to see how rsp reads it, with the defaults filled in.
--
-- This is a Lua file, run once at start as text (no precompiled bytecode, not even
-- through `load`) with only Lua's string, table and math libraries (no os, no io),
-- 64 MiB and 5 seconds for everything reading it takes. Only `listen` and `backends` are required; every other
-- line below shows its default (`workers` is measured from the machine, so it is left
-- commented out). The blog's part-3 keys (listenPort, backendAddress,
-- backendPort) also work, but not mixed with listen/backends.

-- Where clients connect, as "host:port". Port 0 lets the OS choose one (rsp prints it
-- in its banner: "Started.  Listening on port N.").
listen = "127.0.0.1:8000"

-- One or more "host:port" backends, used round-robin. `make backend` starts the demo
-- backend on 127.0.0.1:8888. Names such as "localhost:8888" are resolved once, at start.
backends = { "127.0.0.1:8888" }
-- A backend may have a weight (1-256, default 1): { "127.0.0.1:8889", weight = 3 }
-- gets three clients for every one the others get.

-- How clients are spread: "roundrobin" (smooth weighted round robin) or "leastconn"
-- (the backend with the fewest open connections per unit of weight).
balance = "roundrobin"

-- Active health checks are off unless this is set. Every `interval` seconds one thread
-- probes each backend (a TCP connect within `timeout` seconds); a backend goes DOWN
-- after `fall` failed probes in a row and UP again after `rise` good ones. With `send`
-- and `expect` the probe writes `send` and the answer must start with `expect`.
-- health_check = { interval = 2, timeout = 1, rise = 2, fall = 3 }
-- health_check = { interval = 2, timeout = 1, rise = 2, fall = 3,
--                  send = "GET /health HTTP/1.0\r\n\r\n", expect = "HTTP/1.0 200" }

-- "threads": a pool of worker threads, two blocking copies per connection.
-- "mio": event loops, one per CPU (needs rsp built with the `mio` feature, the default).
mode = "threads"

-- Mio mode: how many event loops (threads). Left unset, one per CPU rsp may use, which
-- a file cannot know; `loops = 1` is a single loop.
-- loops = 2

-- Threads mode: how many connections are served at once; more clients wait their turn
-- in the listen backlog (the log says so). Left unset, it is what this process can hold:
-- the smallest of the open-files limit at 2 fds per connection; the thread limits
-- (threads-max, pid_max, and what the cgroup's pids.max and ulimit -u leave after the
-- tasks already running) at 2 threads per connection; and the memory left (MemAvailable,
-- or the cgroup's memory limit less its use, as in a container) at 72 KiB per idle
-- connection. `rsp --check` shows the number and which limit it came from. Set it only
-- to cap rsp lower; below 256, --check warns.
-- workers = 9989    -- e.g. with `ulimit -n` 20000: "default: open-files limit 20,000"

-- Bytes read at a time when copying between client and backend.
buffer_size = 65536

-- Mio mode: bytes queued for a slow reader, per direction, before rsp stops reading
-- from the other side (so memory stays bounded however slow a client is).
max_buffered = 262144

-- Timeouts, in seconds (fractions such as 0.5 are fine).
connect_timeout = 2    -- how long connecting to a backend may take
idle_timeout = 300     -- close a connection quiet in both directions this long; 0 = never
client_timeout = 30    -- close a connection on which nothing moved this long after the
                       -- client connected (so silent clients cannot hold every worker);
                       -- 0 = never. Only before the first byte either way (a server
                       -- that speaks first counts): after that, idle_timeout applies.
backend_retry = 10     -- how long a backend that refused a client's connection is
                       -- skipped (a good health check ends it sooner)
drain_timeout = 10     -- on Ctrl-C, how long to wait for open connections to finish

-- How much rsp logs: "error", "warn", "info", "debug" or "trace".
log_level = "info"

-- The stats listener: a live page at http://127.0.0.1:8001/ and Prometheus metrics at
-- /metrics. Off unless set. It has NO authentication: keep it on loopback (--check
-- warns otherwise). Port 0 lets the OS choose (rsp logs "Stats on http://…/").
-- stats = "127.0.0.1:8001"

-- Reload: `kill -HUP <pid>` reads this file again. New connections get the new
-- backends and timeouts; open ones keep what they started with. listen, mode, loops,
-- workers, stats, log_level and drain_timeout need a restart (a reload warns and keeps
-- them). A broken file changes nothing: rsp logs the error and serves on.
