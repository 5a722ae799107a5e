"""Failed records grouped into findings, one per cause, each with the checks and dtypes it explains.

For each backend with failures, in order:
1. the failure's own words, where they name the cause: a crash or hang, an output dtype that
   is not the input's, a causal mask aligned top-left;
2. re-running the failure's saved (shrunk) example under a hypothesis about its cause
   (`conformance.suite.judgement`): a row convention the probes saw the backend follow
   (`conformance.findings.probes`), a precision one dtype lower, the key padding mask ignored
   or inverted. The first hypothesis under which the example passes is its cause;
   before them, the saved example's forward is looked at: NaN or inf where the spec's output is
   finite, in a query row that sees keys, is named as such (no convention makes it right);
3. what no hypothesis explains is grouped by a stated fallback: the first wrong step the
   backend's exposed steps localise (or "not localised"), across dtypes, so one unknown cause
   reads as one finding.
Everything is bounded by a time budget; past it, the rest is grouped by the fallback unprobed.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conformance.findings import probes
from conformance.suite.judgement import Judgement, declared
from spec import conventions as conv

EXAMPLE_LIMIT_S = 30.0  # CPU seconds for one re-run of a saved example
TOP_LEFT = "causal mask aligned top-left"


@dataclass(frozen=True)
class Hypothesis:
    cause: str
    title: str
    detail: str
    convention: dict[str, str] | None = None
    lowered: bool = False
    mask: str | None = None

    def judgement(self, base: Judgement) -> Judgement:
        conventions = {**base.conventions, **(self.convention or {})}
        return Judgement(conventions, precision_lowered=self.lowered, padding_mask=self.mask)


@dataclass
class Group:
    """One finding being built: its cause and the failed records it explains."""

    backend: str
    cause: str
    title: str
    detail: str
    convention: dict[str, str] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)


def _text_cause(rec: dict[str, Any]) -> tuple[str, str, str] | None:
    """(cause, title, detail) when the failure's words name the cause."""
    reason = rec.get("reason") or ""
    if ("crashed a worker" in reason or reason.startswith("hang") or "worker process" in reason
            or "hung earlier in this run" in reason):
        return ("crash", "the backend crashed or hung a worker process",
                "later checks of this backend were not run; see the first record's output")
    m = re.search(r"returned dtype (\w+), expected (\w+)", reason)
    if m:
        return ("output_dtype", f"output dtype changed: {m.group(2)} inputs give {m.group(1)} outputs",
                "the spec returns the input's dtype; a widened output hides the low-precision result and "
                "doubles its memory")
    if "not bfloat16 values" in reason:
        return ("output_dtype", "output dtype changed: bfloat16 inputs give float32 values that are not bfloat16",
                "the spec returns the input's dtype")
    if TOP_LEFT in reason or "aligned top-left" in reason:
        return ("causal_alignment", "causal mask aligned top-left when there are fewer queries than keys",
                "query i sees keys 0..i instead of 0..i+Tk-Tq: the new tokens are the last positions "
                "(SDPA's is_causal=True aligns top-left when Tq != Tk)")
    return None


def hypotheses(backend: Any, seen: dict[str, tuple[str, str]], base: Judgement) -> list[Hypothesis]:
    """What may explain a failure, most specific first: the row conventions the probes saw, then
    a precision one dtype lower, then the padding mask misread."""
    out = []
    row = {}
    # a query with no visible key is always a padded token itself (causal: every key up to it is
    # padding, itself included), so zeroed padded queries also zero those rows: one cause, not two
    padded_zero = seen.get("padded_query_rows", ("", ""))[0] == "zero_output"
    for name in ("padded_query_rows", "fully_masked_rows"):
        value, detail = seen.get(name, ("n/a", ""))
        if name == "fully_masked_rows" and padded_zero and value == "zero_output":
            continue
        if value in conv.MENU[name] and value != base.conventions.get(name, conv.SPEC[name]):
            row[name] = value
            out.append(Hypothesis(name, _row_title(name, value), f"probe: {detail}", {name: value}))
    if len(row) == 2:
        out.append(Hypothesis("fully_masked_rows", "queries with no visible key and padded queries follow "
                              f"other conventions ({', '.join(f'{k}={v}' for k, v in row.items())})",
                              "both row probes differ from the spec", dict(row)))
    out.append(Hypothesis("precision", "precision ceiling: within the next lower dtype's tolerance, not this one's",
                          "the example passes when the plain reference runs one dtype lower "
                          "(float64 -> float32 -> float16 -> bfloat16): the backend computes or "
                          "accumulates in less precision than the dtype it was given", lowered=True))
    out.append(Hypothesis("mask_ignored", "the key padding mask is ignored",
                          "the example passes when the spec runs without the padding mask", mask="ignored"))
    out.append(Hypothesis("mask_inverted", "the key padding mask is inverted (True read as masked out)",
                          "the example passes when the spec reads True as masked out", mask="inverted"))
    return out


