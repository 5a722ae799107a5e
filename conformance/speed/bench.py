"""One speed run: the conformance gate, threads, the matmul peak, then every cell in turn.

Each backend is timed in its own worker process (conformance.speed.cells); the section
records that layout, each worker's thread pools and how long their threads took to go idle.

The run's "speed" section of results.json is rewritten after every cell (all backends at one
shape and dtype), marked "running" until the end, so a run killed halfway leaves what it
finished; an interrupted run (Ctrl-C) is marked "partial".
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


from conformance.results import collect
from conformance.speed import cells as cells_mod
from conformance.speed import peak as peak_mod
from conformance.speed import table
from conformance.speed.flops import gflops, useful_flops
from conformance.speed.gate import conformance_status
from conformance.speed.verdict import LEVEL, MAX_ROUNDS, SPREAD_LIMIT, paired, round_medians
from conformance.speed.harness import summarize
from conformance.speed.worker import SETTLE_CAP_S, SETTLE_IDLE, SETTLE_WINDOW_S, fix_threads, settle
from impls.base import BackendInfo
from conformance.results import update_section
from spec.config import AttentionConfig

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
    in_process: bool = False  # time every backend in this process instead of one worker each
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


def make_units(plan: Plan, timed: list[BackendInfo]) -> list[Any]:
    """One timing unit per backend: a worker process, or this process with --in-process."""
    if plan.in_process:
        return [cells_mod.LocalUnit(i.backend, plan.threads) for i in timed]
    return [cells_mod.WorkerUnit(i.backend.name, i.spec, plan.threads) for i in timed]


def layout(plan: Plan) -> dict[str, Any]:
    """How the run was laid out over processes and how idle threads were waited for."""
    kind = cells_mod.LocalUnit.layout if plan.in_process else cells_mod.WorkerUnit.layout
    return {"kind": kind, "rounds": cells_mod.ROUNDS, "max_rounds": MAX_ROUNDS,
            "verdict": f"per-round paired ratios to {REFERENCE}; their median's interval inside 1 -/+ {LEVEL:.0%}: "
                       "level, else below 1: faster, above: slower, else undecided; undecided too when either "
                       f"backend's within-round spread exceeds {SPREAD_LIMIT:.0%}; undecided cells get more rounds "
                       "(up to max_rounds)",
            "chunk": f"one untimed re-warm call (none once calls take {cells_mod.REWARM_BELOW_S} s or more), then "
                     "warm calls for budget/rounds seconds and at least min_samples/rounds calls",
            "settle": {"window_s": SETTLE_WINDOW_S, "idle_fraction": SETTLE_IDLE, "cap_s": SETTLE_CAP_S,
                       "rule": "after each chunk the process answers once its threads use under idle_fraction "
                               "of a core over a window"},
            "settle_s": {}}


def merged_threads(requested: int | None, per_backend: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The run's thread block: requested, torch's count and every BLAS pool seen in any
    process, and each backend's own settings under per_backend."""
    torch_n = next((t["torch"] for t in per_backend.values() if t.get("torch") is not None), None)
    blas: list[dict[str, Any]] = []
    for t in per_backend.values():
        for b in t.get("blas") or []:
            if b not in blas:
                blas.append(b)
    env = next((t.get("omp_num_threads_env") for t in per_backend.values()), os.environ.get("OMP_NUM_THREADS"))
    return {"requested": requested, "torch": torch_n, "omp_num_threads_env": env, "blas": blas,
            "per_backend": per_backend}


def _cell(info: BackendInfo, entry: cells_mod.Timing, shape: Shape, dtype: str, causal: bool, peak: dict[str, Any],
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
        "timer": entry.timer, "chunks": entry.chunks, "conforming": conforming, "error": entry.error, "time_vs_torch": None,
        "round_medians_s": [m for m in round_medians(entry.rounds) if m is not None],
        "faults_per_call": round(statistics.median(entry.faults), 1) if entry.faults else None,
        "round_ratios": None, "ratio_interval": None, "ratio_verdict": None, "undecided_by": None,
    }


