"""A backend's verdict over its records: the one function the summary, the bench's gate and the report call.

Order of precedence: any failure; then anything planned without a record; then a skip (this
machine lacks the library or device); then expected failures (`--expect`): a backend whose only
failures are listed ones "fails only where expected", never "conforms"; then a pass, under
declared conventions where the backend declares departures from the spec (`spec.conventions`); a backend with no passed record (every
check unsupported, or nothing run) has no verdict of conformance.
"""

from __future__ import annotations

from typing import Mapping

from spec.conventions import departures

EXPECTED, UNEXPECTED_PASS = "expected failure", "unexpectedly passing"  # record outcomes (conformance.expect)

#: status -> the words a verdict reads with (renderers add their own symbols)
WORDS = {"fails": "FAILS", "incomplete": "INCOMPLETE", "skipped": "skipped", "declared": "conforms under declared conventions",
         "expected": "fails only where expected", "conforms": "conforms", "none": "nothing passed"}
CONFORMING = ("conforms", "declared")


def status(counts: Mapping[str, int], skip_reason: str | None = None, missing: int = 0,
           conventions: Mapping[str, str] | None = None) -> str:
    """One of WORDS' keys from outcome counts ("passed", "failed", ...) and what was not run."""
    if counts.get("failed"):
        return "fails"
    if missing or counts.get("missing"):
        return "incomplete"
    if skip_reason:
        return "skipped"
    if counts.get(EXPECTED):
        return "expected"
    if counts.get("passed") or counts.get(UNEXPECTED_PASS):  # an unexpected pass is a pass of the backend
        return "declared" if departures(conventions or {}) else "conforms"
    return "none"


def declared_text(conventions: Mapping[str, str] | None) -> str:
    """`name=value, ...` of the declared departures ('' when none)."""
    return ", ".join(f"{k}={v}" for k, v in departures(conventions or {}).items())


def verdict_text(counts: Mapping[str, int], skip_reason: str | None = None, missing: int = 0,
                 conventions: Mapping[str, str] | None = None) -> str:
    """The verdict as the summary prints it."""
    s = status(counts, skip_reason, missing, conventions)
    if s == "fails":
        n = missing or counts.get("missing", 0)
        return "FAILS" + (f", INCOMPLETE: {n} not run" if n else "")
    if s == "incomplete":
        return f"INCOMPLETE: {missing or counts.get('missing', 0)} not run"
    if s == "skipped":
        return f"skipped: {skip_reason}"
    stale = counts.get(UNEXPECTED_PASS, 0)
    stale_text = f", {stale} unexpectedly passing" if stale else ""
    if s == "expected":
        n, declared = counts[EXPECTED], declared_text(conventions)
        return (f"{WORDS[s]}: {n} expected failure{'s' * (n != 1)}{stale_text}"
                + (f" (declared conventions: {declared})" if declared else ""))
    if s == "declared":
        return f"{WORDS[s]}: {declared_text(conventions)}{stale_text}"
    if s == "conforms" and stale:
        return f"{WORDS[s]}{stale_text}"
    if s == "none":
        return "nothing supported" if counts.get("unsupported") else "not run"
    return WORDS[s]
