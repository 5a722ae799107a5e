"""`python -m conformance`: check backends against the spec (what `nox -s conformance` runs).

Validates everything the user typed before starting (unknown backend, profile, dtype or
check, a bad number, an unusable --out: one line on stderr, exit status 2, no traceback),
plans every (backend, dtype, check) the run owes a record, runs the pytest suite in
pytest-xdist worker processes, writes `<out>/results.json` as results arrive, then prints a
summary that names anything planned that has no record.

Exit status: 0 everything planned ran and nothing failed (or failed only where `--expect`
lists it); 1 a check failed, or a strict `--expect` entry passed; 2 a usage error;
3 the run is incomplete (planned records are missing); 130 the user interrupted the run (Ctrl-C);
143 the run was terminated (SIGTERM), stopped as cleanly as after Ctrl-C.
"""

from __future__ import annotations

import math
import os
import random
import shlex
import signal
import sys
import time
from pathlib import Path

from conformance import COMMAND, text
from conformance.suite import plan, profiles, timeshare
from conformance.suite.checks import catalogue
from conformance.usage import OneLineParser, UsageError, report
from impls.base import exposed_steps
from impls.registry import (
    DEFAULT_BACKENDS,
    OPT_IN,
    BackendSpecError,
    available_names,
    resolve_all,
)
from spec.config import FLOAT_DTYPES
from conformance.verdict import EXPECTED, UNEXPECTED_PASS, verdict_text

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "plugin"  # the pytest side of a run: conftest.py and the one test
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
#: glibc's allocator in the workers: arrays up to 32 MiB (its largest mmap threshold) come from the
#: heap, and freed memory stays there for the next example instead of going back to the system,
#: which handed it out again zero-filled, page by page (measured on 4 checks of numpy float32: system
#: time 1.4 s -> 0.6 s, the checks 7.6 s -> 6.7 s). Other C libraries ignore these variables.
ALLOCATOR_VARS = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}
PROG = COMMAND
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INCOMPLETE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a process SIGTERM ended
MAX_EXAMPLE_TIMEOUT_S = 86400.0  # a day: beyond it setitimer overflows and nothing is gained


def parse_args(argv: list[str]):
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--backend", "-b", action="append", default=[], metavar="SPEC",
                   help="built-in name, module.path:attr, or installed entry point (repeatable; "
                        f"default: all built-ins: {', '.join(DEFAULT_BACKENDS)}; opt-in, run only when named: "
                        f"{', '.join(OPT_IN)})")
    p.add_argument("--dtype", action="append", default=[], help=f"repeatable; default all: {', '.join(FLOAT_DTYPES)}")
    p.add_argument("--check", action="append", default=[], help="check name (repeatable; default all; see --list-checks)")
    p.add_argument("--profile", default="default", help=f"Hypothesis profile: {', '.join(profiles.PROFILES)}")
    p.add_argument("--seed", type=int, default=None, help="Hypothesis seed (default: random, recorded)")
    p.add_argument("--out", default="reports/latest", help="run directory (default reports/latest)")
    p.add_argument("--machine", default=None, help="label for this machine in reports (default: host name)")
    p.add_argument("-n", "--workers", default="auto",
                   help="worker processes: a number or auto (0 means 1: backends never run in this process)")
    p.add_argument("--example-timeout", type=float, default=None,
                   help="per-example time limit in seconds (default 30; the first example gets 4x)")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="run only part K of N of the planned (backend, dtype, check) matrix; needs --seed")
    p.add_argument("--expect", action="append", default=[], metavar="FILE",
                   help="TOML list of expected failures with reasons (docs/ci.md); a listed pass exits 1; "
                        "repeatable (the first matching entry decides)")
    p.add_argument("--no-known-defects", action="store_true",
                   help="do not apply the built-in backends' list of known library defects "
                        "(impls/expected/known-defects.toml)")
    p.add_argument("--junit-xml", default=None, metavar="FILE",
                   help="also write a JUnit XML file: one testcase per planned (backend, dtype, check)")
    p.add_argument("--list-checks", action="store_true", help="print the checks and exit")
    p.add_argument("--list-backends", action="store_true", help="print the known backends and exit")
    p.add_argument("--verbose", "-v", action="store_true", help="one line per test")
    args = p.parse_args(argv)
    for name in ("backend", "dtype", "check"):  # `--check X --check X` runs X once
        setattr(args, name, plan.unique(getattr(args, name)))
    return args


