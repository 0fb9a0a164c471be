"""Starting and stopping the servers the benchmark compares, and reading /proc.

Every server runs in the foreground as our child, on 127.0.0.1 only, with a config
file written into the run's temporary directory. `Server.stop()` ends it by PID.
"""

import os
import re
import signal
import socket
import subprocess
import threading
import time

BANNER = re.compile(rb"Started\.  Listening on port (\d+)\.")
NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Server:
    """One child process we started, its port, and a log file of its output."""

    def __init__(self, name, argv, log_path, port=None):
        self.name = name
        self.port = port
        self.log_path = log_path
        self.banner = threading.Event()
        log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        # Drain the output for the whole run, so a chatty child never blocks on a full pipe.
        threading.Thread(target=self._drain, args=(log,), daemon=True).start()

    @property
    def pid(self):
        return self.proc.pid

    def _drain(self, log):
        with log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                match = BANNER.search(line)
                if match and self.port is None:
                    self.port = int(match.group(1))
                if match:
                    self.banner.set()

    def wait_ready(self, timeout=15.0, banner=True):
        """Wait for the banner (or, for nginx/HAProxy, for the port to accept)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if banner and self.banner.wait(0.05):
                return
            if not banner and port_accepts(self.port):
                return
            if not banner:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start; its output:\n{self.tail()}")

    def tail(self, lines=15):
        with open(self.log_path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self):
        """SIGTERM, then SIGKILL after 5 s; only this PID."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def free_port():
    """A port the OS says is free now: bind port 0, read it, release it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------- configs

def nginx_backend_conf(tmp, port):
    """nginx as the backend: static files from `tmp/www`, keep-alive without limit."""
    return f"""worker_processes 1;
worker_rlimit_nofile 20000;
pid {tmp}/backend.pid;
error_log {tmp}/backend.err warn;
events {{ worker_connections 12000; }}
http {{
    access_log off;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    sendfile on;
    tcp_nopush on;
    client_body_temp_path {tmp}/nginx_tmp;
    proxy_temp_path {tmp}/nginx_tmp;
    fastcgi_temp_path {tmp}/nginx_tmp;
    uwsgi_temp_path {tmp}/nginx_tmp;
    scgi_temp_path {tmp}/nginx_tmp;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {tmp}/www;
    }}
}}
"""


def nginx_proxy_conf(tmp, port, backend_port):
    """nginx as a TCP proxy: the stream module, one worker (as in measurements.md)."""
    return f"""load_module {NGINX_STREAM_MODULE};
worker_processes 1;
worker_rlimit_nofile 20000;
pid {tmp}/proxy.pid;
error_log {tmp}/proxy.err warn;
events {{ worker_connections 12000; }}
stream {{
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        proxy_pass 127.0.0.1:{backend_port};
    }}
}}
"""


def haproxy_conf(port, backend_port):
    """HAProxy in `mode tcp`, threads left at its default (2 on this machine)."""
    return f"""global
    maxconn 9000
defaults
    mode tcp
    maxconn 9000
    timeout connect 5s
    timeout client 120s
    timeout server 120s
frontend bench
    bind 127.0.0.1:{port}
    default_backend backend
backend backend
    server s1 127.0.0.1:{backend_port}
"""


def rsp_conf(backend_port, mode, workers):
    """rsp's config; `workers` None leaves it to rsp's machine-derived default."""
    workers_line = "" if workers is None else f"workers = {workers}\n"
    return f"""-- written by bench/bench.py
listen = "127.0.0.1:0"
backends = {{ "127.0.0.1:{backend_port}" }}
mode = "{mode}"
{workers_line}log_level = "warn"
"""


def rsp_workers_line(binary, conf):
    """The `workers = …` line `rsp --check` prints for `conf` (with why, if a default)."""
    out = subprocess.run([binary, "--check", conf], capture_output=True, text=True,
                         timeout=30).stdout
    return next((l for l in out.splitlines() if l.startswith("workers = ")), "workers = ?")


def check_loopback_only(text, name):
    """Refuse a config that would listen on or connect to anything but 127.0.0.1."""
    addresses = re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", text)
    wild = re.search(r"\blisten\s+\d+\s*;|\bbind\s+[:*]", text)
    if wild or any(not a.startswith("127.0.0.1") for a in addresses):
        raise RuntimeError(f"{name}: config uses an address other than 127.0.0.1")


def write_conf(path, text, name):
    check_loopback_only(text, name)
    with open(path, "w") as f:
        f.write(text)
    return path


# ---------------------------------------------------------------- /proc

def process_tree(pid):
    """`pid` and its children (nginx serves from worker processes under its master)."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                pids.append(int(entry))
    return pids


def cpu_seconds(pid):
    """utime + stime of `pid` and its children, in seconds."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def status_field(pid, key):
    """Sum of a numeric /proc/PID/status field (VmRSS in KiB, Threads) over the tree."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def fd_count(pid):
    total = 0
    for p in process_tree(pid):
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            continue
    return total


def listen_overflows():
    """TcpExt ListenOverflows from /proc/net/netstat (system-wide counter)."""
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for header, values in zip(lines[::2], lines[1::2]):
        if header.startswith("TcpExt:"):
            table = dict(zip(header.split()[1:], values.split()[1:]))
            return int(table.get("ListenOverflows", 0))
    return 0
