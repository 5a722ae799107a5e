"""What a CI system reads from a run: a JUnit XML file and a Markdown job summary.

Both are made from a results.json conformance section (one run, one shard, or shards merged by
`conformance.results.merge`), so they say what results.json says:

- JUnit (`--junit-xml FILE`): one testcase per planned (backend, dtype, check), classname the
  backend, name `check[dtype]`. A failed record is a <failure> with its reason, example and repro
  line; an expected failure is <skipped type="expected failure"> with the list's reason (pytest
  writes its xfail the same way); an unexpectedly passing record of a strict entry is a <failure>,
  of a `strict = false` entry a pass with the note in <system-out>; unsupported and skipped are
  <skipped> with their reasons; a planned record that does not exist is an <error type="not run">,
  so an incomplete run shows in any JUnit viewer.
- Job summary: Markdown with one row per backend (counts and verdict), then what needs a look:
  failures, unexpected passes, what was not run, and the expected failures with their reasons.
  Written (appended, as GitHub expects) to the file named by $GITHUB_STEP_SUMMARY when it is set.
"""

from __future__ import annotations

import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from conformance import verdict
from conformance.expect import EXPECTED, UNEXPECTED_PASS, fails_run

SUMMARY_VAR = "GITHUB_STEP_SUMMARY"
OUTCOMES = ("passed", "failed", EXPECTED, UNEXPECTED_PASS, "unsupported", "skipped")
MAX_LISTED = 30  # rows per list in the job summary; the rest are counted (results.json has them all)


def _xml_text(s: Any) -> str:
    """Text XML 1.0 can hold: control characters a backend's message may carry become '?'."""
    return "".join(c if c in "\t\n\r" or ord(c) >= 32 else "?" for c in str(s or ""))


def _detail(r: dict[str, Any]) -> str:
    lines = [r.get("reason") or ""]
    if r.get("counterexample"):
        lines.append(f"example: {r['counterexample']}")
    if r.get("repro"):
        lines.append(f"reproduce: {r['repro']}")
    return "\n".join(lines)


def _case(parent: ET.Element, backend: str, dtype: str, check: str, seconds: Any = None) -> ET.Element:
    attrs = {"classname": _xml_text(backend), "name": _xml_text(f"{check}[{dtype}]" if dtype else check)}
    attrs["time"] = f"{float(seconds):.3f}" if isinstance(seconds, (int, float)) else "0"
    return ET.SubElement(parent, "testcase", attrs)


