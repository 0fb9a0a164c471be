"""Turning the medians into BENCHMARKS.md, a PASS/MISS list and bench/ratios.svg."""

import datetime
import os
import re
import platform
import subprocess
import sys
import time

import svg

# (metric, label, number format, which way is better)
ROWS = [
    ("ka.rps", "keep-alive 100 B: requests/s", "{:,.0f}", "higher"),
    ("ka.p50_ms", "keep-alive: p50 latency, ms", "{:.2f}", "lower"),
    ("ka.p99_ms", "keep-alive: p99 latency, ms", "{:.2f}", "lower"),
    ("ka.cpu_us", "keep-alive: server CPU per request, µs", "{:.1f}", "lower"),
    ("nc.rps", "new connection per request: requests/s", "{:,.0f}", "higher"),
    ("nc.mean_ms", "new connection: mean time per request, ms", "{:.2f}", "lower"),
    ("nc.cpu_us", "new connection: server CPU per connection, µs", "{:.1f}", "lower"),
    ("c100.mean_ms", "ab -c 100: mean time per request, ms", "{:.2f}", "lower"),
    ("c100.added_ms", "ab -c 100: mean added versus direct, ms", "{:+.2f}", "lower"),
    ("bulk.mbps", "bulk 100 MiB: MB/s", "{:,.0f}", "higher"),
    ("bulk.cpu_ms", "bulk: server CPU per 100 MiB, ms", "{:.0f}", "lower"),
]
IDLE_ROWS = [
    ("open_s", "time until all connected, s", "{:.3f}", "lower"),
    ("held_s", "time until the server held all, s", "{:.3f}", "lower"),
    ("held", "connections the server held", "{:,.0f}", "higher"),
    ("failed", "connects failed or not done in 10 s", "{:.0f}", "lower"),
    ("overflows", "listen-queue overflows", "{:.0f}", "lower"),
    ("kib_per_conn", "RSS per connection, KiB", "{:.1f}", "lower"),
    ("threads", "server threads while holding them", "{:.0f}", "lower"),
    ("fresh_ok", "a fresh request is still served", None, None),
]
RATIO_KEYS = ["ka.rps", "ka.p99_ms", "ka.cpu_us", "nc.rps", "nc.cpu_us", "c100.added_ms",
              "bulk.mbps", "bulk.cpu_ms", "idle5000.kib_per_conn", "idle1000.kib_per_conn"]


def rows_for(settings):
    rows = list(ROWS)
    for n in settings.idle_counts:
        rows += [(f"idle{n}.{k}", f"{n:,} idle connections: {label}", fmt, better)
                 for k, label, fmt, better in IDLE_ROWS]
    return rows


def derive(results):
    """Figures computed from others: latency added versus direct, bulk CPU in ms."""
    direct = results.get("direct", {}).get("c100.mean_ms")
    for figures in results.values():
        if direct is not None and "c100.mean_ms" in figures:
            figures["c100.added_ms"] = figures["c100.mean_ms"] - direct
        if "bulk.cpu_us" in figures:
            figures["bulk.cpu_ms"] = figures["bulk.cpu_us"] / 1000


def show(value, fmt):
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    return fmt.format(value)


def ratio(results, a, b, metric):
    x, y = results.get(a, {}).get(metric), results.get(b, {}).get(metric)
    if metric.endswith(".kib_per_conn") and not (held_all(results, a, metric) and
                                                 held_all(results, b, metric)):
        return None  # memory per connection means nothing if it did not hold them all
    if x is None or y is None or y == 0 or isinstance(x, bool):
        return None
    return x / y


def held_all(results, name, metric):
    """Whether `name` held every connection of the idle test `metric` belongs to."""
    test = metric.split(".")[0]  # e.g. "idle5000"
    held = results.get(name, {}).get(f"{test}.held")
    return held is not None and held >= int(test[len("idle"):])


def brief(figures):
    """One line for the progress output."""
    if "error" in figures:
        return "ERROR " + figures["error"]
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in figures.items() if k != "requests")


# ---------------------------------------------------------------- targets

