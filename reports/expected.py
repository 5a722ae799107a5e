"""The report's "Expected failures" section: records an `--expect` list decided, with its reasons.

An expected failure is a failure the maintainers listed with a reason (counted apart, never a
pass); an unexpectedly passing record is a listed combination that passed (the list is out of
date, and the run exited 1 unless the entry says strict = false). Both renderers show the same
rows; this module builds them and renders each, escaping through the renderer's own functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from conformance.verdict import EXPECTED, UNEXPECTED_PASS

HEAD = ["Backend", "Check", "dtype", "Outcome", "Listed because", "What failed"]
INTRO = ("Combinations listed in an `--expect` file. An expected failure still failed (its own "
         "reason is kept, and it is never counted as a pass); an unexpectedly passing one passed "
         "although listed, so the list is out of date (the run failed on it unless the entry says "
         "strict = false).")


@dataclass
class ExpectedRow:
    label: str
    check: str
    dtype: str
    outcome: str  # EXPECTED or UNEXPECTED_PASS
    listed: str   # the entry's reason
    strict: bool
    failure: str  # the failure's own reason ('' for a pass)

    @property
    def outcome_text(self) -> str:
        if self.outcome == EXPECTED:
            return "⚠ expected failure"
        return "❗ unexpectedly passing" + ("" if self.strict else " (strict = false)")


def build(runs: list[dict[str, Any]], multi: bool) -> list[ExpectedRow]:
    """Every expected-failure and unexpectedly-passing record, unexpected passes first."""
    rows = []
    for run in runs:
        for r in (run.get("conformance") or {}).get("records", []):
            if r.get("outcome") not in (EXPECTED, UNEXPECTED_PASS):
                continue
            e = r.get("expected") or {}
            label = f"{r['backend']} @ {run['machine']}" if multi else r["backend"]
            rows.append(ExpectedRow(label, r["check"], r["dtype"], r["outcome"], e.get("reason", ""),
                                    bool(e.get("strict", True)), r.get("reason", "") if r["outcome"] == EXPECTED else ""))
    rows.sort(key=lambda x: x.outcome == EXPECTED)  # stable: record order within each outcome
    return rows


def _cells(x: ExpectedRow, text: Callable[[object], str], code: Callable[[object], str]) -> list[str]:
    return [code(x.label), code(x.check), text(x.dtype), text(x.outcome_text), text(x.listed),
            text(x.failure[:300] or "—")]


def markdown(rows: list[ExpectedRow], text: Callable[[object], str], code: Callable[[object], str],
             table: Callable[[list[str], list[list[str]]], list[str]]) -> list[str]:
    if not rows:
        return []
    return ["## Expected failures", "", INTRO, "",  # INTRO is ours: its code span stays
            *table(HEAD, [_cells(x, text, code) for x in rows]), ""]


def html(rows: list[ExpectedRow], esc: Callable[[object], str]) -> str:
    if not rows:
        return ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in _cells(x, esc, lambda s: f"<code>{esc(s)}</code>"))
                   + "</tr>" for x in rows)
    head = "".join(f'<th scope="col">{esc(h)}</th>' for h in HEAD)
    return (f'<section id="expected"><h2>Expected failures</h2><p>{esc(INTRO)}</p>'
            f'<table class="expected"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>')
