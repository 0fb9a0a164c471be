"""bench/ratios.svg: grouped bars of rsp ÷ HAProxy, written by hand (no plotting library).

Every bar is oriented so that higher is better: for throughputs the ratio is rsp ÷ HAProxy,
for costs (time, CPU, memory) it is HAProxy ÷ rsp. The dashed line at 1.0 is HAProxy.
"""

from xml.sax.saxutils import escape

WIDTH, HEIGHT = 820, 400
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 70, 70
COLOURS = {"rsp-threads": "#4e79a7", "rsp-mio": "#f28e2b"}
MAX_Y = 4.0
HALO = ' stroke="white" stroke-width="3" paint-order="stroke"'  # keeps labels readable on lines

# (label, metric, True if higher is better as measured)
GROUPS = [
    ("keep-alive req/s", "ka.rps", True),
    ("new conn req/s", "nc.rps", True),
    ("bulk MB/s", "bulk.mbps", True),
    ("ab -c 100 time", "c100.mean_ms", False),
    ("CPU per request", "ka.cpu_us", False),
    ("RSS per idle conn", "idle{n}.kib_per_conn", False),
]


def oriented_ratio(results, me, metric, higher_better):
    mine, theirs = results.get(me, {}).get(metric), results.get("HAProxy", {}).get(metric)
    if mine is None or theirs is None or isinstance(mine, bool):
        return None
    if not higher_better:
        mine, theirs = theirs, mine
    if theirs <= 0 or mine < 0:
        return None
    return mine / theirs


def bar_values(results):
    """[(label, {mode: ratio, or a short text saying why there is none})] for each group."""
    idle_n = 5000 if "idle5000.kib_per_conn" in results.get("HAProxy", {}) else 1000
    out = []
    for label, metric, higher in GROUPS:
        metric = metric.format(n=idle_n)
        if metric.startswith("idle"):
            label = f"{label} ({idle_n // 1000}k)"
        values = {}
        for mode in COLOURS:
            held = results.get(mode, {}).get(f"idle{idle_n}.held")
            if metric.startswith("idle") and held is not None and held < idle_n:
                values[mode] = f"held {held:,.0f}"  # memory per connection means nothing then
            else:
                r = oriented_ratio(results, mode, metric, higher)
                values[mode] = "n/a" if r is None else r
        out.append((label, values))
    return out


def y_scale(values):
    top = max([2.0] + [min(v, MAX_Y) for _, vs in values for v in vs.values() if isinstance(v, float)])
    top = -(-top * 2 // 1) / 2  # round up to a multiple of 0.5
    plot_h = HEIGHT - TOP - BOTTOM
    return top, lambda v: TOP + plot_h * (1 - min(v, top) / top)


def text(x, y, s, size=12, anchor="middle", extra=""):
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
            f"{escape(s)}</text>")


def axes(top, y):
    parts = []
    step = 0.5 if top <= 3 else 1.0
    v = 0.0
    while v <= top + 1e-9:
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                     'stroke="#ddd"/>')
        parts.append(text(LEFT - 8, y(v) + 4, f"{v:.1f}×", 11, "end"))
        v += step
    return parts


def haproxy_line(y):
    """The dashed line at 1.0, drawn over the bars, and its legend entry."""
    dash = 'stroke="#c00" stroke-width="1.5" stroke-dasharray="6 4"'
    x = LEFT + 10 + 2 * 130
    return [f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(1):.1f}" y2="{y(1):.1f}" {dash}/>',
            f'<line x1="{x}" x2="{x + 24}" y1="{HEIGHT - 24}" y2="{HEIGHT - 24}" {dash}/>',
            text(x + 30, HEIGHT - 20, "HAProxy = 1.0", 12, "start")]


def bars(values, y):
    parts = []
    group_w = (WIDTH - LEFT - RIGHT) / len(values)
    bar_w = group_w * 0.32
    for i, (label, by_mode) in enumerate(values):
        x0 = LEFT + i * group_w + group_w * 0.18
        for j, (mode, v) in enumerate(by_mode.items()):
            x = x0 + j * bar_w
            if isinstance(v, str):
                parts.append(text(x + bar_w / 2, y(0) - 4, v, 10, extra=' fill="#888"'))
                continue
            parts.append(f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{bar_w - 2:.1f}" '
                         f'height="{y(0) - y(v):.1f}" fill="{COLOURS[mode]}"/>')
            mark = "▲" if v > MAX_Y else ""
            parts.append(text(x + bar_w / 2 - 1, y(v) - 4, f"{v:.2f}{mark}", 10, extra=HALO))
        parts.append(text(LEFT + (i + 0.5) * group_w, HEIGHT - BOTTOM + 18, label, 11))
    return parts


def chart(results, quick):
    values = bar_values(results)
    top, y = y_scale(values)
    title = "rsp ÷ HAProxy, same run" + (" (QUICK smoke run, not a measurement)" if quick else "")
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">',
             f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
             text(WIDTH / 2, 24, title, 16, extra=' font-weight="bold"'),
             text(WIDTH / 2, 44, "higher is better: throughputs are rsp ÷ HAProxy, costs (time, "
                  "CPU, memory) are HAProxy ÷ rsp; medians", 11, extra=' fill="#555"')]
    parts += axes(top, y) + bars(values, y) + haproxy_line(y)
    for k, (mode, colour) in enumerate(COLOURS.items()):
        x = LEFT + 10 + k * 130
        parts.append(f'<rect x="{x}" y="{HEIGHT - 30}" width="12" height="12" fill="{colour}"/>')
        parts.append(text(x + 18, HEIGHT - 20, mode, 12, "start"))
    if any(str(v).startswith("held") for _, vs in values for v in vs.values()):
        note = "held N: it held only N of the idle connections, so no memory figure"
        parts.append(text(WIDTH - RIGHT, HEIGHT - 20, note, 10, "end", ' fill="#888"'))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
