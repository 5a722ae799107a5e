"""`python -m conformance.repro FAILURE.npz [--backend SPEC]`: replay one saved failure.

Every failed record in results.json names the .npz its shrunk example was saved to. This
loads the exact inputs, runs the same check once on the same backend (or another one, to
compare), and prints the verdict with the example. Exit status: 1 the failure reproduces,
0 the check now passes, 2 bad command line or unreadable file.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

from conformance.case import Case
from conformance.checks import get
from conformance.engine import run_once
from impls.registry import BackendSpecError, resolve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m conformance.repro", description=__doc__.splitlines()[0])
    p.add_argument("inputs", help="a .npz saved by a failed check (see the record's 'inputs' / 'repro')")
    p.add_argument("--backend", default=None, help="run on this backend instead of the one that failed")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        case, meta = Case.load(Path(args.inputs))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        print(f"error: cannot read {args.inputs}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    spec = args.backend or meta.get("backend_spec") or meta["backend"]
    try:
        info = resolve(spec)
        check = get(meta["check"])
    except (BackendSpecError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if info.skip_reason:
        print(f"error: backend {spec!r} cannot run here: {info.skip_reason}", file=sys.stderr)
        return 2
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
