#!/usr/bin/env python3
"""`make bench`: rsp side by side with HAProxy, nginx and a direct connection.

    python3 bench/bench.py            # full run: 3 rounds, writes BENCHMARKS.md, bench/ratios.svg
    python3 bench/bench.py --quick    # smoke test (or BENCH_QUICK=1): 1 short round,
                                      # writes target/bench-quick/ instead
    BENCH_RSP_ROOT=DIR ...            # measure DIR/target/release/rsp (another checkout)
    BENCH_RSP_WORKERS=N ...           # set rsp's threads-mode `workers` (default: unset,
                                      # so rsp sizes its pool from the machine's limits)
    BENCH_LESSON=N ...                # which lesson is threads mode's floor (default 5,
                                      # the worker-pool lesson; 0 = none)
    BENCH_LESSON_WORKERS=N ...        # the lesson's fixed pool (default 256)
    BENCH_MIO_LOOPS=N ...             # also run rsp-mio with `loops = N` as "rsp-mio-N"
                                      # (default 1; empty = only the default loops)
    BENCH_STATS=0 ...                 # skip "stats-threads" and "stats-mio": rsp with its
                                      # stats listener on and /metrics scraped once a second
                                      # (default on), beside rsp-threads and rsp-mio (off)
    BENCH_CHECKS=1 ...                # also run rsp with `health_check` on, as
                                      # "rsp-threads+checks" and "rsp-mio+checks" (the
                                      # ratio table compares each with its mode unchecked)
    BENCH_BASE_ROOT=DIR ...           # also run DIR/target/release/rsp (an older checkout)
                                      # as "base-threads" and "base-mio", for before/after
                                      # ratios from one run

Starts a backend (nginx serving static files if installed, else rsp's demo backend),
then every proxy it can find (rsp in threads mode and in mio mode, the latter with one loop
per CPU and with `loops = 1`, the lesson whose design threads mode extends, HAProxy `mode
tcp`, nginx `stream`), all on 127.0.0.1 with ports chosen at run time. It measures every target
in the same run, interleaved (A B C A B C), and reports medians. Missing tools are named
and their targets skipped. Everything it starts it stops by PID. Standard library only.
Build rsp first: `cargo build --release --bins` (`make bench` does).
"""

import argparse
import functools
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