def validate(args) -> None:
    if args.profile not in profiles.PROFILES:
        raise UsageError(f"unknown profile {args.profile!r}; valid: {', '.join(profiles.PROFILES)}")
    for d in args.dtype:
        if d not in FLOAT_DTYPES:
            raise UsageError(f"unknown dtype {d!r}; valid: {', '.join(FLOAT_DTYPES)}")
    names = [c.name for c in catalogue()]
    for c in args.check:
        if c not in names:
            raise UsageError(f"unknown check {c!r}; see --list-checks (valid: {', '.join(names)})")
    if args.workers != "auto" and not args.workers.isdigit():
        raise UsageError(f"--workers must be a number or 'auto', got {args.workers!r}")
    t = args.example_timeout
    if t is not None and not (math.isfinite(t) and 0 < t <= MAX_EXAMPLE_TIMEOUT_S):
        raise UsageError(f"--example-timeout must be a finite number of seconds in (0, {MAX_EXAMPLE_TIMEOUT_S:g}], "
                         f"got {t}")
    args.shard_kn = plan.parse_shard(args.shard)
    if args.shard is not None and args.seed is None:
        raise UsageError(f"--shard {args.shard} needs --seed N: every shard must draw the same examples")
    from conformance import expect

    if not args.no_known_defects:  # after the user's lists: their entries decide first
        args.expect = [*args.expect, str(expect.KNOWN_DEFECTS)]
    args.expectations = [e for f in args.expect for e in expect.load(f, names, FLOAT_DTYPES)]


def print_checks() -> None:
    for c in catalogue():
        where = "end to end" if c.step is None else f"step {c.step}"
        print(f"{c.name:40s} {where:11s} {c.doc}")


def backend_versions(backend: object) -> dict[str, str]:
    """The backend's `versions()` (library -> version) for results.json; anything but a dict
    (or an exception) is recorded as {"error": "<one line>"}, never a crash of the run."""
    fn = getattr(backend, "versions", None)
    if fn is None:
        return {}
    try:
        got = fn()
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # third-party code: SystemExit included
        line = (str(e).splitlines() or [""])[0][:200]
        return {"error": f"versions() raised {type(e).__name__}: {line}".rstrip(": ")}
    if not isinstance(got, dict):
        return {"error": f"versions() returned {type(got).__name__}, expected a dict of library -> version"}
    return {str(k)[:200]: str(v)[:200] for k, v in got.items()}


def _header(infos, states: dict, args, seed: int, checks: list[str], dtypes: list[str], pid: str,
            total: int) -> dict:
    backends = [{"name": text.name(i.backend.name), "spec": i.spec, "source": i.source,
                 "capabilities": i.backend.capabilities.to_dict(), "exposed_steps": list(exposed_steps(i.backend)),
                 "skip_reason": states[i.spec][0], "error": states[i.spec][1],
                 "versions": backend_versions(i.backend)} for i in infos]
    docs = {c.name: c for c in catalogue()}
    command = f"{PROG} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    k, n = args.shard_kn
    return {"profile": args.profile, "seed": seed, "command": command.strip(), "backends": backends,
            "checks": [{"name": c, "step": docs[c].step, "doc": docs[c].doc, "group": docs[c].group} for c in checks],
            "dtypes": dtypes, "plan": {"id": pid, "shard": k, "shards": n, "total": total}}


def _conventions(backend) -> dict:
    try:
        return dict(backend.capabilities.conventions)
    except Exception:  # noqa: BLE001  (a backend's odd capabilities: no declaration shown)
        return {}


