"""A results document turned into the tables a report shows, shared by Markdown and HTML.

Both renderers read only this module's objects, so report.md and index.html can never
disagree on a verdict, a count or a number. Every string here is raw (unescaped): escaping is
each renderer's job, because Markdown and HTML escape differently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reports import expected as exp
from reports import findings as fnd
from reports.environment import environment_rows, short_commit
from reports.findings import Finding
from conformance import verdict
from reports.fmt import one_line, sig  # noqa: F401  (sig: renderers format numbers through model)
from reports.speed_model import SpeedSection, build_speed
from spec.table import STEPS  # the step titles come from the spec's step table

END_TO_END = "end to end"

#: Symbol and word of each verdict: the word always travels with the symbol (colour-blind and
#: plain-text readers), and "status" names a CSS class in HTML.
VERDICT = {"fail": ("❌", "FAIL"), "pass": ("✅", "pass"), "unsupported": ("—", "unsupported"),
           "skipped": ("⏭", "skipped"), "incomplete": ("◐", "INCOMPLETE"), "none": ("○", "not run"),
           "xfail": ("⚠", "expected failure"), "xpass": ("❗", "unexpectedly passing")}
#: worst first; an expected failure (--expect) is a failure listed with its reason, never a pass
OUTCOME_RANK = {"failed": 0, verdict.EXPECTED: 1, verdict.UNEXPECTED_PASS: 2, "passed": 3, "unsupported": 4,
                "skipped": 5}
#: A backend's verdict over all its records (the summary and the matrix header): "declared" is a
#: pass judged against the spec adjusted for declared conventions, never shown as a plain pass.
_SYMBOL = {"fails": "❌", "conforms": "✅", "declared": "☑", "expected": "⚠", "incomplete": "◐", "skipped": "⏭", "none": "○"}
BACKEND_VERDICT = {k: (_SYMBOL[k], verdict.WORDS[k]) for k in verdict.WORDS}  # the word always beside the symbol


#: The matrix's group of the gradient checks (Check.group "gradients"), after end to end.
GRADIENTS = "gradients (backward, spec.block.grads)"


def step_title(step: int | None) -> str:
    if step is None:
        return END_TO_END
    return f"step {step}: {STEPS[step].title if step in STEPS else '?'}"


@dataclass
class Column:
    """One backend on one machine: a column of the conformance matrix."""
    machine: str
    backend: str
    label: str
    source: str = ""
    skip_reason: str | None = None
    missing: int = 0  # planned records of this backend that do not exist (not run, never passed)
    conventions: dict[str, str] = field(default_factory=dict)  # declared deviations from the spec
    versions: dict[str, str] = field(default_factory=dict)     # as the backend reports them; {}: none
    promises: tuple[str, ...] = ()  # promises it declares (reports.findings.PROMISES)


@dataclass
class CheckRow:
    name: str
    step: int | None
    doc: str


@dataclass
class MatrixCell:
    status: str  # a key of VERDICT
    text: str    # symbol + word (+ dtypes), what the cell shows
    detail: str  # per dtype outcome, for a tooltip or a note

    @property
    def word(self) -> str:
        return VERDICT[self.status][1]


@dataclass
class Matrix:
    columns: list[Column]
    groups: list[tuple[str, list[CheckRow]]]  # (step title, rows), step 1..12 then end to end
    cells: dict[tuple[str, int], MatrixCell]  # (check name, column index)
    totals: list[dict[str, int]]              # per column: outcome -> record count, plus "missing"

    def cell(self, check: str, col: int) -> MatrixCell:
        return self.cells.get((check, col), MatrixCell("none", _verdict_text("none"), ""))


def totals_text(t: dict[str, int]) -> str:
    """A column's record counts; planned records that do not exist are named, never hidden."""
    text = f"{t['passed']} passed, {t['failed']} failed, {t['unsupported']} unsupported, {t['skipped']} skipped"
    text += "".join(f", {t[o]} {o}" for o in (verdict.EXPECTED, verdict.UNEXPECTED_PASS) if t.get(o))
    return text + (f", {t['missing']} NOT RUN" if t.get("missing") else "")


