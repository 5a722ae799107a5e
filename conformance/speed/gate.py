"""The conformance gate: only conforming backends get a headline speed figure.

Conformance is read from the run directory's results.json, this machine's run, its
"conformance" section: any record with outcome "failed" (or "expected failure", --expect) for a
backend makes it nonconforming (False); records without a failure make it conforming (True),
unless some of its planned checks have no record (the section's "missing"), or none of its records passed:
then, as with no records or no conformance section, it is unknown (None). A backend that
conforms under declared conventions (`spec.conventions`) is conforming, and its note names
them, so the speed table shows them beside its figure. A nonconforming
backend is timed only when the user asks for it (--include-nonconforming), and is marked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conformance import verdict


def _conformance_section(results: Path, machine: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(Path(results).read_text())
    except (OSError, ValueError):
        return None  # no file or a broken one: conformance unknown, as when it never ran
    runs = doc.get("runs") if isinstance(doc, dict) else None
    for run in runs if isinstance(runs, list) else []:
        if isinstance(run, dict) and run.get("machine") == machine:
            section = run.get("conformance")
            return section if isinstance(section, dict) else None
    return None


def _conventions(section: dict[str, Any], name: str) -> dict[str, str]:
    """The conventions the backend declared, from the run's header ({} when none or unreadable)."""
    for b in section.get("backends", []):
        if isinstance(b, dict) and b.get("name") == name:
            conv = (b.get("capabilities") or {}).get("conventions") or {}
            return conv if isinstance(conv, dict) else {}
    return {}


def conformance_status(results: Path, machine: str, names: list[str]) -> dict[str, tuple[bool | None, str]]:
    """name -> (conforming, note): True/False/None and a short reason for the table."""
    section = _conformance_section(results, machine)
    records = section.get("records", []) if section else []
    out: dict[str, tuple[bool | None, str]] = {}
    for name in names:
        mine = [r for r in records if isinstance(r, dict) and r.get("backend") == name]
        # an expected failure (--expect) is still a failure: it gets no headline figure either
        failed = [r for r in mine if r.get("outcome") in ("failed", verdict.EXPECTED)]
        if failed:
            checks = sorted({f"{r.get('check')} ({r.get('dtype')})" for r in failed})
            more = f" and {len(checks) - 3} more" if len(checks) > 3 else ""
            listed = sum(r.get("outcome") == verdict.EXPECTED for r in failed)
            note = f", {listed} of them expected (--expect)" if listed else ""
            out[name] = (False, f"failed {len(failed)} conformance record(s){note}: {', '.join(checks[:3])}{more}")
        elif section and [m for m in section.get("missing", []) if isinstance(m, dict) and m.get("backend") == name]:
            # planned checks without a record: not shown to conform, so no headline figure
            n = sum(1 for m in section["missing"] if isinstance(m, dict) and m.get("backend") == name)
            out[name] = (None, f"conformance incomplete: {n} planned check(s) have no record")
        elif mine and verdict.status({"passed": sum(r.get("outcome") == "passed" for r in mine)}) == "none":
            out[name] = (None, "no conformance check passed (every record unsupported or skipped)")
        elif mine:
            declared = verdict.declared_text(_conventions(section, name))
            under = f", under declared conventions: {declared}" if declared else ""
            out[name] = (True, f"{len(mine)} conformance records, none failed{under}")
        else:
            out[name] = (None, "conformance not run for this backend on this machine")
    return out
