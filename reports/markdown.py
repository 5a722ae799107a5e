"""report.md: the report as GitHub-flavoured Markdown, rendered from reports.model.

Strings from results files are untrusted: identifiers go in code spans, free text is escaped
(HTML too, since Markdown viewers render inline HTML), and counterexamples and repro commands
go verbatim into fenced blocks whose fence is longer than any backtick run inside them, so a
reader can copy them exactly.
"""

from __future__ import annotations

import re

from reports import findings as fnd
from reports import expected, layouts, semantic
from reports.environment import backend_rows
from reports.model import (BACKEND_VERDICT, VERDICT, Failure, Report, backend_verdict, conformance_summary, sig, step_title,
                           totals_text)
from reports.speed_model import DECODE_INTRO, FIT_INTRO, SpeedRow, SpeedTable, decode_head

_SPECIAL = re.compile(r"([\\`*_\[\]])")


def text(s: object) -> str:
    """Free text for a table cell or a paragraph: one line, no markup, no HTML."""
    s = " ".join(str(s).split())
    s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SPECIAL.sub(r"\\\1", s).replace("|", "\\|")


def code(s: object) -> str:
    """An identifier as a code span (shown exactly), safe inside a table row."""
    s = " ".join(str(s).split())
    longest = max((len(m) for m in re.findall(r"`+", s)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s else ""
    return f"{fence}{pad}{s}{pad}{fence}".replace("|", "\\|")


def fenced(body: str, lang: str = "") -> str:
    """A fenced block holding `body` verbatim, whatever backticks it contains."""
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{body.rstrip(chr(10))}\n{fence}"


def legend() -> str:
    keys = ["pass", "fail", "unsupported", "skipped", "incomplete", "none"]
    return " · ".join(f"{VERDICT[k][0]} {VERDICT[k][1]}" for k in keys + ["xfail", "xpass"])


VERDICT_LEGEND = ("Verdict row (a backend over all its records): " + " · ".join(
    f"{s} {w}" for s, w in BACKEND_VERDICT.values()) + "; conforms under declared conventions = no check failed "
    "when judged against the spec adjusted for the deviations the backend declares (named), not a plain pass.")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [_row(head), _row(["---"] * len(head)), *(_row(r) for r in rows)]


def generated_from(report: Report) -> str:
    parts = []
    for h in report.headers:
        dirty = {True: "DIRTY", False: "clean", None: "dirty unknown"}[h.dirty]
        bits = [f"commit {code(h.commit or 'unknown')}, {dirty}"]
        if h.conformance:
            c = h.conformance
            bits.append(f"conformance {c['status']}, profile {code(c['profile'])}, seed {c['seed']}")
        else:
            bits.append("conformance not run")
        bits.append(f"speed {h.speed['status']}" if h.speed else "speed not run")
        parts.append(f"**{text(h.machine)}** ({'; '.join(bits)})")
    return "Generated from " + (", ".join(parts) if parts else "no runs") + "."


def _environment(report: Report) -> list[str]:
    out = ["## Environment", ""]
    if not report.environments:
        return out + ["No runs.", ""]
    keys = list(dict.fromkeys(k for _, rows in report.environments for k, _ in rows))
    values = [dict(rows) for _, rows in report.environments]
    head = [""] + [text(m) for m, _ in report.environments]
    body = [[f"**{k}**"] + [text(v.get(k, "—")) for v in values] for k in keys]
    out += _table(head, body) + [""]
    m = report.matrix
    if m is not None and m.columns:  # what each backend declares and reports about itself
        verdicts = [backend_verdict(m, i).text for i in range(len(m.columns))]
        out += ["Backends, as each declares and reports itself:", ""]
        out += _table(["Backend", "Verdict", "Declared conventions and promises", "Versions"],
                      [[code(b), text(v), text(c), text(x)] for b, v, c, x in backend_rows(m.columns, verdicts)])
        out.append("")
    return out


def _matrix(report: Report) -> list[str]:
    out = ["## Conformance", ""]
    m = report.matrix
    if m is None:
        return out + ["Conformance: not run (no run in this document has a conformance section).", ""]
    for h in report.headers:
        if h.conformance:
            out.append(f"- {text(h.machine)}: {code(h.conformance['command'])}")
    out += ["", "Legend: " + legend() +
            " (failed dtypes in brackets; unsupported = outside the backend's declared capabilities, "
            "skipped = this machine lacks something).", "", text(VERDICT_LEGEND), ""]
    head = ["Check"] + [code(c.label) for c in m.columns]
    rows = [["**verdict**"] + [text(backend_verdict(m, i).text) for i in range(len(m.columns))]]
    nowhere = []  # checks no backend here supports: named once below the table, not as rows of "unsupported"
    for title, checks in m.groups:
        shown = [r for r in checks if any(m.cell(r.name, i).status != "unsupported" for i in range(len(m.columns)))]
        nowhere += [r.name for r in checks if r not in shown]
        if shown:
            rows.append([f"**{text(title)}**"] + [""] * len(m.columns))
        for row in shown:
            doc = f" — {text(row.doc)}" if row.doc else ""
            rows.append([code(row.name) + doc] + [text(m.cell(row.name, i).text) for i in range(len(m.columns))])
    rows.append(["**totals (records)**"] + [totals_text(t) for t in m.totals])
    out += _table(head, rows) + [""]
    if nowhere:
        out += [f"Unsupported by every backend above (outside each one's declared capabilities), so not shown as "
                f"rows: {', '.join(code(n) for n in nowhere)}.", ""]
    if report.skipped_backends:
        out += ["Skipped backends:", ""]
        out += [f"- {code(c.label)}: {text(c.skip_reason)}" for c in report.skipped_backends]
        out.append("")
    return out


def ratio(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}×"


def finding_lines(x: fnd.Finding) -> list[tuple[str, list[tuple[str, bool]]]]:
    """(what, pieces) lines of a finding, shared by md and html: cause, convention (with the line
    that declares it), detail, how many records it explains. A piece is (raw text, is code)."""
    out: list[tuple[str, list[tuple[str, bool]]]] = []
    if x.diagnosed:
        out.append(("Cause", [(x.cause, True), (f" ({x.cause_label})", False)]))
        if x.convention:
            name, value = x.convention
            out.append(("Convention", [(f"{name}={value}", True), (f" ({fnd.convention_label(name, value)}); "
                                        "if intended, declare it: ", False), (fnd.declare_hint(name, value), True)]))
        else:
            out.append(("Convention", [("none on the menu explains it", False)]))
        if x.detail:
            out.append(("Detail", [(x.detail, False)]))
    n = len(x.failures)
    out.append(("Explains", [(f"{n} failed record{'s' if n != 1 else ''}"
                              + ("" if x.diagnosed else "; no finding explains them: each is shown in full "
                                 "under Failures"), False)]))
    return out


def finding_rows(x: fnd.Finding, steps: dict[str, int | None]) -> list[list[str]]:
    """The finding's check x dtype list: check, step, dtypes, worst error / tolerance."""
    return [[c, step_title(steps.get(c)), ", ".join(d or "-" for d in ds), ratio(x.worst(c))] for c, ds in x.checks]


FINDING_HEAD = ["Check", "Step", "dtypes", "Worst error / tolerance"]
FINDINGS_INTRO = ("Failed records grouped by cause, per backend: what each cause is, the convention that would "
                  "explain it, the checks it fails and one example. Every failed record's details are in "
                  "results.json and, folded, in index.html.")


def steps_of(report: Report) -> dict[str, int | None]:
    return {r.name: r.step for _, rows in report.matrix.groups for r in rows} if report.matrix else {}


def by_backend(report: Report) -> list[tuple[int, list[fnd.Finding]]]:
    """(matrix column, its findings) for each backend with a finding, in column order."""
    cols = {(c.machine, c.backend): i for i, c in enumerate(report.matrix.columns)} if report.matrix else {}
    out: dict[tuple[str, str], list[fnd.Finding]] = {}
    for x in report.findings:
        out.setdefault((x.machine, x.backend), []).append(x)
    return [(cols.get(k, -1), v) for k, v in out.items()]


def _piece(p: tuple[str, bool]) -> str:
    """A piece of a finding's line: code, or text keeping its edge spaces (text() trims them)."""
    t, is_code = p
    if is_code:
        return code(t)
    return (" " if t[:1].isspace() else "") + text(t) + (" " if t[-1:].isspace() and t.strip() else "")


def _findings(report: Report) -> list[str]:
    out = ["## Findings", ""]
    if report.matrix is None:
        return out + ["Conformance: not run.", ""]
    if not report.findings:
        return out + ["No check failed.", ""]
    out += [FINDINGS_INTRO, ""]
    steps = steps_of(report)
    for col, found in by_backend(report):
        verdict = f" — {text(backend_verdict(report.matrix, col).text)}" if col >= 0 else ""
        out += [f"### {code(found[0].label)}{verdict}", ""]
        for x in found:
            out += [f"#### {text(x.heading)}", ""]
            out += [f"- {k}: " + "".join(map(_piece, v)) for k, v in finding_lines(x)]
            out += [""] + _table(FINDING_HEAD, [[code(r[0])] + [text(c) for c in r[1:]]
                                                for r in finding_rows(x, steps)]) + [""]
            if x.example:
                e = x.example
                out += [f"Example ({code(e.check)}, {text(e.dtype)}): {text(e.reason)}", ""]
                out += [fenced(e.counterexample or "(none recorded)", "text"), "",
                        fenced(e.repro or "(none recorded)", "sh"), ""]
    return out


def _failures(report: Report) -> list[str]:
    out = ["## Failures", ""]
    if report.matrix is None:
        return out + ["Conformance: not run.", ""]
    if not report.failures:
        return out + ["No check failed.", ""]
    found = [x for _, xs in by_backend(report) for x in xs]
    for x in found:  # first one line per finding (it lists its checks); its records' details in results.json
        if x.diagnosed:
            out.append(f"- {code(x.label)}: {text(x.id)}, {_records(x)} (the finding's checks are listed under "
                       "Findings; each record's details are in results.json and index.html)")
    for x in found:  # then, per backend, what no finding explains, in full
        if not x.diagnosed:
            out += ["", f"### {code(x.label)}: {text(fnd.NOT_DIAGNOSED)} ({_records(x)})", ""]
            for f in x.failures:
                out += _failure(f)
    return out + [""]


def _records(x: fnd.Finding) -> str:
    n = len(x.failures)
    return f"{n} failed record{'s' if n != 1 else ''}"


def _failure(f: Failure) -> list[str]:
    """One failed record in full (no finding explains it)."""
    out = [f"#### {f.number}. {code(f.label)}: {code(f.check)} ({text(step_title(f.step))}, {text(f.dtype)})", ""]
    if f.doc:
        out.append(f"- Check: {text(f.doc)}")
    ratio = (f" ({f.max_error / f.tolerance:.3g}× the tolerance)"
             if f.max_error is not None and f.tolerance else "")
    out.append(f"- Max error: {sig(f.max_error)} vs tolerance {sig(f.tolerance)}{ratio}")
    out.append(f"- Reason: {text(f.reason)}")
    if f.inputs:
        out.append(f"- Saved inputs: {code(f.inputs)}")
    out.append("")
    out += ["Counterexample:", "", fenced(f.counterexample or "(none recorded)", "text"), ""]
    out += ["Reproduce:", "", fenced(f.repro or "(none recorded)", "sh"), ""]
    return out


def time_unit(t: SpeedTable) -> tuple[str, float]:
    """ms, or µs when most calls take under 0.1 ms (GPU tables), so numbers stay readable."""
    meds = sorted(r.median_ms for r in t.rows if r.median_ms is not None)
    return ("µs", 1e3) if meds and meds[len(meds) // 2] < 0.1 else ("ms", 1.0)


def range_time(r: SpeedRow, scale: float) -> str:
    if r.median_ms is None:
        return "—"
    spread = (f" ({sig(r.p25_ms * scale)}–{sig(r.p75_ms * scale)})"
              if r.p25_ms is not None and r.p75_ms is not None else "")
    return sig(r.median_ms * scale) + spread


def ratio_text(r: SpeedRow) -> str:
    if not r.headline:
        return "—"
    return "n/a" if r.time_ratio is None else f"{r.time_ratio:.2f}×"


def peak_line(t: SpeedTable) -> str:
    """Plain text (escaped by the caller): the peak, its source, the baseline and the clock."""
    if t.peak_gflops is None:
        out = "Matmul peak: not measured for this device and dtype (no % of peak)."
    else:
        out = f"Measured matmul peak: {sig(t.peak_gflops)} GFLOP/s" + (f" ({t.peak_source})" if t.peak_source else "") + "."
    out += (f" Time vs torch: against {t.baseline} at the same shape." if t.baseline
            else " No torch eager backend here: time vs torch n/a.")
    out += f" Timer: {', '.join(t.timers)}." if t.timers else ""
    return out + (f" Peak memory of one call by: {'; '.join(t.memory_methods)}." if t.memory_methods else "")


def table_title(t: SpeedTable) -> str:
    return f"{t.machine}: {t.device}, {t.dtype}"


def has_backward(t: SpeedTable) -> bool:
    """Whether any row has forward + backward timings (`nox -s bench -- --backward`)."""
    return any(r.fwd_bwd_ms is not None for r in t.rows)


def speed_head(t: SpeedTable) -> list[str]:
    unit = time_unit(t)[0]
    bwd = [f"Fwd+bwd {unit}", "Fwd+bwd GFLOP/s", "Fwd+bwd vs torch"] if has_backward(t) else []
    return ["Shape", "Backend", f"Median {unit} (p25–p75)", "GFLOP/s", *bwd, "% of peak", "Time vs torch",
            f"First call {unit}", "Memory MiB", "Samples", "Notes"]


NUMERIC = {2, 3, 4, 5, 6, 7, 8}  # columns right-aligned in HTML


def speed_cells(r: SpeedRow, t: SpeedTable) -> list[str]:
    """One speed row as plain strings (escaped by the caller), shared by md and html."""
    scale = time_unit(t)[1]
    pct = "—" if r.peak_pct is None else f"{r.peak_pct:.1f}%"
    first = "—" if r.first_ms is None else sig(r.first_ms * scale)
    mem = "—" if r.memory_mib is None else sig(r.memory_mib)
    bwd = ([("—" if r.fwd_bwd_ms is None else sig(r.fwd_bwd_ms * scale)),
            ("—" if r.fwd_bwd_gflops is None else sig(r.fwd_bwd_gflops)),
            ("—" if r.fwd_bwd_ratio is None else f"{r.fwd_bwd_ratio:.2f}×")] if has_backward(t) else [])
    return [r.shape, r.backend, range_time(r, scale), "—" if r.gflops is None else sig(r.gflops), *bwd, pct,
            ratio_text(r), first, mem, str(r.samples), "; ".join(r.notes)]


SPEED_INTRO = ("Time of the attention call only: median over warm calls (p25–p75 in brackets), the first "
               "call apart. Then useful GFLOP/s and the fraction of the matmul peak measured in the same "
               "run. Time vs torch = this median / torch eager's median at the same shape, device and "
               "dtype (< 1 is faster; n/a: no torch eager cell). Non-conforming backends get no headline figure.")


def _speed(report: Report) -> list[str]:
    out = ["## Speed", ""]
    if report.speed is None:
        return out + ["Speed: not run (no run in this document has a speed section).", ""]
    for h in report.headers:
        if h.speed:
            out.append(f"- {text(h.machine)}: {code(h.speed['command'])} (status {text(h.speed['status'])})")
    for machine, notes in report.speed.notes:
        out += [f"- {text(machine)}: {text(n)}" for n in notes]
    out += ["", SPEED_INTRO, ""]
    if not report.speed.tables:
        out += ["No speed cells were recorded.", ""]
    for t in report.speed.tables:
        out += [f"### {text(table_title(t))}", "", text(peak_line(t)), ""]
        body = [[code(c) if i == 1 else text(c) for i, c in enumerate(speed_cells(r, t))] for r in t.rows]
        out += _table(speed_head(t), body) + [""]
    for d in report.speed.decode:  # KV-cache decode speed, next to the forward's
        out += [f"### {text(d.machine)}: decode, {text(d.dtype)}", "", text(DECODE_INTRO),
                "", text(bandwidth_line(d)), ""]
        out += _table(decode_head(), [[code(c) if i == 1 else text(c) for i, c in enumerate(r)] for r in d.rows]) + [""]
        if d.fits:
            out += [text(FIT_INTRO), "", *(f"- {text(f)}" for f in d.fits), ""]
    return out


def bandwidth_line(d) -> str:
    if d.bandwidth_gbs is None:
        return "Memory bandwidth: not measured."
    load = f"; {d.load}" if d.load else ""
    return f"Memory bandwidth: {sig(d.bandwidth_gbs)} GB/s ({d.bandwidth_source}, best of the run){load}."


def render(report: Report) -> str:
    out = [f"# {text(report.title)}", ""]
    for w in report.warnings:
        out.append(f"> **⚠ WARNING: {text(w)}**")
    if report.warnings:
        out.append("")
    out += [generated_from(report), ""]
    if report.matrix is not None:
        out += [f"**{text(conformance_summary(report))}**", ""]
    out += _findings(report) + _environment(report) + _matrix(report)
    out += expected.markdown(report.expected, text, code, _table) + _failures(report)
    out += layouts.markdown(report.runs, text, code)
    out += semantic.markdown(report, text, code) + _speed(report)
    return "\n".join(out).rstrip() + "\n"