@dataclass
class Failure:
    machine: str
    label: str
    backend: str
    check: str
    doc: str
    step: int | None
    dtype: str
    max_error: float | None
    tolerance: float | None
    reason: str
    counterexample: str | None
    repro: str | None
    inputs: str | None
    finding: str | None = None  # id of the finding that explains it; None: not diagnosed
    number: int = 0             # 1-based position in the report's failures (HTML anchors)


@dataclass
class RunHeader:
    machine: str
    commit: str | None
    dirty: bool | None
    conformance: dict[str, Any] | None  # status, profile, seed, command, started, duration_s
    speed: dict[str, Any] | None


@dataclass
class Report:
    title: str
    machines: list[str]
    headers: list[RunHeader]
    warnings: list[str]                    # partial runs etc., shown loudly at the top
    environments: list[tuple[str, list[tuple[str, str]]]]
    matrix: Matrix | None                  # None: no run has a conformance section
    skipped_backends: list[Column]
    failures: list[Failure]
    speed: SpeedSection | None             # None: no run has a speed section
    multi_machine: bool = field(default=False)
    semantics: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (machine, section)
    findings: list[Finding] = field(default_factory=list)  # per backend, its not-diagnosed group last
    expected: list[exp.ExpectedRow] = field(default_factory=list)  # --expect's outcomes, with reasons
    runs: list[dict[str, Any]] = field(default_factory=list)  # the runs as read (the layouts section reads their records)


def _verdict_text(status: str, dtypes: list[str] | None = None) -> str:
    symbol, word = VERDICT[status]
    dtypes = [d for d in dtypes or [] if d]  # a dtype-free check (step 2) records an empty dtype
    return f"{symbol} {word}" + (f" ({', '.join(dtypes)})" if dtypes else "")


def summarise_cell(records: list[dict[str, Any]], missing: list[str] | None = None) -> MatrixCell:
    """One verdict for all dtypes of a (backend, check): any failure wins, then any planned
    dtype without a record (incomplete: never shown as a pass), then any pass."""
    missing = [d for d in dict.fromkeys(missing or []) if d not in {r["dtype"] for r in records}]
    not_run = f"not run: {', '.join(d or '-' for d in missing)}"
    if not records:
        return MatrixCell("none", _verdict_text("none", missing), not_run if missing else "")
    per_dtype: dict[str, str] = {}
    for r in records:  # a dtype checked several times keeps its worst outcome
        old = per_dtype.get(r["dtype"])
        if old is None or OUTCOME_RANK[r["outcome"]] < OUTCOME_RANK[old]:
            per_dtype[r["dtype"]] = r["outcome"]
    by_outcome: dict[str, list[str]] = {}
    for dtype, outcome in per_dtype.items():
        by_outcome.setdefault(outcome, []).append(dtype)
    detail = "; ".join([f"{d}: {o}" for d, o in per_dtype.items()] + [f"{d}: not run" for d in missing])
    if "failed" in by_outcome:
        return MatrixCell("fail", _verdict_text("fail", by_outcome["failed"]) + (f" ({not_run})" if missing else ""),
                          detail)
    if missing:
        return MatrixCell("incomplete", f"{_verdict_text('incomplete')} ({not_run})", detail)
    for outcome, status in ((verdict.UNEXPECTED_PASS, "xpass"), (verdict.EXPECTED, "xfail")):
        if outcome in by_outcome:
            return MatrixCell(status, _verdict_text(status, by_outcome[outcome]), detail)
    status = ("pass" if "passed" in by_outcome else
              "unsupported" if "unsupported" in by_outcome else "skipped")
    text = _verdict_text(status)
    # a pass that skipped some dtypes says which, so "pass" never hides an untested dtype
    extras = [f"{o}: {', '.join(by_outcome[o])}" for o in ("unsupported", "skipped")
              if o in by_outcome and VERDICT[status][1] != o]
    if extras:
        text += " (" + "; ".join(extras) + ")"
    return MatrixCell(status, text, detail)


