"""What one idle threads-mode connection costs, as a memory cgroup charges it.

The OOM killer acts on what the cgroup charges: the process's resident pages (RSS) and
the kernel memory it causes (thread kernel stacks, socket structures and buffers),
which RSS does not show. This script runs rsp alone in a fresh memory cgroup, opens idle
connections to it in two steps and divides the growth of the group's charge by the
connections added; it also splits that into RSS and the rest (kernel memory). The
constant `IDLE_CONNECTION_BYTES` in src/capacity.rs and the README quote its result.

    sudo python3 -B bench/conn_memory.py [path/to/rsp] [FIRST] [SECOND]
    sudo python3 -B bench/conn_memory.py --limit MIB [path/to/rsp]

With `--limit`, it checks the bound instead: rsp with default settings in a group
limited to MIB MiB, `rsp --check` run in that group for the default `workers`, then
that many idle clients and 200 more. rsp must hold about `workers` of them (each with
its backend connection; rsp works its own number out as it starts), leave the rest in
the listen backlog, reset or close none, serve the rest once the first ones' 30 s
`client_timeout` has closed them, and never be OOM-killed (about 40 s).

Needs root and a memory controller (cgroup v1 `memory`, or v2 with `memory` in the
root's `cgroup.subtree_control`). The backend (a socket that accepts and holds) and
the clients run in this script, outside the group, so only rsp's side is counted.
Defaults: target/release/rsp, 1,000 then 3,000 connections.
"""

import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time

BANNER = re.compile(rb"Started\.  Listening on port (\d+)\.")


def memory_group():
    """A new memory cgroup: (its dir, usage file name). v1 nests it in our own group."""
    name = f"rsp-conn-memory-{os.getpid()}"
    membership = open("/proc/self/cgroup").read().splitlines()
    for line in membership:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            parent = os.path.join("/sys/fs/cgroup/memory", path.lstrip("/"))
            if not os.path.isdir(parent):
                parent = "/sys/fs/cgroup/memory"
            group = os.path.join(parent, name)
            os.mkdir(group)
            return group, "memory.usage_in_bytes"
    controls = open("/sys/fs/cgroup/cgroup.subtree_control").read().split()
    if "memory" not in controls:
        sys.exit("no memory controller: not v1, and not in v2's root subtree_control")
    group = os.path.join("/sys/fs/cgroup", name)
    os.mkdir(group)
    return group, "memory.current"


def read_int(path):
    with open(path) as f:
        return int(f.read().split()[0])


