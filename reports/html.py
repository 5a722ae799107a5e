"""index.html: one self-contained page (inline CSS and SVG, nothing fetched) from reports.model.

It says what report.md says, in the same order, plus the speed plots. Every string from a
results file (backend names, reasons, counterexamples, machine labels, environment) passes
through `esc` here or `html.escape` in reports.svg; nothing else reaches the page unescaped.
"""

from __future__ import annotations

from html import escape

from reports import markdown as md
from reports import expected, layouts, semantic
from reports.environment import backend_rows
from reports.model import Failure, Report, backend_verdict, conformance_summary, sig, step_title, totals_text
from reports.speed_model import DECODE_INTRO, FIT_INTRO, decode_head
from reports.svg import speed_figures

CSS = """
:root { --fg:#1b1f24; --muted:#59636e; --line:#d0d7de; --bg:#fff; --head:#f3f5f7;
  --pass:#dafbe1; --fail:#ffd8d3; --unsup:#eceff2; --skip:#fff4c2; }
* { box-sizing: border-box; }
body { margin:0; color:var(--fg); background:var(--bg); font:15px/1.5 system-ui, -apple-system,
  "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1340px; margin: 0 auto; padding: 20px 28px 60px; }
h1 { font-size: 1.8em; margin: .2em 0 .4em; }
h2 { font-size: 1.35em; margin: 1.8em 0 .5em; padding-bottom: .2em; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.08em; margin: 1.4em 0 .4em; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .88em; }
pre { background:#f6f8fa; border:1px solid var(--line); border-radius:6px; padding:10px 12px;
  overflow-x:auto; white-space:pre; }
nav a { margin-right: 1em; }
.meta { color: var(--muted); }
.warn { background:#ffebe9; border:2px solid #cf222e; color:#82071e; border-radius:6px;
  padding:10px 14px; margin: 10px 0; font-weight: 600; }
.summary { font-size: 1.05em; }
table { border-collapse: separate; border-spacing: 0; margin: .6em 0 1em; font-size: .9em; }
th, td { border-bottom: 1px solid var(--line); border-right: 1px solid var(--line); padding: 5px 8px;
  text-align: left; vertical-align: top; }
th:first-child, td:first-child { border-left: 1px solid var(--line); }
thead th { position: sticky; top: 0; background: var(--head); z-index: 1; border-top: 1px solid var(--line); }
tbody th.group { background: #eaeef2; font-weight: 600; }
tbody th[scope=row] { font-weight: normal; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.doc { display:block; color: var(--muted); font-size: .9em; }
td.pass { background: var(--pass); } td.fail { background: var(--fail); font-weight: 600; }
td.unsupported { background: var(--unsup); color: var(--muted); } td.skipped { background: var(--skip); }
td.none { color: var(--muted); } td.incomplete { background: var(--skip); font-weight: 600; }
td.fail a { color: inherit; }
td.declared { background: #ddf4ff; font-weight: 600; }
td.xfail { background: #fff8c5; } td.xpass { background: var(--fail); font-weight: 600; }
.finding { border: 1px solid var(--line); border-left: 5px solid #bf8700; border-radius: 6px;
  padding: 4px 16px 10px; margin: 14px 0; }
.finding.undiagnosed { border-left-color: #cf222e; }
.finding dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: .5em 0; }
.finding dt { font-weight: 600; } .finding dd { margin: 0; }
details.records { margin: 10px 0; } details.records > summary { cursor: pointer; font-weight: 600; }
tfoot td, tfoot th { background: var(--head); font-size: .9em; }
tr.noheadline td { color: var(--muted); }
table.speed td:first-child { white-space: nowrap; }
table.speed tr.newshape td { border-top: 2px solid #8c959f; }
.failure { border: 1px solid var(--line); border-left: 5px solid #cf222e; border-radius: 6px;
  padding: 4px 16px 10px; margin: 14px 0; }
.failure dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: .5em 0; }
.failure dt { font-weight: 600; } .failure dd { margin: 0; }
figure { margin: 1em 0 2em; } figcaption { color: var(--muted); font-size: .9em; }
svg.plot { max-width: 100%; height: auto; display: block; }
"""


