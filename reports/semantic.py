"""The semantic-profile section of report.md and index.html.

One table per machine whose run has a "semantics" section (written by
`python -m conformance.semantics`): a row per backend's library, a column per point where
implementations disagree, each cell the value a probe measured on the library itself (not
through the backend adapter). The probe's longer description goes under the table in
Markdown and into the cell's tooltip in HTML. Strings from the results file are escaped by
the `text`/`code`/`esc` functions each renderer passes in.
"""

from __future__ import annotations

from typing import Any, Callable

TITLE = "Semantic profile"
INTRO = ("Where attention implementations disagree, each CPU backend's library as it ships, measured by "
         "probes on the library itself (python -m conformance.semantics), without the corrections the "
         "backend adapters make; what each adapter corrects is listed under the table. "
         "The spec decides: zeros for a fully masked row, True = take part, bottom-right alignment, "
         "1/sqrt(head_dim), inverted dropout (replayable), output dtype = input dtype.")
MISSING = "Semantic profile: not measured (no run in this document has a semantics section; " \
          "python -m conformance.semantics or nox -s conformance writes one)."
NOTES = "What each backend adapter does with these (its Capabilities.notes):"


def sections(report: Any) -> list[tuple[str, dict[str, Any]]]:
    """(machine, semantics section) for each run that has one."""
    return list(getattr(report, "semantics", None) or [])


def head(sem: dict[str, Any]) -> list[str]:
    return ["Backend", "Library"] + [c["title"] for c in sem["columns"]]


def cells(sem: dict[str, Any], row: dict[str, Any]) -> list[tuple[str, str]]:
    """(value, detail) per column after the backend name; a skipped library says why."""
    if row.get("skip_reason"):
        return [(row["library"], "")] + [("not measured", row["skip_reason"])] * len(sem["columns"])
    out = [(row["library"], "")]
    for c in sem["columns"]:
        e = row["entries"].get(c["key"], {"value": "—", "detail": ""})
        out.append((e["value"], e["detail"] if e["detail"] != e["value"] else ""))
    return out


def markdown(report: Any, text: Callable[[object], str], code: Callable[[object], str]) -> list[str]:
    out = [f"## {TITLE}", ""]
    secs = sections(report)
    if not secs:
        return out + [text(MISSING), ""]
    out += [text(INTRO), ""]
    for machine, sem in secs:
        out += [f"- {text(machine)}: {code(sem.get('command', ''))} ({text(sem.get('duration_s'))} s)", ""]
        rows = [[code(r["backend"])] + [text(v) for v, _ in cells(sem, r)] for r in sem["rows"]]
        out += ["| " + " | ".join(text(h) for h in head(sem)) + " |", "|" + " --- |" * len(head(sem))]
        out += ["| " + " | ".join(r) + " |" for r in rows] + ["", text(NOTES), ""]
        out += [f"- {code(r['backend'])}: {text(r['adapter_notes'])}" for r in sem["rows"] if r.get("adapter_notes")]
        out += ["", "Measured details:", ""]
        for r in sem["rows"]:
            for c, (_, detail) in zip(sem["columns"], cells(sem, r)[1:]):
                if detail:
                    out.append(f"- {code(r['backend'])}, {text(c['title'])}: {text(detail)}")
        out.append("")
    return out


def html(report: Any, esc: Callable[[object], str]) -> str:
    out = [f'<section id="semantics"><h2>{TITLE}</h2>']
    secs = sections(report)
    if not secs:
        return out[0] + f"<p>{esc(MISSING)}</p></section>"
    out.append(f"<p>{esc(INTRO)}</p>")
    for machine, sem in secs:
        out.append(f"<p>{esc(machine)}: <code>{esc(sem.get('command', ''))}</code> ({esc(sem.get('duration_s'))} s); "
                   "hover a cell for what the probe measured.</p>")
        th = "".join(f'<th scope="col">{esc(h)}</th>' for h in head(sem))
        body = []
        for r in sem["rows"]:
            tds = "".join(f'<td title="{esc(d)}">{esc(v)}</td>' for v, d in cells(sem, r))
            body.append(f'<tr><th scope="row"><code>{esc(r["backend"])}</code></th>{tds}</tr>')
        out.append(f'<table class="semantics"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>')
        notes = "".join(f"<li><code>{esc(r['backend'])}</code>: {esc(r['adapter_notes'])}</li>"
                        for r in sem["rows"] if r.get("adapter_notes"))
        out.append(f"<p>{esc(NOTES)}</p><ul>{notes}</ul>" if notes else "")
    return "\n".join(out) + "</section>"