def _columns(runs: list[dict[str, Any]], multi: bool) -> list[Column]:
    cols: list[Column] = []
    for run in runs:
        conf = run.get("conformance") or {}
        names = [b["name"] for b in conf.get("backends", [])]
        # a backend that produced records without being declared still gets its column
        names += [n for n in dict.fromkeys(r["backend"] for r in conf.get("records", [])) if n not in names]
        declared = {b["name"]: b for b in conf.get("backends", [])}
        for name in names:
            b = declared.get(name, {})
            label = f"{name} @ {run['machine']}" if multi else name
            cols.append(Column(run["machine"], name, label, b.get("source", ""), b.get("skip_reason"),
                               sum(m["backend"] == name for m in conf.get("missing", [])),
                               fnd.declared(b.get("capabilities")), fnd.versions(b),
                               fnd.promises(b.get("capabilities"))))
    return cols


def _check_rows(runs: list[dict[str, Any]]) -> list[tuple[str, list[CheckRow]]]:
    rows: dict[str, CheckRow] = {}
    grad_names: set[str] = set()
    for run in runs:
        conf = run.get("conformance") or {}
        for c in conf.get("checks", []):
            rows.setdefault(c["name"], CheckRow(c["name"], c.get("step"), one_line(c.get("doc"))))
            if c.get("group") == "gradients":  # their own group in the matrix, after end to end
                grad_names.add(c["name"])
        for r in conf.get("records", []):  # undeclared checks are still shown
            rows.setdefault(r["check"], CheckRow(r["check"], r.get("step"), ""))
    steps = sorted({r.step for r in rows.values() if r.step is not None})
    groups = [(step_title(s), [r for r in rows.values() if r.step == s]) for s in steps]
    e2e = [r for r in rows.values() if r.step is None and r.name not in grad_names]
    if e2e:
        groups.append((step_title(None), e2e))
    grads = [r for r in rows.values() if r.name in grad_names]
    if grads:
        groups.append((GRADIENTS, grads))
    return groups


def build_matrix(runs: list[dict[str, Any]], multi: bool) -> Matrix:
    columns = _columns(runs, multi)
    groups = _check_rows(runs)
    index = {(c.machine, c.backend): i for i, c in enumerate(columns)}
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = {}
    # the --expect outcomes get a count only where they occur (older files read as before)
    totals = [{**{o: 0 for o in ("passed", "failed", "unsupported", "skipped")}, "missing": c.missing} for c in columns]
    absent: dict[tuple[str, int], list[str]] = {}
    for run in runs:
        conf = run.get("conformance") or {}
        for r in conf.get("records", []):
            col = index[(run["machine"], r["backend"])]
            grouped.setdefault((r["check"], col), []).append(r)
            totals[col][r["outcome"]] = totals[col].get(r["outcome"], 0) + 1
        for m in conf.get("missing", []):
            if (run["machine"], m["backend"]) in index:
                absent.setdefault((m["check"], index[(run["machine"], m["backend"])]), []).append(m["dtype"])
    cells = {key: summarise_cell(grouped.get(key, []), absent.get(key)) for key in {*grouped, *absent}}
    return Matrix(columns, groups, cells, totals)