def summarise(records: list[dict], missing: list[plan.Key], infos, states: dict, elapsed: float, out: Path,
              planned: int, findings: list[dict] | None = None) -> None:
    zero = {"passed": 0, "failed": 0, "unsupported": 0, "skipped": 0, "missing": 0, EXPECTED: 0, UNEXPECTED_PASS: 0}
    by: dict[str, dict[str, int]] = {}
    for r in records:
        by.setdefault(r["backend"], dict(zero))[r["outcome"]] += 1
    for k in missing:
        by.setdefault(k.backend, dict(zero))["missing"] += 1
    w = max([18] + [len(repr(text.name(i.backend.name))) for i in infos])
    print(f"\n{'backend':{w}s} {'passed':>7s} {'failed':>7s} {'unsupp.':>8s} {'skipped':>8s} {'not run':>8s}  verdict")
    for info in infos:
        name = text.name(info.backend.name)  # as the plan has it: escaped, bounded
        n = by.get(name, zero)
        shown = name if name.isprintable() else repr(name)
        print(f"{shown:{w}s} {n['passed']:7d} {n['failed']:7d} {n['unsupported']:8d} {n['skipped']:8d} "
              f"{n['missing']:8d}  {verdict_text(n, states[info.spec][0], conventions=_conventions(info.backend))}")
    print_grouped_share(records)
    failed = [r for r in records if r["outcome"] == "failed"]
    if findings:
        print_findings(findings, records)
        failed = [r for r in failed if not r.get("finding")]
    for r in failed[:20]:
        where = "end to end" if r.get("step") is None else f"step {r['step']}"
        print(f"\nFAILED {r['backend']} [{r['dtype']}] {r['check']} ({where})\n  {r['reason']}")
        if r.get("counterexample"):
            print(f"  example: {r['counterexample']}")
        if r.get("repro"):
            print(f"  reproduce: {r['repro']}")
    if len(failed) > 20:
        print(f"\n... and {len(failed) - 20} more failures: see {out / 'results.json'}")
    from conformance.expect import print_outcomes

    print_outcomes(records)
    if missing:
        shown = ", ".join(f"{k.backend} [{k.dtype}] {k.check}" for k in missing[:10])
        more = f", and {len(missing) - 10} more (listed in results.json)" if len(missing) > 10 else ""
        print(f"\nINCOMPLETE: {len(missing)} of {planned} planned checks have no result (not run, not passed): "
              f"{shown}{more}")
    print(f"\nchecked {len(records)} of {planned} planned (backend, dtype, check) combinations in {elapsed:.1f} s; "
          f"results: {out / 'results.json'}")


def grouped_share(records: list[dict]) -> dict[str, tuple[int, int]]:
    """(grouped examples, examples) per backend that drew any grouped-query example."""
    out: dict[str, tuple[int, int]] = {}
    for r in records:
        g, n = out.get(r["backend"], (0, 0))
        out[r["backend"]] = (g + (r.get("grouped_examples") or 0), n + (r.get("examples") or 0))
    return {b: gn for b, gn in out.items() if gn[0]}


def print_grouped_share(records: list[dict]) -> None:
    shares = grouped_share(records)
    if shares:
        text_ = ", ".join(f"{b} {g / n:.0%} of {n}" for b, (g, n) in shares.items())
        print(f"\ngrouped-query examples (n_kv_heads < n_heads): {text_}")


#: Seconds the diagnosis may spend probing and re-running failed examples; the process is
#: killed DIAGNOSIS_GRACE_S later, and the failures then stay as they are, ungrouped.
DIAGNOSIS_BUDGET_S, DIAGNOSIS_GRACE_S = 120.0, 60.0


def diagnose(out: Path, machine: str | None, records: list[dict]) -> list[dict]:
    """Group the run's failures into findings (`python -m conformance.findings`, its own process:
    a backend that crashes or hangs there costs only the grouping); the findings written."""
    import subprocess

    if not any(r["outcome"] == "failed" for r in records):
        return []
    cmd = [sys.executable, "-m", "conformance.findings", "--out", str(out), "--budget", str(DIAGNOSIS_BUDGET_S)]
    if machine:
        cmd += ["--machine", machine]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), str(HERE.parent), env.get("PYTHONPATH")) if p)
    print("\ndiagnosing the failures (findings by cause) ...", flush=True)
    try:
        done = subprocess.run(cmd, env=env, timeout=DIAGNOSIS_BUDGET_S + DIAGNOSIS_GRACE_S, capture_output=True,
                              text=True, errors="replace")
    except subprocess.TimeoutExpired:
        print("  the diagnosis ran out of time: failures are listed one by one")
        return []
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        print(f"  the diagnosis failed (exit {done.returncode}: {tail[0][:200]}): failures are listed one by one")
        return []
    from conformance.results import load

    try:
        run = next(r for r in load(out / "results.json")["runs"] if r.get("conformance"))
    except Exception:  # noqa: BLE001  (the summary still prints the failures)
        return []
    by_key = {(r["backend"], r["dtype"], r["check"]): r.get("finding") for r in run["conformance"]["records"]}
    for r in records:
        r["finding"] = by_key.get((r["backend"], r["dtype"], r["check"]))
    return run["conformance"].get("findings", [])