def esc(s: object) -> str:
    return escape("" if s is None else str(s), quote=True)


def _table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Head and rows are already-escaped HTML fragments."""
    h = "".join(f'<th scope="col">{c}</th>' for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>'


def _header(report: Report) -> str:
    out = [f"<h1>{esc(report.title)}</h1>"]
    out += [f'<div class="warn" role="alert">⚠ WARNING: {esc(w)}</div>' for w in report.warnings]
    parts = []
    for h in report.headers:
        dirty = {True: "<strong>DIRTY</strong>", False: "clean", None: "dirty unknown"}[h.dirty]
        bits = [f"commit <code>{esc(h.commit or 'unknown')}</code>, {dirty}"]
        c = h.conformance
        bits.append(f"conformance {esc(c['status'])}, profile <code>{esc(c['profile'])}</code>, seed {esc(c['seed'])}"
                    if c else "conformance not run")
        bits.append(f"speed {esc(h.speed['status'])}" if h.speed else "speed not run")
        parts.append(f"<strong>{esc(h.machine)}</strong> ({'; '.join(bits)})")
    out.append(f'<p class="meta">Generated from {", ".join(parts) if parts else "no runs"}.</p>')
    if report.matrix is not None:
        out.append(f'<p class="summary"><strong>{esc(conformance_summary(report))}</strong></p>')
    out.append('<nav><a href="#findings">Findings</a><a href="#environment">Environment</a>'
               '<a href="#conformance">Conformance</a>'
               '<a href="#failures">Failures</a><a href="#semantics">Semantics</a><a href="#speed">Speed</a><a href="#plots">Plots</a></nav>')
    return "<header>" + "\n".join(out) + "</header>"


def _environment(report: Report) -> str:
    out = ['<section id="environment"><h2>Environment</h2>']
    if not report.environments:
        return out[0] + "<p>No runs.</p></section>"
    keys = list(dict.fromkeys(k for _, rows in report.environments for k, _ in rows))
    values = [dict(rows) for _, rows in report.environments]
    head = [""] + [esc(m) for m, _ in report.environments]
    rows = [[f"<strong>{esc(k)}</strong>"] + [esc(v.get(k, "—")) for v in values] for k in keys]
    out.append(_table(head, rows, "env"))
    m = report.matrix
    if m is not None and m.columns:  # what each backend declares and reports about itself
        verdicts = [backend_verdict(m, i).text for i in range(len(m.columns))]
        rows = [[f"<code>{esc(b)}</code>", esc(v), esc(c), esc(x)] for b, v, c, x in backend_rows(m.columns, verdicts)]
        out.append("<p>Backends, as each declares and reports itself:</p>"
                   + _table(["Backend", "Verdict", "Declared conventions and promises", "Versions"], rows, "backends"))
    return "".join(out) + "</section>"


#: a backend verdict's CSS class (the matrix cells' classes, plus "declared")
VERDICT_CLASS = {"fails": "fail", "conforms": "pass", "declared": "declared", "expected": "xfail",
                 "incomplete": "incomplete",
                 "skipped": "skipped", "none": "none"}


def _finding_anchors(report: Report) -> dict[int, str]:
    return {id(x): f"finding-{k}" for k, x in enumerate(report.findings, 1)}


def _failure_anchors(report: Report) -> dict[tuple[str, str, str], str]:
    """Where a failing matrix cell links: its first record's finding, else that record in full."""
    ids = _finding_anchors(report)
    finding = {(x.machine, x.backend, x.id): ids[id(x)] for x in report.findings if x.diagnosed}
    anchors: dict[tuple[str, str, str], str] = {}
    for f in report.failures:
        anchors.setdefault((f.machine, f.backend, f.check),
                           finding.get((f.machine, f.backend, f.finding), f"failure-{f.number}"))
    return anchors


