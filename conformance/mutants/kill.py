"""Running the suite on the mutants: which check kills each mutant, per dtype.

For each (mutant, dtype) the checks run in catalogue order through `engine.run_check`, the
same judge as `python -m conformance`, and stop at the first failure: "killed by <check>".
A mutant that passes every check survived, which means the suite has a hole (or the tolerance
is too loose in that dtype). The control, the correct `PlainBackend` every mutant derives
from, runs first and must pass every check: a check that fails it is a suite bug, and would
make its kills meaningless. A fresh backend object per (mutant, dtype), a fixed Hypothesis
seed and no example database make the table the same on every run of the same code.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from conformance.suite import profiles
from conformance.suite.checks import catalogue
from conformance.mutants.base import PlainBackend
from conformance.mutants.catalogue import MUTANTS, by_name

DTYPES = ("float32", "float16")
DEFAULT_SEED = 0


@dataclass
class Verdict:
    """One mutant at one dtype."""

    mutant: str
    dtype: str
    outcome: str  # killed | survived | n/a | error
    check: str | None = None  # the killing check
    step: int | None = None
    reason: str = ""  # the check's failure message, or why n/a, or the suite error
    checks_run: int = 0
    passed: int = 0  # checks passed (the others run were unsupported, or the last one failed)
    duration_s: float = 0.0
    killers: list[str] = field(default_factory=list)  # every failing check, with --every-check

    def label(self) -> str:
        if self.mutant == PlainBackend.name:  # the control: a correct backend must pass everything
            if self.outcome == "survived":
                return f"passes all {self.passed} checks (control)"
            return f"FAILS {self.check}: the suite rejects a correct backend"
        if self.outcome == "killed":
            more = f" +{len(self.killers) - 1} more" if len(self.killers) > 1 else ""
            return f"killed by {self.check} ({'end to end' if self.step is None else f'step {self.step}'}){more}"
        if self.outcome == "n/a":
            return f"n/a ({self.reason})"
        if self.outcome == "error":
            return f"ERROR in {self.check}"
        return "SURVIVED"


@dataclass
class Report:
    profile: str
    seed: int
    dtypes: list[str]
    verdicts: list[Verdict] = field(default_factory=list)
    duration_s: float = 0.0

    def survivors(self) -> list[Verdict]:
        """Mutants that no check killed (or whose killing check erred): holes in the suite."""
        return [v for v in self.verdicts if v.mutant != PlainBackend.name and v.outcome in ("survived", "error")]

    def control_failures(self) -> list[Verdict]:
        """Checks that failed the correct PlainBackend: suite bugs, which make every kill suspect."""
        return [v for v in self.verdicts if v.mutant == PlainBackend.name and v.outcome != "survived"]

    def to_dict(self) -> dict:
        rows = []
        for m in dict.fromkeys(v.mutant for v in self.verdicts):
            cls = backends().get(m)
            rows.append({"name": m, "bug": bug(cls) if cls else "",
                         "results": {v.dtype: asdict(v) for v in self.verdicts if v.mutant == m}})
        return {"profile": self.profile, "seed": self.seed, "dtypes": self.dtypes,
                "duration_s": round(self.duration_s, 2), "mutants": rows}


def backends() -> dict[str, type[PlainBackend]]:
    """The control and every mutant, by name."""
    return {PlainBackend.name: PlainBackend, **by_name()}


def bug(cls: type) -> str:
    """The first line of a mutant's docstring: its bug."""
    return (cls.__doc__ or "").strip().splitlines()[0]


def load_profile(name: str) -> None:
    """Make Hypothesis profile `name` current, without the example database (reruns stay equal)."""
    from hypothesis import settings

    profiles.load(name)
    settings.register_profile(f"{name}-no-database", parent=settings.get_profile(name), database=None)
    settings.load_profile(f"{name}-no-database")


def run_backend(backend: object, dtype: str, seed: int, stop_at_first: bool = True) -> list[tuple]:
    """(check, Result) for each check in catalogue order, stopping at the first failure if asked.

    The Hypothesis profile must already be loaded (`load_profile`).
    """
    from hypothesis.errors import HypothesisWarning
    from hypothesis.reporting import with_reporter

    from conformance.suite.engine import run_check

    out = []
    # quiet: no "Falsifying example" prints or repr-size warnings between the table's rows
    with with_reporter(lambda text: None), warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", HypothesisWarning)
        # a mutant may name the checks that can kill it (`checks_first`: a group, e.g. the backward
        # mutants' "gradients", or a tuple of check names), run first so the early stop comes
        # without the rest; the rest still run, in catalogue order, if those pass
        for check in sorted(catalogue(), key=lambda c: first_rank(backend, c)):
            result = run_check(check, backend, dtype, seed=seed)
            out.append((check, result))
            if stop_at_first and result.outcome == "failed":
                break
    return out