def junit(section: dict[str, Any], name: str = "mha-conformance") -> ET.ElementTree:
    """The JUnit document of a conformance section: one testcase per planned key."""
    suite = ET.Element("testsuite", {"name": name})
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    props = ET.SubElement(suite, "properties")
    for k in ("status", "profile", "seed", "command"):
        ET.SubElement(props, "property", {"name": k, "value": _xml_text(section.get(k))})
    for r in section.get("records", []):
        case = _case(suite, r["backend"], r["dtype"], r["check"], r.get("duration_s"))
        counts["tests"] += 1
        outcome, why = r.get("outcome"), (r.get("expected") or {}).get("reason", "")
        if outcome == "failed":
            counts["failures"] += 1
            el = ET.SubElement(case, "failure", {"message": _xml_text((r.get("reason") or "failed").splitlines()[0][:500]),
                                                 "type": "failed"})
            el.text = _xml_text(_detail(r))
        elif outcome == UNEXPECTED_PASS and fails_run(r):
            counts["failures"] += 1
            el = ET.SubElement(case, "failure", {"type": UNEXPECTED_PASS, "message": _xml_text(
                f"unexpectedly passing: listed as an expected failure ({why}); remove it from the --expect file")})
        elif outcome == UNEXPECTED_PASS:
            ET.SubElement(case, "system-out").text = _xml_text(
                f"unexpectedly passing (strict = false, does not fail the run): {why}")
        elif outcome == EXPECTED:
            counts["skipped"] += 1
            el = ET.SubElement(case, "skipped", {"type": EXPECTED, "message": _xml_text(f"expected failure: {why}")})
            el.text = _xml_text(_detail(r))
        elif outcome in ("unsupported", "skipped"):
            counts["skipped"] += 1
            ET.SubElement(case, "skipped", {"type": outcome, "message": _xml_text(f"{outcome}: {r.get('reason', '')}")})
    for m in section.get("missing", []):
        case = _case(suite, m["backend"], m["dtype"], m["check"])
        counts["tests"] += 1
        counts["errors"] += 1
        ET.SubElement(case, "error", {"type": "not run", "message": _xml_text(
            f"not run: the run is {section.get('status', 'incomplete')} and this planned check has no "
            f"result (not a pass)")})
    for k, v in counts.items():
        suite.set(k, str(v))
    suite.set("time", f"{float(section.get('duration_s') or 0):.3f}")
    root = ET.Element("testsuites", {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")})
    root.append(suite)
    ET.indent(root)
    return ET.ElementTree(root)


def write_junit(section: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    junit(section).write(path, encoding="utf-8", xml_declaration=True)


def backend_counts(section: dict[str, Any]) -> dict[str, dict[str, int]]:
    """backend name -> outcome (and "missing") -> count, in the section's backend order."""
    by = {b["name"]: {o: 0 for o in (*OUTCOMES, "missing")} for b in section.get("backends", [])}
    for r in section.get("records", []):
        by.setdefault(r["backend"], {o: 0 for o in (*OUTCOMES, "missing")})[r["outcome"]] += 1
    for m in section.get("missing", []):
        by.setdefault(m["backend"], {o: 0 for o in (*OUTCOMES, "missing")})["missing"] += 1
    return by


def _cell(s: Any) -> str:
    """One Markdown table cell: no newline, no unescaped pipe."""
    return " ".join(str(s or "").split()).replace("|", "\\|")


def _listed(title: str, rows: list[str]) -> list[str]:
    if not rows:
        return []
    more = [f"- ... and {len(rows) - MAX_LISTED} more (see results.json)"] if len(rows) > MAX_LISTED else []
    return ["", f"**{title}** ({len(rows)})", "", *rows[:MAX_LISTED], *more]


def job_summary(section: dict[str, Any], title: str = "mha-conformance") -> str:
    """The Markdown job summary of a conformance section."""
    meta = {b["name"]: b for b in section.get("backends", [])}
    by = backend_counts(section)
    records = section.get("records", [])
    unexpected = [r for r in records if fails_run(r)]
    plan = section.get("plan") or {}
    shard = f", shard {plan['shard']}/{plan['shards']}" if plan.get("shards", 1) > 1 and "arrived" not in plan else ""
    head = "✅ no unexpected outcomes" if not unexpected and not section.get("missing") else "❌ unexpected outcomes"
    out = [f"### {title}: {head}", "",
           f"{len(records)} of {section.get('planned', len(records) + len(section.get('missing', [])))} planned "
           f"(backend, dtype, check) results, status {section.get('status')}, profile {section.get('profile')}, "
           f"seed {section.get('seed')}{shard}", "",
           "| backend | passed | failed | expected failure | unexpectedly passing | unsupported | skipped | not run "
           "| verdict |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, n in by.items():
        b = meta.get(name, {})
        v = verdict.verdict_text(n, b.get("skip_reason"), conventions=(b.get("capabilities") or {}).get("conventions"))
        out.append(f"| `{_cell(name)}` | " + " | ".join(str(n[o]) for o in (*OUTCOMES, "missing")) + f" | {_cell(v)} |")

    def line(r: dict[str, Any], text: str) -> str:
        return f"- `{_cell(r['backend'])}` [{_cell(r['dtype'])}] `{_cell(r['check'])}`: {_cell(text)[:400]}"

    out += _listed("Failed", [line(r, r.get("reason", "")) + (f" — `{_cell(r['repro'])}`" if r.get("repro") else "")
                              for r in records if r["outcome"] == "failed"])
    out += _listed("Unexpectedly passing (remove from the --expect file)",
                   [line(r, r["expected"]["reason"]) for r in records
                    if r["outcome"] == UNEXPECTED_PASS and fails_run(r)])
    out += _listed("Not run (planned, no result)", [line(m, "no result") for m in section.get("missing", [])])
    out += _listed("Expected failures", [line(r, r["expected"]["reason"]) for r in records if r["outcome"] == EXPECTED])
    out += _listed("Passing although listed with strict = false",
                   [line(r, r["expected"]["reason"]) for r in records
                    if r["outcome"] == UNEXPECTED_PASS and not fails_run(r)])
    return "\n".join(out) + "\n"


def write_step_summary(section: dict[str, Any], environ: dict[str, str] | None = None) -> Path | None:
    """Append the job summary to $GITHUB_STEP_SUMMARY's file when the variable is set; its path."""
    target = (os.environ if environ is None else environ).get(SUMMARY_VAR)
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as f:
        f.write(job_summary(section) + "\n")
    return Path(target)


def write_all(section: dict[str, Any], junit_path: str | None, prog: str) -> None:
    """After a run: --junit-xml and the job summary. A file that cannot be written is one line on
    stderr; the run's results and exit status stand."""
    if junit_path:
        try:
            write_junit(section, junit_path)
            print(f"JUnit XML: {junit_path}")
        except OSError as e:
            print(f"{prog}: could not write --junit-xml {junit_path}: {e}", file=sys.stderr)
    try:
        if write_step_summary(section):
            print(f"job summary appended to ${SUMMARY_VAR}")
    except OSError as e:
        print(f"{prog}: could not write the job summary to ${SUMMARY_VAR}: {e}", file=sys.stderr)
