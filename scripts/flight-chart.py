#!/usr/bin/env python3
"""Draws a pglink flight-recorder snapshot (Chrome trace-event JSON) as an SVG timeline.

    scripts/flight-chart.py SNAPSHOT.json OUT.svg [--last-ms N] [--max-tracks N]

One row per track (thread), in the snapshot's order: slices ("ph": "X") as bars, nested
ones (statements in a transaction) drawn inside their parent, instants ("ph": "i") as
marks: errors red, pool waits orange, client messages grey. `--last-ms` keeps the end of
the recording only; `--max-tracks` keeps the busiest tracks. Standard library only.
"""

import argparse
import json
import sys
from html import escape

COLORS = {
    # client states
    "authenticating": "#b39ddb", "tls handshake": "#b39ddb", "awaiting startup": "#d1c4e9",
    "awaiting parameters": "#ce93d8", "idle": "#c8e6c9", "acquiring": "#ffb74d",
    "active": "#64b5f6",
    # server states
    "connecting": "#b39ddb", "logging in": "#ce93d8", "lent": "#64b5f6",
    "draining": "#e57373", "parked": "#fff176",
    # activity
    "transaction": "#90caf9",
}
STATEMENT = "#1e5aa8"
LABEL_W, ROW_H, TOP, RIGHT, WIDTH = 270, 20, 46, 20, 1100


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tracks_of(trace):
    """(pid, tid) -> name, in sort order; and the events of each."""
    names, order, events = {}, {}, {}
    for e in trace["traceEvents"]:
        key = (e.get("pid"), e.get("tid"))
        if e.get("ph") == "M":
            if e.get("name") == "thread_name":
                names[key] = e["args"]["name"]
            elif e.get("name") == "thread_sort_index":
                order[key] = (e.get("pid"), e["args"]["sort_index"])
            continue
        events.setdefault(key, []).append(e)
    keys = sorted(names, key=lambda k: order.get(k, (k[0], k[1])))
    return [(k, names[k]) for k in keys], events


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("snapshot")
    ap.add_argument("out")
    ap.add_argument("--last-ms", type=float, default=None)
    ap.add_argument("--max-tracks", type=int, default=18)
    args = ap.parse_args()
    trace = load(args.snapshot)
    tracks, events = tracks_of(trace)
    ends = [e["ts"] + e.get("dur", 0) for evs in events.values() for e in evs]
    if not ends:
        sys.exit("the snapshot has no events")
    t1 = max(ends)
    t0 = min(e["ts"] for evs in events.values() for e in evs)
    if args.last_ms is not None:
        t0 = max(t0, t1 - args.last_ms * 1000)

    def visible(e):
        return e["ts"] + e.get("dur", 0) >= t0 and e["ts"] <= t1

    busy = {k: sum(1 for e in events.get(k, []) if visible(e)) for k, _ in tracks}
    keep = sorted((k for k, _ in tracks if busy[k]), key=lambda k: -busy[k])[: args.max_tracks]
    tracks = [(k, n) for k, n in tracks if k in keep]
    span = max(t1 - t0, 1.0)
    plot_w = WIDTH - LABEL_W - RIGHT
    height = TOP + ROW_H * len(tracks) + 40

    def x(ts):
        return LABEL_W + (min(max(ts, t0), t1) - t0) / span * plot_w

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        f'<text x="10" y="16" font-size="13" font-weight="bold">pglink flight recorder: '
        f'{escape(str(trace.get("otherData", {}).get("trigger", "")))} snapshot, last '
        f"{span / 1000:.0f} ms</text>",
    ]
    # Time axis.
    step = nice_step(span / 1000 / 8)
    tick = 0.0
    while tick <= span / 1000 + 1e-9:
        px = LABEL_W + tick * 1000 / span * plot_w
        out.append(f'<line x1="{px:.1f}" y1="{TOP - 6}" x2="{px:.1f}" '
                   f'y2="{height - 30}" stroke="#eee"/>')
        out.append(f'<text x="{px:.1f}" y="{TOP - 10}" text-anchor="middle" '
                   f'fill="#555">{tick:g} ms</text>')
        tick += step
    for row, (key, name) in enumerate(tracks):
        y = TOP + row * ROW_H
        if row % 2:
            out.append(f'<rect x="0" y="{y}" width="{WIDTH}" height="{ROW_H}" fill="#fafafa"/>')
        out.append(f'<text x="6" y="{y + 14}" fill="#222">{escape(name[:44])}</text>')
        stack = []
        slices = sorted((e for e in events.get(key, []) if e.get("ph") == "X" and visible(e)),
                        key=lambda e: (e["ts"], -e.get("dur", 0)))
        for e in slices:
            end = e["ts"] + e.get("dur", 0)
            while stack and stack[-1] <= e["ts"] + 0.001:  # ts are float µs
                stack.pop()
            depth = min(len(stack), 2)
            stack.append(end)
            inset = 2 + depth * 4
            x0, x1 = x(e["ts"]), x(end)
            color = COLORS.get(e["name"], STATEMENT if depth else "#bdbdbd")
            title = f'{e["name"]} ({e.get("dur", 0) / 1000:.2f} ms)'
            out.append(f'<rect x="{x0:.1f}" y="{y + inset}" width="{max(x1 - x0, 0.8):.1f}" '
                       f'height="{ROW_H - 2 * inset}" fill="{color}">'
                       f'<title>{escape(title)}</title></rect>')
        for e in events.get(key, []):
            if e.get("ph") != "i" or not visible(e):
                continue
            name = e["name"]
            if name.startswith("error"):
                color, size = "#d32f2f", 5
            elif name in ("pool wait", "acquired"):
                color, size = "#ef6c00", 4
            elif name in ("login", "closed"):
                color, size = "#6a1b9a", 4
            else:
                color, size = "#757575", 2
            px = x(e["ts"])
            out.append(f'<path d="M{px:.1f} {y + 10 - size} l{size} {size} l{-size} {size} '
                       f'l{-size} {-size} z" fill="{color}"><title>{escape(name)}</title></path>')
    legend = [("idle", COLORS["idle"]), ("acquiring", COLORS["acquiring"]),
              ("active / lent", COLORS["active"]), ("transaction", COLORS["transaction"]),
              ("statement", STATEMENT), ("login", "#6a1b9a"), ("pool wait", "#ef6c00"),
              ("error", "#d32f2f"), ("message", "#757575")]
    lx = 10
    for label, color in legend:
        out.append(f'<rect x="{lx}" y="{height - 22}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{lx + 14}" y="{height - 13}">{label}</text>')
        lx += 14 + 7 * len(label) + 18
    out.append("</svg>")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


def nice_step(raw):
    """A 1-2-5 step at least `raw`."""
    if raw <= 0:
        return 1.0
    mag = 10 ** len(str(int(raw))) / 10 if raw >= 1 else 1.0
    while mag > raw:
        mag /= 10
    for m in (1, 2, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


if __name__ == "__main__":
    main()
