"""Decode speed (`nox -s bench -- --decode`): one KV-cache decode step at cache lengths 128 to 8192.

Decoding is memory-bound: one new token's query meets every cached key and value, so a step
reads the whole cache, 2 x B x H x L x head_dim entries, for about as many multiply-adds. Its
figure is therefore bandwidth, not GFLOP/s: the bytes of K and V read per step, divided by
the step's median time, and that as a fraction of this machine's memory bandwidth measured in
the same run by a copy benchmark (`copy_bandwidth`, as `peak.py` measures the matmul peak).

Each cell prefills a cache of L tokens once (untimed), then times a line of decoding, as a
generation loop runs it: each step decodes one new token on the cache the step before returned.
After `decode_line_steps(L)` steps (L / 32, at least 8) the line starts again from the prompt's
cache, so the cache stays within a thirty-second of L, and the bytes counted are those of the
line's mean length. `decode` must leave the cache it is given usable, so a backend whose cache
appends in place copies it at a restart (a branch: the built-in backends, impls.array_cache);
that is at most one call in 8, outside the median's middle half. A backend that concatenates
copies the whole cache on every step instead (about 3x the bytes counted).
`fit` then fits time = t0 + bytes / bandwidth over the lengths of each backend and batch (least
squares on the medians, dominated by the long caches), so a fixed cost per step and the
bandwidth the step reaches on a long cache are seen apart.
The shape: d_out = 512 in 8 heads (head_dim 64), float32, causal, B = 1 and 8. d_in is 64:
the input width only sets the new token's projection (a few microseconds) and the prefill's,
which would dominate the run's time at B = 8, L = 8192 with d_in = 512. Each backend is timed
in its own worker process, as the forward bench times it (`conformance.speed.cells`): at each
cell every worker prefills its cache once, then the workers' chunks of decode steps alternate
over the rounds, so each backend's time relative to torch eager gets a verdict from its rounds
(faster, slower, level or undecided; `conformance.speed.verdict`); only backends declaring
`kv_cache` are timed.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

import numpy as np

from conformance.speed.cells import WorkerUnit, time_cell
from conformance.speed.harness import summarize
from conformance.speed.table import ratio_text
from conformance.speed.verdict import paired, round_medians
from conformance.speed.worker import DECODE_D_IN as D_IN
from conformance.speed.worker import DECODE_D_OUT as D_OUT
from conformance.speed.worker import DECODE_HEADS as HEADS
from conformance.speed.worker import decode_inputs, decode_line_steps
from spec.config import AttentionConfig, numpy_dtype

DECODE_LENGTHS = [128 * 2 ** i for i in range(7)]  # 128 ... 8192
DECODE_BATCHES = (1, 8)
FULL = {"lengths": DECODE_LENGTHS, "budget": 0.3, "min_samples": 8, "copy_mb": 256}
QUICK = {"lengths": [128, 1024, 8192], "budget": 0.05, "min_samples": 3, "copy_mb": 128}
_COPY_REPS = 5
REFERENCE = "torch"  # as the forward bench: every other backend's ratio is to PyTorch eager


def kv_bytes(B: int, L: int, config: AttentionConfig, itemsize: int) -> int:
    """Bytes of K and V a step of a line from a prompt of L tokens reads, on average: its cached
    tokens and the new one, L + 1 + j at step j of the line's decode_line_steps(L)."""
    tokens = L + 1 + (decode_line_steps(L) - 1) / 2
    return round(2 * B * config.n_heads * tokens * config.head_dim * itemsize)