def _matrix(report: Report) -> str:
    out = ['<section id="conformance"><h2>Conformance</h2>']
    m = report.matrix
    if m is None:
        return out[0] + "<p>Conformance: not run (no run in this document has a conformance section).</p></section>"
    cmds = [f"<li>{esc(h.machine)}: <code>{esc(h.conformance['command'])}</code></li>"
            for h in report.headers if h.conformance]
    out.append(f"<ul>{''.join(cmds)}</ul>")
    out.append("<p>Legend: " + md.legend() +
               " (failed dtypes in brackets; unsupported = outside the backend's declared capabilities, "
               "skipped = this machine lacks something).</p>")
    out.append(f"<p>{esc(md.VERDICT_LEGEND)}</p>")
    anchors = _failure_anchors(report)
    cols = len(m.columns)
    head = '<th scope="col">Check</th>' + "".join(
        f'<th scope="col" title="{esc(c.source)}"><code>{esc(c.label)}</code></th>' for c in m.columns)
    verdicts = [backend_verdict(m, i) for i in range(cols)]
    head += '</tr><tr class="verdict"><th scope="row">verdict</th>' + "".join(
        f'<td class="{VERDICT_CLASS[v.status]}">{esc(v.text)}</td>' for v in verdicts)
    body = []
    for title, checks in m.groups:
        rows = [f'<tr><th class="group" colspan="{cols + 1}" scope="rowgroup">{esc(title)}</th></tr>']
        for row in checks:
            tds = []
            for i, col in enumerate(m.columns):
                cell = m.cell(row.name, i)
                content = esc(cell.text)
                a = anchors.get((col.machine, col.backend, row.name))
                if cell.status == "fail" and a:
                    content = f'<a href="#{a}">{content}</a>'
                tds.append(f'<td class="{cell.status}" title="{esc(cell.detail)}">{content}</td>')
            doc = f'<span class="doc">{esc(row.doc)}</span>' if row.doc else ""
            rows.append(f'<tr><th scope="row"><code>{esc(row.name)}</code>{doc}</th>{"".join(tds)}</tr>')
        body.append("<tbody>" + "".join(rows) + "</tbody>")
    totals = "".join(
        f'<td class="num">{"<br>".join(esc(x) for x in totals_text(t).split(", "))}</td>' for t in m.totals)
    out.append(f'<table class="matrix"><thead><tr>{head}</tr></thead>{"".join(body)}'
               f'<tfoot><tr><th scope="row">totals (records)</th>{totals}</tr></tfoot></table>')
    if report.skipped_backends:
        items = "".join(f"<li><code>{esc(c.label)}</code>: {esc(c.skip_reason)}</li>" for c in report.skipped_backends)
        out.append(f"<p>Skipped backends:</p><ul>{items}</ul>")
    return "\n".join(out) + "</section>"