def goals(mode, lesson):
    """(description, check) for one rsp mode. A check gets (results, rsp name) and returns
    (what was measured, as text; True if the goal is met), or None if it was not measured.
    Mio mode is held to HAProxy; threads mode's throughput to `lesson` (the bare design it
    extends), its bulk and memory to fixed bars."""
    if mode == "mio":
        return [
            ("keep-alive requests/s ≥ 1.1× HAProxy", lambda r, me: vs(r, me, "HAProxy", "ka.rps", 1.1)),
            ("new-connection requests/s ≥ 1.05× HAProxy",
             lambda r, me: vs(r, me, "HAProxy", "nc.rps", 1.05)),
            ("ab -c 100: mean latency added ≤ HAProxy's", added_latency),
            ("bulk MB/s ≥ 1.2× HAProxy", lambda r, me: vs(r, me, "HAProxy", "bulk.mbps", 1.2)),
            ("server CPU per keep-alive request ≤ HAProxy's",
             lambda r, me: vs(r, me, "HAProxy", "ka.cpu_us", 1.0, at_most=True)),
            ("server CPU per new connection ≤ HAProxy's",
             lambda r, me: vs(r, me, "HAProxy", "nc.cpu_us", 1.0, at_most=True)),
            ("≤ 1 KiB per idle connection (5,000)", lambda r, me: idle_memory(r, me, 1)),
        ]
    return [
        (f"keep-alive requests/s ≥ 1.0× {lesson}", lambda r, me: vs(r, me, lesson, "ka.rps", 1.0)),
        (f"new-connection requests/s ≥ 1.0× {lesson}", lambda r, me: vs(r, me, lesson, "nc.rps", 1.0)),
        ("bulk MB/s ≥ 1.0× HAProxy", lambda r, me: vs(r, me, "HAProxy", "bulk.mbps", 1.0)),
        ("≤ 24 KiB per idle connection (5,000)", lambda r, me: idle_memory(r, me, 24)),
        ("5,000 connects in < 0.5 s, no overflow, none failed", connects),
    ]


def get(results, name, metric):
    return results.get(name, {}).get(metric)


def vs(results, me, other, metric, bound, at_most=False):
    """`me` ÷ `other` on `metric`, checked against `bound` (at least, or at most)."""
    r = ratio(results, me, other, metric)
    if r is None:
        return None
    return f"{r:.2f}×", (r <= bound if at_most else r >= bound)


def added_latency(results, me):
    mine, theirs = get(results, me, "c100.added_ms"), get(results, "HAProxy", "c100.added_ms")
    if mine is None or theirs is None:
        return None
    return f"{mine:+.2f} ms vs {theirs:+.2f} ms", mine <= theirs


def idle_memory(results, me, at_most):
    """RSS per connection, valid only if the proxy really held all 5,000 (2 fds each)."""
    kib, held = get(results, me, "idle5000.kib_per_conn"), get(results, me, "idle5000.held")
    if kib is None or held is None:
        return None
    if held < 5000:
        return f"{kib:.1f} KiB, but it held only {held:,.0f} of 5,000", False
    return f"{kib:.1f} KiB", kib <= at_most


def connects(results, me):
    if get(results, me, "idle5000.failed") is None:
        return None
    took, overflows, failed = [get(results, me, f"idle5000.{k}") for k in ("open_s", "overflows", "failed")]
    if took is None:
        return f"{failed:.0f} connects failed or timed out, {overflows:.0f} overflows", False
    text = f"{took:.2f} s, {overflows:.0f} overflows, {failed:.0f} failed"
    return text, took < 0.5 and overflows == 0 and failed == 0


def lesson_of(names):
    """The lesson target's name (`lesson-N`) among `names`, or `lesson-5` if none ran."""
    return next((n for n in names if n.startswith("lesson-")), "lesson-5")


def verdicts(results):
    """[(rsp name, goal, measured, 'PASS' | 'MISS' | 'n/a')] for each rsp mode."""
    out = []
    for mode in ("threads", "mio"):
        me = f"rsp-{mode}"
        for goal, check in goals(mode, lesson_of(results)):
            found = check(results, me) if me in results else None
            if found is None:
                out.append((me, goal, "not measured", "n/a"))
            else:
                out.append((me, goal, found[0], "PASS" if found[1] else "MISS"))
    return out


# ---------------------------------------------------------------- machine and tools

