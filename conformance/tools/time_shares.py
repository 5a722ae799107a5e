"""`python -m conformance time-shares RESULTS.json`: where a run's workers spent their time.

Each record of a conformance run carries `time_s`, its key's seconds by share
(`conformance.suite.timeshare`: golden, plain, memo, backend, check, hypothesis, harness, and a
worker's start-up on its first key). This sums them by dtype and prints the table of
docs/sizes.md: seconds and the share of the workers' total, per dtype and for the run.

`--measure` runs every check in this one process instead and prints its shares: the way to
compare two versions of the suite on the same draws (docs/sizes.md measured its changes so).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conformance import COMMAND
from conformance.suite.timeshare import SHARES
from conformance.usage import OneLineParser, UsageError, report

#: What each share is, for the table's first column.
LABELS = {
    "golden": "golden (spec in float64 / long double, step traces)",
    "plain": "plain references (runs in the dtype)",
    "memo": "reference memo (hashing, copies)",
    "backend": "backend calls",
    "check": "checks' own work (comparisons, state)",
    "hypothesis": "Hypothesis (drawing cases, engine)",
    "harness": "harness per key (records, leak watch)",
    "start-up": "start-up (workers, imports, each backend's first load)",
}


def tally(records: list[dict[str, Any]]) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
    """(seconds by dtype by share, examples by dtype) over the records that carry `time_s`."""
    seconds: dict[str, dict[str, float]] = {}
    examples: dict[str, int] = {}
    for r in records:
        spent = r.get("time_s")
        if not spent:
            continue
        by_share = seconds.setdefault(r["dtype"], {})
        for share in SHARES:  # a later version's other entries are not seconds of these shares
            by_share[share] = by_share.get(share, 0.0) + float(spent.get(share, 0.0))
        examples[r["dtype"]] = examples.get(r["dtype"], 0) + int(r.get("examples") or 0)
    return seconds, examples


def table(records: list[dict[str, Any]], wall_s: float | None = None) -> str:
    """The markdown table: one row per share, a column per dtype and one for the whole run."""
    seconds, examples = tally(records)
    if not seconds:
        raise ValueError("no record carries time_s: the run predates time shares, or ran no check")
    whole = {s: sum(by.get(s, 0.0) for by in seconds.values()) for s in SHARES}
    total = sum(whole.values())
    # start-up is a process's, paid on whichever key came first: in the run's column only
    own = {d: sum(v for s, v in by.items() if s != "start-up") for d, by in seconds.items()}
    dtypes = sorted(seconds, key=lambda d: -own[d])
    cols = dtypes + ["all"]

    def cell(value: float, of: float) -> str:
        return f"{value:.1f} s ({100 * value / of:.0f}%)" if of else "0"

    lines = ["| share | " + " | ".join(cols) + " |", "| --- |" + " --- |" * len(cols)]
    for share in SHARES:
        row = ["-" if share == "start-up" else cell(seconds[d].get(share, 0.0), own[d]) for d in dtypes]
        lines.append(f"| {LABELS[share]} | " + " | ".join(row + [cell(whole[share], total)]) + " |")
    lines.append("| **workers' total** | " + " | ".join(
        [f"{own[d]:.1f} s" for d in dtypes] + [f"{total:.1f} s"]) + " |")
    lines.append("| examples | " + " | ".join([str(examples[d]) for d in dtypes] + [str(sum(examples.values()))])
                 + " |")
    if wall_s:
        lines.append(f"\nThe suite's wall time: {wall_s:.1f} s (the workers' total is summed over workers).")
    return "\n".join(lines)


def measure(backends: list[str], dtypes: list[str], seed: int, profile: str = "default") -> tuple[dict, int]:
    """Every check on `backends` at `dtypes` in this process, in the run's order (dtype, check,
    backend), one BLAS thread: (seconds by share, examples). For comparing a change to the suite
    on the same draws: no workers, no start-up, no other process's noise in the totals."""
    from threadpoolctl import threadpool_limits

    from conformance.suite import engine, profiles, timeshare
    from conformance.suite.checks import catalogue
    from impls.registry import BackendSpecError, resolve

    profiles.load(profile)
    try:
        resolved = [resolve(b) for b in backends]
    except BackendSpecError as e:
        raise UsageError(str(e)) from None
    unusable = [f"{i.spec} ({i.skip_reason or i.error})" for i in resolved if i.skip_reason or i.error]
    if unusable:
        raise UsageError(f"cannot run here: {', '.join(unusable)}")
    before, examples = timeshare.totals(), 0
    with threadpool_limits(1):
        for dtype in dtypes:
            for check in catalogue():
                for i in resolved:
                    examples += engine.run_check(check, i.backend, dtype, seed=seed).examples or 0
    return timeshare.since(before), examples


def main(argv: list[str] | None = None) -> int:
    """Print the time-shares table of a run's results.json (or its run directory)."""
    from conformance.results import ResultsError, load

    p = OneLineParser(prog=f"{COMMAND} time-shares", description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="?", help="a run's results.json, or the directory holding it")
    p.add_argument("--measure", action="store_true",
                   help="instead: run every check in this process (--backend, --dtype, --seed) and print its shares")
    p.add_argument("--backend", action="append", default=[], help="with --measure (repeatable; default numpy)")
    p.add_argument("--dtype", action="append", default=[], help="with --measure (repeatable; default float32)")
    p.add_argument("--seed", type=int, default=1, help="with --measure (default 1)")
    p.add_argument("--profile", default="default", help="with --measure: the suite's profile (default: default)")
    try:
        args = p.parse_args(argv)
        if args.measure:
            from spec.config import FLOAT_DTYPES

            from conformance.suite.profiles import PROFILES

            bad = [d for d in args.dtype if d not in FLOAT_DTYPES]
            if bad or args.results:
                raise UsageError(f"--dtype {bad[0]!r}: valid: {', '.join(FLOAT_DTYPES)}" if bad else
                                 "--measure reads no results file")
            if args.profile not in PROFILES:
                raise UsageError(f"--profile {args.profile!r}: valid: {', '.join(PROFILES)}")
            spent, examples = measure(args.backend or ["numpy"], args.dtype or ["float32"], args.seed, args.profile)
            print(f"{examples} examples; " + ", ".join(f"{s} {spent.get(s, 0.0):.1f} s" for s in SHARES[:-2]), flush=True)
            return 0
        if not args.results:
            raise UsageError("give a run's results.json (or its directory), or --measure")
        path = Path(args.results)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise UsageError(f"{path}: no such file; give a run's results.json or its directory")
        try:
            runs = [r for r in load(path)["runs"] if r.get("conformance")]
        except ResultsError as e:
            raise UsageError(str(e)) from None
        if not runs:
            raise UsageError(f"{path}: no conformance section; time shares come from `{COMMAND} run`")
        tables = []
        for run in runs:
            section = run["conformance"]
            try:
                tables.append(table(section["records"], section.get("duration_s")))
            except ValueError as e:
                raise UsageError(f"{path}: {e}") from None
    except UsageError as e:
        return report(p.prog, e)
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
