"""`python -m conformance`: check backends against the spec (what `nox -s conformance` runs).

Validates everything the user typed before starting (unknown backend, profile, dtype or
check: one line on stderr, exit status 2, no traceback), runs the pytest suite in parallel
with pytest-xdist, writes `<out>/results.json` as results arrive, then prints a summary.
Exit status: 0 every check passed (or was unsupported/skipped), 1 some check failed,
2 bad command line.
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
import time
from pathlib import Path

from conformance import profiles
from conformance.checks import catalogue
from impls.base import exposed_steps
from impls.registry import (
    DEFAULT_BACKENDS,
    BackendSpecError,
    available_names,
    resolve_all,
)
from spec.config import FLOAT_DTYPES

HERE = Path(__file__).resolve().parent
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class UsageError(ValueError):
    """A mistake on the command line; printed as one line, exit status 2."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m conformance", description=__doc__.splitlines()[0])
    p.add_argument("--backend", "-b", action="append", default=[], metavar="SPEC",
                   help="built-in name, module.path:attr, or installed entry point (repeatable; "
                        f"default: all built-ins: {', '.join(DEFAULT_BACKENDS)})")
    p.add_argument("--dtype", action="append", default=[], help=f"repeatable; default all: {', '.join(FLOAT_DTYPES)}")
    p.add_argument("--check", action="append", default=[], help="check name (repeatable; default all; see --list-checks)")
    p.add_argument("--profile", default="default", help=f"Hypothesis profile: {', '.join(profiles.PROFILES)}")
    p.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: random, recorded)")
    p.add_argument("--out", default="reports/latest", help="run directory (default reports/latest)")
    p.add_argument("--machine", default=None, help="label for this machine in reports (default: host name)")
    p.add_argument("-n", "--workers", default="auto", help="pytest-xdist workers: a number or auto")
    p.add_argument("--example-timeout", type=float, default=None,
                   help="per-example time limit in seconds (default 30; the first example gets 4x)")
    p.add_argument("--list-checks", action="store_true", help="print the checks and exit")
    p.add_argument("--list-backends", action="store_true", help="print the known backends and exit")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per test")
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> None:
    if args.profile not in profiles.PROFILES:
        raise UsageError(f"unknown profile {args.profile!r}; valid: {', '.join(profiles.PROFILES)}")
    for d in args.dtype:
        if d not in FLOAT_DTYPES:
            raise UsageError(f"unknown dtype {d!r}; valid: {', '.join(FLOAT_DTYPES)}")
    names = [c.name for c in catalogue()]
    for c in args.check:
        if c not in names:
            raise UsageError(f"unknown check {c!r}; see --list-checks (valid: {', '.join(names)})")
    if args.workers != "auto" and not (args.workers.isdigit()):
        raise UsageError(f"--workers must be a number or 'auto', got {args.workers!r}")
    if args.example_timeout is not None and args.example_timeout <= 0:
        raise UsageError(f"--example-timeout must be positive, got {args.example_timeout}")


def print_checks() -> None:
    for c in catalogue():
        where = "end to end" if c.step is None else f"step {c.step}"
        print(f"{c.name:40s} {where:11s} {c.doc}")


def _header(infos, args, seed: int) -> dict:
    backends = [{"name": i.backend.name, "spec": i.spec, "source": i.source,
                 "capabilities": i.backend.capabilities.to_dict(), "exposed_steps": list(exposed_steps(i.backend)),
                 "skip_reason": i.skip_reason} for i in infos]
    checks = [{"name": c.name, "step": c.step, "doc": c.doc} for c in catalogue()
              if not args.check or c.name in args.check]
    command = "python -m conformance " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return {"profile": args.profile, "seed": seed, "command": command.strip(), "backends": backends, "checks": checks}


