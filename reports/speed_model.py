"""The speed part of a report: per (machine, device, dtype) tables of the timed cells.

Shared by Markdown, HTML and the SVG plots through reports.model, like the conformance part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reports.fmt import number, one_line, sig


def table_peak(peak: dict[str, Any], cells: list[dict[str, Any]], device: str, dtype: str) -> tuple[float | None, str]:
    """(GFLOP/s, how it was measured) of the matmul peak that a (device, dtype) table divides by.

    The cells' own `peak_gflops` is the denominator the harness used; else the section's
    `by_device_dtype["cpu/float32"]`; else a headline `gflops` of the same device and dtype;
    else the peak implied by gflops / peak_fraction. Another dtype's peak is never borrowed.
    """
    base = device.split(":")[0]
    value = next((number(c.get("peak_gflops")) for c in cells if number(c.get("peak_gflops"))), None)
    if value is None:
        value = number((peak.get("by_device_dtype") or {}).get(f"{base}/{dtype}"))
    if value is None and peak.get("dtype") == dtype and (peak.get("device") or base).split(":")[0] == base:
        value = number(peak.get("gflops"))
    source = ""
    if value is not None:
        ms = [m for m in peak.get("measurements") or [] if isinstance(m, dict) and number(m.get("gflops"))
              and str(m.get("device", "")).split(":")[0] == base and m.get("dtype") == dtype]
        ms.sort(key=lambda m: -m["gflops"])
        if ms:
            m = ms[0]
            shape = "×".join(str(n) for n in m.get("shape") or [])
            source = (f"{m.get('library', '?')} matmul {shape}".strip()
                      + (f", best of {m['reps']}" if m.get("reps") else "")
                      + "".join(f"; {o.get('library', '?')} reached {sig(o['gflops'])}" for o in ms[1:]))
        elif peak.get("library"):
            source = f"{peak['library']} matmul"
        elif isinstance(peak.get("source"), str):
            source = peak["source"]
        return value, source
    derived = [c["gflops"] / c["peak_fraction"] for c in cells if c.get("gflops") and c.get("peak_fraction")]
    return (derived[0], "implied by the cells' peak_fraction") if derived else (None, "")


@dataclass
class SpeedRow:
    shape: str
    key: tuple  # (B, d_in, d_out, n_heads, causal, T): sort order and plot grouping
    backend: str
    median_ms: float | None
    p25_ms: float | None
    p75_ms: float | None
    first_ms: float | None
    gflops: float | None
    gflops_lo: float | None  # at the p75 time
    gflops_hi: float | None  # at the p25 time
    peak_pct: float | None
    time_ratio: float | None  # this median / torch eager's median at the same cell: < 1 is faster
    memory_mib: float | None
    headline: bool            # conforming (or not known to fail) and measured without error
    notes: list[str]
    samples: int
    fwd_bwd_ms: float | None = None  # forward + backward median (`--backward`), next to the forward's
    fwd_bwd_gflops: float | None = None
    ratio_interval: tuple[float, float] | None = None  # the rounds' interval of time_ratio (speed/verdict.py)
    ratio_verdict: str | None = None  # faster, slower, level, or undecided: the rounds cannot tell it from torch
    fwd_bwd_ratio: float | None = None  # forward + backward median / torch eager's, timed in the same rounds


@dataclass
class SpeedTable:
    machine: str
    device: str
    dtype: str
    peak_gflops: float | None
    peak_source: str
    baseline: str | None  # the torch eager backend the ratios are against
    timers: list[str]
    memory_methods: list[str]  # "method (backends)": how peak memory was measured
    rows: list[SpeedRow]


@dataclass
class DecodeTable:
    """One machine's KV-cache decode cells in one dtype (`speed.decode`), against its copy bandwidth."""

    machine: str
    dtype: str
    bandwidth_gbs: float | None
    bandwidth_source: str
    rows: list[list[str]]  # decode_head()'s columns, as text
    load: str = ""  # the load average during the run, when recorded
    fits: list[str] = field(default_factory=list)  # time = t0 + bytes / bandwidth per backend and B


@dataclass
class SpeedSection:
    tables: list[SpeedTable]
    notes: list[tuple[str, list[str]]]  # per machine: threads, budget, load, backends not timed
    decode: list[DecodeTable] = field(default_factory=list)


DECODE_INTRO = ("KV-cache decoding: one decode step of one new token over a cache of L tokens (d_out = 512, "
                "8 heads). Decoding is memory-bound, so its figure is the bytes of K and V the step reads "
                "divided by its median time, and that as a share of the memory bandwidth a copy reached "
                "in the same run (bytes read + written per second).")


def decode_head() -> list[str]:
    return ["Cache", "Backend", "K+V read MiB", "Median ms (p25–p75)", "GB/s", "% of copy bandwidth",
            "Time vs torch", "Notes"]