def _row_title(name: str, value: str) -> str:
    return conv.MENU[name][value]


def _own_step(rec: dict[str, Any]) -> str | None:
    """A step check's own step ("8 (attn_weights)"): its failure is localised by what it checks."""
    from spec.table import STEPS

    n = rec.get("step")
    return f"{n} ({STEPS[n].name})" if isinstance(n, int) and n in STEPS else None


def _precision_convention(rec: dict[str, Any]) -> dict[str, str] | None:
    return {"float64_compute": "float32"} if rec.get("dtype") == "float64" else None


class Diagnosis:
    """Findings of one run's failed records; `budget_s` bounds the probing and re-running."""

    def __init__(self, out_dir: Path, budget_s: float = 120.0):
        self.out_dir = Path(out_dir)
        self.deadline = time.monotonic() + budget_s
        self.groups: dict[tuple, Group] = {}

    def _add(self, backend: str, key: tuple, rec: dict[str, Any], **info: Any) -> None:
        g = self.groups.get((backend, *key))
        if g is None:
            g = self.groups[(backend, *key)] = Group(backend, **info)
        g.records.append(rec)

    def run(self, records: list[dict[str, Any]], backends: dict[str, Any]) -> list[dict[str, Any]]:
        """Group the failed records of every backend; `backends` maps name -> backend object or None
        (not loadable here: text and fallback only). Sets rec["finding"] on each; returns the findings."""
        failed = [r for r in records if r.get("outcome") == "failed"]
        by_backend: dict[str, list[dict[str, Any]]] = {}
        for r in failed:
            by_backend.setdefault(r["backend"], []).append(r)
        for name, recs in by_backend.items():
            self._backend(name, backends.get(name), recs)
        self._precision_only_where_alone()
        findings = []
        for i, g in enumerate(sorted(self.groups.values(), key=lambda g: (g.backend, -len(g.records))), 1):
            fid = f"F{i}"
            # the example a maintainer reads first: matches_spec, else a step check, at the widest dtype
            order = {"float64": 0, "float32": 1, "float16": 2, "bfloat16": 3}
            example = min(g.records, key=lambda r: (r.get("check") != "matches_spec", r.get("step") is None,
                                                    order.get(r.get("dtype"), 9)))
            for r in g.records:
                r["finding"] = fid
            findings.append({"id": fid, "backend": g.backend, "cause": g.cause, "title": g.title, "detail": g.detail,
                             "convention": None if not g.convention else
                             {"name": next(iter(g.convention)), "value": next(iter(g.convention.values()))},
                             "checks": [{"check": r["check"], "dtype": r["dtype"]} for r in g.records],
                             "example": {k: example.get(k) for k in ("check", "dtype", "reason", "counterexample",
                                                                     "repro")}})
        return findings

    def _precision_only_where_alone(self) -> None:
        """A precision ceiling explains a dtype's failures only when nothing else fails at that dtype:
        next to a failure no hypothesis explains, the looser tolerance merely hides part of a bug."""
        unexplained = {(g.backend, r["dtype"]): g for g in self.groups.values() if g.cause == "unexplained"
                       for r in g.records}
        for key, g in list(self.groups.items()):
            if g.cause != "precision":
                continue
            keep = []
            for r in g.records:
                target = unexplained.get((g.backend, r["dtype"]))
                (target.records if target is not None else keep).append(r)
            g.records = keep
            if not keep:
                del self.groups[key]

    def _backend(self, name: str, backend: Any, recs: list[dict[str, Any]]) -> None:
        rest, crashed = [], False
        for r in recs:
            found = _text_cause(r)
            if found:
                self._add(name, (found[0],), r, cause=found[0], title=found[1], detail=found[2])
                crashed = crashed or found[0] == "crash"
            else:
                rest.append(r)
        if not rest:
            return
        if crashed:  # it crashed or hung in the run: probing it would only do that again (text only)
            backend = None
        base = declared(backend) if backend is not None else Judgement()
        hyps: list[Hypothesis] = []
        if backend is not None and time.monotonic() < self.deadline:
            seen = {k: probes.PROBES[k](backend) for k in ("fully_masked_rows", "padded_query_rows")}
            hyps = hypotheses(backend, seen, base)
        for r in rest:
            case, check = self._saved(r)
            leak = self._non_finite(backend, case) if case is not None else None
            if leak is not None:
                self._add(name, ("non_finite",), r, cause="non_finite", title=leak[0], detail=leak[1])
                continue
            h = self._explain(backend, check, case, hyps, base) if case is not None else None
            if h is None:
                step = _own_step(r) or (self._localise(backend, check, case, base) if case is not None else None)
                title = (f"unexplained: first wrong step {step}" if step else
                         "unexplained: no probe explains these failures and no exposed step localises them")
                self._add(name, ("unexplained", step), r, cause="unexplained", title=title,
                          detail="grouped by the first wrong step the backend's exposed steps localise "
                                 "(or 'not localised'), across dtypes: one unknown cause, one finding. "
                                 "Each record keeps its own message and repro line.")
            else:
                c = h.convention if h.cause != "precision" else _precision_convention(r)
                self._add(name, (h.cause, tuple(sorted((c or {}).items()))), r, cause=h.cause, title=h.title,
                          detail=h.detail, convention=c)

    def _non_finite(self, backend: Any, case: Any) -> tuple[str, str] | None:
        """(title, detail) when the example's forward has NaN or inf in a row whose query sees at
        least one key (the spec's row is finite there, whatever a convention says of empty rows)."""
        if backend is None or time.monotonic() > self.deadline:
            return None
        got, _ = probes.forward_unjudged(backend, case)  # a forward that fails is not this cause
        if got is None or not np.issubdtype(np.asarray(got).dtype, np.floating) or got.ndim != 3:
            return None
        from conformance.suite.reference import forward_golden_and_plain
        from conformance.suite.tolerance import largest_finite

        empty = conv.empty_rows(case.config, case.B, case.T, case.T, case.key_padding_mask)  # (B, T)
        try:
            golden, _ = forward_golden_and_plain(case)  # (B, T, d_out) float64
        except Exception:  # the suite's own reference failing is not a finding about the backend
            return None
        representable = (np.abs(golden) < largest_finite(case.dtype)).all(-1)  # the dtype can hold the spec's row
        bad = ~np.isfinite(np.asarray(got, dtype=np.float64)).all(-1) & ~empty & representable  # (B, T)
        if not bad.any():
            return None
        where = ", ".join(f"({b}, {t})" for b, t in zip(*np.nonzero(bad)))
        context = (f"; the batch also has {int(empty.sum())} queries with no visible key (batch elements "
                   f"{sorted(set(np.nonzero(empty)[0].tolist()))}): a kernel's empty-row handling may spill "
                   "into other rows" if empty.any() else "; no query of the batch is without keys")
        return ("NaN or inf in rows whose query sees keys",
                f"the saved example's forward is not finite at (batch, query) {where[:300]}, rows that see at "
                f"least one key{context}. No convention covers it: it is a defect to report upstream "
                "(or list with --expect and its reason until fixed).")

    def _saved(self, rec: dict[str, Any]) -> tuple[Any, Any]:
        from conformance.suite.case import Case
        from conformance.suite.checks import get

        if not rec.get("inputs"):
            return None, None
        try:
            case, _ = Case.load(self.out_dir / rec["inputs"])
            return case, get(rec["check"])
        except Exception:  # a bundle that cannot be read: the fallback groups it
            return None, None

    def _explain(self, backend: Any, check: Any, case: Any, hyps: list[Hypothesis], base: Judgement):
        from conformance.suite.engine import run_once

        if backend is None:
            return None
        for h in hyps:
            if time.monotonic() > self.deadline:
                return None
            if h.mask and case.key_padding_mask is None:
                continue  # nothing to misread
            if h.convention and not conv.governed_rows(h.convention, case.config, case.B, case.T,
                                                       case.key_padding_mask).any():
                continue  # the example has no row the convention decides (forward cases; see below)
            if run_once(check, backend, case, h.judgement(base), limit_s=EXAMPLE_LIMIT_S).outcome == "passed":
                return h
        return None

    def _localise(self, backend: Any, check: Any, case: Any, base: Judgement) -> str | None:
        from conformance.suite.calls import Runner
        from conformance.suite.checks.localize import first_wrong_step
        from conformance.suite.judgement import judged_under
        from conformance.suite.process_state import restored_state
        from conformance.suite.watchdog import BackendHang, time_limit

        if backend is None or time.monotonic() > self.deadline:
            return None
        try:
            with restored_state(), judged_under(base), time_limit(EXAMPLE_LIMIT_S, "localising"):
                text = first_wrong_step(Runner(backend, case.dtype), case)
        except (Exception, BackendHang):  # a backend's fault while localising: not localised
            return None
        m = re.match(r"first wrong step: (\d+) \((\w+)\)", text or "")
        return f"{m.group(1)} ({m.group(2)})" if m else None