def _findings(report: Report) -> str:
    out = ['<section id="findings"><h2>Findings</h2>']
    if report.matrix is None:
        return out[0] + "<p>Conformance: not run.</p></section>"
    if not report.findings:
        return out[0] + "<p>No check failed.</p></section>"
    out.append(f"<p>{esc(md.FINDINGS_INTRO)}</p>")
    steps, anchors = md.steps_of(report), _finding_anchors(report)
    for col, found in md.by_backend(report):
        verdict = f" — {esc(backend_verdict(report.matrix, col).text)}" if col >= 0 else ""
        out.append(f"<h3><code>{esc(found[0].label)}</code>{verdict}</h3>")
        for x in found:
            dl = "".join(f"<dt>{esc(k)}</dt><dd>" + "".join(f"<code>{esc(t)}</code>" if c else esc(t) for t, c in v)
                         + "</dd>" for k, v in md.finding_lines(x))
            rows = [[f"<code>{esc(r[0])}</code>"] + [esc(c) for c in r[1:]] for r in md.finding_rows(x, steps)]
            ex = ""
            if x.example:
                e = x.example
                ex = (f'<p class="example">Example (<code>{esc(e.check)}</code>, {esc(e.dtype)}): {esc(e.reason)}</p>'
                      f'<pre class="counterexample"><code>{esc(e.counterexample or "(none recorded)")}</code></pre>'
                      f'<pre class="repro"><code>{esc(e.repro or "(none recorded)")}</code></pre>')
            cls = "finding" if x.diagnosed else "finding undiagnosed"
            dl += f'<dt>Records</dt><dd><a href="#records-{anchors[id(x)]}">each in full, under Failures</a></dd>'
            out.append(f'<article class="{cls}" id="{anchors[id(x)]}"><h4>{esc(x.heading)}</h4><dl>{dl}</dl>'
                       + _table([esc(h) for h in md.FINDING_HEAD], rows, "finding-checks") + ex + "</article>")
    return "\n".join(out) + "</section>"


def _failure(f: Failure) -> str:
    """One failed record in full, as an article the matrix and the findings link to."""
    ratio = (f" ({f.max_error / f.tolerance:.3g}× the tolerance)" if f.max_error is not None and f.tolerance else "")
    dl = [("Backend", f"<code>{esc(f.label)}</code>"), ("Check", f"<code>{esc(f.check)}</code>"),
          ("What it checks", esc(f.doc or "—")), ("Step", esc(step_title(f.step))), ("dtype", esc(f.dtype)),
          ("Max error", f"{esc(sig(f.max_error))} vs tolerance {esc(sig(f.tolerance))}{esc(ratio)}"),
          ("Reason", esc(f.reason))]
    if f.inputs:
        dl.append(("Saved inputs", f"<code>{esc(f.inputs)}</code>"))
    return (f'<article class="failure" id="failure-{f.number}"><h4>{f.number}. <code>{esc(f.label)}</code>: '
            f"<code>{esc(f.check)}</code> ({esc(step_title(f.step))}, {esc(f.dtype)})</h4>"
            "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in dl) + "</dl>"
            f'<p>Counterexample:</p><pre class="counterexample"><code>{esc(f.counterexample or "(none recorded)")}</code></pre>'
            f'<p>Reproduce:</p><pre class="repro"><code>{esc(f.repro or "(none recorded)")}</code></pre></article>')


def _failures(report: Report) -> str:
    """Every failed record in full: a finding's records folded (the finding says what they share),
    the not-diagnosed ones open under one heading per backend."""
    out = ['<section id="failures"><h2>Failures</h2>']
    if report.matrix is None:
        return out[0] + "<p>Conformance: not run.</p></section>"
    if not report.failures:
        return out[0] + "<p>No check failed.</p></section>"
    anchors = _finding_anchors(report)
    for _, found in md.by_backend(report):
        for x in found:
            n = len(x.failures)
            records = "".join(_failure(f) for f in x.failures)
            what = f"{n} failed record{'s' if n != 1 else ''}"
            if x.diagnosed:
                out.append(f'<details class="records" id="records-{anchors[id(x)]}"><summary><code>{esc(x.label)}</code>: {esc(x.heading)} '
                           f"({what})</summary>{records}</details>")
            else:
                out.append(f'<h3 id="records-{anchors[id(x)]}"><code>{esc(x.label)}</code>: '
                           f"{esc(md.fnd.NOT_DIAGNOSED)} ({what})</h3>{records}")
    return "\n".join(out) + "</section>"