def _decode_ratio(c: dict[str, Any]) -> str:
    """Time / torch eager's at the cell, timed in alternating rounds; the rounds' interval alone
    when they cannot tell the backend from torch (speed/verdict.py)."""
    ratio, iv = number(c.get("time_vs_torch")), c.get("ratio_interval")
    if ratio is None:
        return "—"
    if c.get("ratio_verdict") == "undecided" and isinstance(iv, list) and len(iv) == 2:
        return f"undecided {iv[0]:.2f}–{iv[1]:.2f}"
    return f"{ratio:.2f}×" + (f" ({c['ratio_verdict']})" if c.get("ratio_verdict") else "")


def _decode_row(c: dict[str, Any]) -> list[str]:
    med, p25, p75 = (number(c.get(k)) for k in ("median_s", "p25_s", "p75_s"))
    t = "—" if med is None else f"{sig(med * 1e3)}" + (f" ({sig(p25 * 1e3)}–{sig(p75 * 1e3)})" if p25 and p75 else "")
    gbs, frac = number(c.get("gb_per_s")), number(c.get("bandwidth_fraction"))
    return [f"B={c['B']} L={c['L']}", str(c["backend"]), sig(c["kv_bytes"] / 2**20), t,
            "—" if gbs is None else sig(gbs), "—" if frac is None else f"{frac * 100:.1f}%", _decode_ratio(c),
            f"error: {one_line(c['error'])}" if c.get("error") else ""]


def _decode_tables(machine: str, dec: dict[str, Any]) -> list[DecodeTable]:
    bw = dec.get("bandwidth") or {}
    gbs = number(bw.get("gb_per_s"))
    source = f"{bw.get('library', '?')} copy of {sig((bw.get('bytes') or 0) / 2**20)} MiB" if gbs else ""
    out = []
    for dtype in dict.fromkeys(c["dtype"] for c in dec.get("cells") or []):
        cells = sorted((c for c in dec["cells"] if c["dtype"] == dtype), key=lambda c: (c["B"], c["L"]))
        la = dec.get("load_average") or {}
        load = (f"1-minute load average {sig(la['start'])} at start, {sig(la.get('end') or 0)} at the end"
                if number(la.get("start")) is not None else "")
        fits = [_fit_text(f) for f in dec.get("fits") or [] if f.get("dtype") == dtype]
        out.append(DecodeTable(machine, dtype, gbs, source, [_decode_row(c) for c in cells], load, fits))
    return out


#: What the fit lines under a decode table say (conformance/speed/decode.py fit).
FIT_INTRO = ("Fitted over the cache lengths, per backend and batch: time = t0 + bytes / bandwidth (least "
             "squares on the medians), the fixed cost of a step apart from the bandwidth a long cache is read at.")


def _fit_text(f: dict[str, Any]) -> str:
    gbs, frac, t0 = number(f.get("gb_per_s")), number(f.get("bandwidth_fraction")), number(f.get("t0_s"))
    bw = "no positive slope" if gbs is None else f"{sig(gbs)} GB/s" + (f" ({frac * 100:.0f}% of copy)" if frac else "")
    worst = number(f.get("worst_residual"))
    return (f"{f.get('backend')} B={f.get('B')}: t0 {'—' if t0 is None else sig(t0 * 1e3)} ms, {bw}"
            + ("" if worst is None else f"; worst cell {worst * 100:.0f}% off the fit"))


def shape_text(c: dict[str, Any]) -> str:
    d = f"d={c['d_in']}" if c["d_in"] == c["d_out"] else f"d_in={c['d_in']} d_out={c['d_out']}"
    return f"B={c['B']} T={c['T']} {d} H={c['n_heads']} {'causal' if c['causal'] else 'full'}"


def _baseline(device: str, backends: set[str]) -> str | None:
    names = ("torch",) if device.startswith("cpu") else ("torch-cuda", "torch")
    return next((n for n in names if n in backends), None)


def _row(c: dict[str, Any], base: dict[str, Any] | None, peak: float | None) -> SpeedRow:
    notes, med = [], c.get("median_s")
    conforming = c.get("conforming")
    headline = conforming is not False and not c.get("error") and med is not None and med > 0
    if c.get("error"):
        notes.append(f"error: {one_line(c['error'])}")
    if conforming is False:
        notes.append("NOT CONFORMING: no headline figure")
    elif conforming is None:
        notes.append("? conformance unverified")
    spread = number(c.get("spread"))
    if c.get("noisy") or c.get("flagged"):
        notes.append("⚠ noisy" + (f": spread {spread * 100:.0f}%" if spread is not None else ""))
    iv = c.get("ratio_interval")
    iv = (float(iv[0]), float(iv[1])) if isinstance(iv, list) and len(iv) == 2 else None
    if c.get("ratio_verdict") == "undecided" and iv:
        notes.append(f"⚠ ratio to torch undecided: its rounds give {iv[0]:.2f}–{iv[1]:.2f}")
    biv = c.get("fwd_bwd_ratio_interval")
    if c.get("fwd_bwd_ratio_verdict") == "undecided" and isinstance(biv, list) and len(biv) == 2:
        notes.append(f"⚠ forward + backward ratio to torch undecided: its rounds give {biv[0]:.2f}–{biv[1]:.2f}")
    gflops = c.get("gflops")
    if gflops is None and headline:
        gflops = c["flops"] / med / 1e9
    frac = c.get("peak_fraction")
    if frac is None and gflops is not None and peak:
        frac = gflops / peak
    bmed = base.get("median_s") if base and not base.get("error") else None
    p25, p75 = c.get("p25_s"), c.get("p75_s")
    mem = c.get("peak_memory_bytes")

    def ms(v: float | None) -> float | None:
        return v * 1e3 if headline and v is not None else None
    return SpeedRow(
        shape_text(c), (c["B"], c["d_in"], c["d_out"], c["n_heads"], c["causal"], c["T"]), c["backend"],
        ms(med), ms(p25), ms(p75), ms(c.get("first_call_s")), gflops if headline else None,
        c["flops"] / p75 / 1e9 if headline and p75 else None, c["flops"] / p25 / 1e9 if headline and p25 else None,
        frac * 100 if headline and frac is not None else None, med / bmed if headline and bmed else None,
        mem / 2**20 if headline and mem is not None else None, headline, notes, len(c.get("samples_s") or []),
        ms(c.get("fwd_bwd_median_s")), c.get("fwd_bwd_gflops") if headline else None, iv, c.get("ratio_verdict"),
        number(c.get("fwd_bwd_time_vs_torch")) if headline else None)


