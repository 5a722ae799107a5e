"""Hand-written inline SVG plots of the speed section (no plotting library, no network).

Two figures per shape family (d_in, d_out, H, causal; B too where it does not follow T) swept
over T: time against T and useful GFLOP/s against T, both log-log. Each series (backend, machine, dtype) differs by
colour, marker shape and dash pattern, so neither print in grey nor colour blindness loses it;
p25-p75 are drawn as error bars. Every text is XML-escaped: labels come from results files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

from reports.fmt import sig
from reports.speed_model import SpeedSection

# Okabe-Ito: distinguishable for the common colour-vision deficiencies
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("circle", "square", "triangle", "diamond", "triangle-down", "cross", "plus")
DASHES = ("", "7 4", "2 3", "10 3 2 3", "14 5", "1 4")


@dataclass
class Series:
    label: str
    colour: str
    marker: str
    dash: str
    points: list[tuple[float, float, float | None, float | None]] = field(default_factory=list)  # x, y, lo, hi


@dataclass
class HLine:
    label: str
    y: float


def _marker(kind: str, x: float, y: float, colour: str, r: float = 4.5) -> str:
    fill = f'fill="{colour}" stroke="#fff" stroke-width="1"'
    line = f'fill="none" stroke="{colour}" stroke-width="2.2"'
    if kind == "circle":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" {fill}/>'
    if kind == "square":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" {fill}/>'
    if kind == "cross":
        return (f'<path d="M{x - r:.1f},{y - r:.1f}L{x + r:.1f},{y + r:.1f}'
                f'M{x - r:.1f},{y + r:.1f}L{x + r:.1f},{y - r:.1f}" {line}/>')
    if kind == "plus":
        return f'<path d="M{x - r:.1f},{y:.1f}H{x + r:.1f}M{x:.1f},{y - r:.1f}V{y + r:.1f}" {line}/>'
    s = r * 1.25
    pts = {"triangle": [(0, -s), (s, s * 0.8), (-s, s * 0.8)],
           "triangle-down": [(0, s), (s, -s * 0.8), (-s, -s * 0.8)],
           "diamond": [(0, -s), (s, 0), (0, s), (-s, 0)]}[kind]
    return '<polygon points="' + " ".join(f"{x + a:.1f},{y + b:.1f}" for a, b in pts) + f'" {fill}/>'


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks at 1, 2, 5 x 10^k inside [lo, hi] (only decades when the range is wide)."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mults = (1,) if b - a > 4 else (1, 2, 5)
    ticks = [m * 10.0 ** k for k in range(a, b + 1) for m in mults if lo <= m * 10.0 ** k <= hi]
    return ticks or [lo, hi]


def tick_label(v: float) -> str:
    """Short axis labels: 64, 0.01, 10k, 1M (no exponents, no trailing zeros)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{suffix}"
    return f"{v:.3g}"


def _padded(lo: float, hi: float) -> tuple[float, float]:
    # a little room in log space so markers and error bars are not clipped by the frame
    if lo == hi:
        return lo / 2, hi * 2
    span = math.log10(hi) - math.log10(lo)
    return lo / 10 ** (0.06 * span), hi * 10 ** (0.06 * span)


