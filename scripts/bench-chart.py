#!/usr/bin/env python3
"""Draw the TPS ratios of a scripts/bench run as an SVG bar chart (Python standard library only).

  bench-chart.py RATIOS.json OUT.svg

RATIOS.json is what `bench-lib.py report --ratios-json` writes:
  {"title": ..., "subtitle": ..., "workloads": [name, ...],
   "series": [{"label": "pglink/PgBouncer", "values": [ratio or null, ...]}, ...]}
One group of horizontal bars per workload, one bar per series, a vertical line at 1.0 (parity) and
the value written at the end of each bar. A missing ratio (the peer skipped or failed the workload)
is drawn as "n/a".
"""
import json
import os
import math
import sys
from xml.sax.saxutils import escape

COLOURS = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1"]
LABEL_W = 230  # workload names
PLOT_W = 520
RIGHT_PAD = 60
BAR_H = 13
BAR_GAP = 2
GROUP_GAP = 10
TOP = 64  # below the title and a one-line subtitle; each further subtitle line adds LINE_H
LINE_H = 15
WRAP = 110  # characters per subtitle line
FONT = "font-family='DejaVu Sans, Arial, sans-serif'"


def nice_max(v):
    """The axis end: at least 1.5, rounded up to a multiple of 0.25."""
    return max(1.5, math.ceil(v * 4 + 0.5) / 4)


def wrap(text, width):
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = (line + " " + word).strip()
    return lines + [line] if line else lines


def render(data):
    workloads = data.get("workloads", [])
    subtitle = wrap(data.get("subtitle", ""), WRAP) or [""]
    top = TOP + LINE_H * (len(subtitle) - 1)
    series = [s for s in data.get("series", []) if any(v is not None for v in s.get("values", []))]
    vals = [v for s in series for v in s["values"] if v is not None]
    x_max = nice_max(max(vals) if vals else 1.0)
    group_h = max(1, len(series)) * (BAR_H + BAR_GAP) + GROUP_GAP
    plot_h = len(workloads) * group_h
    legend_h = 22
    height = top + plot_h + 34 + legend_h
    width = LABEL_W + PLOT_W + RIGHT_PAD

    def x(v):
        return LABEL_W + PLOT_W * min(v, x_max) / x_max

    out = [
        "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' viewBox='0 0 %d %d' %s font-size='11'>"
        % (width, height, width, height, FONT),
        "<rect width='100%' height='100%' fill='white'/>",
        "<text x='10' y='20' font-size='14' font-weight='bold'>%s</text>" % escape(data.get("title", "")),
    ]
    for k, line in enumerate(subtitle):
        out.append("<text x='10' y='%d' fill='#555'>%s</text>" % (38 + k * LINE_H, escape(line)))
    # Grid and axis labels every 0.25.
    step = 0.25 if x_max <= 2.5 else 0.5
    t = 0.0
    while t <= x_max + 1e-9:
        gx = x(t)
        out.append(
            "<line x1='%.1f' y1='%d' x2='%.1f' y2='%d' stroke='#e5e5e5'/>" % (gx, top - 6, gx, top + plot_h)
        )
        out.append(
            "<text x='%.1f' y='%d' text-anchor='middle' fill='#555'>%.2f</text>" % (gx, top + plot_h + 14, t)
        )
        t += step
    labels = []  # drawn last, over the parity line
    for i, w in enumerate(workloads):
        gy = top + i * group_h
        mid = gy + (group_h - GROUP_GAP) / 2
        out.append(
            "<text x='%d' y='%.1f' text-anchor='end' dominant-baseline='middle'>%s</text>"
            % (LABEL_W - 8, mid, escape(w))
        )
        if series and all(s["values"][i] is None if i < len(s["values"]) else True for s in series):
            labels.append(
                "<text x='%d' y='%.1f' dominant-baseline='middle' fill='#999' stroke='white' stroke-width='3' "
                "paint-order='stroke'>n/a: no peer ran this workload</text>"
                % (LABEL_W + 4, mid)
            )
            continue
        for j, s in enumerate(series):
            v = s["values"][i] if i < len(s["values"]) else None
            by = gy + j * (BAR_H + BAR_GAP)
            colour = COLOURS[j % len(COLOURS)]
            if v is None:
                out.append(
                    "<text x='%d' y='%.1f' dominant-baseline='middle' fill='#999'>n/a</text>"
                    % (LABEL_W + 4, by + BAR_H / 2)
                )
                continue
            out.append(
                "<rect x='%d' y='%d' width='%.1f' height='%d' fill='%s'><title>%s, %s: %.2f</title></rect>"
                % (LABEL_W, by, max(0.5, x(v) - LABEL_W), BAR_H, colour, escape(w), escape(s["label"]), v)
            )
            labels.append(
                "<text x='%.1f' y='%.1f' dominant-baseline='middle' fill='#333' stroke='white' stroke-width='3' "
                "paint-order='stroke'>%.2f%s</text>"
                % (x(v) + 4, by + BAR_H / 2, v, "+" if v > x_max else "")
            )
    # Parity line.
    px = x(1.0)
    out.append(
        "<line x1='%.1f' y1='%d' x2='%.1f' y2='%d' stroke='#222' stroke-width='1.5' stroke-dasharray='4 3'/>"
        % (px, top - 10, px, top + plot_h)
    )
    out.append("<text x='%.1f' y='%d' text-anchor='middle'>1.0 = parity</text>" % (px, top - 14))
    out.extend(labels)
    # Legend.
    ly = top + plot_h + 34
    lx = LABEL_W
    for j, s in enumerate(series):
        out.append("<rect x='%d' y='%d' width='12' height='12' fill='%s'/>" % (lx, ly, COLOURS[j % len(COLOURS)]))
        out.append("<text x='%d' y='%d'>%s</text>" % (lx + 16, ly + 10, escape(s["label"])))
        lx += 30 + 7 * len(s["label"])
    if not series:
        out.append("<text x='%d' y='%d' fill='#999'>no ratios: no peer ran</text>" % (LABEL_W, ly + 10))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    if len(sys.argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    with open(sys.argv[1]) as f:
        data = json.load(f)
    svg = render(data)
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(svg)
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
