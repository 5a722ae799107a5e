"""`python -m conformance.calibrate`: measure the numbers behind the tolerance model.

Runs correct backends through the suite's own checks, drawing through the same strategies
(sliced comparisons, padding, large logits, low precision and every size the suite draws),
and records every tolerance comparison the checks make. For each it computes

    k_needed = max(0, err - floor) / plain_err    the K this comparison needs, given the floor
    use      = err / allowed                      the share of the allowance it uses

and prints the worst per dtype, per (dtype, check) and per (backend, dtype). K in
`conformance/suite/tolerance.py` must keep the worst k_needed at or under K/2; a correct backend
should never fail. Mutant kills (`nox -s mutants`) show the other side: the same numbers
are tight enough.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from conformance import COMMAND
from conformance.suite.activations import DISTRIBUTIONS
from conformance.suite.checks import CheckFailure, catalogue
from conformance.suite.calls import Runner
from conformance.suite.tolerance import FLOOR, K
from conformance.usage import OneLineParser, UsageError, add_workers, report, workers_count

DEFAULT_BACKENDS = ("numpy", "torch", "torch-sdpa", "torch-mha")


@dataclass
class Sample:
    """One tolerance comparison made by a check on a correct backend."""

    backend: str
    dtype: str
    check: str
    what: str
    err: float
    plain_err: float
    floor: float
    allowed: float
    case: str

    @property
    def k_needed(self) -> float:
        over = max(0.0, self.err - self.floor)
        if over == 0.0:
            return 0.0
        return math.inf if self.plain_err == 0.0 else over / self.plain_err

    @property
    def use(self) -> float:
        return self.err / self.allowed if self.allowed > 0 else (0.0 if self.err == 0 else math.inf)


def recorder(backend: Any, dtype: str, check: str, sink: list[Sample], case: list[str]) -> Any:
    """A Runner observer that keeps every comparison a check makes, passed or not (`case[0]`: the
    case being run, set by the caller)."""

    def observe(what: str, c: Any) -> None:
        sink.append(Sample(backend.name, dtype, check, what, c.err, c.plain_err, c.allowed - K * c.plain_err,
                           c.allowed, case[0]))

    return observe


def calibrate_one(spec: str, dtype: str, examples: int, seed: int, only: tuple[str, ...] = (),
                  values: str | None = None) -> tuple[list[Sample], list[str], int]:
    """Every supported check on one backend and dtype: (samples, failures, cases run). `values`:
    every drawn case of that distribution (strategies.FORCED_VALUES), None: drawn as the suite does."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hyp_seed

    from conformance.suite import strategies
    from impls.registry import resolve

    strategies.FORCED_VALUES = values
    info = resolve(spec)
    samples: list[Sample] = []
    failures: list[str] = []
    count = [0]
    for check in catalogue():
        if check.unsupported(info.backend, dtype) or (only and check.name not in only):
            continue
        current = [""]  # the case being run, for the samples
        run = Runner(info.backend, dtype, observers=[recorder(info.backend, dtype, check.name, samples, current)])
        body = _body(check, run, count, failures, current)
        # calibration times nothing, so slow draws are no health problem; everything else stays on
        test = settings(max_examples=examples, database=None, deadline=None, phases=[Phase.generate],
                        suppress_health_check=[HealthCheck.too_slow])(given(check.cases(info.backend, dtype))(body))
        hyp_seed(seed)(test)()
    return samples, failures, count[0]


def _body(check: Any, run: Runner, count: list[int], failures: list[str], current: list[str]):
    def body(case: Any) -> None:
        count[0] += 1
        current[0] = case.describe()[:300]
        try:  # a failure is recorded and calibration goes on: no shrinking, no stop
            check.fn(run, case)
        except CheckFailure as e:
            failures.append(f"{run.backend.name} {run.dtype} {check.name}: {str(e)[:400]}")

    return body


def _worst(samples: list[Sample]) -> Sample:
    return max(samples, key=lambda s: (s.k_needed, s.use))


def summarise(samples: list[Sample], cases: dict[str, int], failures: list[str]) -> dict[str, Any]:
    """The tables the command prints, as data (also written with --json)."""
    by_dtype: dict[str, list[Sample]] = defaultdict(list)
    by_check: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    by_backend: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in samples:
        by_dtype[s.dtype].append(s)
        by_check[(s.dtype, s.check)].append(s)
        by_backend[(s.backend, s.dtype)].append(s)

    def row(group: list[Sample]) -> dict[str, Any]:
        w = _worst(group)
        return {"comparisons": len(group), "worst_k_needed": w.k_needed,
                "worst_use": max(s.use for s in group), "worst_at": asdict(w)}

    return {"K": K, "floors": FLOOR, "cases": cases, "failures": failures,
            "per_dtype": {d: row(g) for d, g in sorted(by_dtype.items())},
            "per_check": {f"{d} {c}": row(g) for (d, c), g in sorted(by_check.items())},
            "per_backend": {f"{b} {d}": row(g) for (b, d), g in sorted(by_backend.items())}}


