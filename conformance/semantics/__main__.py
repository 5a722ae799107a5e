"""`python -m conformance.semantics [--out DIR] [--machine LABEL] [--backend SPEC ...]`.

Measures the semantic profile of every backend of the run (the named ones, or every built-in)
and stores it as the "semantics" section of this machine's run in `<out>/results.json` (the
conformance and speed sections of that run are kept). Each backend gets a row measured through
the backend contract ("via": "contract"), plug-ins included; a built-in whose library has a
raw probe also gets the library's own row ("via": "library"). A backend that is not installed,
not available here, fails to load, crashes or hangs gets a row that says so.

Other options of `python -m conformance` are accepted and ignored, so `nox -s conformance` can
pass its arguments to both; with --list-checks or --list-backends among them nothing is probed.
A --backend that names no backend at all is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conformance.semantics.rows import CONTRACT_WALL_S, columns, rows_for, unknown
from conformance.usage import OneLineParser, UsageError, report

QUIET = ("--list-checks", "--list-backends")
PROG = "python -m conformance.semantics"


def measure(specs: list[str] | None = None, timeout_s: float = CONTRACT_WALL_S) -> dict[str, Any]:
    """The semantics section: the rows of each backend (default: every built-in), the columns, when it ran."""
    from impls.registry import DEFAULT_BACKENDS

    started, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.monotonic()
    rows = [row for spec in (specs or list(DEFAULT_BACKENDS)) for row in rows_for(spec, timeout_s)]
    command = f"{PROG} " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return {"status": "complete", "started": started, "duration_s": round(time.monotonic() - t0, 2),
            "command": command.strip(), "columns": columns(), "rows": rows}


def write(out: Path, machine: str | None, section: dict[str, Any]) -> Path:
    """Set this machine's run's "semantics" section in out/results.json, keeping everything else."""
    from conformance.results import machine_label
    from conformance.results import update_section

    path = Path(out) / "results.json"
    update_section(path, machine or machine_label(), None, "semantics", section)
    return path


def parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, add_help=False, description=__doc__.split("\n\n", 1)[1],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-h", "--help", action="store_true", help="print this help and exit")
    p.add_argument("--out", default="reports/latest", help="run directory holding results.json (default reports/latest)")
    p.add_argument("--machine", default=None, help="label for this machine in reports (default: host name)")
    p.add_argument("--backend", "-b", action="append", default=[], metavar="SPEC",
                   help="built-in name, module.path:attr, or installed entry point (repeatable; default: every built-in)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    try:
        args, _ = p.parse_known_args(argv)  # the suite's other options: accepted, ignored
    except UsageError as e:  # one of this command's own options malformed (--out with no value)
        return report(PROG, e)
    if args.help:
        p.print_help()
        return 0
    if any(a in QUIET for a in argv):
        return 0
    specs = list(dict.fromkeys(s.strip() for s in args.backend))  # `-b X -b X` profiles X once
    for spec in specs:
        bad = unknown(spec)
        if bad:
            return report(PROG, UsageError(bad))
    section = measure(specs or None)
    path = write(Path(args.out), args.machine, section)
    w = max(len(r["backend"]) for r in section["rows"])
    print(f"semantic profile ({section['duration_s']} s) -> {path}")
    for r in section["rows"]:
        cells = r["skip_reason"] or " | ".join(r["entries"][c["key"]]["value"] for c in section["columns"])
        print(f"  {r['backend']:{w}s}  {r['via']:8s}  {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
