"""`python -m conformance.repro FAILURE.npz [--backend SPEC]`: replay one saved failure.

Every failed record in results.json names the .npz its shrunk example was saved to. This
loads the exact inputs, runs the same check once on the same backend (or another one, to
compare), and prints the verdict with the example. Exit status: 1 the failure reproduces,
0 the check now passes, 2 bad command line or unreadable file. A `module:attr` plug-in is
imported from the directories the run imported it from (the bundle's `import_path`), so the
printed line runs from the run's working directory without the run's PYTHONPATH.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

from conformance import COMMAND
from conformance.suite.case import Case
from conformance.suite.checks import get
from conformance.suite.engine import run_once
from conformance.usage import OneLineParser, UsageError, report
from impls.registry import BackendSpecError, resolve

PROG = f"{COMMAND} repro"


def _load(path: Path) -> tuple[Case, dict]:
    """The saved case and its metadata; UsageError (one line) for anything else."""
    if not path.is_file():
        raise UsageError(f"{path}: no such file; expected a .npz saved by a failed check")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path}: not a .npz archive; expected the .npz a failed check saved "
                         f"(the record's 'inputs')")
    try:
        return Case.load(path)
    except Exception as e:  # a .npz, but not one of ours (no meta, other arrays, bad JSON)
        raise UsageError(f"{path}: not a failure saved by the suite ({type(e).__name__}: {e})") from None


def _use_import_path(entries: list[str]) -> list[str]:
    """Put the run's import path (`impls.registry.import_path`, saved in the bundle) first on
    sys.path, so a `module:attr` plug-in imported from $PYTHONPATH replays without it."""
    entries = [str(d) for d in entries if isinstance(d, str)]
    for d in reversed(entries):
        if d not in sys.path:
            sys.path.insert(0, d)
    return entries


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("inputs", help="a .npz saved by a failed check (see the record's 'inputs' / 'repro')")
    p.add_argument("--backend", default=None, help="run on this backend instead of the one that failed")
    try:
        args = p.parse_args(sys.argv[1:] if argv is None else argv)
        case, meta = _load(Path(args.inputs))
        spec = args.backend or meta.get("backend_spec") or meta["backend"]
        extra = [] if args.backend else _use_import_path(meta.get("import_path") or [])
        try:
            info = resolve(spec)
            check = get(meta["check"])
        except (BackendSpecError, KeyError) as e:
            gone = [d for d in extra if not Path(d).is_dir()]
            hint = f" (the run imported it from {', '.join(gone)}, which no longer exists)" if gone else ""
            raise UsageError(str(e).strip("'\"") + hint) from None
        if info.skip_reason:
            raise UsageError(f"backend {spec!r} cannot run here: {info.skip_reason}")
    except UsageError as e:
        return report(PROG, e)
    where = "end to end" if check.step is None else f"step {check.step}"
    print(f"check    {check.name} ({where}): {check.doc}")
    print(f"backend  {info.backend.name} ({spec})")
    print(f"example  {case.describe()}")
    if meta.get("reason"):
        print(f"recorded {meta['reason']}")
    reason = check.unsupported(info.backend, case.dtype)
    if reason:
        print(f"result   unsupported: {reason}")
        return 0
    result = run_once(check, info.backend, case)
    if result.outcome == "failed":
        print(f"result   FAILED: {result.reason}")
        return 1
    print("result   passed (the failure does not reproduce)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
