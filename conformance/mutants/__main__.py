"""`python -m conformance.mutants`: which check kills each mutant, per dtype (`nox -s mutants`).

The control, PlainBackend (correct), runs first and must pass every check. Exit status: 0 every
mutant killed (or n/a in a dtype, with the reason) and the control passed; 1 some mutant
survived or the control failed; 2 bad command line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from conformance import profiles
from conformance.mutants.base import PlainBackend
from conformance.mutants.catalogue import MUTANTS, by_name
from conformance.mutants.runner import DEFAULT_SEED, DTYPES, run, table
from spec.config import FLOAT_DTYPES


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m conformance.mutants", description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="mutants", help=f"Hypothesis profile: {', '.join(profiles.PROFILES)}")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"Hypothesis seed (default {DEFAULT_SEED})")
    p.add_argument("--mutant", action="extend", nargs="+", default=[], metavar="NAME",
                   help="mutants to run (default all; see --list)")
    p.add_argument("--dtype", action="extend", nargs="+", default=[],
                   help=f"dtypes (default {' '.join(DTYPES)})")
    p.add_argument("--out", default=None, help="also write <out>/mutants.json")
    p.add_argument("-j", "--processes", type=int, default=2, help="worker processes (default 2; 1: in process)")
    p.add_argument("--no-control", action="store_true", help="skip the control run of the correct PlainBackend")
    p.add_argument("--every-check", action="store_true",
                   help="run every check on every mutant (no early stop) and list all the checks that kill it")
    p.add_argument("--list", action="store_true", help="print the mutants and exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
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
    if args.processes < 1:
        errors.append(f"--processes must be at least 1, got {args.processes}")
    if errors:
        print(f"error: {errors[0]}", file=sys.stderr)
        return 2
    mutants = [known[m] for m in dict.fromkeys(args.mutant)] or MUTANTS
    report = run(mutants, list(dict.fromkeys(args.dtype)) or DTYPES, args.profile, args.seed, args.processes,
                 control=not args.no_control, every=args.every_check)
    print(table(report))
    if args.out:
        path = Path(args.out) / "mutants.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
        print(f"written: {path}")
    return 1 if report.survivors() or report.control_failures() else 0


if __name__ == "__main__":
    sys.exit(main())