def print_findings(findings: list[dict], records: list[dict]) -> None:
    """One block per finding: its title, the checks and dtypes it explains, one example to reproduce."""
    print(f"\n{len(findings)} finding{'s' * (len(findings) != 1)} (failures grouped by cause):")
    for f in findings:
        by_check: dict[str, list[str]] = {}
        for c in f["checks"]:
            by_check.setdefault(c["check"], []).append(c["dtype"])
        order = {"float64": 0, "float32": 1, "float16": 2, "bfloat16": 3}
        checks = "; ".join(f"{k} [{', '.join(sorted(v, key=lambda d: order.get(d, 9)))}]" for k, v in by_check.items())
        print(f"\n{f['id']} {f['backend']}: {f['title']}\n  explains {len(f['checks'])} failed checks: {checks}")
        if f.get("convention"):
            c = f["convention"]
            print(f"  if intended, declare it: Capabilities(conventions={{{c['name']!r}: {c['value']!r}}})")
        ex = f.get("example") or {}
        if ex.get("reason"):
            print(f"  e.g. [{ex.get('dtype')}] {ex.get('check')}: {ex['reason'][:400]}")
        if ex.get("repro"):
            print(f"  reproduce: {ex['repro']}")


HYPOTHESIS_DIR_VAR = "HYPOTHESIS_STORAGE_DIRECTORY"  # Hypothesis's own setting, read by the workers


def hypothesis_dir(out: Path) -> Path:
    """Where a run's Hypothesis files go unless $HYPOTHESIS_STORAGE_DIRECTORY says: `<out>/.hypothesis`,
    so runs on the same --out replay each other's failing examples first."""
    return Path(out).resolve() / ".hypothesis"


def _resolve(specs: list[str]):
    """Resolve the backends in this process (import, construct, availability()); one-line errors."""
    try:
        infos = resolve_all(specs)
    except BackendSpecError as e:
        raise UsageError(str(e)) from None
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # SystemExit and the like from a backend's import or constructor
        raise UsageError(f"resolving the backends raised {text.first_line(e)}") from None
    for i in infos:  # what the controller reads of each backend: a fault there is one line
        try:
            caps = i.backend.capabilities
            caps.to_dict(), ", ".join(caps.dtypes), str(caps.device), exposed_steps(i.backend)
        except Exception as e:
            raise UsageError(f"backend {i.spec!r}: reading its capabilities raised {text.first_line(e)}; "
                             f"capabilities must be an impls.base.Capabilities") from None
    return infos, {i.spec: (i.skip_reason, i.error) for i in infos}  # the registry's one policy, evaluated once


def _workers(text: str) -> int:
    return max(1, os.cpu_count() or 1) if text == "auto" else max(1, int(text))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        if args.list_checks:
            print_checks()
            return EXIT_OK
        if args.list_backends:
            print("\n".join(available_names()))
            return EXIT_OK
        validate(args)
        infos, states = _resolve(args.backend or list(DEFAULT_BACKENDS))
        plan.check_shard(args.shard_kn, len(infos) * len(args.dtype or FLOAT_DTYPES) *
                         len(args.check or catalogue()))
        from conformance.suite import rundir

        out = Path(args.out)
        lock = rundir.claim(out)  # noqa: F841  (held until this process ends)
    except UsageError as e:
        return report(PROG, e)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted before the run started; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    return run(args, infos, states, out)


