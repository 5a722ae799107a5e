"""Timing one cell across backends: each backend in its own worker process, chunks alternating.

The process layout (pyperf and asv do the same): one long-lived worker process per backend,
so no backend shares its process, thread pools or allocator with another. At a cell every
worker times its first call, then the cell runs `ROUNDS` rounds; in round r every worker in
turn, in an order rotated by r, runs one chunk (warm calls for budget / ROUNDS seconds and at
least min_samples / ROUNDS calls, after an untimed call: the re-warm call in the first round,
none where calls take REWARM_BELOW_S or more; in later rounds the first call on inputs built
anew, because a call's time depends on where its arrays landed in memory and a cell's figure
must not hang on one placement) and answers only once its
threads have gone idle. Only one worker computes at any moment, slow drift (thermal, other
processes) is spread over all backends, and a worker that crashes costs its own cells only:
it is started again for the next cell. With a reference backend, a cell whose rounds leave
some backend's ratio to it undecided (conformance.speed.verdict) gets more rounds, up to
verdict.MAX_ROUNDS.

`LocalUnit` runs the same requests inside this process (`--in-process`): libraries then share
the process, which the layout above avoids.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

from conformance import IMPORT_ROOT, INSTALLED
from conformance.results import REPO_ROOT
from conformance.speed.verdict import MAX_ROUNDS, undecided
from conformance.speed.worker import Handler

# where a worker starts: the checkout, or installed the user's directory (their `mypkg` beside them)
CWD = None if INSTALLED else REPO_ROOT

ROUNDS = 3  # each backend sampled early, mid-cell and late; more rounds cost re-warm calls
# A call this long gains under 1% from a re-warm call (waking a pool costs microseconds,
# refilling caches a few milliseconds), so slow cells skip it and save a call per chunk.
REWARM_BELOW_S = 0.25


class WorkerDied(RuntimeError):
    """A worker process ended without answering (a crash in native code, a kill)."""


class LocalUnit:
    """A backend timed in this process."""

    layout = "in-process"

    def __init__(self, backend: Any, threads: int | None = None) -> None:
        self.name = backend.name
        self.handler = Handler(backend, threads, import_torch=True)

    def request(self, op: str, **kw: Any) -> dict[str, Any]:
        return self.handler.handle({"op": op, **kw})

    def close(self) -> None:
        self.handler.entry = None


class WorkerUnit:
    """A backend timed in its own process (`python -m conformance.speed.worker`)."""

    layout = "worker process per backend"

    def __init__(self, name: str, spec: str, threads: int | None = None) -> None:
        self.name, self.spec, self.threads = name, spec, threads
        self.proc: subprocess.Popen | None = None
        self.err: Any = None

    def start(self) -> None:
        self.close()
        self.err = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(IMPORT_ROOT), *filter(None, [env.get("PYTHONPATH")])])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conformance.speed.worker", self.spec, "-" if self.threads is None else str(self.threads)],
            cwd=CWD, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True, bufsize=1)

    def request(self, op: str, **kw: Any) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            if not op.startswith("prepare"):  # a dead worker holds no cell to work on
                raise WorkerDied(f"worker process for {self.name} is not running")
            self.start()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            raise WorkerDied(self._death())
        return json.loads(line)

    def _death(self) -> str:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        tail = ""
        if self.err is not None:
            self.err.seek(0)
            lines = [ln.strip() for ln in self.err.read().splitlines() if ln.strip()]
            tail = f": {lines[-1]}" if lines else ""
        return f"worker process for {self.name} ended with status {rc}{tail}"[:300]

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    assert self.proc.stdin is not None
                    self.proc.stdin.write('{"op": "quit"}\n')
                    self.proc.stdin.close()
                    self.proc.wait(timeout=10)
                except (OSError, subprocess.TimeoutExpired):
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        if self.err is not None:
            self.err.close()
            self.err = None


@dataclass
class Timing:
    """What one backend's timing at one cell found."""

    name: str
    first_call_s: float | None = None
    samples: list[float] = field(default_factory=list)
    error: str | None = None
    timer: str = "perf_counter_ns"
    memory: int | None = None
    memory_method: str | None = None
    settle_s: list[float] = field(default_factory=list)
    chunks: int = 0
    rounds: list[list[float]] = field(default_factory=list)  # each round's chunk, in round order
    faults: list[float] = field(default_factory=list)  # minor page faults per call, each chunk


