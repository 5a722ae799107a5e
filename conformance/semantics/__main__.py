"""`python -m conformance.semantics [--out DIR] [--machine LABEL] [--backend NAME ...]`.

Runs the semantic-profile probes on every CPU backend's library (or the named ones) and
stores the table as the "semantics" section of this machine's run in `<out>/results.json`
(the conformance and speed sections of that run are kept). A library that is not installed
gets a row saying so. Other options of `python -m conformance` are accepted and ignored, so
`nox -s conformance` can pass its arguments to both; with --list-checks or --list-backends
among them nothing is probed, --help prints this command's help (nox's conformance session then
leaves this step out). Backends without a probe (GPU names, module:attr specs)
are left out. Exit status 0 (the suite, not this step, validates the suite's arguments); 2 with
a one-line error when one of this command's own options is malformed (--out with no value).
"""

from __future__ import annotations

import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from conformance.semantics.libraries import all_raw
from conformance.semantics.probes import COLUMNS, profile
from conformance.usage import OneLineParser, UsageError, report

QUIET = ("--list-checks", "--list-backends")
PROG = "python -m conformance.semantics"


def adapter_notes(name: str) -> str:
    """What the backend adapter of this library corrects or declares (its Capabilities.notes)."""
    from impls.registry import BUILTINS, _load_module_attr

    return _load_module_attr(BUILTINS[name]).capabilities.notes  # a class attribute: no framework import


def measure(names: list[str] | None = None) -> dict[str, Any]:
    """The semantics section: one row per library, the columns and when it ran."""
    started, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.monotonic()
    rows = []
    for raw in all_raw():
        if names and raw.name not in names:
            continue
        reason = raw.missing()
        rows.append({"backend": raw.name, "library": raw.library, "skip_reason": reason,
                     "entries": {} if reason else profile(raw), "adapter_notes": adapter_notes(raw.name)})
    command = "python -m conformance.semantics " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return {"status": "complete", "started": started, "duration_s": round(time.monotonic() - t0, 2),
            "command": command.strip(), "columns": [{"key": k, "title": t} for k, t in COLUMNS], "rows": rows}


def write(out: Path, machine: str | None, section: dict[str, Any]) -> Path:
    """Set this machine's run's "semantics" section in out/results.json, keeping everything else."""
    from conformance.results import machine_label
    from conformance.results import update_section

    path = Path(out) / "results.json"
    update_section(path, machine or machine_label(), None, "semantics", section)
    return path


def parser() -> OneLineParser:
    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n", 1)[1].replace("\n", " "))
    p.add_argument("--out", default="reports/latest", help="run directory whose results.json gets the "
                   "semantics section (default reports/latest)")
    p.add_argument("--machine", default=None, help="label of this machine's run (default: $MHA_MACHINE or the host name)")
    p.add_argument("--backend", "-b", action="append", default=[], metavar="NAME",
                   help=f"probe only this library's backend (repeatable; default all: "
                        f"{', '.join(r.name for r in all_raw())})")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    if any(a in ("-h", "--help") for a in argv):
        p.print_help()
        return 0
    if any(a in QUIET for a in argv):  # the suite's listing options: nothing to probe
        return 0
    try:
        args, _ = p.parse_known_args(argv)  # the suite's other options are accepted and ignored
    except UsageError as e:
        return report(PROG, e)
    known = [r.name for r in all_raw()]
    names = [b for b in args.backend if b in known]  # other specs (module:attr, GPU names) have no probe
    if args.backend and not names:
        print("semantic profile: none of the selected backends is a probed CPU library "
              f"({', '.join(known)}); nothing probed")
        return 0
    section = measure(names or None)
    path = write(Path(args.out), args.machine, section)
    w = max(len(r["backend"]) for r in section["rows"])
    print(f"semantic profile ({section['duration_s']} s) -> {path}")
    for r in section["rows"]:
        cells = r["skip_reason"] or " | ".join(r["entries"][k]["value"] for k, _ in COLUMNS)
        print(f"  {r['backend']:{w}s}  {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