def fit(cells: list[dict[str, Any]], bandwidth: float | None) -> list[dict[str, Any]]:
    """time = t0 + bytes / bandwidth, fitted by least squares over the cache lengths of each
    (backend, dtype, B) with at least 3 lengths: t0 the fixed cost of a step, gb_per_s the
    bandwidth a long cache is read at (the slope dominates where the bytes are largest)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for c in cells:
        if c.get("median_s") and not c.get("error"):
            groups.setdefault((c["backend"], c["dtype"], c["B"]), []).append(c)
    out = []
    for (backend, dtype, B), cs in groups.items():
        if len(cs) < 3:
            continue
        x = np.array([c["kv_bytes"] for c in cs], dtype=float)
        y = np.array([c["median_s"] for c in cs])
        slope, t0 = np.polyfit(x, y, 1)
        gbs = 1 / slope / 1e9 if slope > 0 else None
        resid = y - (t0 + slope * x)
        out.append({"backend": backend, "dtype": dtype, "B": B, "lengths": [c["L"] for c in cs],
                    "t0_s": float(t0), "gb_per_s": gbs,
                    "bandwidth_fraction": gbs / bandwidth if gbs and bandwidth else None,
                    "worst_residual": float(np.max(np.abs(resid) / y))})  # share of a cell's median
    return out


def fit_line(f: dict[str, Any]) -> str:
    """One fit as text: `numpy float32 B=8: t0 0.05 ms + bytes at 18.1 GB/s (46% of copy)`."""
    bw = "no positive slope" if f["gb_per_s"] is None else (
        f"bytes at {f['gb_per_s']:.1f} GB/s" + (f" ({f['bandwidth_fraction']:.0%} of copy)"
                                                if f["bandwidth_fraction"] is not None else ""))
    return (f"{f['backend']} {f['dtype']} B={f['B']}: t0 {f['t0_s'] * 1e3:.3f} ms + {bw}; "
            f"worst cell off the fit by {f['worst_residual']:.0%}")


def copy_bandwidth(megabytes: int = 256, reps: int = _COPY_REPS) -> dict[str, Any]:
    """The machine's memory bandwidth: the best of `reps` copies of a large array (NumPy and torch).

    Counted as STREAM's copy counts it: bytes read plus bytes written, per second. The
    array is far larger than any cache level, so the copy runs at the memory's speed.
    """
    n = megabytes * (1 << 20) // 4
    out = []
    src = np.random.default_rng(0).random(n, dtype=np.float32)
    dst = np.empty_like(src)
    out.append(_copy_record("numpy", n * 4, lambda: np.copyto(dst, src), reps))
    try:
        import torch  # lazily: only when installed

        s, d = torch.from_numpy(src), torch.empty(n, dtype=torch.float32)
        out.append(_copy_record("torch", n * 4, lambda: d.copy_(s), reps))
    except ImportError:
        pass
    best = max(out, key=lambda m: m["gb_per_s"])
    return {"gb_per_s": best["gb_per_s"], "library": best["library"], "bytes": n * 4, "measurements": out}


def _copy_record(library: str, nbytes: int, run, reps: int) -> dict[str, Any]:
    run()  # warm-up: pages faulted in, thread pools started
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    best = min(times)
    return {"library": library, "best_s": best, "reps": reps, "gb_per_s": 2 * nbytes / best / 1e9}


def _cells(units: list[Any], B: int, L: int, dtype: str, budget: float, min_samples: int,
           bandwidth: float) -> list[dict[str, Any]]:
    """One (B, L) cell for every unit: a prefill each (untimed), the first decode, then warm
    decodes in rounds alternating between the backends' workers, as the forward bench times a
    cell (`time_cell`); each backend's ratio to torch gets a verdict from its rounds."""
    config = decode_inputs(B, L, dtype)[0]
    itemsize = np.dtype(numpy_dtype(dtype)).itemsize
    head = {"dtype": dtype, "B": B, "L": L, "d_in": D_IN, "d_out": D_OUT, "n_heads": HEADS,
            "kv_bytes": kv_bytes(B, L, config, itemsize)}
    names = [u.name for u in units]
    reference = REFERENCE if REFERENCE in names else None
    # the cache is built once per worker: a prefill of L tokens costs far more than the steps
    timings = time_cell(units, (), dtype, True, 0, budget, min_samples, memory=False, rewarm=False,
                        op="prepare_decode", prepare={"B": B, "L": L, "dtype": dtype, "seed": 0},
                        fresh_inputs=False, reference=reference)
    ref = next((t for t in timings if t.name == reference and t.samples), None)
    cells = []
    for t in timings:
        stats = summarize(t.samples)
        gbs = head["kv_bytes"] / stats["median_s"] / 1e9 if stats["median_s"] else None
        c = {"backend": t.name, **head, **stats, "samples_s": t.samples, "first_call_s": t.first_call_s,
             "error": t.error, "gb_per_s": gbs, "bandwidth_fraction": gbs / bandwidth if gbs and bandwidth else None,
             "round_medians_s": [m for m in round_medians(t.rounds) if m is not None]}
        if ref is not None and stats["median_s"]:
            c["time_vs_torch"] = stats["median_s"] / summarize(ref.samples)["median_s"]
            if t is not ref:
                c.update(paired(t.rounds, ref.rounds) or {})
        cells.append(c)
    return cells