def _section(plan: Plan, started: str, t0: float, status: str, peak: dict, threads: dict, cells: list,
             skipped: list, backends: list, lay: dict[str, Any]) -> dict[str, Any]:
    done = status != "running"
    return {"status": status, "started": started, "finished": now() if done else None,
            "duration_s": round(time.perf_counter() - t0, 3), "command": plan.command, "peak": peak,
            "threads": threads, "layout": lay, "budget_s": plan.budget_s, "min_samples": plan.min_samples,
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
    limiter = fix_threads(plan.threads, import_torch=True)  # for the peak, measured in this process
    environment = collect()
    targets = {(i.backend.capabilities.device.split(":")[0], d) for i in timed for d in plan.dtypes
               if d in i.backend.capabilities.dtypes}
    print(f"measuring matmul peak for {', '.join(f'{a}/{b}' for a, b in sorted(targets)) or 'nothing'} ...",
          file=out, flush=True)
    peak = peak_mod.measure(targets, cpu_n=plan.peak_n)
    _print_peak(peak, out)
    settle()  # the peak's BLAS threads must be asleep before any backend is timed
    lay, per_backend = layout(plan), {}
    units = make_units(plan, timed)
    print(f"layout: {lay['kind']}, {lay['rounds']} alternating chunks per cell; threads requested: "
          f"{plan.threads or 'left as is'}", file=out, flush=True)
    cells: list[dict[str, Any]] = []

    def write(state: str) -> dict[str, Any]:
        threads = merged_threads(plan.threads, per_backend)
        section = _section(plan, started, t0, state, peak, threads, cells, skipped, backends, lay)
        section["load_average"] = {"start": load_start, "now": _load(), "cpu_busy_percent_at_start": busy}
        update_section(results, plan.machine, environment, "speed", section)
        return section

    write("running")
    groups = [(d, s) for d in plan.dtypes for s in plan.shapes]
    try:
        for n, (dtype, shape) in enumerate(groups, 1):
            cells.extend(_run_group(plan, timed, units, status, dtype, shape, peak, skipped, n, len(groups), out,
                                    per_backend, lay["settle_s"]))
            write("running")
    except KeyboardInterrupt:
        print("interrupted: results.json keeps the cells that finished (status partial)", file=out)
        section = write("partial")
        del limiter
        raise
    finally:
        for u in units:
            u.close()
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


def _run_group(plan: Plan, timed: list[BackendInfo], units: list[Any], status: dict, dtype: str, shape: Shape,
               peak: dict, skipped: list, n: int, total: int, out: TextIO, per_backend: dict[str, Any],
               settles: dict[str, list[float]]) -> list[dict[str, Any]]:
    """All backends at one shape and dtype, each timed in its unit, chunks alternating."""
    B, T, d_in, d_out, H = shape
    config = AttentionConfig(d_in, d_out, H, causal=plan.causal)
    head = {"dtype": dtype, "B": B, "T": T, "d_in": d_in, "d_out": d_out, "n_heads": H, "causal": plan.causal,
            "flops": useful_flops(B, T, d_in, d_out, H, plan.causal)}
    print(table.group_header(n, total, head), file=out, flush=True)
    runnable, here = [], []
    for info, unit in zip(timed, units):
        caps = info.backend.capabilities
        why = (f"dtype {dtype} not declared (declares {', '.join(caps.dtypes)})" if dtype not in caps.dtypes
               else caps.unsupported(config, T))
        if why:
            where = {k: head[k] for k in ("dtype", "B", "T", "d_in", "d_out", "n_heads")}
            skipped.append({"backend": info.backend.name, "reason": why, **where})
            print(f"  {info.backend.name:<12} unsupported here: {why}", file=out)
            continue
        runnable.append(info)
        here.append(unit)
    timings = cells_mod.time_cell(here, shape, dtype, plan.causal, plan.seed, plan.budget_s, plan.min_samples,
                                  plan.max_samples, reference=REFERENCE)
    for unit, t in zip(here, timings):
        settles.setdefault(t.name, []).extend(round(s, 4) for s in t.settle_s)
        if t.name not in per_backend and t.error is None:  # its libraries are loaded by now
            try:
                per_backend[t.name] = unit.request("threads")
            except cells_mod.WorkerDied:
                pass
    cells = [_cell(info, t, shape, dtype, plan.causal, peak, status[info.backend.name][0])
             for info, t in zip(runnable, timings)]
    ref = next((c for c in cells if c["backend"] == REFERENCE and c["median_s"]), None)
    ref_t = next((t for t in timings if t.name == REFERENCE), None)
    for c, t in zip(cells, timings):
        if ref is not None and c["median_s"]:
            c["time_vs_torch"] = c["median_s"] / ref["median_s"]
            if c is not ref and ref_t is not None:  # can its rounds tell it from torch? (verdict.py)
                c.update(paired(t.rounds, ref_t.rounds) or {})
        print(table.cell_line(c), file=out, flush=True)
    gc.collect()
    return cells