def run_text(argv, pattern):
    """The first match of `pattern` in a tool's version output, or 'not installed'."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(0) if match else "unknown version"


def tool_versions():
    return [run_text(["wrk", "-v"], r"wrk \S+"),
            "ab " + run_text(["ab", "-V"], r"(?<=Version )\S+"),
            run_text(["haproxy", "-v"], r"HAProxy version \S+"),
            run_text(["nginx", "-v"], r"nginx/\S+"),
            run_text(["rustc", "--version"], r"rustc \S+"),
            "Python " + platform.python_version()]


def rsp_version(root):
    """The commit rsp was built from, and whether src/ had uncommitted changes."""
    def git(*args):
        try:
            return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock")
    return f"rsp at commit `{commit}`" + (" plus uncommitted changes in src/" if dirty else "")


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


class CpuAccount:
    """CPU time used on the whole machine during the run versus by us (harness, tools, servers).

    The difference is what other processes used: it tells whether the machine was idle.
    """

    def __init__(self):
        self.wall, self.busy, self.ours = time.monotonic(), busy_seconds(), own_seconds()

    def others(self, servers_cpu):
        """(seconds used by other processes, seconds of CPU available) since start."""
        busy = busy_seconds() - self.busy
        ours = own_seconds() - self.ours + servers_cpu
        available = (time.monotonic() - self.wall) * (os.cpu_count() or 1)
        return max(busy - ours, 0.0), available


def busy_seconds():
    """Non-idle CPU time of the whole machine so far (first line of /proc/stat)."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def own_seconds():
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def idle_verdict(others, available):
    share = others / max(available, 1e-9)
    text = (f"other processes used {others:.0f} s of the {available:.0f} CPU-seconds the run "
            f"took ({share:.0%}, from `/proc/stat` less the CPU time of the benchmark's own "
            "processes)")
    if share < 0.05:
        return f"The machine was otherwise idle: {text}."
    return f"The machine was **not** otherwise idle: {text}, so the figures are noisier than usual."


# ---------------------------------------------------------------- markdown

def header(settings, notes, machine):
    kind = "QUICK smoke run (1 short round): not a measurement" if settings.quick else \
        f"medians of {settings.rounds} interleaved rounds"
    lines = ["# Benchmarks", "",
             f"Generated by `make bench` ([bench/bench.py](bench/bench.py)) on "
             f"{datetime.date.today().isoformat()}: {kind}. Regenerate with "
             "`make bench-deps && make bench`.", "",
             "## Machine", "",
             f"- {cpu_model()}, {os.cpu_count()} cores, Linux kernel `{platform.release()}`.",
             "- " + ", ".join([settings.rsp_built] + tool_versions()) + ".",
             f"- {idle_verdict(*machine)}"]
    lines += [f"- {note}" for note in notes]
    return lines