import loads
import procs
import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The checkout whose target/release/rsp is measured: this one, or BENCH_RSP_ROOT (e.g. a
# `git worktree` of one commit, so edits in progress here do not end up in the figures).
RSP_ROOT = os.path.abspath(os.environ.get("BENCH_RSP_ROOT", ROOT))
RELEASE = os.path.join(RSP_ROOT, "target", "release")
# An older checkout to measure in the same run ("before"), or None.
BASE_ROOT = os.environ.get("BENCH_BASE_ROOT") or None
# Also run rsp with `stats` on ("stats-threads", "stats-mio"), its /metrics scraped.
STATS = os.environ.get("BENCH_STATS", "1") not in ("", "0")
# How often the stats targets' /metrics is fetched during the run (Prometheus' default
# scrape interval is 15 s, the stats page fetches once a second: the busier of the two).
SCRAPE_EVERY = 1.0
# Its threads mode may predate the machine-derived `workers`: give it enough for 5,000.
BASE_WORKERS = 6000
BULK_SIZE = 100 * 1024 * 1024
SMALL_BODY = (b"rsp bench: a 100-byte response body, about the size of a small API reply" + b"." * 99)[:99] + b"\n"


class Settings:
    """How long each load runs. `quick` is a smoke test, not a measurement."""

    def __init__(self, quick):
        self.quick = quick
        self.rounds = 1 if quick else 3
        self.wrk_seconds = 2 if quick else 10
        self.ab_new_conn = 2000 if quick else 20000
        self.ab_c_author = 2000 if quick else 100000
        self.bulk_repeats = 1 if quick else 5
        self.idle_counts = (1000,) if quick else (1000, 5000)
        # Threads mode serves `workers` connections at once (like HAProxy's maxconn). Left
        # unset, rsp derives it from the machine (open files, thread limits, memory: ~9,990
        # with a 20,000 open-files limit), enough for the 5,000-idle-connection load; the
        # bench measures that default. Threads start on demand, so a high limit costs
        # nothing until connections arrive. The idle loads hold their connections for 10 s
        # at most, well inside rsp's default `client_timeout` (30 s), so it stays on.
        workers = os.environ.get("BENCH_RSP_WORKERS")
        self.rsp_workers = int(workers) if workers else None
        self.rsp_workers_shown = None  # the `workers = …` line of `rsp --check`
        # Threads mode's floor: the lesson with the same design at its smallest (a fixed pool
        # of threads, two blocking copies). Its pool must cover the most concurrent clients
        # of a load that it runs (ab -c 100); the idle loads skip it (see `skips`).
        self.lesson = int(os.environ.get("BENCH_LESSON", "5") or "0")
        self.lesson_workers = int(os.environ.get("BENCH_LESSON_WORKERS", "256"))
        # rsp-mio with a fixed loop count beside the default (one loop per CPU).
        loops = os.environ.get("BENCH_MIO_LOOPS", "1").strip()
        self.mio_loops = int(loops) if loops else None


class Target:
    """One thing to measure: a port to send load to and the PID whose cost we read."""

    def __init__(self, name, server, start=None, skips=()):
        self.name = name
        self.server = server
        self.start = start  # starts a fresh copy of the server; None for the backend
        self.is_proxy = start is not None
        self.cpu_before = 0.0  # CPU seconds used by copies stopped by `restart`
        self.skips = skips  # prefixes of the load keys not run against it

    def restart(self):
        """A fresh process, so memory it kept from earlier loads does not hide new growth."""
        if self.start:
            self.cpu_before += procs.cpu_seconds(self.pid)
            self.server.stop()
            self.server = self.start()

    def cpu_seconds(self):
        return self.cpu_before + procs.cpu_seconds(self.pid)

    @property
    def port(self):
        return self.server.port

    @property
    def pid(self):
        return self.server.pid

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def alive(self):
        return self.server.proc.poll() is None


# ---------------------------------------------------------------- starting things

def start_backend(tmp, notes):
    """nginx with a 100-byte and a 100 MiB static file, else the demo backend."""
    if shutil.which("nginx"):
        www = os.path.join(tmp, "www")
        os.makedirs(www)
        os.makedirs(os.path.join(tmp, "nginx_tmp"))
        with open(os.path.join(www, "small.html"), "wb") as f:
            f.write(SMALL_BODY)
        with open(os.path.join(www, "big.bin"), "wb") as f:
            chunk = b"0123456789\n" * (1 << 16)
            for _ in range(BULK_SIZE // len(chunk)):
                f.write(chunk)
            f.write(chunk[: BULK_SIZE % len(chunk)])
        port = procs.free_port()
        conf = procs.write_conf(f"{tmp}/backend.conf", procs.nginx_backend_conf(tmp, port), "nginx backend")
        server = procs.Server("backend", nginx_argv(tmp, conf), f"{tmp}/backend.log", port)
        server.wait_ready(banner=False)
        notes.append(f"Backend: nginx (1 worker) serving static files on port {port}.")
        return server, "/small.html", "/big.bin"
    server = procs.Server("backend", [f"{RELEASE}/demo_backend", "0", "--keep-alive"],
                          f"{tmp}/backend.log")
    server.wait_ready()
    notes.append("Backend: rsp's demo_backend (nginx is not installed).")
    return server, "/", f"/bytes/{BULK_SIZE}"


def nginx_argv(tmp, conf):
    return ["nginx", "-p", tmp + "/", "-e", f"{tmp}/nginx-startup.err", "-c", conf,
            "-g", "daemon off;"]


def start_proxies(tmp, backend_port, settings, targets, notes):
    """Add every proxy that is installed and starts to `targets`; name the others in `notes`."""
    starters = [("HAProxy", start_haproxy), ("nginx", start_nginx),
                ("rsp-threads", start_rsp), ("rsp-mio", start_rsp)]
    if settings.mio_loops is not None:
        starters.append((f"rsp-mio-{settings.mio_loops}", start_rsp))
    if settings.lesson:
        starters.append((lesson_name(settings), start_lesson))
    if STATS:
        starters += [("stats-threads", start_rsp), ("stats-mio", start_rsp)]
    if BASE_ROOT:
        starters += [("base-threads", start_rsp), ("base-mio", start_rsp)]
    if os.environ.get("BENCH_CHECKS"):
        starters += [("rsp-threads+checks", start_rsp), ("rsp-mio+checks", start_rsp)]
    for name, start in starters:
        try:
            server = start(name, tmp, backend_port, settings)
        except (RuntimeError, OSError) as e:
            notes.append(f"Skipped {name}: {str(e).splitlines()[0]}")
            print(f"bench: skipping {name}: {e}", file=sys.stderr)  # the whole message
            continue
        again = functools.partial(start, name, tmp, backend_port, settings)
        # The lesson's pool is fixed, its threads made at start: memory per idle connection
        # would be paid before the load and read as ~0, and holding 5,000 idle connections
        # would take a 5,000-thread pool no one runs. Its idle figures are left out.
        skips = ("idle",) if name == lesson_name(settings) else ()
        targets.append(Target(name, server, again, skips))


def start_haproxy(name, tmp, backend_port, settings):
    if not shutil.which("haproxy"):
        raise RuntimeError("haproxy is not installed (make bench-deps)")
    port = procs.free_port()
    conf = procs.write_conf(f"{tmp}/haproxy.cfg", procs.haproxy_conf(port, backend_port), name)
    server = procs.Server(name, ["haproxy", "-f", conf], f"{tmp}/haproxy.log", port)
    server.wait_ready(banner=False)
    return server


def start_nginx(name, tmp, backend_port, settings):
    if not shutil.which("nginx"):
        raise RuntimeError("nginx is not installed (make bench-deps)")
    if not os.path.exists(procs.NGINX_STREAM_MODULE):
        raise RuntimeError("nginx's stream module is not installed (libnginx-mod-stream)")
    port = procs.free_port()
    conf = procs.write_conf(f"{tmp}/proxy.conf", procs.nginx_proxy_conf(tmp, port, backend_port), name)
    server = procs.Server(name, nginx_argv(tmp, conf), f"{tmp}/nginx-proxy.log", port)
    server.wait_ready(banner=False)
    return server


def start_rsp(name, tmp, backend_port, settings):
    base = name.startswith("base-")
    release = os.path.join(BASE_ROOT, "target", "release") if base else RELEASE
    binary = f"{release}/rsp"
    if not os.path.exists(binary):
        raise RuntimeError(f"{binary} not found (cargo build --release --bins)")
    checks = name.endswith("+checks")
    mode = name.removesuffix("+checks").split("-")[1]
    text = procs.rsp_conf(backend_port, mode, BASE_WORKERS if base else settings.rsp_workers)
    if checks:  # the default probe, a TCP connect to the backend every 2 s
        text += "health_check = { interval = 2, timeout = 1, rise = 2, fall = 3 }\n"
    if name.count("-") == 2:  # rsp-mio-N
        text += f"loops = {int(name.split('-')[2])}\n"
    stats_port = procs.free_port() if name.startswith("stats-") else None
    if stats_port:
        text += f'stats = "127.0.0.1:{stats_port}"\n'
    conf = procs.write_conf(f"{tmp}/{name}.lua", text, name)
    if name == "rsp-threads" and settings.rsp_workers_shown is None:
        settings.rsp_workers_shown = procs.rsp_workers_line(binary, conf)
        print(f"rsp-threads: {settings.rsp_workers_shown}")
    server = procs.Server(name, [binary, conf], f"{tmp}/{name}.log")
    server.stats_port = stats_port
    server.wait_ready()
    if not loads.fresh_request_ok(server.port, settings.small_path):
        server.stop()
        raise RuntimeError(f"{name} started but did not answer a request; log:\n{server.tail()}")
    return server


def scrape(targets, stop):
    """Fetches /metrics of every target with a stats port, every SCRAPE_EVERY seconds."""
    while not stop.wait(SCRAPE_EVERY):
        for t in targets:
            port = getattr(t.server, "stats_port", None)
            if port:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                        r.read()
                except OSError:
                    pass  # restarting; the next scrape finds it


def lesson_name(settings):
    return f"lesson-{settings.lesson}"


def start_lesson(name, tmp, backend_port, settings):
    """Lesson part N (`target/release/partN`): parts 1-2 take ports on the command line,
    the later ones a Lua config with the blog's keys (and `workers`, the pool's size)."""
    binary = f"{RELEASE}/part{settings.lesson}"
    if not os.path.exists(binary):
        raise RuntimeError(f"{binary} not found (cargo build --release --bins)")
    if settings.lesson <= 2:
        argv = [binary, "0", "127.0.0.1", str(backend_port)]
    else:
        text = (f'-- written by bench/bench.py\nlistenPort = "0"\nbackendAddress = "127.0.0.1"\n'
                f'backendPort = "{backend_port}"\nworkers = {settings.lesson_workers}\n')
        argv = [binary, procs.write_conf(f"{tmp}/{name}.lua", text, name)]
    server = procs.Server(name, argv, f"{tmp}/{name}.log")
    server.wait_ready()
    if not loads.fresh_request_ok(server.port, settings.small_path):
        server.stop()
        raise RuntimeError(f"{name} started but did not answer a request; log:\n{server.tail()}")
    return server


# ---------------------------------------------------------------- the loads

def keep_alive(t, s):
    return loads.with_cpu(t.pid, lambda f: f["requests"],
                          lambda: loads.wrk(t.url(s.small_path), s.wrk_seconds))


def new_connection(t, s):
    return loads.with_cpu(t.pid, lambda f: f["requests"],
                          lambda: loads.ab(t.url(s.small_path), s.ab_new_conn, 50, timeout=120))


def c_author(t, s):
    return loads.with_cpu(t.pid, lambda f: f["requests"],
                          lambda: loads.ab(t.url(s.small_path), s.ab_c_author, 100, timeout=200))


def bulk(t, s):
    return loads.with_cpu(t.pid, lambda f: f["requests"],
                          lambda: loads.bulk(t.port, s.bulk_path, BULK_SIZE, s.bulk_repeats))


def idle_test(count):
    def run(t, s):
        t.restart()
        return loads.idle(t.port, t.pid, count, s.small_path, t.is_proxy)
    return run


def load_list(settings):
    """(key, description, function) for every load, in the order they run."""
    tests = [("ka", "keep-alive, wrk", keep_alive),
             ("nc", "new connection per request, ab -c 50", new_connection),
             ("c100", "ab -c 100 (the C author's test, scaled)", c_author),
             ("bulk", "bulk 100 MiB", bulk)]
    for n in settings.idle_counts:
        tests.append((f"idle{n}", f"{n} idle connections", idle_test(n)))
    return tests


def measure_all(targets, settings):
    """Every load against every target, interleaved, `rounds` times: {target: {metric: [..]}}."""
    results = {t.name: {} for t in targets}
    for r in range(settings.rounds):
        for key, what, run in load_list(settings):
            for t in targets:
                if key.startswith(t.skips):
                    continue
                figures = measure_one(t, run, settings)
                print(f"round {r + 1}/{settings.rounds}  {what:42} {t.name:12} {report.brief(figures)}",
                      flush=True)
                for metric, value in figures.items():
                    results[t.name].setdefault(f"{key}.{metric}", []).append(value)
    return results


def measure_one(t, run, settings):
    if not t.alive():
        return {"error": f"{t.name} has exited; last output: {t.server.tail(3)}"}
    try:
        return run(t, settings)
    except (loads.LoadError, OSError) as e:
        return {"error": str(e).splitlines()[0][:200]}


def warm_up(targets, settings):
    for t in targets:
        try:
            loads.wrk(t.url(settings.small_path), 1)
        except loads.LoadError as e:
            print(f"bench: warm-up of {t.name} failed: {e}", file=sys.stderr)


def medians(results):
    """The median of each metric; booleans become 'all rounds' only if every round was true."""
    out = {}
    for name, metrics in results.items():
        out[name] = {}
        for metric, values in metrics.items():
            if metric.endswith(".error"):
                out[name][metric] = values[-1]
            elif metric.endswith("_ok"):
                out[name][metric] = all(values)
            else:  # None (not reached in a round) counts as the worst value
                known = sorted(v for v in values if v is not None)
                worst = [float("inf")] * (len(values) - len(known))
                middle = statistics.median(known + worst) if values else None
                out[name][metric] = None if middle == float("inf") else middle
    return out


# ---------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round (smoke test)")
    args = parser.parse_args()
    settings = Settings(args.quick or os.environ.get("BENCH_QUICK", "") not in ("", "0"))
    # SIGTERM unwinds like Ctrl-C, so the `finally` below still stops every server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("bench: terminated"))
    loads.raise_fd_limit()
    for tool in ("wrk", "ab"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} is not installed; run `make bench-deps` first")
    account = report.CpuAccount()
    settings.rsp_built = report.rsp_version(RSP_ROOT)  # before the run: src/ may change meanwhile
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="rsp-bench-")
    os.chmod(tmp, 0o755)  # nginx workers run as `nobody` and must read the static files
    targets, notes = [], []
    stop_scraping = threading.Event()
    try:
        backend, settings.small_path, settings.bulk_path = start_backend(tmp, notes)
        targets.append(Target("direct", backend))
        start_proxies(tmp, backend.port, settings, targets, notes)
        print("bench:", notes[0])
        threading.Thread(target=scrape, args=(targets, stop_scraping), daemon=True).start()
        warm_up(targets, settings)
        results = medians(measure_all(targets, settings))
        machine = account.others(sum(t.cpu_seconds() for t in targets))
    finally:
        stop_scraping.set()
        for t in reversed(targets):  # the proxies first, the backend (direct) last
            t.server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    notes.append(f"Run time: {time.monotonic() - started:.0f} s.")
    report.write_all(ROOT, results, [t.name for t in targets], settings, notes, machine)


if __name__ == "__main__":
    main()
