"""`--check-isolation`: is a backend's figure in the bench the figure it has alone?

Each backend is timed two ways at each cell: inside the harness (its worker among the other
backends' workers, chunks alternating, exactly as the bench runs) and alone (a fresh process
that loads only that backend, with no other backend's process beside it, timed by the same
chunks for the same budget and at least as many calls). What differs between the ways is only
the company a backend keeps, which is what the bench must not depend on. The two ways
alternate, harness first in even passes and alone first in odd ones, so drift in the machine's
load hits both alike. Samples of all passes are pooled per way. A shape where some backend's
harness median is off its alone median by more than `LIMIT` after `PASSES` passes gets more
passes (pooled with the first), up to `MAX_PASSES`: two medians of about 20 calls that spread
by 20-30% differ by 10% by chance alone. A cell still off by more than `LIMIT` then is flagged,
and the command exits 1, unless the two medians are closer than the calls' own spread (the
mean of the two ways' interquartile ranges): then this run cannot tell the two ways apart at
that noise, and the table says "cannot tell" instead of a confident OFF (a shared 2-core
machine spreads single calls by 14-30% with nothing else running, so a 10% limit on their
medians alone failed there by construction).

A third way checks "alone" itself: an independent timer (fresh.py: no harness code, fresh
processes alternating between backends, inputs built twice, warm calls) gives each backend's
ratio to torch with the interval its processes span; the table says whether the alone way's
ratio agrees with it (inside that interval, or within `LIMIT` of its median). That column
informs; it does not change the exit status.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, TextIO

from conformance.speed import cells as cells_mod
from conformance.speed import fresh as fresh_mod
from conformance.speed.harness import summarize
from conformance.speed.table import ms

CHECK_SHAPES = [(64, 64, 512, 512, 8), (4, 512, 512, 512, 8), (1, 4096, 512, 512, 8)]  # B, T, d_in, d_out, H
CHECK_BACKENDS = ("numpy", "torch", "torch-sdpa", "torch-mha")
LIMIT = 0.10  # the bench's median may differ from the alone median by at most 10%
PASSES = 2  # one pass harness-first, one alone-first: a load change between ways cancels out
MAX_PASSES = 6  # a shape with a cell off by more than LIMIT gets more passes, up to this many in all
REFERENCE = "torch"


@dataclass
class Row:
    """One backend at one cell, both ways."""

    shape: tuple[int, ...]
    backend: str
    harness: dict[str, Any]
    alone: dict[str, Any]
    error: str | None = None
    ratio: float | None = None  # harness median / alone median
    vs_torch_harness: float | None = None
    vs_torch_alone: float | None = None
    fresh: dict[str, Any] | None = None  # fresh.fresh()'s entry for this backend and cell
    passes: int = PASSES  # passes pooled at this shape

    @property
    def fresh_agrees(self) -> bool | None:
        """Whether the alone way's ratio to torch agrees with the independent fresh timer's."""
        f = self.fresh or {}
        if self.vs_torch_alone is None or f.get("vs_torch") is None:
            return None
        lo, hi = f["interval"]
        return lo <= self.vs_torch_alone <= hi or abs(self.vs_torch_alone / f["vs_torch"] - 1) <= LIMIT

    @property
    def cannot_tell(self) -> bool:
        """Off by more than LIMIT, but the medians are closer than the mean of the two ways'
        interquartile ranges: this run's noise cannot separate the two ways."""
        if self.error is not None or self.ratio is None or abs(self.ratio - 1) <= LIMIT:
            return False
        h, a = self.harness, self.alone
        try:
            width = ((h["p75_s"] - h["p25_s"]) + (a["p75_s"] - a["p25_s"])) / 2
            return abs(h["median_s"] - a["median_s"]) <= width
        except (KeyError, TypeError):  # no samples' quartiles: nothing says it is noise
            return False

    @property
    def flagged(self) -> bool:
        return self.error is not None or self.ratio is None or (abs(self.ratio - 1) > LIMIT and not self.cannot_tell)