def _speed(report: Report) -> str:
    out = ['<section id="speed"><h2>Speed</h2>']
    if report.speed is None:
        return out[0] + "<p>Speed: not run (no run in this document has a speed section).</p></section>"
    cmds = [f"<li>{esc(h.machine)}: <code>{esc(h.speed['command'])}</code> (status {esc(h.speed['status'])})</li>"
            for h in report.headers if h.speed]
    out.append(f"<ul>{''.join(cmds)}</ul>")
    notes = [f"<li>{esc(m)}: {esc(n)}</li>" for m, ns in report.speed.notes for n in ns]
    if notes:
        out.append(f"<ul>{''.join(notes)}</ul>")
    out.append(f"<p>{esc(md.SPEED_INTRO)}</p>")
    if not report.speed.tables:
        out.append("<p>No speed cells were recorded.</p>")
    for t in report.speed.tables:
        out.append(f"<h3>{esc(md.table_title(t))}</h3><p>{esc(md.peak_line(t))}</p>")
        rows, last = [], None
        for r in t.rows:
            cells = md.speed_cells(r, t)
            tds = "".join(
                f'<td class="num">{esc(c)}</td>' if i in md.NUMERIC else
                f"<td><code>{esc(c)}</code></td>" if i == 1 else f"<td>{esc(c)}</td>" for i, c in enumerate(cells))
            cls = ("" if r.headline else "noheadline") + (" newshape" if last is not None and r.shape != last else "")
            last = r.shape
            rows.append(f'<tr class="{cls.strip()}">{tds}</tr>')
        head = "".join(f'<th scope="col">{esc(h)}</th>' for h in md.speed_head(t))
        out.append(f'<table class="speed"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
    for d in report.speed.decode:  # KV-cache decode speed, next to the forward's
        head = "".join(f'<th scope="col">{esc(h)}</th>' for h in decode_head())
        rows = ["<tr>" + "".join(f"<td><code>{esc(c)}</code></td>" if i == 1 else
                                 f'<td class="num">{esc(c)}</td>' if 2 <= i <= 5 else f"<td>{esc(c)}</td>"
                                 for i, c in enumerate(r)) + "</tr>" for r in d.rows]
        out.append(f"<h3>{esc(d.machine)}: decode, {esc(d.dtype)}</h3><p>{esc(DECODE_INTRO)}</p>"
                   f"<p>{esc(md.bandwidth_line(d))}</p>"
                   f'<table class="speed"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>')
        if d.fits:
            out.append(f"<p>{esc(FIT_INTRO)}</p><ul>" + "".join(f"<li>{esc(f)}</li>" for f in d.fits) + "</ul>")
    return "\n".join(out) + "</section>"


def _plots(report: Report) -> str:
    out = ['<section id="plots"><h2>Plots</h2>']
    if report.speed is None:
        return out[0] + "<p>Speed: not run, nothing to plot.</p></section>"
    figures = speed_figures(report.speed, report.multi_machine)
    if not figures:
        return out[0] + "<p>No shape was measured at two or more T: nothing to plot.</p></section>"
    for title, time_svg, flops_svg in figures:
        out.append(f"<figure>{time_svg}<figcaption>Median time per call against T, {esc(title)}; "
                   "error bars span p25 to p75. Lower is faster.</figcaption></figure>")
        out.append(f"<figure>{flops_svg}<figcaption>Useful GFLOP/s against T, {esc(title)}; the dashed "
                   "horizontal line is the matmul peak measured in the same run.</figcaption></figure>")
    out.append("<p>Not plotted: backends that failed conformance (no headline figure) and cells that raised.</p>")
    return "\n".join(out) + "</section>"


def render(report: Report) -> str:
    body = "\n".join([_header(report), _findings(report), _environment(report), _matrix(report),
                      expected.html(report.expected, esc), _failures(report), layouts.html(report.runs, esc),
                      semantic.html(report, esc), _speed(report), _plots(report)])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(report.title)}</title><style>{CSS}</style></head>\n"
            f"<body><main>\n{body}\n</main></body></html>\n")
