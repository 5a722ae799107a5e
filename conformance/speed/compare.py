"""Speed history: each cell of a bench run against the same cell of an earlier results file.

`python -m conformance bench --compare OLD.json` times as usual, then compares what it wrote
with OLD; `--current NEW.json` compares two files without timing (a CI job keeping a baseline
artifact compares each run with it). Every cell both files have (forward; forward plus backward
with `--backward`; decode with `--decode`) prints new median / old median, and the command
exits 1 when some cell is slower.

A cell is *slower* only when both hold:
- its median grew past `1 + threshold` (SLOWDOWN, default 0.25), and
- its quartiles separate: the new p25 is above the old p75 (the middle halves of the two
  runs' calls do not overlap).
A run taken on a busy machine (1-minute load average above half the CPU count, or other
processes on more than BUSY_PERCENT of the CPUs at its start, as the bench warns) cannot back a
slowdown: measured here, three `--quick` runs at load average 20-25 on 2 cores put the same
cell's median 0.52x to 1.92x of another run's (48 pairs; ratios to torch 0.47x to 2.13x, so
dividing by torch does not cancel it), and 10 of 48 pairs read "slower" by the rule above. So
a slower cell with either run busy exits 3 ("rerun on a quiet machine"), not 1. On a quiet
machine the bench agrees with isolated timing within 10% (docs/speed.md), and 0.25 leaves
that spread twice over. `faster` is the mirror image.
Cells are matched by (kind, backend, dtype, B, T or L, d_in, d_out, heads, causal); a file
from another machine label is compared with a warning, since absolute times move with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

SLOWDOWN = 0.25
BUSY_PERCENT = 25  # as the bench's warning (conformance/speed/bench.py)


@dataclass
class Change:
    key: str
    old_s: float
    new_s: float
    verdict: str  # slower | faster | same

    @property
    def ratio(self) -> float:
        return self.new_s / self.old_s


def _run(doc: dict[str, Any], machine: str | None) -> dict[str, Any] | None:
    """The run with `machine`'s label and a speed section, else the first with one."""
    runs = [r for r in doc.get("runs") or [] if isinstance(r, dict) and isinstance(r.get("speed"), dict)]
    return next((r for r in runs if r.get("machine") == machine), runs[0] if runs else None)


def busy(run: dict[str, Any]) -> str | None:
    """Why a run's figures cannot back a slowdown (other processes on the cores), or None."""
    load = run["speed"].get("load_average") or {}
    cpus = (run.get("environment") or {}).get("cpu_count")
    worst = max((v for k, v in load.items() if k in ("start", "now", "end") and isinstance(v, (int, float))), default=None)
    if worst is not None and cpus and worst > 0.5 * cpus:
        return f"load average {worst:.1f} on {cpus} CPUs"
    pct = load.get("cpu_busy_percent_at_start")
    if isinstance(pct, (int, float)) and pct > BUSY_PERCENT:
        return f"other processes on {pct:.0f}% of the CPUs at its start"
    return None


