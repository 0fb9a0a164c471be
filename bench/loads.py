"""The five loads. Each returns a dict of figures for one target, or raises LoadError.

Every load is bounded in time: external tools run under a subprocess timeout, and the
Python clients have deadlines.
"""

import re
import resource
import selectors
import socket
import subprocess
import time

import procs


class LoadError(Exception):
    """A load that could not be measured (tool failed, timed out, errors in the output)."""


def run_tool(argv, timeout):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LoadError(f"{argv[0]} took longer than {timeout:.0f} s")
    if done.returncode != 0:
        raise LoadError(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout


def with_cpu(pid, requests, measure):
    """Run `measure()`, adding the server's CPU time per request in microseconds."""
    before = procs.cpu_seconds(pid)
    figures = measure()
    used = procs.cpu_seconds(pid) - before
    figures["cpu_us"] = used / max(requests(figures), 1) * 1e6
    return figures


# ---------------------------------------------------------------- 1. keep-alive (wrk)

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def parse_ms(text):
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise LoadError(f"cannot read the latency {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def wrk(url, seconds, connections=50):
    """`wrk -t1 -cN -dS --latency`: requests/s, p50 and p99 in ms."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    out = run_tool(argv, timeout=seconds + 30)
    if "Socket errors" in out or "Non-2xx" in out:
        bad = [line.strip() for line in out.splitlines() if "errors" in line or "Non-2xx" in line]
        raise LoadError("wrk saw errors: " + "; ".join(bad))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = re.search(r"(\d+) requests in", out)
    if not (rps and p50 and p99 and total):
        raise LoadError("cannot read wrk's output:\n" + out)
    return {"rps": float(rps.group(1)), "p50_ms": parse_ms(p50.group(1)),
            "p99_ms": parse_ms(p99.group(1)), "requests": int(total.group(1))}


# ---------------------------------------------------------------- 2, 3. new connections (ab)

def ab(url, requests, concurrency, timeout):
    """`ab -n N -c C` without -k: a new connection per request."""
    argv = ["ab", "-q", "-s", "10", "-n", str(requests), "-c", str(concurrency), url]
    out = run_tool(argv, timeout=timeout)
    rps = re.search(r"Requests per second:\s+([\d.]+)", out)
    mean = re.search(r"Time per request:\s+([\d.]+) \[ms\] \(mean\)", out)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    done = re.search(r"Complete requests:\s+(\d+)", out)
    if not (rps and mean and failed and done):
        raise LoadError("cannot read ab's output:\n" + out[-800:])
    if int(failed.group(1)) or int(done.group(1)) != requests:
        raise LoadError(f"ab: {failed.group(1)} failed, {done.group(1)} of {requests} complete")
    return {"rps": float(rps.group(1)), "mean_ms": float(mean.group(1)), "requests": requests}


# ---------------------------------------------------------------- 4. bulk (a socket client)

def http_get_bytes(port, path, timeout):
    """GET `path` over a fresh connection; return (status line, body byte count)."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head, received = b"", 0
        buf = bytearray(1 << 20)
        while True:
            if time.monotonic() > deadline:
                raise LoadError(f"GET {path} took longer than {timeout} s")
            n = s.recv_into(buf)
            if n == 0:
                break
            if head.find(b"\r\n\r\n") < 0:
                head += bytes(buf[:n])
                received = len(head)
            else:
                received += n
        end = head.find(b"\r\n\r\n")
        if end < 0:
            raise LoadError(f"GET {path}: no HTTP response")
        return head.split(b"\r\n", 1)[0].decode(), received - end - 4


def bulk(port, path, size, repeats):
    """Download `size` bytes `repeats` times; the median speed in MB/s (10^6 bytes)."""
    speeds = []
    for _ in range(repeats):
        start = time.perf_counter()
        status, got = http_get_bytes(port, path, timeout=60)
        took = time.perf_counter() - start
        if " 200 " not in status + " " or got != size:
            raise LoadError(f"bulk: {status!r}, {got} of {size} bytes")
        speeds.append(size / took / 1e6)
    speeds.sort()
    return {"mbps": speeds[len(speeds) // 2], "requests": repeats}


def fresh_request_ok(port, path):
    try:
        status, _ = http_get_bytes(port, path, timeout=3)
        return " 200 " in status + " "
    except (OSError, LoadError):
        return False


# ---------------------------------------------------------------- 5. idle connections

def raise_fd_limit():
    """Let this process hold 5,000 client sockets: soft limit up to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


IDLE_DEADLINE = 10.0  # seconds for a burst to be connected and held by the server


def connect_burst(port, count, deadline):
    """Start `count` non-blocking connects at once; wait until all are connected.

    Returns (seconds until the last one connected, sockets, how many failed or timed out).
    """
    socks, sel = [], selectors.DefaultSelector()
    start = time.monotonic()
    try:
        for _ in range(count):
            s = socket.socket()
            socks.append(s)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            sel.register(s, selectors.EVENT_WRITE)
    except OSError:  # e.g. out of fds: close what we opened, report it as a failed load
        for s in socks:
            s.close()
        sel.close()
        raise
    pending, failed = count, 0
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            sel.unregister(key.fileobj)
            pending -= 1
            failed += key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
    took = time.monotonic() - start
    sel.close()
    return took, socks, failed + pending


def wait_for_fds(pid, target, deadline, rising):
    """Poll until the server holds at least (`rising`) / at most `target` fds, or until
    `deadline`. Returns (fd count, whether it got there)."""
    while True:
        n = procs.fd_count(pid)
        reached = n >= target if rising else n <= target
        if reached or time.monotonic() >= deadline:
            return n, reached
        time.sleep(0.02)


def settled_fd_count(pid, timeout=3.0):
    """The server's fd count once it has not changed for 0.3 s (a connection from an
    earlier check may still be closing), or after `timeout`."""
    deadline = time.monotonic() + timeout
    last, since = procs.fd_count(pid), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 0.3:
        time.sleep(0.02)
        n = procs.fd_count(pid)
        if n != last:
            last, since = n, time.monotonic()
    return last


def idle(port, pid, count, fresh_path, is_proxy):
    """Open `count` idle connections at once and look at the server holding them."""
    per_conn = 2 if is_proxy else 1  # a proxy holds a client and a backend socket
    fds_before = settled_fd_count(pid)
    rss_before = procs.status_field(pid, "VmRSS")
    overflows_before = procs.listen_overflows()
    start = time.monotonic()
    took, socks, failed = connect_burst(port, count, start + IDLE_DEADLINE)
    try:
        # Connected is not yet accepted: wait (bounded) until the server holds them all,
        # so RSS counts every connection.
        fds, all_held = wait_for_fds(pid, fds_before + per_conn * count,
                                     start + IDLE_DEADLINE, rising=True)
        held_s = time.monotonic() - start if all_held else None
        figures = {
            "open_s": took if not failed else None, "held_s": held_s, "failed": failed,
            "held": (fds - fds_before) // per_conn,
            "overflows": procs.listen_overflows() - overflows_before,
            "kib_per_conn": (procs.status_field(pid, "VmRSS") - rss_before) / count,
            "threads": procs.status_field(pid, "Threads"),
            "fresh_ok": fresh_request_ok(port, fresh_path),
        }
    finally:
        for s in socks:
            s.close()
    wait_for_fds(pid, fds_before + 4, time.monotonic() + 15, rising=False)
    return figures
