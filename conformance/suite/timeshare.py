"""Where a worker's time goes: each part of a check's time charged to one share.

The suite's own cost is what stands between a run and more examples per check (docs/sizes.md).
Each share is exclusive: time inside a nested `spent` block counts for the inner share only
(a plain reference computed while a check runs is "plain", not "check"). The shares:

- golden: the spec in float64 (long double when float64 is under test), and the float64 trace
  the step checks feed a backend (`reference.step_inputs`);
- plain: the plain reference's runs in the dtype under test (`reference.golden_and_plain`);
- memo: looking references up (`conformance.suite.memo`: hashing the inputs, copying a hit);
- backend: every call into the backend, conversions at the edge included (`calls.Runner.call`);
- check: the rest of the checks' bodies: building cases, comparing, the tolerance model, putting
  the process state back after each example;
- hypothesis: everything the engine does around the bodies: drawing cases (the suite's
  strategies included), choosing and mutating examples, shrinking;
- harness: a planned key's time outside its check (backend state, records, leak watch);
- start-up: from the run's start to a worker's first key (process start, imports, collection).

Each thread keeps its own nesting (a backend's own threads count as its calls' wall time; a
check run in another thread, as an adopter's pytest plugin might, adds its own time).
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

SHARES = ("golden", "plain", "memo", "backend", "check", "hypothesis", "harness", "start-up")
#: The controller's wall-clock start (time.time()), for the workers' start-up share.
RUN_STARTED_VAR = "MHA_RUN_STARTED"

_totals: dict[str, float] = {}
_local = threading.local()


def _open() -> list[list]:
    """This thread's open blocks, [share, resumed at] each: the innermost is the one charged."""
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


@contextmanager
def spent(share: str) -> Iterator[None]:
    """Charge the block's time, less its nested blocks', to `share`."""
    stack = _open()
    now = time.perf_counter()
    if stack:
        outer = stack[-1]
        _totals[outer[0]] = _totals.get(outer[0], 0.0) + now - outer[1]
    stack.append([share, now])
    try:
        yield
    finally:
        now = time.perf_counter()
        inner = stack.pop()
        _totals[inner[0]] = _totals.get(inner[0], 0.0) + now - inner[1]
        if stack:
            stack[-1][1] = now


def totals() -> dict[str, float]:
    """Seconds charged so far in this process, by share (the open blocks up to now)."""
    out = dict(_totals)
    stack = _open()
    if stack:
        now = time.perf_counter()
        out[stack[-1][0]] = out.get(stack[-1][0], 0.0) + now - stack[-1][1]
    return out


def since(before: dict[str, float]) -> dict[str, float]:
    """The shares charged since `before` (an earlier `totals()`), rounded, zero shares left out."""
    now = totals()
    return {k: round(v - before.get(k, 0.0), 4) for k, v in now.items() if v - before.get(k, 0.0) >= 5e-5}


_first_key = {"seen": False}


def start_up() -> float | None:
    """Seconds from the run's start to this call, the first time this process calls it (a
    worker's first key); None afterwards, or when the run's start is unknown."""
    if _first_key["seen"]:
        return None
    _first_key["seen"] = True
    started = os.environ.get(RUN_STARTED_VAR)
    try:
        return max(0.0, time.time() - float(started)) if started else None
    except ValueError:
        return None
