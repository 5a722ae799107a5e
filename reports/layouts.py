"""The memory-layouts section of report.md and index.html: which layouts reached each backend.

From the records of `layouts_match_contiguous` (their optional "layouts" field: each input and
layout "exercised", the strides read back from the backend's native array being the layout's,
or "not exercised: why"). A backend whose array type cannot hold a layout (torch: no negative
strides; JAX: no strides at all) shows it "not exercised", never as a pass. Strings from the
results file are escaped by the `text`/`code`/`esc` functions each renderer passes in.
"""

from __future__ import annotations

from typing import Any, Callable

TITLE = "Memory layouts"
CHECK = "layouts_match_contiguous"
LAYOUTS = ("transposed", "sliced", "reversed", "broadcast")
INTRO = ("Inputs handed to each backend in other memory layouts (layouts_match_contiguous; docs/layouts.md): "
         "transposed storage, a slice of a larger buffer (stride 2), reversed (a negative stride), broadcast "
         "(stride 0). A layout counts as exercised only where the strides read back from the backend's native "
         "array were the layout's; otherwise it reads not exercised, whatever the check's outcome.")


def rows(runs: list[dict[str, Any]]) -> list[list[str]]:
    """[backend, dtype, outcome, per layout: the inputs exercised, then those not exercised] per record."""
    out = []
    for run in runs:
        for r in (run.get("conformance") or {}).get("records", []):
            if r.get("check") != CHECK or not r.get("layouts"):
                continue
            cells = []
            for layout in LAYOUTS:
                seen = {k.rsplit(" ", 1)[0]: v for k, v in r["layouts"].items() if k.rsplit(" ", 1)[-1] == layout}
                yes = sorted(k for k, v in seen.items() if v == "exercised")
                no = sorted(k for k, v in seen.items() if v != "exercised")
                cells.append("; ".join(filter(None, [", ".join(yes), f"not exercised: {', '.join(no)}" if no else ""]))
                             or "not exercised (not drawn)")
            out.append([r["backend"], r["dtype"], r["outcome"], *cells])
    return out


def reasons(runs: list[dict[str, Any]]) -> list[str]:
    """One line per distinct reason a layout was not exercised, with the backends it applies to."""
    why: dict[str, set] = {}
    for run in runs:
        for r in (run.get("conformance") or {}).get("records", []):
            if r.get("check") == CHECK:
                for k, v in (r.get("layouts") or {}).items():
                    if v != "exercised" and "from_numpy gave strides" in v:
                        why.setdefault(f"{k.rsplit(' ', 1)[-1]}: from_numpy did not keep the strides", set()).add(r["backend"])
                    elif v != "exercised" and "exposes no strides" in v:
                        why.setdefault(v.removeprefix("not exercised: "), set()).add(r["backend"])
    return [f"{k} ({', '.join(sorted(b))})" for k, b in sorted(why.items())]


HEAD = ["Backend", "dtype", "Outcome", *LAYOUTS]


def markdown(runs: list[dict[str, Any]], text: Callable[[object], str], code: Callable[[object], str]) -> list[str]:
    body = rows(runs)
    if not body:  # no record lists layouts (older files, or the check not run): no section
        return []
    out = [f"## {TITLE}", "", text(INTRO), "", "| " + " | ".join(HEAD) + " |", "|" + " --- |" * len(HEAD)]
    out += ["| " + " | ".join([code(r[0])] + [text(c) for c in r[1:]]) + " |" for r in body] + [""]
    out += [f"- {text(w)}" for w in reasons(runs)]
    return out + [""]


def html(runs: list[dict[str, Any]], esc: Callable[[object], str]) -> str:
    body = rows(runs)
    if not body:
        return ""
    th = "".join(f'<th scope="col">{esc(h)}</th>' for h in HEAD)
    trs = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in body)
    notes = "".join(f"<li>{esc(w)}</li>" for w in reasons(runs))
    return (f'<section id="layouts"><h2>{TITLE}</h2><p>{esc(INTRO)}</p><table><thead><tr>{th}</tr></thead>'
            f"<tbody>{trs}</tbody></table><ul>{notes}</ul></section>")
