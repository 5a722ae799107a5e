"""The semantic-profile section of report.md and index.html.

One table per machine whose run has a "semantics" section (written by
`python -m conformance.semantics`): a column per point where implementations disagree, and per
backend a row measured through the backend contract (via "contract", plug-ins included) and,
for a built-in whose library has a raw probe, the row measured on the library itself (via
"library", before the adapter's corrections), side by side. The probe's longer description
goes under the table in Markdown and into the cell's tooltip in HTML. Strings from the results file are escaped by
the `text`/`code`/`esc` functions each renderer passes in.
"""

from __future__ import annotations

from typing import Any, Callable

TITLE = "Semantic profile"
INTRO = ("Where attention implementations disagree, what each backend does (python -m conformance.semantics). "
         "Via library: probes on the library itself as it ships, without the corrections the backend adapter "
         "makes (built-ins with a raw probe). Via contract: probes of the backend through the contract the "
         "suite calls, for every backend, plug-ins included; there a fully masked row is named from the "
         "conventions menu and Tq < Tk exists only in KV-cache decoding. What each adapter corrects is listed "
         "under the table. The spec decides: zeros for a fully masked row (zero_context), True = take part, "
         "bottom-right alignment, 1/sqrt(head_dim), inverted dropout (replayable), output dtype = input dtype, "
         "padded query rows computed, float64 computed in float64.")
MISSING = "Semantic profile: not measured (no run in this document has a semantics section; " \
          "python -m conformance.semantics or nox -s conformance writes one)."
NOTES = "What each backend adapter does with these (its Capabilities.notes) and the conventions it declares:"


def sections(report: Any) -> list[tuple[str, dict[str, Any]]]:
    """(machine, semantics section) for each run that has one."""
    return list(getattr(report, "semantics", None) or [])


def head(sem: dict[str, Any]) -> list[str]:
    return ["Backend", "Via", "Library"] + [c["title"] for c in sem["columns"]]


def via(row: dict[str, Any]) -> str:
    """"library" or "contract"; files written before contract rows existed hold library rows only."""
    return row.get("via", "library")


def notes(sem: dict[str, Any]) -> list[tuple[str, str]]:
    """(backend, its adapter notes and declared conventions), once per backend that has either."""
    out: dict[str, list[str]] = {}
    for r in sem["rows"]:
        parts = out.setdefault(r["backend"], [])
        if r.get("adapter_notes") and r["adapter_notes"] not in parts:
            parts.append(r["adapter_notes"])
        declared = ", ".join(f"{k}={v}" for k, v in (r.get("conventions") or {}).items())
        if declared:
            parts.append(f"declares {declared}")
    return [(b, "; ".join(p)) for b, p in out.items() if p]


def cells(sem: dict[str, Any], row: dict[str, Any]) -> list[tuple[str, str]]:
    """(value, detail) per column after the backend name and via; a skipped row says why."""
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
        rows = [[code(r["backend"]), text(via(r))] + [text(v) for v, _ in cells(sem, r)] for r in sem["rows"]]
        out += ["| " + " | ".join(text(h) for h in head(sem)) + " |", "|" + " --- |" * len(head(sem))]
        out += ["| " + " | ".join(r) + " |" for r in rows] + ["", text(NOTES), ""]
        out += [f"- {code(b)}: {text(n)}" for b, n in notes(sem)]
        out += ["", "Measured details:", ""]
        for r in sem["rows"]:
            if r.get("skip_reason"):  # one line, not the same reason per column
                out.append(f"- {code(r['backend'])} via {text(via(r))}: not measured: {text(r['skip_reason'])}")
                continue
            for c, (value, detail) in zip(sem["columns"], cells(sem, r)[1:]):
                if detail and value != "—":  # "—": a column this via does not measure, said in the tooltip
                    out.append(f"- {code(r['backend'])} via {text(via(r))}, {text(c['title'])}: {text(detail)}")
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
            body.append(f'<tr><th scope="row"><code>{esc(r["backend"])}</code></th><td>{esc(via(r))}</td>{tds}</tr>')
        out.append(f'<table class="semantics"><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table>')
        items = "".join(f"<li><code>{esc(b)}</code>: {esc(n)}</li>" for b, n in notes(sem))
        out.append(f"<p>{esc(NOTES)}</p><ul>{items}</ul>" if items else "")
    return "\n".join(out) + "</section>"
