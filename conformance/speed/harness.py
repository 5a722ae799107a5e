"""The timing loop: first calls apart, then interleaved rounds within a time budget.

At one cell (one shape, one dtype) every backend is called once, its first call timed and
kept apart (it pays for lazy initialisation, kernel selection, allocator growth). Then come
rounds: in round r each backend is called once, in an order rotated by r, so slow drift
(thermal throttling, a background process, frequency scaling) and position effects (caches
warmed by the previous backend) hit all backends alike. Rounds go on until at least
`min_samples` rounds are done and the backends together have used their budgets, or until
`max_samples`. The garbage collector is off during rounds (as `timeit` does), so a collection
triggered by one backend's garbage is not billed to the next.
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


def run_cell(entries: list[Entry], budget_s: float, min_samples: int = 5, max_samples: int = 2000) -> None:
    """Time every entry at one cell, filling first_call_s, samples and error in place.

    `budget_s` is per backend: the rounds stop once they have taken budget_s times the
    number of backends (and at least `min_samples` rounds are done).
    """
    for e in entries:
        gc.collect()
        e.first_call_s = _timed(e)
    live = [e for e in entries if e.error is None]
    if not live:
        return
    goal = budget_s * len(live)
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        r, t0 = 0, time.perf_counter()
        while live:
            k = r % len(live)
            for e in live[k:] + live[:k]:
                t = _timed(e)
                if t is not None:
                    e.samples.append(t)
            live = [e for e in live if e.error is None]
            r += 1
            if r >= max_samples or (r >= min_samples and time.perf_counter() - t0 >= goal):
                break
    finally:
        if was_enabled:
            gc.enable()


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


def measure_overhead(budget_s: float = 0.5) -> dict[str, float]:
    """Per-call cost of the harness, from timing an empty backend through `run_cell`.

    overhead_s: median of the timed samples (what the harness adds to every figure it
    reports). loop_s: wall time per round including the bookkeeping outside the clock.
    """
    import functools

    b = EmptyBackend()
    x = np.zeros((1, 1, 1), dtype=np.float32)
    entry = Entry("empty", functools.partial(b.forward, x, None, None), b.synchronize)
    t0 = time.perf_counter()
    run_cell([entry], budget_s, min_samples=100, max_samples=200_000)
    wall = time.perf_counter() - t0
    stats = summarize(entry.samples)
    return {"overhead_s": stats["median_s"], "p25_s": stats["p25_s"], "p75_s": stats["p75_s"],
            "loop_s": wall / max(1, len(entry.samples) + 1), "samples": len(entry.samples)}
