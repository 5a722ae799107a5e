"""One speed run: the conformance gate, threads, the matmul peak, then every cell in turn.

The run's "speed" section of results.json is rewritten after every cell (all backends at one
shape and dtype), marked "running" until the end, so a run killed halfway leaves what it
finished; an interrupted run (Ctrl-C) is marked "partial".
"""

from __future__ import annotations

import datetime as _dt
import functools
import gc
import importlib.util
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from conformance.environment import collect, thread_counts
from conformance.speed import peak as peak_mod
from conformance.speed import table
from conformance.speed.flops import gflops, useful_flops
from conformance.speed.gate import conformance_status
from conformance.speed.harness import Entry, describe_error, run_cell, summarize
from conformance.speed.memory import peak_memory
from conformance.speed.timers import select_timer
from impls.base import BackendInfo
from reports.results_io import update_section
from spec.config import AttentionConfig
from spec.params import init_params

REFERENCE = "torch"  # PyTorch eager: the figure every other backend is compared with

Shape = tuple[int, int, int, int, int]  # B, T, d_in, d_out, n_heads


@dataclass
class Plan:
    """Everything a run needs, already validated by the CLI."""

    backends: list[BackendInfo]
    dtypes: list[str]
    shapes: list[Shape]
    out_dir: Path
    machine: str
    command: str
    causal: bool = True
    budget_s: float = 0.4
    min_samples: int = 8
    max_samples: int = 2000
    include_nonconforming: bool = False
    threads: int | None = None
    peak_n: int = peak_mod.CPU_N
    seed: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)  # backends that cannot run here