def line_chart(series: list[Series], *, title: str, xlabel: str, ylabel: str,
               xticks: list[float] | None = None, hlines: list[HLine] | None = None,
               width: int = 1100, plot_height: int = 380) -> str:
    """A log-log line chart with markers, p25-p75 error bars, dashed reference lines and a legend."""
    hlines = hlines or []
    left, right, top, bottom = 78, 24, 34, 52
    pw = width - left - right
    xs = [p[0] for s in series for p in s.points]
    ys = [v for s in series for p in s.points for v in (p[1], p[2], p[3]) if v is not None and v > 0]
    ys += [h.y for h in hlines if h.y > 0]
    if not xs or not ys:
        return ""
    x0, x1 = _padded(min(xs), max(xs))
    y0, y1 = _padded(min(ys), max(ys))

    def X(v: float) -> float:
        return left + (math.log10(v) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)) * pw

    def Y(v: float) -> float:
        return top + plot_height - (math.log10(v) - math.log10(y0)) / (math.log10(y1) - math.log10(y0)) * plot_height

    labels = [s.label for s in series] + [h.label for h in hlines]
    col_w = min(pw, max(200, 7 * max(len(lb) for lb in labels) + 56))  # legend columns fit the longest name
    per_row = max(1, pw // col_w)
    legend_rows = math.ceil((len(series) + len(hlines)) / per_row)
    height = top + plot_height + bottom + 22 * legend_rows + 10
    out = [(f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{escape(title)}" class="plot" font-family="sans-serif" font-size="12">'),
           f"<title>{escape(title)}</title>",
           f'<text x="{left}" y="20" font-size="14" font-weight="bold">{escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{plot_height}" fill="#fff" stroke="#888"/>']
    for t in log_ticks(y0, y1):
        y = Y(t)
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e3e3e3"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(tick_label(t))}</text>')
    for t in xticks or log_ticks(x0, x1):
        if x0 <= t <= x1:
            x = X(t)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + plot_height}" stroke="#e3e3e3"/>'
                       f'<text x="{x:.1f}" y="{top + plot_height + 16}" text-anchor="middle">{escape(tick_label(t))}</text>')
    out.append(f'<text x="{left + pw / 2:.0f}" y="{top + plot_height + 38}" text-anchor="middle">{escape(xlabel)}</text>'
               f'<text transform="translate(18 {top + plot_height / 2:.0f}) rotate(-90)" text-anchor="middle">'
               f"{escape(ylabel)}</text>")
    for h in hlines:
        y = Y(h.y)
        out.append(f'<g class="peak"><title>{escape(h.label)}</title><line x1="{left}" x2="{left + pw}" y1="{y:.1f}" '
                   f'y2="{y:.1f}" stroke="#444" stroke-width="1.5" stroke-dasharray="9 5"/>'
                   f'<text x="{left + pw - 4}" y="{y - 5:.1f}" text-anchor="end" fill="#444">{escape(h.label)}</text></g>')
    for s in series:
        pts = sorted(s.points)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        g = [f'<g class="series" data-label="{escape(s.label)}"><title>{escape(s.label)}</title>']
        if len(pts) > 1:
            g.append('<polyline fill="none" stroke="{}" stroke-width="2"{} points="{}"/>'.format(
                s.colour, dash, " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y, _, _ in pts)))
        for x, y, lo, hi in pts:
            if lo and hi and lo > 0 and hi > 0:
                xa, ya, yb = X(x), Y(lo), Y(hi)
                g.append(f'<path d="M{xa:.1f},{ya:.1f}V{yb:.1f}M{xa - 4:.1f},{ya:.1f}h8M{xa - 4:.1f},{yb:.1f}h8" '
                         f'stroke="{s.colour}" stroke-width="1.2" opacity="0.8"/>')
            g.append(_marker(s.marker, X(x), Y(y), s.colour))
        out.append("".join(g) + "</g>")
    # legend: line sample with the dash, the marker, and the full series name
    ly = top + plot_height + bottom + 6
    entries = [(s.label, s.colour, s.marker, s.dash) for s in series] + [(h.label, "#444", None, "9 5") for h in hlines]
    for i, (label, colour, marker, dash) in enumerate(entries):
        lx = left + (i % per_row) * col_w
        yy = ly + (i // per_row) * 22
        d = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<g class="legend"><line x1="{lx}" x2="{lx + 34}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="{colour}" '
                   f'stroke-width="2"{d}/>' + (_marker(marker, lx + 17, yy, colour) if marker else "") +
                   f'<text x="{lx + 42}" y="{yy + 4:.1f}">{escape(_clip(label, 90))}</text></g>')
    out.append("</svg>")
    return "\n".join(out)


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def speed_figures(section: SpeedSection, multi_machine: bool) -> list[tuple[str, str, str]]:
    """(family title, time plot, GFLOP/s plot) for every shape family measured at several T."""
    families: dict[tuple, dict[tuple, list]] = {}
    peaks: dict[tuple, list[HLine]] = {}
    dtypes = {t.dtype for t in section.tables}
    style_keys: list[str] = []
    dash_keys: list[tuple] = []
    devices: dict[tuple, set] = {}
    for t in section.tables:
        for r in t.rows:
            devices.setdefault((t.machine, r.backend, t.dtype), set()).add(t.device)
    # The harness's default sweep keeps B*T constant, so B changes with T along one curve: a
    # family is (d_in, d_out, H, causal), split by B only where a series has one T at two Bs.
    seen: dict[tuple, set] = {}
    for t in section.tables:
        for r in t.rows:
            seen.setdefault((r.key[1:5], t.machine, t.device, t.dtype, r.backend, r.key[5]), set()).add(r.key[0])
    split = {k[0] for k, bs in seen.items() if len(bs) > 1}
    for t in section.tables:
        for r in t.rows:
            if not r.headline:  # a wrong or crashed backend gets no curve either
                continue
            fam = r.key[:5] if r.key[1:5] in split else (None, *r.key[1:5])
            name = (r.backend + (f" ({t.device})" if len(devices[(t.machine, r.backend, t.dtype)]) > 1 else "")
                    + (f" @ {t.machine}" if multi_machine else "") + (f", {t.dtype}" if len(dtypes) > 1 else ""))
            families.setdefault(fam, {}).setdefault((name, t.machine, r.backend, t.dtype), []).append((r, t))
            style_keys.append(r.backend)
            dash_keys.append((t.machine, t.dtype))
    for fam, groups in families.items():
        # one line per distinct peak of a machine: dtypes sharing a measured peak share its line
        same: dict[tuple[str, float], list[str]] = {}
        for t in section.tables:
            if t.peak_gflops and any(m == t.machine and d == t.dtype for (_, m, _, d) in groups):
                same.setdefault((t.machine, t.peak_gflops), []).append(t.dtype)
        peaks[fam] = [HLine(f"matmul peak {m}" + (f", {'/'.join(ds)}" if len(dtypes) > 1 else "")
                            + f": {sig(v)} GFLOP/s", v) for (m, v), ds in same.items()]
    backends = list(dict.fromkeys(style_keys))
    dash_of = list(dict.fromkeys(dash_keys))
    out = []
    for fam, groups in families.items():
        Ts = sorted({r.key[5] for rows in groups.values() for r, _ in rows})
        if len(Ts) < 2:
            continue
        B, d_in, d_out, H, causal = fam
        pairs = {(r.key[0], r.key[5]) for rows in groups.values() for r, _ in rows}
        Bs, BTs = sorted({b for b, _ in pairs}), sorted({b * t for b, t in pairs})
        batch = (f"B={B}" if B is not None else f"B={Bs[0]}" if len(Bs) == 1 else
                 f"B×T={BTs[0]} (B={Bs[-1]}..{Bs[0]})" if len(BTs) == 1 else f"B={Bs[0]}..{Bs[-1]}")
        d = f"d={d_in}" if d_in == d_out else f"d_in={d_in}, d_out={d_out}"
        title = f"{batch}, {d}, H={H}, {'causal' if causal else 'full (non-causal)'}"
        time_s, flop_s = [], []
        for (name, machine, backend, dtype), rows in groups.items():
            i = backends.index(backend)
            style = (COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)],
                     DASHES[dash_of.index((machine, dtype)) % len(DASHES)])
            time_s.append(Series(name, *style, [(r.key[5], r.median_ms, r.p25_ms, r.p75_ms) for r, _ in rows]))
            flop_s.append(Series(name, *style, [(r.key[5], r.gflops, r.gflops_lo, r.gflops_hi)
                                                for r, _ in rows if r.gflops]))
        out.append((title,
                    line_chart(time_s, title=f"Time per call vs tokens T ({title})", xticks=Ts,
                               xlabel="tokens T (log scale)", ylabel="median time, ms (log); bars p25–p75"),
                    line_chart(flop_s, title=f"Useful GFLOP/s vs tokens T ({title})", xticks=Ts,
                               xlabel="tokens T (log scale)", ylabel="useful GFLOP/s (log); dashed: matmul peak",
                               hlines=peaks.get(fam, []))))
    return out
