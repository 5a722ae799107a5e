"""`python -m conformance.mutants`: which check kills each mutant, per dtype (`nox -s mutants`).

The control, PlainBackend (correct), runs first and must pass every check. Exit status: 0 every
mutant killed (or n/a in a dtype, with the reason) and the control passed; 1 some mutant
survived or the control failed; 2 bad command line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conformance.suite import profiles
from conformance.mutants.base import PlainBackend
from conformance.mutants.catalogue import MUTANTS, by_name
from conformance.mutants.kill import DEFAULT_SEED, DTYPES, run, table
from conformance.usage import OneLineParser, UsageError, add_workers, report, workers_count
from spec.config import FLOAT_DTYPES


PROG = "python -m conformance.mutants"


def parse_args(argv: list[str]):
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="mutants", help=f"Hypothesis profile: {', '.join(profiles.PROFILES)}")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"Hypothesis seed (default {DEFAULT_SEED})")
    p.add_argument("--mutant", action="extend", nargs="+", default=[], metavar="NAME",
                   help="mutants to run (default all; see --list)")
    p.add_argument("--dtype", action="extend", nargs="+", default=[],
                   help=f"dtypes (default {' '.join(DTYPES)})")
    p.add_argument("--out", default=None, help="also write <out>/mutants.json")
    add_workers(p, 2, "worker processes (1: in process)", aliases=("-j", "--processes"))
    p.add_argument("--no-control", action="store_true", help="skip the control run of the correct PlainBackend")
    p.add_argument("--every-check", action="store_true",
                   help="run every check on every mutant (no early stop) and list all the checks that kill it")
    p.add_argument("--list", action="store_true", help="print the mutants and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        return report(PROG, e)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:30s} {(m.__doc__ or '').strip().splitlines()[0]}")
        return 0
    known = by_name()
    errors = []
    if args.profile not in profiles.PROFILES:
        errors.append(f"unknown profile {args.profile!r}; valid: {', '.join(profiles.PROFILES)}")
    errors += [f"unknown mutant {m!r}; see --list" for m in args.mutant if m not in known]
    errors += [f"unknown dtype {d!r}; valid: {', '.join(FLOAT_DTYPES)}" for d in args.dtype if d not in FLOAT_DTYPES]
    errors += [f"dtype {d!r}: the mutants compute in float64, float32, float16 only"
               for d in args.dtype if d in FLOAT_DTYPES and d not in PlainBackend.capabilities.dtypes]
    try:
        args.workers = workers_count(args.workers)
    except UsageError as e:
        errors.append(str(e))
    if errors:
        return report(PROG, UsageError(errors[0]))
    mutants = [known[m] for m in dict.fromkeys(args.mutant)] or MUTANTS
    result = run(mutants, list(dict.fromkeys(args.dtype)) or DTYPES, args.profile, args.seed, args.workers,
                 control=not args.no_control, every=args.every_check)
    print(table(result))
    if args.out:
        path = Path(args.out) / "mutants.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
        except OSError as e:
            return report(PROG, UsageError(f"--out {args.out!r}: cannot write {path}: {e.strerror or e}"))
        print(f"written: {path}")
    return 1 if result.survivors() or result.control_failures() else 0


if __name__ == "__main__":
    sys.exit(main())