def _print(summary: dict[str, Any]) -> None:
    print(f"K = {K:g}; floors: " + ", ".join(f"{d} {f:.3g}" for d, f in FLOOR.items()))
    print(f"margin rule: worst k_needed <= K/2 = {K / 2:g}")
    print(f"\n{'dtype':9s} {'cases':>6s} {'compared':>9s} {'worst k_needed':>15s} {'worst use':>10s}  where")
    for d, r in summary["per_dtype"].items():
        w = r["worst_at"]
        print(f"{d:9s} {summary['cases'].get(d, 0):6d} {r['comparisons']:9d} {r['worst_k_needed']:15.3g} "
              f"{r['worst_use']:10.3g}  {w['backend']} {w['check']}")
    for title, key in (("per check", "per_check"), ("per backend", "per_backend")):
        print(f"\n{title}:\n{'':40s} {'compared':>9s} {'worst k_needed':>15s} {'worst use':>10s}")
        for name, r in summary[key].items():
            print(f"{name:40s} {r['comparisons']:9d} {r['worst_k_needed']:15.3g} {r['worst_use']:10.3g}")
    print(f"\nfailures of correct backends: {len(summary['failures'])}")
    for f in summary["failures"]:
        print(f"  {f}")


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog=f"{COMMAND} calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--backend", action="append", default=[], help=f"default: {' '.join(DEFAULT_BACKENDS)}")
    p.add_argument("--dtype", action="append", default=[], help="default: every dtype a backend declares")
    p.add_argument("--cases", type=int, default=5000,
                   help="cases per dtype, spread evenly over its (backend, check) pairs (default 5000)")
    p.add_argument("--check", action="append", default=[], help="default: every check")
    p.add_argument("--seed", type=int, default=0, help="Hypothesis seed (default 0)")
    p.add_argument("--values", choices=DISTRIBUTIONS, default=None,
                   help="draw every case's values from this distribution (default: drawn as the suite "
                        "does; a check that asks for one, such as the large-logit checks' gaussian, keeps it)")
    add_workers(p, 2, aliases=("-j", "--jobs"))
    p.add_argument("--json", default=None, help="also write the summary to this file")
    try:
        args = p.parse_args(sys.argv[1:] if argv is None else argv)
        args.workers = workers_count(args.workers)
        if args.cases < 1:
            raise UsageError(f"--cases must be at least 1, got {args.cases}")
    except UsageError as e:
        return report(p.prog, e)
    from impls.registry import BackendSpecError, resolve_all

    try:
        infos = resolve_all(args.backend or list(DEFAULT_BACKENDS))
    except BackendSpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    jobs = []
    pairs: dict[str, int] = defaultdict(int)  # dtype -> supported (backend, check) pairs
    for info in infos:
        if info.skip_reason:
            print(f"{info.backend.name}: skipped: {info.skip_reason}")
            continue
        for dtype in info.backend.capabilities.dtypes:
            if not args.dtype or dtype in args.dtype:
                jobs.append((info.spec, dtype))
                pairs[dtype] += sum(not c.unsupported(info.backend, dtype) for c in catalogue()
                                    if not args.check or c.name in args.check)
    examples = {d: max(1, math.ceil(args.cases / n)) for d, n in pairs.items() if n}
    t0 = time.perf_counter()
    samples: list[Sample] = []
    failures: list[str] = []
    cases: dict[str, int] = defaultdict(int)
    with ProcessPoolExecutor(args.workers, initializer=_one_thread) as pool:
        futures = [(spec, dtype, pool.submit(calibrate_one, spec, dtype, examples[dtype], args.seed,
                                                        tuple(args.check), args.values))
                   for spec, dtype in jobs]
        for spec, dtype, fut in futures:
            s, f, n = fut.result()
            samples += s
            failures += f
            cases[dtype] += n
            print(f"  {spec} {dtype}: {n} cases, {len(s)} comparisons, {len(f)} failures "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    summary = summarise(samples, dict(cases), failures)
    _print(summary)
    print(f"\n{sum(cases.values())} cases in {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1, default=str)
    return 1 if failures else 0


def _one_thread() -> None:
    """One BLAS/OpenMP thread per worker process, as the suite runs."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