def figures_table(results, names, settings):
    lines = ["| figure | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for metric, label, fmt, _ in rows_for(settings):
        cells = [show(results.get(n, {}).get(metric), fmt) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    errors = [f"- {n}, {metric[:-6]}: {text}" for n in names
              for metric, text in results.get(n, {}).items() if metric.endswith(".error")]
    if errors:
        lines += ["", "Loads that failed in at least one round:", ""] + errors
    return lines


def ratio_table(results, names, settings):
    lesson = lesson_of(names)
    mine = ["rsp-threads", "rsp-mio"] + [n for n in names if n.startswith("rsp-mio-")]
    pairs = [("rsp-threads", lesson)] + [(me, "HAProxy") for me in mine] \
        + [(me, "direct") for me in ("rsp-threads", "rsp-mio")] \
        + [(f"stats-{m}", f"rsp-{m}") for m in ("threads", "mio")] \
        + [(f"rsp-{m}", f"base-{m}") for m in ("threads", "mio")] \
        + [(f"rsp-{m}+checks", f"rsp-{m}") for m in ("threads", "mio")] \
        + [(f"base-{m}", "HAProxy") for m in ("threads", "mio")]
    pairs = [(a, b) for a, b in pairs if a in names and b in names]
    if not pairs:
        return ["No ratios: rsp or the targets to compare it with did not run (see Machine)."]
    lines = ["| figure | better | " + " | ".join(f"{a} ÷ {b}" for a, b in pairs) + " |",
             "|---|---|" + "---:|" * len(pairs)]
    labels = {m: (label, better) for m, label, _, better in rows_for(settings)}
    for metric in RATIO_KEYS:
        if metric not in labels:
            continue
        label, better = labels[metric]
        cells = [show(ratio(results, a, b, metric), "{:.2f}×") for a, b in pairs]
        lines.append(f"| {label} | {better} | " + " | ".join(cells) + " |")
    return lines


def verdict_table(results):
    lines = ["| rsp mode | target | measured | result |", "|---|---|---|---|"]
    for me, goal, measured, result in verdicts(results):
        mark = f"**{result}**" if result == "MISS" else result
        lines.append(f"| {me} | {goal} | {measured} | {mark} |")
    return lines


def method(settings):
    idle = " and ".join(f"{n:,}" for n in settings.idle_counts)
    return [
        "## How the figures were taken", "",
        "Everything runs on 127.0.0.1 of one machine: the load generator, the proxy and the "
        "backend share the same cores, so requests/s is partly \"how much CPU the proxy leaves "
        "to the others\"; the proxy's own CPU time per request (utime + stime from "
        "`/proc/PID/stat` before and after each load, summed over nginx's worker processes) "
        "is shown beside it. In the **direct** column the \"server\" is the backend itself. "
        "Spread from run to run is ±5–10 % for keep-alive and up to ±20 % for new connections: "
        "treat differences under ~15 % as noise.", "",
        f"1. Keep-alive: `wrk -t1 -c50 -d{settings.wrk_seconds}s --latency` for the 100-byte file.",
        f"2. New connection per request: `ab -n {settings.ab_new_conn} -c 50` (no `-k`).",
        f"3. The C author's test, scaled down from 1,000,000 requests: `ab -n {settings.ab_c_author} "
        "-c 100`; the mean time per request minus the direct connection's.",
        f"4. Bulk: a 100 MiB file downloaded {settings.bulk_repeats}× by a Python socket client "
        "(1 MiB reads), median MB/s (10⁶ bytes/s).",
        f"5. Idle: {idle} non-blocking connects started at once by a Python client (10 s at "
        "most); the time until all connected (the client's view: the kernel completes a "
        "handshake before the server calls `accept`) and until the server held them all "
        "(its fd count rose by 2 per connection, 1 for the direct backend), the change in "
        "`ListenOverflows` (`/proc/net/netstat`), (RSS after − RSS before) ÷ N, the thread "
        "count, and whether a new request is still answered while they are held. After an "
        "overflow with SYN cookies on, a client can believe it is connected while the server "
        "never sees the connection: \"held\" shows how many really arrived.", "",
        "HAProxy 2.6 runs `mode tcp` with its default thread count (2 here); nginx runs the "
        "`stream` module with 1 worker; rsp runs `mode = \"threads\"` with "
        f"{rsp_workers_text(settings)} and `mode = \"mio\"` with the default `loops` "
        "(one per CPU)" + (f" and, as rsp-mio-{settings.mio_loops}, with `loops = "
                           f"{settings.mio_loops}`" if settings.mio_loops is not None else "")
        + ", all with `log_level = \"warn\"`. "
        + (f"lesson-{settings.lesson} is `target/release/part{settings.lesson}` with "
           f"`workers = {settings.lesson_workers}` (its fixed pool; the idle loads skip it: "
           "its threads exist before the load, so their memory would not show). "
           if settings.lesson else "")
        + "Each round runs every load against every target in turn (A B C A B C).",
    ]


def why_these_ratios(names):
    lesson = lesson_of(names)
    return [
        f"All ratios are from this run. Threads mode is compared with {lesson}, the card's "
        "design at its smallest (a fixed pool of threads, two blocking copies per connection, "
        "nothing else), because that design, not rsp, sets its ceiling: every request wakes "
        "two threads, so the fair question is what rsp's features cost over the bare design. "
        "Mio mode is an event loop per core like HAProxy's, so HAProxy is the bar for it."]


def rsp_workers_text(settings):
    """How threads mode's `workers` was set, for the notes."""
    if settings.rsp_workers is not None:
        return f"`workers = {settings.rsp_workers}`"
    shown = settings.rsp_workers_shown or "workers = ? (rsp --check failed)"
    return f"`workers` unset (`rsp --check`: `{shown}`)"


def write_all(root, results, names, settings, notes, machine):
    """Write the markdown and the SVG, and print the tables."""
    derive(results)
    out_dir = os.path.join(root, "target", "bench-quick") if settings.quick else root
    svg_path = os.path.join(out_dir, "ratios.svg" if settings.quick else "bench/ratios.svg")
    md_path = os.path.join(out_dir, "BENCHMARKS.md")
    os.makedirs(os.path.dirname(svg_path), exist_ok=True)
    body = (["## Figures", ""] + figures_table(results, names, settings)
            + ["", "## Ratios", ""] + ratio_table(results, names, settings)
            + ["", "## Targets", ""] + why_these_ratios(names) + [""]
            + verdict_table(results))
    chart = os.path.relpath(svg_path, out_dir)
    text = "\n".join(header(settings, notes, machine) + ["", f"![rsp ÷ HAProxy]({chart})", ""]
                     + body + [""] + method(settings)) + "\n"
    with open(md_path, "w") as f:
        f.write(text)
    with open(svg_path, "w") as f:
        f.write(svg.chart(results, settings.quick))
    print("\n".join([""] + body + ["", f"Wrote {md_path} and {svg_path}."]))
    sys.stdout.flush()
