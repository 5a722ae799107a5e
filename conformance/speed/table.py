"""Readable output: one progress line per timed cell, then summary tables.

Time first, then useful GFLOP/s, then the fraction of the machine's matmul peak (docs/speed.md).
Markers: "~" noisy (spread (p75-p25)/median > 10%), "!" nonconforming (timed only on
request; no headline figure), "?" conformance unknown (not run), "E" the call raised, "*" the
ratio to torch is undecided (conformance.speed.verdict): its interval is printed, not a ratio.
"""

from __future__ import annotations

from typing import Any

LEGEND = ("markers: ~ noisy (IQR/median > 10%)  ! nonconforming (no headline figure)  "
          "? conformance not run  E error  * undecided: its rounds cannot tell it from torch "
          "(the interval of its ratio is shown)")


def ms(s: float | None) -> str:
    if s is None:
        return "-"
    v = s * 1e3
    return f"{v:.3f}" if v >= 0.01 else f"{v:.2e}"  # microsecond calls keep their digits


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markers(cell: dict[str, Any]) -> str:
    m = ""
    if cell.get("error"):
        m += "E"
    if cell.get("noisy"):
        m += "~"
    if cell.get("ratio_verdict") == "undecided":
        m += "*"
    if cell.get("conforming") is False:
        m += "!"
    elif cell.get("conforming") is None:
        m += "?"
    return m


def shape_label(cell: dict[str, Any]) -> str:
    c = "causal" if cell["causal"] else "non-causal"
    return (f"{cell['dtype']} B={cell['B']} T={cell['T']} d_in={cell['d_in']} d_out={cell['d_out']} "
            f"H={cell['n_heads']} {c}")


def group_header(i: int, n: int, cell: dict[str, Any]) -> str:
    return f"[{i}/{n}] {shape_label(cell)}  ({cell['flops'] / 1e9:.3g} GFLOP useful)"


def cell_line(cell: dict[str, Any], width: int = 12) -> str:
    """backend, median ms [p25-p75], first call, GFLOP/s, % of peak, time vs torch, markers."""
    name = cell["backend"].ljust(width)
    if cell.get("error"):
        return f"  {name} E {cell['error']}"
    rng = f"[{ms(cell['p25_s'])}-{ms(cell['p75_s'])}]"
    frac = cell.get("peak_fraction")
    pct = "-" if frac is None else f"{100 * frac:.1f}%"
    rt = ratio_text(cell)
    mem = cell.get("peak_memory_bytes")
    mems = "-" if mem is None else f"{mem / 2**20:.1f}MiB"
    return (f"  {name} {ms(cell['median_s']):>9} ms {rng:<21} first {ms(cell['first_call_s']):>9} ms  "
            f"{_num(cell.get('gflops'), '.1f'):>7} GFLOP/s  {pct:>6} of peak  t/torch {rt:>5}  "
            f"mem {mems:>9}  n={len(cell['samples_s'])}{_rounds(cell)} {markers(cell)}")


def ratio_text(cell: dict[str, Any]) -> str:
    """Time / torch: the ratio, its rounds' interval when known, "undecided" and the interval
    alone when the rounds cannot tell the backend from torch."""
    ratio, iv = cell.get("time_vs_torch"), cell.get("ratio_interval")
    if ratio is None:
        return "-"
    if not iv:
        return f"{ratio:.2f}"
    if cell.get("ratio_verdict") == "undecided":
        return f"undecided {iv[0]:.2f}-{iv[1]:.2f}"
    return f"{ratio:.2f} [{iv[0]:.2f}-{iv[1]:.2f}] {cell['ratio_verdict']}"


def _rounds(cell: dict[str, Any]) -> str:
    n = len(cell.get("round_medians_s") or [])
    return f" rounds={n}" if n else ""


def _column(cell: dict[str, Any], vary: bool) -> str:
    label = f"{cell['B']}x{cell['T']}"
    return label + (f" d{cell['d_out']}h{cell['n_heads']}" if vary else "")


def summary(cells: list[dict[str, Any]], peak: dict[str, Any]) -> str:
    """Grids per (dtype, causal): rows are backends, columns are shapes (B x T)."""
    lines: list[str] = []
    if peak.get("gflops"):
        best: dict[str, float] = {}
        for m in peak.get("measurements", []):
            key = f"{m['library']} {m['device']}/{m['dtype']}"
            if m.get("gflops"):
                best[key] = max(best.get(key, 0.0), m["gflops"])
        parts = [f"{k} {v:.1f}" for k, v in best.items()]
        lines.append(f"matmul peak ({'x'.join(map(str, peak['shape']))}): " + ", ".join(parts) + " GFLOP/s")
    groups: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["dtype"], c["causal"]), []).append(c)
    for (dtype, causal), cs in groups.items():
        vary = len({(c["d_in"], c["d_out"], c["n_heads"]) for c in cs}) > 1
        cols: list[str] = []
        for c in cs:
            col = _column(c, vary)
            if col not in cols:
                cols.append(col)
        backends: list[str] = []
        for c in cs:
            if c["backend"] not in backends:
                backends.append(c["backend"])
        at = {(c["backend"], _column(c, vary)): c for c in cs}
        dims = "" if vary else f", d_in={cs[0]['d_in']} d_out={cs[0]['d_out']} H={cs[0]['n_heads']}"
        title = f"{dtype}{dims}, {'causal' if causal else 'non-causal'}"
        for what, fmt in (("median ms", lambda c: ms(c["median_s"])),
                          ("GFLOP/s", lambda c: _num(c.get("gflops"), ".1f")),
                          ("% of peak", lambda c: _pct(c.get("peak_fraction"))),
                          ("time / torch", _grid_ratio)):
            grid = {(b, col): _entry(at.get((b, col)), fmt) for b in backends for col in cols}
            w = 2 + max(len(v) for v in [*cols, *grid.values()])
            lines.append("")
            lines.append(f"{title}: {what}" + ("" if vary else " (columns: B x T)"))
            lines.append("  " + "backend".ljust(16) + "".join(col.rjust(w) for col in cols))
            for b in backends:
                lines.append("  " + b.ljust(16) + "".join(grid[(b, col)].rjust(w) for col in cols))
    lines.append("")
    lines.append(LEGEND)
    return "\n".join(lines)


def _entry(cell: dict[str, Any] | None, fmt) -> str:
    if cell is None:
        return "-"
    return ("E" if cell.get("error") else fmt(cell)) + _short(cell)


def _pct(frac: float | None) -> str:
    return "-" if frac is None else f"{100 * frac:.1f}"


def _short(cell: dict[str, Any]) -> str:
    return markers(cell).replace("E", "")


def _grid_ratio(cell: dict[str, Any]) -> str:
    """The ratio, or for an undecided cell its interval (the "*" marker follows)."""
    iv = cell.get("ratio_interval")
    if cell.get("ratio_verdict") == "undecided" and iv:
        return f"{iv[0]:.2f}-{iv[1]:.2f}"
    return _num(cell.get("time_vs_torch"), ".2f")