def run_decode(backends: list, dtypes: list[str], quick: bool = False, out: TextIO | None = None,
               threads: int | None = None) -> dict[str, Any]:
    """Every cache-declaring backend at every (B, L): the "decode" part of the speed section.

    Each backend runs in its own worker process (`conformance.speed.worker`), as in the forward
    bench: no library's thread pools, allocator or caches are shared with another's; at each
    cell the backends' chunks alternate, so drift on a noisy machine is shared between them.
    """
    base = QUICK if quick else FULL
    t0 = time.perf_counter()
    load_start = _load()
    bw = copy_bandwidth(base["copy_mb"])
    _say(out, f"memory bandwidth (copy, {bw['library']}): {bw['gb_per_s']:.1f} GB/s")
    timed = [i for i in backends if getattr(i.backend.capabilities, "kv_cache", False)]
    skipped = [{"backend": i.backend.name, "reason": "KV-cache decoding not declared (Capabilities.kv_cache)"}
               for i in backends if i not in timed]
    cells = []
    units = [WorkerUnit(info.backend.name, info.spec, threads) for info in timed]
    try:
        for dtype in dtypes:
            here = [u for u, info in zip(units, timed) if dtype in info.backend.capabilities.dtypes]
            for B in DECODE_BATCHES:
                for L in base["lengths"]:
                    for c in _cells(here, B, L, dtype, base["budget"], base["min_samples"], bw["gb_per_s"]) if here else []:
                        cells.append(c)
                        _say(out, _line(c))
    finally:
        for u in units:
            u.close()
    fits = fit(cells, bw["gb_per_s"])
    for f in fits:
        _say(out, "decode fit   " + fit_line(f))
    return {"dtypes": dtypes, "causal": True, "new_tokens": 1, "bandwidth": bw, "cells": cells, "fits": fits,
            "line_steps": {str(L): decode_line_steps(L) for L in base["lengths"]}, "skipped": skipped,
            "layout": WorkerUnit.layout, "reference": REFERENCE, "duration_s": round(time.perf_counter() - t0, 2),
            "load_average": {"start": load_start, "end": _load()}}  # other processes on the cores


def _load() -> float | None:
    import os

    try:
        return os.getloadavg()[0]
    except OSError:  # not every platform has it
        return None


def write_decode(path, machine: str, command: str, decode: dict[str, Any]) -> None:
    """Put `decode` into this machine's speed section of results.json, keeping the forward's cells."""
    from conformance.results import update_section

    section = _speed_section(path, machine)
    if section is None:  # no forward run yet: a speed section holding only the decode figures
        section = {"status": "complete", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command,
                   "peak": {}, "cells": []}
    update_section(path, machine, None, "speed", {**section, "decode": {**decode, "command": command}})


def _line(c: dict[str, Any]) -> str:
    head = f"decode {c['backend']:12s} {c['dtype']:8s} B={c['B']} L={c['L']:5d}  K+V {c['kv_bytes'] / 2**20:8.1f} MiB"
    if c["error"] or not c["median_s"]:
        return f"{head}  error: {c['error']}"
    vs = f"  t/{REFERENCE} {ratio_text(c)}" if c.get("time_vs_torch") is not None and c["backend"] != REFERENCE else ""
    return (f"{head}  {c['median_s'] * 1e3:9.3f} ms  {c['gb_per_s']:6.1f} GB/s"
            f"  {c['bandwidth_fraction']:6.1%} of copy bandwidth{vs}")


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)


def _speed_section(path, machine: str) -> dict[str, Any] | None:
    """This machine's speed section in results.json, or None (no file, no run, no section)."""
    import json
    from pathlib import Path

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    runs = doc.get("runs") if isinstance(doc, dict) else None
    run = next((r for r in runs or [] if isinstance(r, dict) and r.get("machine") == machine), None)
    section = run.get("speed") if run else None
    return section if isinstance(section, dict) else None