def build_failures(runs: list[dict[str, Any]], matrix: Matrix) -> list[Failure]:
    docs = {row.name: row for _, rows in matrix.groups for row in rows}
    labels = {(c.machine, c.backend): c.label for c in matrix.columns}
    order = {(c.machine, c.backend): i for i, c in enumerate(matrix.columns)}
    out = []
    for run in runs:
        for r in (run.get("conformance") or {}).get("records", []):
            if r["outcome"] != "failed":
                continue
            row = docs.get(r["check"])
            step = row.step if row is not None else r.get("step")
            out.append(Failure(
                run["machine"], labels[(run["machine"], r["backend"])], r["backend"], r["check"],
                row.doc if row is not None else "", step, r["dtype"], r.get("max_error"),
                r.get("tolerance"), r.get("reason", ""), r.get("counterexample"), r.get("repro"),
                r.get("inputs"), r.get("finding")))
    out.sort(key=lambda f: (order[(f.machine, f.backend)], 99 if f.step is None else f.step))
    return out


def _section_header(sec: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, Any] | None:
    return None if sec is None else {k: sec.get(k) for k in keys}


def _warnings(runs: list[dict[str, Any]]) -> list[str]:
    out = []
    if not runs:
        out.append("the results document holds no runs at all")
    for run in runs:
        for name in ("conformance", "speed"):
            sec = run.get(name)
            if sec and sec.get("status") != "complete":
                why = {"running": "still running or killed before it finished",
                       "interrupted": "interrupted by the user",
                       "incomplete": "it ended with planned results missing"}.get(sec.get("status"),
                                                                                  "stopped before it finished")
                out.append(f"{name} on {run['machine']} is INCOMPLETE (status {sec.get('status')}: "
                           f"{why}); missing results are not passes")
        conf = run.get("conformance") or {}
        plan = conf.get("plan") or {}
        absent = [k for k in range(1, plan.get("shards", 1) + 1) if "arrived" in plan and k not in plan["arrived"]]
        if absent:
            out.append(f"conformance on {run['machine']}: shard{'s' if len(absent) > 1 else ''} "
                       f"{', '.join(map(str, absent))} of {plan['shards']} never arrived; their checks are "
                       f"shown as not run")
        for word, key in (("twice or more", "duplicates"), ("that was not planned", "unplanned")):
            if conf.get(key):  # found by completeness.recheck, not by the file's own bookkeeping
                out.append(f"conformance on {run['machine']}: {len(conf[key])} (backend, dtype, check) "
                           f"key(s) with a record {word}; the file's own bookkeeping is wrong")
        if conf.get("missing"):
            out.append(f"conformance on {run['machine']}: {len(conf['missing'])} of "
                       f"{conf.get('planned', '?')} planned (backend, dtype, check) results do not exist "
                       f"(not run, not passed)")
        env = run.get("environment") or {}
        if env.get("dirty"):
            out.append(f"{run['machine']} ran from a checkout with uncommitted changes "
                       f"(commit {short_commit(env.get('commit'))}, dirty)")
    return out


def _findings(runs: list[dict[str, Any]], matrix: Matrix, multi: bool) -> tuple[list[Failure], list[Finding]]:
    """The failed records, numbered in the order the report shows them (by backend, then by
    finding, the not-diagnosed last, then by step), and the findings that group them."""
    failures = build_failures(runs, matrix)
    labels = {(c.machine, c.backend): c.label for c in matrix.columns}
    order = {row.name: i for i, row in enumerate(r for _, rows in matrix.groups for r in rows)}
    found = fnd.build(runs, labels, failures, order, multi)
    rank = {id(f): i for i, x in enumerate(found) for f in x.failures}
    failures.sort(key=lambda f: rank[id(f)])  # stable: the step order holds within a finding
    for n, f in enumerate(failures, 1):
        f.number = n
    return failures, found