class NothingToTime(RuntimeError):
    """Every selected backend was excluded (nonconforming); the message says why, one line."""


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _load() -> float | None:
    """The 1-minute load average: a busy machine explains slow, noisy figures."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):  # not on every platform
        return None


def _print_peak(peak: dict[str, Any], out: TextIO) -> None:
    for m in peak["measurements"]:
        fig = f"{m['gflops']:.1f} GFLOP/s" if m["gflops"] else f"unavailable ({m['error']})"
        print(f"  {m['library']:<6} {m['device']}/{m['dtype']} {'x'.join(map(str, m['shape']))}: {fig}", file=out)


def _busy_percent(window_s: float = 0.25) -> float | None:
    """System-wide CPU use over a short window while this process idles: other processes'
    load right now (the load average also counts this process's own recent work)."""
    try:
        import psutil  # lazily: a declared dependency, used only here and for memory
    except ImportError:
        return None
    return float(psutil.cpu_percent(interval=window_s))


def fix_threads(n: int | None) -> Any:
    """Fix torch's and every BLAS/OpenMP pool's thread count to n (None: leave as is).

    torch is imported first, when installed, so the BLAS it loads is limited too. Returns the
    threadpoolctl limiter, which must stay referenced for the limits to hold.
    """
    if importlib.util.find_spec("torch") is not None:
        import torch  # lazily: loaded here so its thread pools exist before they are fixed

        if n is not None:
            torch.set_num_threads(n)
    if n is None:
        return None
    from threadpoolctl import threadpool_limits  # lazily: only --threads needs it

    return threadpool_limits(limits=n)


def _prepare(info: BackendInfo, x64: np.ndarray, params: Any, config: AttentionConfig, dtype: str) -> Entry:
    b = info.backend
    sync = getattr(b, "synchronize", None) or (lambda: None)
    try:
        x = b.from_numpy(x64, dtype)
        weights = b.prepare(params, dtype) if hasattr(b, "prepare") else params.map(lambda a: b.from_numpy(a, dtype))
        sync()
        timer = select_timer(b.capabilities.device, x)
    except Exception as e:  # conversion is third-party code too: record, keep going
        entry = Entry(b.name, lambda: None, sync)
        entry.error = "preparing inputs: " + describe_error(e)
        return entry
    return Entry(b.name, functools.partial(b.forward, x, weights, config), sync, timer, native=x)


def _cell(info: BackendInfo, entry: Entry, shape: Shape, dtype: str, causal: bool, peak: dict[str, Any],
          conforming: bool | None) -> dict[str, Any]:
    B, T, d_in, d_out, H = shape
    device = info.backend.capabilities.device
    flops = useful_flops(B, T, d_in, d_out, H, causal)
    stats = summarize(entry.samples)
    g = gflops(flops, stats["median_s"])
    pk = peak_mod.peak_for(peak, device, dtype)
    return {
        "backend": info.backend.name, "device": device, "dtype": dtype,
        "B": B, "T": T, "d_in": d_in, "d_out": d_out, "n_heads": H, "causal": causal,
        "first_call_s": entry.first_call_s, "samples_s": list(entry.samples), **stats,
        "flops": flops, "gflops": g, "peak_gflops": pk,
        "peak_fraction": (g / pk) if (g is not None and pk) else None,
        "peak_memory_bytes": entry.memory, "memory_method": entry.memory_method,
        "timer": entry.timer.kind, "conforming": conforming, "error": entry.error, "time_vs_torch": None,
    }


def _section(plan: Plan, started: str, t0: float, status: str, peak: dict, threads: dict, cells: list,
             skipped: list, backends: list) -> dict[str, Any]:
    done = status != "running"
    return {"status": status, "started": started, "finished": now() if done else None,
            "duration_s": round(time.perf_counter() - t0, 3), "command": plan.command, "peak": peak,
            "threads": threads, "budget_s": plan.budget_s, "min_samples": plan.min_samples,
            "backends": backends, "skipped": skipped, "cells": cells}


def run(plan: Plan, out: TextIO | None = None) -> dict[str, Any]:
    """Run the plan, writing <out_dir>/results.json as it goes; returns the speed section."""
    out = out or sys.stdout  # looked up per call, so a redirected stdout is honoured
    t0, started = time.perf_counter(), now()
    results = plan.out_dir / "results.json"
    status = conformance_status(results, plan.machine, [i.backend.name for i in plan.backends])
    skipped = list(plan.skipped)
    timed: list[BackendInfo] = []
    for info in plan.backends:
        ok, note = status[info.backend.name]
        if ok is False and not plan.include_nonconforming:
            skipped.append({"backend": info.backend.name, "reason": f"nonconforming, not timed ({note}); "
                            "time it anyway with --include-nonconforming"})
        else:
            timed.append(info)
    for s in skipped:
        print(f"skipped {s['backend']}: {s['reason']}", file=out)
    if not timed:
        raise NothingToTime("nothing to time: every selected backend failed conformance on this machine "
                            f"({', '.join(i.backend.name for i in plan.backends)}); add --include-nonconforming "
                            "to time them anyway")
    backends = [{"name": i.backend.name, "spec": i.spec, "device": i.backend.capabilities.device,
                 "conforming": status[i.backend.name][0], "conformance_note": status[i.backend.name][1]}
                for i in timed]
    load_start, busy = _load(), _busy_percent()
    if busy is not None and busy > 25:
        print(f"warning: other processes use {busy:.0f}% of this machine's {os.cpu_count()} CPUs: they compete "
              "for the cores, so the figures will be slower and noisier than on an idle machine", file=out)
    limiter = fix_threads(plan.threads)
    threads = {"requested": plan.threads, **thread_counts()}
    environment = collect()
    targets = {(i.backend.capabilities.device.split(":")[0], d) for i in timed for d in plan.dtypes
               if d in i.backend.capabilities.dtypes}
    print(f"measuring matmul peak for {', '.join(f'{a}/{b}' for a, b in sorted(targets)) or 'nothing'} ...",
          file=out, flush=True)
    peak = peak_mod.measure(targets, cpu_n=plan.peak_n)
    _print_peak(peak, out)
    print(f"threads: torch={threads['torch']} blas={[b['num_threads'] for b in threads['blas']]}"
          f" (requested: {plan.threads or 'left as is'})", file=out, flush=True)
    cells: list[dict[str, Any]] = []

    def write(state: str) -> dict[str, Any]:
        section = _section(plan, started, t0, state, peak, threads, cells, skipped, backends)
        section["load_average"] = {"start": load_start, "now": _load(), "cpu_busy_percent_at_start": busy}
        update_section(results, plan.machine, environment, "speed", section)
        return section

    write("running")
    groups = [(d, s) for d in plan.dtypes for s in plan.shapes]
    try:
        for n, (dtype, shape) in enumerate(groups, 1):
            cells.extend(_run_group(plan, timed, status, dtype, shape, peak, skipped, n, len(groups), out))
            write("running")
    except KeyboardInterrupt:
        print("interrupted: results.json keeps the cells that finished (status partial)", file=out)
        section = write("partial")
        del limiter
        raise
    print("measuring matmul peak again (the best of start and end counts) ...", file=out, flush=True)
    peak.update(peak_mod.measure(targets, cpu_n=plan.peak_n, when="end", earlier=peak["measurements"]))
    for c in cells:  # every fraction against the final peak
        c["peak_gflops"] = pk = peak_mod.peak_for(peak, c["device"], c["dtype"])
        c["peak_fraction"] = (c["gflops"] / pk) if (c["gflops"] is not None and pk) else None
    section = write("complete")
    del limiter
    print("\n" + table.summary(cells, peak), file=out)
    print(f"\nspeed: {len(cells)} cells in {section['duration_s']:.1f} s -> {results}", file=out, flush=True)
    return section


def _run_group(plan: Plan, timed: list[BackendInfo], status: dict, dtype: str, shape: Shape, peak: dict,
               skipped: list, n: int, total: int, out: TextIO) -> list[dict[str, Any]]:
    """All backends at one shape and dtype: prepare, time interleaved, measure memory."""
    B, T, d_in, d_out, H = shape
    config = AttentionConfig(d_in, d_out, H, causal=plan.causal)
    params = init_params(config, plan.seed)
    x64 = np.random.default_rng(plan.seed).standard_normal((B, T, d_in))
    head = {"dtype": dtype, "B": B, "T": T, "d_in": d_in, "d_out": d_out, "n_heads": H, "causal": plan.causal,
            "flops": useful_flops(B, T, d_in, d_out, H, plan.causal)}
    print(table.group_header(n, total, head), file=out, flush=True)
    runnable, entries = [], []
    for info in timed:
        caps = info.backend.capabilities
        why = (f"dtype {dtype} not declared (declares {', '.join(caps.dtypes)})" if dtype not in caps.dtypes
               else caps.unsupported(config, T))
        if why:
            where = {k: head[k] for k in ("dtype", "B", "T", "d_in", "d_out", "n_heads")}
            skipped.append({"backend": info.backend.name, "reason": why, **where})
            print(f"  {info.backend.name:<12} unsupported here: {why}", file=out)
            continue
        runnable.append(info)
        entries.append(_prepare(info, x64, params, config, dtype))
    run_cell([e for e in entries if e.error is None], plan.budget_s, plan.min_samples, plan.max_samples)
    for info, e in zip(runnable, entries):
        if e.error is None:  # untimed: tracing and peak statistics would distort a timed call
            try:
                e.memory, e.memory_method = peak_memory(info.backend.capabilities.device, e.native, e.call, e.sync)
            except Exception as ex:
                e.memory, e.memory_method = None, f"failed: {describe_error(ex)}"[:200]
    cells = [_cell(info, e, shape, dtype, plan.causal, peak, status[info.backend.name][0])
             for info, e in zip(runnable, entries)]
    ref = next((c for c in cells if c["backend"] == REFERENCE and c["median_s"]), None)
    for c in cells:
        if ref is not None and c["median_s"]:
            c["time_vs_torch"] = c["median_s"] / ref["median_s"]
        print(table.cell_line(c), file=out, flush=True)
    del entries, x64
    gc.collect()
    return cells