def run(args, infos, states: dict, out: Path) -> int:
    import pytest  # after validation: a usage error should not pay for pytest's start-up

    from conformance.suite.recorder import Recorder

    seed = args.seed if args.seed is not None else random.randrange(2**31)
    dtypes = args.dtype or list(FLOAT_DTYPES)
    checks = args.check or [c.name for c in catalogue()]
    whole = plan.whole_plan([(i.spec, i.backend.name) for i in infos], dtypes, checks)
    keys = plan.run_order(plan.shard_of(whole, args.shard_kn))
    pid = plan.plan_id(whole, args.profile, seed, args.shard_kn[1])
    shard = f", shard {args.shard_kn[0]}/{args.shard_kn[1]} ({len(keys)} of {len(whole)} planned)" if args.shard else ""
    fixed = " (not used: this profile is derandomised)" if profiles.PROFILES[args.profile]["derandomize"] else ""
    print(f"mha-conformance: profile {args.profile}, seed {seed}{fixed}, output {out}{shard}")
    for i in infos:
        skip, error = states[i.spec]
        caps = i.backend.capabilities
        state = (f"FAILS: {error}" if error else f"skipped: {skip}" if skip else
                 f"{caps.device}, dtypes {', '.join(caps.dtypes)}, steps {list(exposed_steps(i.backend)) or 'none'}")
        print(f"  backend {text.name(i.backend.name)!r:18s} ({i.spec}) {state}")
    header = _header(infos, states, args, seed, checks, dtypes, pid, len(whole))
    if args.expect:
        header["expect"] = {"file": ", ".join(args.expect), "entries": [e.to_dict() for e in args.expectations]}
    recorder = Recorder(out, header, keys, args.machine)
    if args.expectations:  # a listed failure is recorded as expected, a listed pass as unexpected
        from conformance import expect

        recorder.transform = lambda rec: expect.apply(args.expectations, rec)
    t0 = time.monotonic()
    os.environ[timeshare.RUN_STARTED_VAR] = repr(time.time())  # the workers' start-up share counts from here
    recorder.skip_unavailable(states)  # recorded here: a worker would only say the same, 6 ms a key
    plan_path = plan.write(out, recorder.run_keys)
    workers = _workers(args.workers)
    # each crashing backend can take down at most one test per worker before its crash marker
    # stops it, so this budget is never reached by crashes in tests; it only ends a crash loop
    # at worker start-up (then the missing records make the run incomplete, exit 3)
    restarts = workers * (len(infos) + 2) + 4
    # no:faulthandler: each worker sends its crash dumps to a file the crash's record keeps (conftest)
    pytest_args = [str(PLUGIN / "test_conformance.py"), "-q", "--no-header", "-p", "no:cacheprovider",
                   "-p", "no:faulthandler",
                   "-c", str(PLUGIN / "pytest.ini"), f"--rootdir={HERE.parent}",  # not the user's configuration
                   f"--hypothesis-profile={args.profile}", "--capture=no",
                   "-W", "ignore::pytest.PytestAssertRewriteWarning", f"--hypothesis-seed={seed}",
                   f"--mha-plan={plan_path}", "-n", str(workers), f"--max-worker-restart={restarts}"]
    if args.example_timeout:
        pytest_args.append(f"--mha-example-timeout={args.example_timeout}")
    if args.verbose:
        pytest_args.append("-v")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    # Hypothesis's example database (and its other files) live with the run, not in the
    # directory the run started from (the checkout); HYPOTHESIS_STORAGE_DIRECTORY chooses
    os.environ.setdefault(HYPOTHESIS_DIR_VAR, str(hypothesis_dir(out)))
    # one thread per worker: xdist already runs a worker per core, and BLAS or OpenMP pools
    # on top oversubscribe the cores (torch bfloat16 ran 7x slower that way)
    for var in THREAD_VARS:
        os.environ.setdefault(var, "1")
    for var, value in ALLOCATOR_VARS.items():  # the workers inherit them; this process has its allocator
        os.environ.setdefault(var, value)
    # "interrupted" means the user's Ctrl-C (or a SIGTERM: `timeout`, a CI cancel, `kill`) reached
    # this process, not merely that pytest says so (pytest-xdist also reports a worker that exited
    # with KeyboardInterrupt as an interruption); both stop the run the same way
    user: dict[str, int | None] = {"signal": None}

    def on_stop(signum: int, frame: object) -> None:
        user["signal"] = signum
        signal.default_int_handler(signum, frame)  # KeyboardInterrupt: pytest stops the workers

    previous = {s: signal.signal(s, on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if recorder.run_keys:
            code = pytest.main(pytest_args, plugins=[recorder])
        else:  # every backend unavailable here: nothing for a worker to do
            code = pytest.ExitCode.OK
            print(f"{len(keys)} skipped")
    except KeyboardInterrupt:  # a second Ctrl-C while pytest was shutting down
        code = pytest.ExitCode.INTERRUPTED
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    interrupted = user["signal"] is not None
    missing = recorder.finish(interrupted=interrupted)
    findings = [] if interrupted else diagnose(out, args.machine, recorder.records)
    summarise(recorder.records, missing, infos, states, time.monotonic() - t0, out, len(keys), findings)
    from conformance.ci_outputs import write_all

    write_all(recorder.section, args.junit_xml, PROG)
    if user["signal"] == signal.SIGTERM:
        print(f"TERMINATED (SIGTERM): results so far are in {out / 'results.json'} (status interrupted)")
        return EXIT_TERMINATED
    if interrupted:
        print(f"INTERRUPTED by the user: results so far are in {out / 'results.json'} (status interrupted)")
        return EXIT_INTERRUPTED
    if code == pytest.ExitCode.USAGE_ERROR:
        return EXIT_USAGE
    if missing:
        return EXIT_INCOMPLETE
    from conformance.expect import fails_run

    return EXIT_FAILED if any(fails_run(r) for r in recorder.records) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