def build(doc: dict[str, Any], title: str | None = None) -> Report:
    """The report of a validated (possibly merged) results document."""
    runs = doc["runs"]
    machines = [r["machine"] for r in runs]
    multi = len(machines) > 1
    has_conf = any(r.get("conformance") for r in runs)
    matrix = build_matrix(runs, multi) if has_conf else None
    headers = [RunHeader(
        r["machine"], short_commit(r["environment"].get("commit")), r["environment"].get("dirty"),
        _section_header(r.get("conformance"), ("status", "profile", "seed", "command", "started", "duration_s")),
        _section_header(r.get("speed"), ("status", "command", "started", "duration_s"))) for r in runs]
    speed = build_speed(runs) if any(r.get("speed") for r in runs) else None
    failures, found = _findings(runs, matrix, multi) if matrix else ([], [])
    return Report(
        title=title or "Multi-head attention: conformance and speed",
        machines=machines, headers=headers, warnings=_warnings(runs),
        environments=[(r["machine"], environment_rows(r["environment"])) for r in runs],
        matrix=matrix,
        skipped_backends=[c for c in (matrix.columns if matrix else []) if c.skip_reason],
        failures=failures, speed=speed, multi_machine=multi,
        semantics=[(r["machine"], r["semantics"]) for r in runs if r.get("semantics")], findings=found,
        expected=exp.build(runs, multi), runs=runs)


@dataclass
class BackendVerdict:
    status: str  # a key of BACKEND_VERDICT
    text: str    # symbol + word (+ the declared conventions)

    @property
    def word(self) -> str:
        return BACKEND_VERDICT[self.status][1]


def backend_verdict(matrix: Matrix, i: int) -> BackendVerdict:
    """The verdict on column i over all its records, the one the summary and both matrix headers
    show: any failure, then anything planned missing, then a skip, then a pass. A pass under
    declared conventions has its own word and names them; a failure names them too."""
    c, t = matrix.columns[i], matrix.totals[i]
    status = verdict.status(t, c.skip_reason, c.missing, c.conventions)  # the suite's one verdict
    symbol, word = BACKEND_VERDICT[status]
    conv = fnd.conventions_text(c.conventions)
    if status == "declared":
        return BackendVerdict(status, f"{symbol} {word}: {conv}")
    if status == "expected":
        n = t[verdict.EXPECTED]
        return BackendVerdict(status, f"{symbol} {word}: {n} expected failure{'s' * (n != 1)}"
                              + (f" (declared conventions: {conv})" if conv else ""))
    return BackendVerdict(status, f"{symbol} {word}" + (f" (declared conventions: {conv})" if conv else ""))


def conformance_summary(report: Report) -> str:
    """One sentence: failed records, then how many backends conform (plainly, then under
    declared conventions, named), fail, are incomplete and were skipped."""
    if report.matrix is None:
        return "Conformance: not run."
    m = report.matrix
    n = len(report.failures)
    verdicts = [backend_verdict(m, i).status for i in range(len(m.columns))]
    count = {s: verdicts.count(s) for s in BACKEND_VERDICT}
    diagnosed = [x for x in report.findings if x.diagnosed]
    text = f"Conformance: {n} failed record{'s' if n != 1 else ''}"
    if diagnosed:  # only where a diagnosis ran: older files read as before
        rest = sum(len(x.failures) for x in report.findings if not x.diagnosed)
        text += f" ({len(diagnosed)} finding{'s' if len(diagnosed) != 1 else ''} by cause, {rest} not diagnosed)"
    text += f"; {count['conforms']} of {len(m.columns)} backends conform, "
    if count["declared"]:
        named = "; ".join(f"{c.label}: {fnd.conventions_text(c.conventions)}"
                          for c, s in zip(m.columns, verdicts) if s == "declared")
        k = count["declared"]
        text += f"{k} conform{'s' if k == 1 else ''} under declared conventions ({named}), "
    if count["expected"]:
        text += f"{count['expected']} fail only where expected (--expect), "
    text += f"{count['fails']} fail, "
    if count["incomplete"]:
        text += f"{count['incomplete']} incomplete (checks not run), "
    if count["none"]:
        text += f"{count['none']} with no check passed or run, "
    return text + f"{count['skipped']} skipped (library or device missing)."