def first_rank(backend: object, check: Any) -> int:
    """Where `check` goes in the mutant's order: its `checks_first` (group or names) before the rest."""
    first = getattr(backend, "checks_first", None)
    if first is None:
        return 0
    if isinstance(first, str):
        return 0 if check.group == first else 1
    return first.index(check.name) if check.name in first else len(first)


def run_mutant(cls: type[PlainBackend], dtype: str, seed: int = DEFAULT_SEED, every: bool = False) -> Verdict:
    """Run the checks on a fresh `cls()` at `dtype` until one kills it (all of them if `every`)."""
    t0 = time.perf_counter()
    if dtype == "float16" and cls.float16_na:
        return Verdict(cls.name, dtype, "n/a", reason=cls.float16_na)
    results = run_backend(cls(), dtype, seed, stop_at_first=not every)
    failed = [(c, r) for c, r in results if r.outcome == "failed"]
    v = Verdict(cls.name, dtype, "survived", checks_run=len(results),
                passed=sum(r.outcome == "passed" for _, r in results), killers=[c.name for c, _ in failed])
    if failed:
        check, first = failed[0]
        v.check, v.step, v.reason = check.name, check.step, first.reason
        v.outcome = "error" if first.reason.startswith("suite error") else "killed"
    v.duration_s = round(time.perf_counter() - t0, 3)
    return v


def _init_worker(profile: str) -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # one BLAS thread per worker: the workers are the parallelism
    except ImportError:
        pass
    load_profile(profile)


def _job(args: tuple[str, str, int, bool]) -> Verdict:
    name, dtype, seed, every = args
    return run_mutant(backends()[name], dtype, seed, every)


def run(mutants: Iterable[type[PlainBackend]] = MUTANTS, dtypes: Iterable[str] = DTYPES,
        profile: str = "mutants", seed: int = DEFAULT_SEED, processes: int = 2,
        control: bool = True, every: bool = False) -> Report:
    """Every mutant at every dtype, after the control (PlainBackend, which must pass every check).

    `processes` > 1 runs the jobs in worker processes; the longest (the control) go first.
    """
    t0 = time.perf_counter()
    dtypes = list(dtypes)
    todo = ([PlainBackend] if control else []) + [m for m in mutants if m is not PlainBackend]
    jobs = [(m.name, d, seed, every) for m in todo for d in dtypes]
    if processes > 1 and len(jobs) > 1:
        ctx = multiprocessing.get_context("spawn")  # no forked BLAS or Hypothesis state
        with ctx.Pool(min(processes, len(jobs)), initializer=_init_worker, initargs=(profile,)) as pool:
            verdicts = pool.map(_job, jobs, chunksize=1)
    else:
        load_profile(profile)
        verdicts = [_job(j) for j in jobs]
    return Report(profile, seed, dtypes, verdicts, time.perf_counter() - t0)


def table(report: Report) -> str:
    """The printed table: mutant | bug | one column per dtype; then the totals."""
    names = list(dict.fromkeys(v.mutant for v in report.verdicts))
    cell = {(v.mutant, v.dtype): v.label() for v in report.verdicts}
    rows = [["mutant", "bug"] + report.dtypes]
    rows += [[n, bug(backends()[n])] + [cell[(n, d)] for d in report.dtypes] for n in names]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    for d in report.dtypes:
        vs = [v for v in report.verdicts if v.dtype == d and v.mutant != PlainBackend.name]
        counted = [v for v in vs if v.outcome != "n/a"]
        killed = sum(v.outcome == "killed" for v in counted)
        na = len(vs) - len(counted)
        lines.append(f"{d}: {killed}/{len(counted)} killed" + (f" ({na} n/a)" if na else "")
                     + (f", SURVIVED: {', '.join(v.mutant for v in counted if v.outcome != 'killed')}"
                        if killed < len(counted) else ""))
    for v in report.verdicts:
        if len(v.killers) > 1 and v.mutant != PlainBackend.name:
            lines.append(f"  {v.mutant} [{v.dtype}] killed by {len(v.killers)} checks: {', '.join(v.killers)}")
    for v in report.control_failures():
        lines.append(f"CONTROL FAILED at {v.dtype}: {v.check}: {v.reason}")
    lines.append(f"profile {report.profile}, seed {report.seed}, {len(report.verdicts)} runs "
                 f"in {report.duration_s:.1f} s on {os.cpu_count()} CPUs")
    return "\n".join(lines)