def alone(name: str, spec: str, shape: tuple[int, ...], dtype: str, causal: bool, seed: int, budget_s: float,
          min_samples: int, threads: int | None) -> cells_mod.Timing:
    """One backend at one cell in a fresh process of its own, with no other backend's process
    beside it: its first call, then the same chunks as in the harness (inputs built anew for
    each, so both ways pool the same number of memory placements)."""
    unit = cells_mod.WorkerUnit(name, spec, threads)
    try:
        (t,) = cells_mod.time_cell([unit], shape, dtype, causal, seed, budget_s, min_samples, memory=False)
    finally:
        unit.close()
    return t


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def check(plan: Any, out: TextIO, passes: int = PASSES, fresh_procs: int = fresh_mod.PROCS,
          max_passes: int = MAX_PASSES) -> list[Row]:
    """Time plan.backends at plan.shapes both ways (first dtype), `passes` passes each, then more
    passes (up to `max_passes`) at the shapes some backend of which is not yet within LIMIT; then
    the fresh timer (fresh_procs processes per backend and cell; 0: not at all). Prints progress
    and the table."""
    from conformance.speed.bench import make_units  # lazily: runner imports the reports package

    dtype, infos = plan.dtypes[0], plan.backends
    units = make_units(plan, infos)
    pooled: dict[tuple[tuple[int, ...], str, str], list[float]] = {}
    errors: dict[tuple[tuple[int, ...], str], str] = {}
    done = {tuple(shape): 0 for shape in plan.shapes}
    load0, t0 = _load(), time.perf_counter()

    def one_pass(shape: tuple[int, ...]) -> None:
        p = done[shape]
        for way in (("harness", "alone") if p % 2 == 0 else ("alone", "harness")):
            print(f"  B={shape[0]} T={shape[1]} d={shape[2]} H={shape[4]}: pass {p + 1}, {way}", file=out, flush=True)
            if way == "harness":
                timings = cells_mod.time_cell(units, shape, dtype, plan.causal, plan.seed, plan.budget_s,
                                              plan.min_samples, plan.max_samples, memory=False)
            else:
                k = p % len(infos)
                timings = [alone(i.backend.name, i.spec, shape, dtype, plan.causal, plan.seed, plan.budget_s,
                                 plan.min_samples, plan.threads) for i in infos[k:] + infos[:k]]
            for t in timings:
                pooled.setdefault((shape, t.name, way), []).extend(t.samples)
                if t.error:
                    errors.setdefault((shape, t.name), f"{way}: {t.error}")
        done[shape] = p + 1

    names = [i.backend.name for i in infos]
    try:
        for shape in done:
            for _ in range(passes):
                one_pass(shape)
        # a cell off by more than LIMIT after `passes` passes may be the calls' noise: its shape
        # gets more passes, pooled with the first ones, up to max_passes; what is still off then is
        # flagged (or "cannot tell" within the calls' spread) as before
        while True:
            rows = _rows(list(done), names, pooled, errors)
            unsettled = [s for s in done if done[s] < max_passes and any(
                r.shape == s and r.error is None and r.ratio is not None and abs(r.ratio - 1) > LIMIT for r in rows)]
            if not unsettled:
                break
            for shape in unsettled:
                one_pass(shape)
    finally:
        for u in units:
            u.close()
    fresh_rows: dict[tuple[tuple[int, ...], str], dict[str, Any]] = {}
    for shape in done if fresh_procs else []:
        print(f"  B={shape[0]} T={shape[1]} d={shape[2]} H={shape[4]}: fresh timer, {fresh_procs} processes "
              "per backend", file=out, flush=True)
        got = fresh_mod.fresh([(i.backend.name, i.spec) for i in infos], shape, dtype, plan.causal, plan.seed,
                              REFERENCE, fresh_procs, threads=plan.threads)
        fresh_rows.update({(shape, n): f for n, f in got.items()})
    for r in rows:
        r.fresh = fresh_rows.get((r.shape, r.backend))
        r.passes = done[r.shape]
    print(render(rows, plan, passes, load0, _load(), time.perf_counter() - t0, max_passes), file=out, flush=True)
    return rows