def cells(speed: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every timed figure of a speed section by key: {"median_s", "p25_s", "p75_s"}."""
    out: dict[str, dict[str, float]] = {}
    for c in speed.get("cells") or []:
        shape = f"{c['dtype']} B={c['B']} T={c['T']} d={c['d_in']}/{c['d_out']} H={c['n_heads']}" \
                f"{' causal' if c.get('causal') else ''}"
        if c.get("median_s"):
            out[f"forward {c['backend']} {shape}"] = {k: c.get(k) for k in ("median_s", "p25_s", "p75_s")}
        if c.get("fwd_bwd_median_s"):
            out[f"fwd+bwd {c['backend']} {shape}"] = {k: c.get(f"fwd_bwd_{k}") for k in ("median_s", "p25_s", "p75_s")}
    for c in (speed.get("decode") or {}).get("cells") or []:
        if c.get("median_s"):
            out[f"decode {c['backend']} {c['dtype']} B={c['B']} L={c['L']}"] = {
                k: c.get(k) for k in ("median_s", "p25_s", "p75_s")}
    return out


def judge(old: dict[str, float], new: dict[str, float], threshold: float = SLOWDOWN) -> str:
    """slower, faster or same (the module doc's rule)."""
    o, n = old["median_s"], new["median_s"]
    o25, o75, n25, n75 = (x.get(k) or x["median_s"] for x, k in
                          ((old, "p25_s"), (old, "p75_s"), (new, "p25_s"), (new, "p75_s")))
    if n > o * (1 + threshold) and n25 > o75:
        return "slower"
    if o > n * (1 + threshold) and o25 > n75:
        return "faster"
    return "same"


@dataclass
class Comparison:
    changes: list[Change]
    only_old: list[str]
    only_new: list[str]
    warnings: list[str]
    busy: list[str]  # "old run: why" for each run on a busy machine


def compare(old_doc: dict[str, Any], new_doc: dict[str, Any], threshold: float = SLOWDOWN,
            machine: str | None = None) -> Comparison:
    new_run = _run(new_doc, machine)
    old_run = _run(old_doc, new_run.get("machine") if new_run else None)
    if new_run is None or old_run is None:
        which = "the new" if new_run is None else "the old"
        return Comparison([], [], [], [f"{which} file has no speed section: nothing to compare"], [])
    warnings = []
    if old_run.get("machine") != new_run.get("machine"):
        warnings.append(f"machines differ: old {old_run.get('machine')!r}, new {new_run.get('machine')!r} "
                        "(absolute times move with the machine)")
    old, new = cells(old_run["speed"]), cells(new_run["speed"])
    changes = [Change(k, old[k]["median_s"], new[k]["median_s"], judge(old[k], new[k], threshold))
               for k in new if k in old]
    loaded = [f"{name} run: {why}" for name, run in (("old", old_run), ("new", new_run)) if (why := busy(run))]
    return Comparison(changes, [k for k in old if k not in new], [k for k in new if k not in old], warnings, loaded)


def report(old_path: Path, new_path: Path, threshold: float = SLOWDOWN, out: TextIO | None = None) -> int:
    """Print the comparison. Exit status: 0 no cell slower; 1 some cell slower; 2 no cell in both
    files; 3 some cell slower but a run was busy, so the slowdown is not established
    (results.ResultsError on a bad file)."""
    import sys

    from conformance.results import load

    out = out or sys.stdout
    r = compare(load(old_path), load(new_path), threshold)
    print(f"speed against {old_path}: new median / old median per cell; slower = above {1 + threshold:.2f}x "
          f"with the quartiles apart (conformance/speed/compare.py)", file=out)
    for w in r.warnings + [f"busy machine, {b}" for b in r.busy]:
        print(f"  warning: {w}", file=out)
    for c in r.changes:
        mark = {"slower": "  SLOWER", "faster": "  faster"}.get(c.verdict, "")
        print(f"  {c.key:<60} {c.old_s * 1e3:10.3f} ms -> {c.new_s * 1e3:10.3f} ms  {c.ratio:5.2f}x{mark}", file=out)
    for k in r.only_old:
        print(f"  {k:<60} only in the old file", file=out)
    for k in r.only_new:
        print(f"  {k:<60} only in the new file", file=out)
    if not r.changes:
        print("no cell is in both files: nothing compared", file=out)
        return 2
    slower = [c for c in r.changes if c.verdict == "slower"]
    print(f"{len(r.changes)} cells compared: {len(slower)} slower, "
          f"{sum(c.verdict == 'faster' for c in r.changes)} faster", file=out)
    if slower and r.busy:
        print("not established: a run was taken on a busy machine, where medians move 0.5x-2x run to run; "
              "rerun on a quiet machine", file=out)
        return 3
    return 1 if slower else 0