def ask(unit: Any, t: Timing, op: str, **kw: Any) -> dict[str, Any] | None:
    """One request; an error (raised, replied, or the worker's death) lands in t.error."""
    try:
        r = unit.request(op, **kw)
    except WorkerDied as e:
        t.error, t.samples, t.rounds = str(e), [], []
        return None
    if "settle_s" in r:
        t.settle_s.append(r["settle_s"])
    if r.get("error"):
        t.error, t.samples, t.rounds = r["error"], [], []
        return None
    return r


def time_cell(units: list[Any], shape: tuple[int, ...], dtype: str, causal: bool, seed: int, budget_s: float,
              min_samples: int, max_samples: int = 2000, memory: bool = True, rounds: int = ROUNDS,
              rewarm: bool = True, op: str = "prepare", reference: str | None = None,
              max_rounds: int = MAX_ROUNDS, prepare: dict[str, Any] | None = None,
              fresh_inputs: bool = True) -> list[Timing]:
    """Time every unit at one cell; the Timings come back in the units' order.

    reference: the unit every other's ratio is taken against (verdict.py). After `rounds`
    rounds, while some unit's ratio to it is undecided, every unit runs one more round, up to
    `max_rounds` in all (more rounds pool more chunks, each of budget_s / rounds seconds).

    op: the worker request that builds the timed call, "prepare" (forward),
    "prepare_fwd_bwd" (forward plus backward) or "prepare_decode" (a decode step; `prepare`
    then gives its arguments instead of the forward's shape, dtype, causal and seed).

    fresh_inputs=False: later rounds time the call built once (a decode step's prefill is far
    dearer than the timed step, so its cache is not built anew each round).

    rewarm=False: chunks start without the untimed call (a lone process, called back to back
    after its first call, has nothing to re-warm)."""
    timings = [Timing(u.name) for u in units]
    prepare = prepare or {"shape": list(shape), "dtype": dtype, "causal": causal, "seed": seed}
    for u, t in zip(units, timings):
        r = ask(u, t, op, **prepare)
        if r is not None:
            t.first_call_s, t.timer = r["first_call_s"], r["timer"]
    live = [i for i, t in enumerate(timings) if t.error is None]
    per_chunk = math.ceil(min_samples / rounds)
    r = 0
    while live and (r < rounds or (r < max_rounds and _undecided(timings, live, reference))):
        k = r % len(live)
        for i in live[k:] + live[:k]:
            t = timings[i]
            # inputs built anew each round: a call's time depends on where its arrays landed
            # in memory, so a cell's figure is pooled over `rounds` placements, not one
            if r > 0 and fresh_inputs and (ask(units[i], t, "release") is None
                                           or ask(units[i], t, op, **prepare) is None):
                continue
            last = t.samples[-1] if t.samples else t.first_call_s
            reply = ask(units[i], t, "time", min_calls=per_chunk, seconds=budget_s / rounds,
                        max_calls=max(1, max_samples // rounds),
                        rewarm=rewarm and r == 0 and (last is None or last < REWARM_BELOW_S))
            if reply is not None:
                t.samples.extend(reply["samples"])
                t.rounds.append(list(reply["samples"]))
                if reply.get("faults_per_call") is not None:
                    t.faults.append(reply["faults_per_call"])
                t.chunks += 1
        live = [i for i in live if timings[i].error is None]
        r += 1
    for i in live if memory else []:  # untimed: tracing and peak statistics would distort a timed call
        t = timings[i]
        try:
            reply = units[i].request("memory")
            t.settle_s += [reply["settle_s"]] if "settle_s" in reply else []
            t.memory, t.memory_method = reply.get("memory"), reply.get("memory_method") or reply.get("error")
        except WorkerDied as e:  # the timing stands; only the memory figure is lost
            t.memory_method = f"failed: {e}"[:200]
    for u, t in zip(units, timings):
        try:
            u.request("release")
        except WorkerDied:
            pass  # already recorded, or the cell is over anyway: restarted at the next cell
    return timings


def _undecided(timings: list[Timing], live: list[int], reference: str | None) -> bool:
    """Whether the rounds so far leave some live unit's ratio to the reference undecided."""
    if reference is None:
        return False
    return bool(undecided({timings[i].name: timings[i].rounds for i in live}, reference))