def _rows(shapes: list, names: list[str], pooled: dict, errors: dict) -> list[Row]:
    rows = []
    for shape in shapes:
        here = [Row(shape, n, summarize(pooled.get((shape, n, "harness"), [])),
                    summarize(pooled.get((shape, n, "alone"), [])), errors.get((shape, n))) for n in names]
        for r in here:
            h, a = r.harness["median_s"], r.alone["median_s"]
            r.ratio = h / a if h and a else None
        ref = next((r for r in here if r.backend == REFERENCE and r.ratio is not None), None)
        for r in here:
            if ref is not None and r.ratio is not None:
                r.vs_torch_harness = r.harness["median_s"] / ref.harness["median_s"]
                r.vs_torch_alone = r.alone["median_s"] / ref.alone["median_s"]
        rows.extend(here)
    return rows


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def render(rows: list[Row], plan: Any, passes: int, load0: float | None, load1: float | None,
           seconds: float, max_passes: int = MAX_PASSES) -> str:
    """The table: per cell, both medians (with their spread), their ratio, and the verdict."""
    kind = "in-process" if plan.in_process else "worker process per backend"
    lines = [f"isolation check: {plan.dtypes[0]}, {'causal' if plan.causal else 'non-causal'}, harness layout: "
             f"{kind}; budget {plan.budget_s} s and at least {plan.min_samples} calls per cell per backend per way, "
             f"{passes} passes alternating the ways, up to {max_passes} at a shape with a cell off by more than "
             f"{100 * LIMIT:.0f}%; 1-minute load average {load0} at start, {load1} at the end "
             f"({seconds:.0f} s)",
             "", "| shape | backend | harness ms (spread) | alone ms (spread) | harness / alone | "
             "t/torch harness | t/torch alone | verdict | t/torch fresh [processes' interval] | alone vs fresh |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        B, T, d, _, H = r.shape
        cells = [f"B={B} T={T} d={d} H={H}" + (f" ({r.passes} passes)" if r.passes != passes else ""), r.backend]
        for s in (r.harness, r.alone):
            cells.append("-" if s["median_s"] is None else f"{ms(s['median_s'])} ({100 * s['spread']:.0f}%)")
        verdict = (f"ERROR {r.error}" if r.error else "no figure" if r.ratio is None
                   else f"OFF by {100 * (r.ratio - 1):+.0f}%" if r.flagged
                   else f"cannot tell ({100 * (r.ratio - 1):+.0f}%, within the calls' spread)" if r.cannot_tell
                   else "ok")
        cells += [_x(r.ratio), _x(r.vs_torch_harness), _x(r.vs_torch_alone), verdict, *_fresh_cells(r)]
        lines.append("| " + " | ".join(cells) + " |")
    bad = [r for r in rows if r.flagged]
    unsure = [r for r in rows if r.cannot_tell]
    lines += ["", f"{len(rows) - len(bad) - len(unsure)} of {len(rows)} cells within {100 * LIMIT:.0f}% of alone"
              + (f"; {len(unsure)} cannot tell (off by more than {100 * LIMIT:.0f}%, by less than their calls' "
                 "interquartile range: not flagged)" if unsure else "")
              + (f"; flagged: {', '.join(f'{r.backend} at B={r.shape[0]} T={r.shape[1]}' for r in bad)}" if bad else "")]
    judged = [r for r in rows if r.fresh_agrees is not None]
    if judged:
        lines.append(f"fresh timer: the alone way's ratio to {REFERENCE} agrees in "
                     f"{sum(bool(r.fresh_agrees) for r in judged)} of {len(judged)} cells (inside the fresh "
                     f"processes' interval or within {100 * LIMIT:.0f}% of their median; not part of the exit status)")
    return "\n".join(lines)


def _fresh_cells(r: Row) -> list[str]:
    f = r.fresh
    if not f:
        return ["-", "-"]
    if f.get("error"):
        return [f"ERROR {f['error']}", "-"]
    if f.get("vs_torch") is None:
        return ["-", "-"]
    lo, hi = f["interval"]
    agrees = r.fresh_agrees
    return [f"{f['vs_torch']:.2f} [{lo:.2f}-{hi:.2f}]", "-" if agrees is None else "agrees" if agrees else "DIFFERS"]