def _speed_notes(sp: dict[str, Any], env: dict[str, Any]) -> list[str]:
    """The conditions of a speed run a reader needs to trust (or distrust) its figures."""
    out = []
    th = sp.get("threads") or {}
    if th:
        blas = ", ".join(f"{b.get('internal_api', '?')}={b.get('num_threads')}" for b in th.get("blas") or [])
        fixed = [f"torch={th['torch']}"] if th.get("torch") is not None else []
        fixed += [f"OMP_NUM_THREADS={th['omp_num_threads_env']}"] if th.get("omp_num_threads_env") else []
        fixed += [f"BLAS {blas}"] if blas else []
        out.append(f"threads: requested {th.get('requested') or 'none (left as is)'}; in force " + ", ".join(fixed))
    if sp.get("budget_s") is not None:
        out.append(f"budget {sp['budget_s']} s per cell per backend, at least {sp.get('min_samples', '?')} warm calls")
    load = sp.get("load_average") or {}
    if load.get("start") is not None:
        busy = env.get("cpu_count") and max(load["start"], load.get("now") or 0) > 0.5 * env["cpu_count"]
        out.append(f"1-minute load average {load['start']:.2f} at start, {load.get('now') or 0:.2f} at the end"
                   + (" (BUSY: other processes competed for the cores; figures are slow and noisy)" if busy else ""))
    for b in sp.get("backends") or []:
        if b.get("conforming") is not True:
            verdict = "NOT CONFORMING" if b.get("conforming") is False else "conformance unverified"
            out.append(f"{b.get('name')} ({b.get('device')}): {verdict}"
                       + (f": {one_line(b['conformance_note'])}" if b.get("conformance_note") else ""))
    reasons: dict[tuple[str, str], int] = {}
    for s in sp.get("skipped") or []:  # per-cell skips repeat one reason: count them
        key = (str(s.get("backend")), one_line(s.get("reason")))
        reasons[key] = reasons.get(key, 0) + 1
    out += [f"not timed: {b}: {r}" + (f" ({n} cells)" if n > 1 else "") for (b, r), n in reasons.items()]
    return out


def build_speed(runs: list[dict[str, Any]]) -> SpeedSection:
    tables, notes, decode = [], [], []
    for run in runs:
        sp = run.get("speed")
        if not sp:
            continue
        if sp.get("decode"):
            decode += _decode_tables(run["machine"], sp["decode"])
        notes.append((run["machine"], _speed_notes(sp, run.get("environment") or {})))
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for c in sp["cells"]:
            groups.setdefault((c["device"], c["dtype"]), []).append(c)
        for (device, dtype), cells in groups.items():
            peak, source = table_peak(sp.get("peak") or {}, cells, device, dtype)
            base_name = _baseline(device, {c["backend"] for c in cells})

            def at(c: dict[str, Any]) -> tuple:
                return c["B"], c["T"], c["d_in"], c["d_out"], c["n_heads"], c["causal"]
            base = {at(c): c for c in cells if c["backend"] == base_name}
            rows = [_row(c, base.get(at(c)), peak) for c in cells]
            order = list(dict.fromkeys(c["backend"] for c in cells))
            # by shape with T growing (B last: the default sweep shrinks B as T grows), backends in run order
            rows.sort(key=lambda r: (r.key[1:], r.key[0], order.index(r.backend)))
            timers = sorted({str(c["timer"]) for c in cells if c.get("timer")})
            memory: dict[str, list[str]] = {}
            for c in cells:
                if c.get("memory_method") and c["backend"] not in memory.setdefault(c["memory_method"], []):
                    memory[c["memory_method"]].append(c["backend"])
            tables.append(SpeedTable(run["machine"], device, dtype, peak, source, base_name, timers,
                                     [f"{m} ({', '.join(bs)})" for m, bs in memory.items()], rows))
    return SpeedSection(tables, notes, decode)