def summarise(records: list[dict], infos, elapsed: float, out: Path) -> int:
    by = {}
    for r in records:
        by.setdefault(r["backend"], {"passed": 0, "failed": 0, "unsupported": 0, "skipped": 0})[r["outcome"]] += 1
    w = max([18] + [len(i.backend.name) + 1 for i in infos])
    print(f"\n{'backend':{w}s} {'passed':>7s} {'failed':>7s} {'unsupp.':>8s} {'skipped':>8s}  verdict")
    for info in infos:
        n = by.get(info.backend.name, {"passed": 0, "failed": 0, "unsupported": 0, "skipped": 0})
        if info.skip_reason:
            verdict = f"skipped: {info.skip_reason}"
        elif n["failed"]:
            verdict = "FAILS"
        else:
            verdict = "conforms" if n["passed"] else "nothing run"
        print(f"{info.backend.name:{w}s} {n['passed']:7d} {n['failed']:7d} {n['unsupported']:8d} {n['skipped']:8d}  {verdict}")
    failed = [r for r in records if r["outcome"] == "failed"]
    for r in failed[:20]:
        where = "end to end" if r.get("step") is None else f"step {r['step']}"
        print(f"\nFAILED {r['backend']} [{r['dtype']}] {r['check']} ({where})\n  {r['reason']}")
        if r.get("counterexample"):
            print(f"  example: {r['counterexample']}")
        if r.get("repro"):
            print(f"  reproduce: {r['repro']}")
    if len(failed) > 20:
        print(f"\n... and {len(failed) - 20} more failures: see {out / 'results.json'}")
    checks = len({r['check'] for r in records})
    print(f"\nchecked {len(records)} (backend, dtype, check) combinations, {checks} checks, in {elapsed:.1f} s; "
          f"results: {out / 'results.json'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.list_checks:
        print_checks()
        return 0
    if args.list_backends:
        print("\n".join(available_names()))
        return 0
    try:
        validate(args)
        infos = resolve_all(args.backend or list(DEFAULT_BACKENDS))
    except (UsageError, BackendSpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import pytest  # after validation: a usage error should not pay for pytest's start-up

    from conformance.recorder import Recorder

    seed = args.seed if args.seed is not None else random.randrange(2**31)
    out = Path(args.out)
    print(f"mha-conformance: profile {args.profile}, seed {seed}, output {out}")
    for i in infos:
        state = f"skipped: {i.skip_reason}" if i.skip_reason else f"{i.backend.capabilities.device}, dtypes {', '.join(i.backend.capabilities.dtypes)}, steps {list(exposed_steps(i.backend)) or 'none'}"
        print(f"  backend {i.backend.name:16s} ({i.spec}) {state}")
    recorder = Recorder(out, _header(infos, args, seed), args.machine)
    t0 = time.monotonic()
    pytest_args = [str(HERE / "test_conformance.py"), "-q", "--no-header", "-p", "no:cacheprovider",
                   f"--rootdir={HERE.parent}", f"--hypothesis-profile={args.profile}",
                   "-W", "ignore::pytest.PytestAssertRewriteWarning",
                   f"--hypothesis-seed={seed}", f"--mha-out={out}"]
    pytest_args += ["-n", args.workers] if args.workers != "0" else ["-p", "no:xdist"]
    pytest_args += [f"--mha-backend={i.spec}" for i in infos]
    pytest_args += [f"--mha-dtype={d}" for d in args.dtype] + [f"--mha-check={c}" for c in args.check]
    if args.example_timeout:
        pytest_args.append(f"--mha-example-timeout={args.example_timeout}")
    if args.verbose:
        pytest_args.append("-v")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    # one thread per worker: xdist already runs a worker per core, and BLAS or OpenMP pools
    # on top oversubscribe the cores (torch bfloat16 ran 7x slower that way)
    for var in THREAD_VARS:
        os.environ.setdefault(var, "1")
    code = pytest.main(pytest_args, plugins=[recorder])
    interrupted = code in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
    recorder.finish(interrupted=interrupted)
    status = summarise(recorder.records, infos, time.monotonic() - t0, out)
    if code == pytest.ExitCode.USAGE_ERROR:
        return 2
    return 3 if interrupted else status


if __name__ == "__main__":
    sys.exit(main())