def rss_bytes(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class HoldingBackend:
    """Accepts connections and keeps them open, counting them."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.port = self.listener.getsockname()[1]
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            conn, _ = self.listener.accept()
            self.held.append(conn)


def wait_until(check, timeout, what):
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.05)


def settle(group, usage_file):
    """The group's charge once it has stopped moving (per-CPU charge batches flush)."""
    last = read_int(os.path.join(group, usage_file))
    for _ in range(20):
        time.sleep(0.25)
        now = read_int(os.path.join(group, usage_file))
        if abs(now - last) < 64 * 1024:
            return now
        last = now
    return last


def oom_kills(group):
    """The group's OOM kills so far: v1 memory.oom_control, v2 memory.events."""
    for name in ("memory.oom_control", "memory.events"):
        path = os.path.join(group, name)
        if os.path.exists(path):
            for line in open(path):
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    return 0


def still_open(sock):
    """Whether nothing came from the far end: no bytes, no EOF, no reset."""
    sock.setblocking(False)
    try:
        return sock.recv(1) is None
    except BlockingIOError:
        return True
    except OSError:
        return False


def hold_under_limit(rsp, limit_mib):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    backend = HoldingBackend()
    group, usage_file = memory_group()
    limit_file = "memory.limit_in_bytes" if usage_file == "memory.usage_in_bytes" else "memory.max"
    with open(os.path.join(group, limit_file), "w") as f:
        f.write(str(limit_mib << 20))
    config = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    config.write(f'listen = "127.0.0.1:0"\nbackends = {{ "127.0.0.1:{backend.port}" }}\n')
    config.close()
    procs = os.path.join(group, "cgroup.procs")
    in_group = ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh"]
    check = subprocess.run(in_group + [rsp, "--check", config.name],
                           capture_output=True, text=True)
    line = next(l for l in check.stdout.splitlines() if l.startswith("workers = "))
    print(f"rsp --check in the group: {line}")
    workers = int(line.split()[2])
    proc = subprocess.Popen(in_group + [rsp, config.name], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    clients = []
    try:
        match = None
        while not match:
            line = proc.stdout.readline()
            if not line:
                sys.exit(f"no banner from {rsp}")
            match = BANNER.search(line)
        port = int(match.group(1))
        log = []
        threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
        wanted = workers + 200
        for _ in range(wanted):
            clients.append(socket.create_connection(("127.0.0.1", port)))
        # rsp works out its own `workers` as it starts, a little apart from --check's
        # (the group's use has moved): wait until the count served stops moving.
        served, still_for = -1, 0
        for _ in range(240):
            now = len(backend.held)
            still_for = still_for + 1 if now == served else 0
            served = now
            if still_for >= 8:
                break
            time.sleep(0.25)
        charged = read_int(os.path.join(group, usage_file))
        open_clients = sum(1 for c in clients if still_open(c))
        alive = proc.poll() is None
        print(f"{wanted} clients connected; rsp served {len(backend.held)} (--check said "
              f"workers = {workers}), {open_clients} clients still open, rsp alive: {alive}, "
              f"group charged {charged / 2**20:.1f} of {limit_mib} MiB, "
              f"OOM kills: {oom_kills(group)}")
        # The default client_timeout (30 s) closes the silent clients rsp holds; then the
        # ones waiting in the backlog are accepted in their turn. Every client is served.
        wait_until(lambda: len(backend.held) >= wanted or proc.poll() is not None, 60,
                   "the waiting clients")
        print(f"after the first ones' client_timeout: rsp served {len(backend.held)} of "
              f"{wanted}, rsp alive: {proc.poll() is None}, OOM kills: {oom_kills(group)}")
        for name in ("memory.max_usage_in_bytes", "memory.failcnt", "memory.kmem.failcnt",
                     "memory.peak", "memory.events"):
            path = os.path.join(group, name)
            if os.path.exists(path):
                print(f"  {name}: {' '.join(open(path).read().split())}")
        for line in log:
            if b"client timeout" not in line:
                print("  rsp:", line.decode().rstrip())
        timeouts = sum(1 for line in log if b"client timeout" in line)
        print(f"  rsp: ... and {timeouts} 'client timeout' lines")
    finally:
        clean_up(proc, clients, config, group)


def clean_up(proc, clients, config, group):
    """Stops rsp, closes the clients, removes the config and the memory group (which the
    kernel lets go of only once its last process has gone)."""
    proc.kill()
    proc.wait()
    for c in clients:
        c.close()
    os.unlink(config.name)
    for _ in range(50):
        try:
            os.rmdir(group)
            break
        except OSError:
            time.sleep(0.1)


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--limit":
        rsp = sys.argv[3] if len(sys.argv) > 3 else "target/release/rsp"
        return hold_under_limit(rsp, int(sys.argv[2]))
    rsp = sys.argv[1] if len(sys.argv) > 1 else "target/release/rsp"
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    second = int(sys.argv[3]) if len(sys.argv) > 3 else 3000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 2 * second + 100:
        sys.exit(f"open-files hard limit {hard} is too low for {second} connections")
    backend = HoldingBackend()
    group, usage_file = memory_group()
    config = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    config.write(
        f'listen = "127.0.0.1:0"\nbackends = {{ "127.0.0.1:{backend.port}" }}\n'
        f"workers = {second + 100}\nclient_timeout = 0\nidle_timeout = 0\n"
        'log_level = "warn"\n'
    )
    config.close()
    procs = os.path.join(group, "cgroup.procs")
    proc = subprocess.Popen(
        ["sh", "-c", f'echo $$ > {procs} && exec "$0" "$1"', rsp, config.name],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    clients = []
    try:
        line = proc.stdout.readline()
        match = BANNER.search(line)
        if not match:
            sys.exit(f"no banner from {rsp}: {line!r}")
        port = int(match.group(1))
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        points = []
        for target in (first, second):
            while len(clients) < target:
                clients.append(socket.create_connection(("127.0.0.1", port)))
            wait_until(lambda: len(backend.held) >= target, 120, f"{target} connections")
            charged = settle(group, usage_file)
            points.append((target, charged, rss_bytes(proc.pid)))
            print(f"{target:6} idle connections: charged {charged / 2**20:8.1f} MiB, "
                  f"RSS {points[-1][2] / 2**20:8.1f} MiB")
        (n1, c1, r1), (n2, c2, r2) = points
        per_conn = (c2 - c1) / (n2 - n1)
        per_rss = (r2 - r1) / (n2 - n1)
        print(f"per idle connection: {per_conn / 1024:.1f} KiB charged = "
              f"{per_rss / 1024:.1f} KiB RSS + {(per_conn - per_rss) / 1024:.1f} KiB kernel "
              f"(from {n1:,} to {n2:,} connections)")
    finally:
        clean_up(proc, clients, config, group)


if __name__ == "__main__":
    main()
