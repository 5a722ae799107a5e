"""An independent timer for "alone": each backend in fresh processes of its own, no harness.

The isolation check (selfcheck.py) times a backend "alone" through the harness's own worker
and chunks. This timer shares none of that: each process resolves one backend, primes malloc
as every worker does (worker.prime_allocator: the state of any process that has freed one
large array, which is part of what "alone" means here, see docs/speed.md), builds the cell's
inputs twice (the first build called once, then freed), makes one untimed call, then warm
calls back to back (`CALLS`, or fewer but at least `MIN_CALLS` once `SECONDS` have passed),
and prints their median. Processes alternate between the backends
(numpy, torch, numpy, torch, ...), `PROCS` each; process p of a backend is paired with process
p of torch, and the figure is the median of the pairs' ratios with its interval
(verdict.median_interval): the noise between processes, which the check shows next to it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

from conformance import IMPORT_ROOT, INSTALLED
from conformance.results import REPO_ROOT
from conformance.speed.verdict import median_interval

CALLS = 15  # warm calls per process, at most
MIN_CALLS = 5  # at least, however slow the calls
SECONDS = 3.0  # a process stops after MIN_CALLS once this has passed (0.9 s calls at B=1 T=4096)
PROCS = 3  # processes per backend and cell

# where a worker starts: the checkout, or installed the user's directory (their `mypkg` beside them)
CWD = None if INSTALLED else REPO_ROOT

_CHILD = r"""
import json, statistics, sys, time
spec, shape, dtype, causal, seed, calls, min_calls, seconds, threads = json.loads(sys.argv[1])
from conformance.speed.worker import fix_threads, prime_allocator
prime_allocator()  # before any array is built
import numpy as np
from impls.registry import resolve
from spec.config import AttentionConfig
from spec.params import init_params
b = resolve(spec).backend
B, T, d_in, d_out, H = shape
config = AttentionConfig(d_in, d_out, H, causal=causal)
sync = getattr(b, "synchronize", None) or (lambda: None)

def build():
    params = init_params(config, seed)
    x = b.from_numpy(np.random.default_rng(seed).standard_normal((B, T, d_in)), dtype)  # (B, T, d_in)
    w = b.prepare(params, dtype) if hasattr(b, "prepare") else params.map(lambda a: b.from_numpy(a, dtype))
    return x, w

x, w = build()
limiter = fix_threads(threads, False)
b.forward(x, w, config); sync()
del x, w  # the first build, freed: the timed calls run on the second
x, w = build()
b.forward(x, w, config); sync()  # untimed
ts, start = [], time.perf_counter()
while len(ts) < calls and (len(ts) < min_calls or time.perf_counter() - start < seconds):
    t0 = time.perf_counter()
    out = b.forward(x, w, config)
    sync()
    ts.append(time.perf_counter() - t0)
    del out
print(json.dumps({"median_s": statistics.median(ts)}))
"""


def one_process(spec: str, shape: tuple[int, ...], dtype: str, causal: bool, seed: int, calls: int = CALLS,
                threads: int | None = None) -> float:
    """Median of `calls` warm calls of one backend in a fresh process (RuntimeError if it fails)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(IMPORT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    arg = json.dumps([spec, list(shape), dtype, causal, seed, calls, min(calls, MIN_CALLS), SECONDS, threads])
    r = subprocess.run([sys.executable, "-c", _CHILD, arg], cwd=CWD, env=env, capture_output=True, text=True)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"fresh process for {spec} ended with status {r.returncode}: {tail}"[:300])
    return float(json.loads(lines[-1])["median_s"])


def fresh(backends: list[tuple[str, str]], shape: tuple[int, ...], dtype: str, causal: bool, seed: int,
          reference: str = "torch", procs: int = PROCS, calls: int = CALLS,
          threads: int | None = None) -> dict[str, dict[str, Any]]:
    """(name, spec) pairs timed in alternating fresh processes; per name: "medians_s" (one per
    process), "median_s", and against the reference "vs_torch" (median of the paired ratios)
    with "interval"; "error" instead when a process failed."""
    got: dict[str, list[float]] = {n: [] for n, _ in backends}
    errors: dict[str, str] = {}
    for p in range(procs):
        for name, spec in backends[p % len(backends):] + backends[:p % len(backends)]:
            if name in errors:
                continue
            try:
                got[name].append(one_process(spec, shape, dtype, causal, seed, calls, threads))
            except RuntimeError as e:
                errors[name] = str(e)
    out: dict[str, dict[str, Any]] = {}
    ref = got.get(reference) if reference not in errors else None
    for name, ms in got.items():
        if name in errors:
            out[name] = {"error": errors[name]}
            continue
        row: dict[str, Any] = {"medians_s": ms, "median_s": statistics.median(ms)}
        if ref:
            ratios = [a / b for a, b in zip(ms, ref)]
            row["vs_torch"] = statistics.median(ratios)
            row["interval"] = list(median_interval(ratios))
        out[name] = row
    return out
