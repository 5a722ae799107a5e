"""`python -m conformance.findings [--out DIR] [--machine LABEL] [--budget SECONDS]`.

Reads DIR/results.json, groups this machine's failed conformance records into findings by
cause (`conformance.findings.diagnose`), and writes them back: the run's `conformance.findings`
list and each failed record's `finding` id. `python -m conformance` runs it after a run with
failures; run it by hand to diagnose again (for example with a larger --budget).
Exit status: 0 written (also when nothing failed); 2 a usage error or an unreadable file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from conformance.findings.diagnose import Diagnosis
from conformance.usage import OneLineParser, UsageError, report

PROG = "python -m conformance.findings"


def _use_saved_import_paths(out_dir: Path, section: dict[str, Any]) -> None:
    """Put the directories the run imported its plug-ins from (saved in each failure bundle) on
    sys.path, as repro does: the diagnosis then loads them from any working directory."""
    import json as _json

    import numpy as np

    for r in section.get("records", []):
        if r.get("outcome") != "failed" or not r.get("inputs"):
            continue
        try:
            with np.load(Path(out_dir) / r["inputs"], allow_pickle=False) as z:
                entries = _json.loads(bytes(z["meta"]).decode()).get("import_path") or []
        except Exception:  # noqa: BLE001  (an unreadable bundle: nothing to add)
            continue
        for e in entries:
            if isinstance(e, str) and e not in sys.path:
                sys.path.append(e)


def _backends(out_dir: Path, section: dict[str, Any]) -> dict[str, Any]:
    """name -> backend object, for the failed backends that load here (None: text and fallback only)."""
    from impls.registry import resolve

    failing = {r["backend"] for r in section.get("records", []) if r.get("outcome") == "failed"}
    _use_saved_import_paths(out_dir, section)
    out: dict[str, Any] = {}
    for b in section.get("backends", []):
        if b.get("name") not in failing:
            continue
        try:
            info = resolve(b["spec"])
            out[b["name"]] = None if info.skip_reason else info.backend
        except BaseException:  # noqa: BLE001  (a backend that cannot load here is grouped by its words)
            out[b["name"]] = None
    return out


def diagnose_run_dir(out: Path, machine: str | None = None, budget_s: float = 120.0) -> list[dict[str, Any]]:
    """Diagnose DIR/results.json's run of `machine` (default: its only run) in place; the findings."""
    from conformance.results import atomic_write_json, load, machine_label

    path = Path(out) / "results.json"
    doc = load(path)
    runs = [r for r in doc["runs"] if r.get("conformance")]
    label = machine or machine_label()
    run = next((r for r in runs if r.get("machine") == label), runs[0] if len(runs) == 1 else None)
    if run is None:
        raise ValueError(f"{path} has no conformance run of machine {label!r}; runs: "
                         f"{', '.join(repr(r.get('machine')) for r in runs) or 'none'}")
    section = run["conformance"]
    for r in section.get("records", []):
        r.pop("finding", None)
    findings = Diagnosis(Path(out), budget_s).run(section.get("records", []), _backends(Path(out), section))
    section["findings"] = findings
    atomic_write_json(path, doc)
    return findings


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--out", default="reports/latest", help="run directory holding results.json")
    p.add_argument("--machine", default=None, help="the run's machine label (default: this host's)")
    p.add_argument("--budget", type=float, default=120.0, help="seconds for probing and re-running (default 120)")
    try:
        args = p.parse_args(sys.argv[1:] if argv is None else argv)
        if not args.budget > 0:
            raise UsageError(f"--budget must be a positive number of seconds, got {args.budget}")
    except UsageError as e:
        return report(p.prog, e)
    try:
        findings = diagnose_run_dir(Path(args.out), args.machine, args.budget)
    except (OSError, ValueError, json.JSONDecodeError) as e:
        print(f"{PROG}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    for f in findings:
        dtypes = sorted({c["dtype"] for c in f["checks"]})
        print(f"  {f['id']} {f['backend']}: {f['title']} ({len(f['checks'])} failed checks, {', '.join(dtypes)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
