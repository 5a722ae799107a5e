"""The timing loop inside one process: a backend's first call apart, then chunks of calls.

At a cell (one shape, one dtype) a backend's first call is timed and kept apart (it pays for
lazy initialisation, kernel selection, allocator growth). Warm calls then come in chunks
(`time_chunk`): one untimed re-warm call, then timed calls back to back until the chunk has
at least `min_calls` and has lasted `seconds`. The re-warm call absorbs what an idle pause
costs the next call (thread pools gone to sleep, caches holding another backend's data), so a
chunk measures the steady state a user's loop of calls sees. The garbage collector is off
during a chunk (as `timeit` does), so a collection triggered by earlier garbage is not billed
to a timed call. How chunks of different backends alternate is `conformance.speed.cells`.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from conformance.speed.timers import CpuTimer

NOISY_SPREAD = 0.10  # (p75 - p25) / median above this marks a cell as noisy


@dataclass
class Entry:
    """One backend at one cell: the prepared call, its timer, and what timing found."""

    name: str
    call: Callable[[], Any]
    sync: Callable[[], None]
    timer: Any = field(default_factory=CpuTimer)
    first_call_s: float | None = None
    samples: list[float] = field(default_factory=list)
    error: str | None = None
    native: Any = None  # the prepared input, whose type tells the memory method
    memory: int | None = None
    memory_method: str | None = None


def describe_error(e: BaseException) -> str:
    """One line naming the exception, short enough for a table and a JSON field."""
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}"[:300]


def _timed(entry: Entry) -> float | None:
    """One timed call; on an exception the entry gets its error and loses its samples."""
    try:
        t, out = entry.timer.time(entry.call, entry.sync)
    except Exception as e:  # a backend crash is a result, not the end of the run
        entry.error, entry.samples = describe_error(e), []
        return None
    del out  # freed here, outside the timed region
    return t


def first_call(entry: Entry) -> None:
    """Time the entry's first call into first_call_s (or set its error)."""
    gc.collect()
    entry.first_call_s = _timed(entry)


def time_chunk(entry: Entry, min_calls: int, seconds: float, max_calls: int = 2000, rewarm: bool = True) -> int:
    """One chunk of warm calls appended to entry.samples; returns how many were timed.

    Stops once at least `min_calls` are timed and `seconds` have passed, or at `max_calls`,
    or at an error (recorded in the entry). `rewarm`: one untimed call first.
    """
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    n = 0
    try:
        if rewarm and _timed(entry) is None:
            return 0
        t0 = time.perf_counter()
        while n < max_calls:
            t = _timed(entry)
            if t is None:
                return 0
            entry.samples.append(t)
            n += 1
            if n >= min_calls and time.perf_counter() - t0 >= seconds:
                break
    finally:
        if was_enabled:
            gc.enable()
    return n


def summarize(samples: list[float]) -> dict[str, Any]:
    """median_s, p25_s, p75_s, spread ((p75 - p25) / median) and noisy (spread > 10%)."""
    if not samples:
        return {"median_s": None, "p25_s": None, "p75_s": None, "spread": None, "noisy": False}
    p25, med, p75 = (float(v) for v in np.percentile(np.asarray(samples), [25, 50, 75]))
    spread = (p75 - p25) / med if med > 0 else 0.0
    return {"median_s": med, "p25_s": p25, "p75_s": p75, "spread": spread, "noisy": spread > NOISY_SPREAD}


class EmptyBackend:
    """forward returns x: what remains when timing it is the harness's own cost per call."""

    def forward(self, x, weights, config, **_: Any) -> Any:
        return x

    def synchronize(self) -> None:
        pass


def measure_overhead(budget_s: float = 0.5, timer: Any = None) -> dict[str, float]:
    """Per-call cost of the harness, from timing an empty backend through `time_chunk`.

    overhead_s: median of the timed samples (what the harness adds to every figure it
    reports). loop_s: wall time per call including the bookkeeping outside the clock.
    """
    import functools

    b = EmptyBackend()
    x = np.zeros((1, 1, 1), dtype=np.float32)
    entry = Entry("empty", functools.partial(b.forward, x, None, None), b.synchronize,
                  **({} if timer is None else {"timer": timer}))
    first_call(entry)
    t0 = time.perf_counter()
    time_chunk(entry, min_calls=100, seconds=budget_s, max_calls=200_000, rewarm=False)
    wall = time.perf_counter() - t0
    stats = summarize(entry.samples)
    return {"overhead_s": stats["median_s"], "p25_s": stats["p25_s"], "p75_s": stats["p75_s"],
            "loop_s": wall / max(1, len(entry.samples)), "samples": len(entry.samples)}
