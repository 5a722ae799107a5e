"""`python -m reports [RUN_DIR_OR_RESULTS_JSON ...] [--out DIR] [--title TEXT]`.

Reads one or several results files (a CPU machine's run and a GPU machine's run, say), merges
them, and writes results.json (the merged document), report.md and index.html into one
directory. A user's mistake (a missing, unreadable or invalid input, a bad argument) is one
line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from conformance.usage import OneLineParser as _Parser
from conformance import usage
from conformance.usage import UsageError
from conformance import results
from reports import html, markdown, model
from conformance.results import ResultsError

LATEST = Path("reports") / "latest"


def parser() -> _Parser:
    p = _Parser(prog="python -m reports", description=(
        "Render results.json files as report.md and index.html; several inputs (run directories "
        "or results.json files, e.g. one per machine) are merged into one report."))
    p.add_argument("inputs", nargs="*", type=Path, metavar="RUN_DIR_OR_RESULTS_JSON",
                   help=f"run directories holding results.json, or results.json files (default: {LATEST})")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help=f"output directory (default: the single input's directory, or {LATEST} when merging)")
    p.add_argument("--title", metavar="TEXT", help="title of the report")
    return p


def run_dir(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.") or "run"


def carry_inputs(doc: dict[str, Any], src: Path, out: Path, prefix: str) -> None:
    """Copy the saved .npz inputs of failures next to the report and point the records at them.

    Paths in records are relative to their run directory; a report written elsewhere (a
    published copy, a merge) would otherwise point at files that are not there, and a failure
    must be reproducible from the report alone. The repro command is rewritten where it names
    the old file (absolute, or relative to the current directory). A path that leaves the run
    directory, or a file that no longer exists, is left as it is.
    """
    if src.resolve() == out.resolve():
        return
    for run in doc["runs"]:
        for r in (run.get("conformance") or {}).get("records", []):
            rel = r.get("inputs")
            if not rel or Path(rel).is_absolute():
                continue
            source = (src / rel).resolve()
            if not source.is_file() or not source.is_relative_to(src.resolve()):
                continue
            inside = source.relative_to(src.resolve())  # normalised: "../src/x" names no place outside
            dest_rel = Path(prefix) / inside if prefix else inside
            dest = out / dest_rel
            if not dest.resolve().is_relative_to(out.resolve()):
                continue  # a prefix or a link that leads out of --out: never write there
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
            r["inputs"] = dest_rel.as_posix()
            if r.get("repro"):  # the repro command names the old file: point it at the copy
                for old, new in ((str(source), str(dest.resolve())),
                                 (os.path.relpath(source), os.path.relpath(dest.resolve()))):
                    r["repro"] = re.sub(rf"(?<![\w./-]){re.escape(old)}(?![\w./-])", lambda _m, n=new: n, r["repro"])


def generate(inputs: list[Path], out: Path | None = None, title: str | None = None) -> tuple[Path, model.Report]:
    """Load, merge and render; returns the output directory and the report. Raises ResultsError."""
    inputs = inputs or [LATEST]
    docs = [copy.deepcopy(results.load(p)) for p in inputs]
    if out is None:
        out = run_dir(inputs[0]) if len(inputs) == 1 else LATEST
    try:
        out.mkdir(parents=True, exist_ok=True)
        for i, (doc, path) in enumerate(zip(docs, inputs)):
            machines = "+".join(r["machine"] for r in doc["runs"])
            carry_inputs(doc, run_dir(path), out, f"{i + 1}-{_slug(machines)}" if len(inputs) > 1 else "")
        merged = results.merge(docs)
        results.validate(merged, "merged results")
        report = model.build(merged, title)
        target = out / "results.json"
        # the single input's own file is left alone: a suite still writing it must not lose a section
        same = len(inputs) == 1 and target.exists() and target.resolve() == (
            inputs[0] / "results.json" if inputs[0].is_dir() else inputs[0]).resolve()
        if not same:
            results.atomic_write_json(target, merged)
        _write_text(out / "report.md", markdown.render(report))
        _write_text(out / "index.html", html.render(report))
    except OSError as e:
        raise ResultsError(f"{out}: cannot write the report: {e.strerror or e}") from None
    return out, report


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _incomplete(report: model.Report) -> bool:
    return any((h.conformance or {}).get("status", "complete") != "complete" or
               (h.speed or {}).get("status", "complete") != "complete" for h in report.headers)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        out, report = generate(args.inputs, args.out, args.title)
    except (ResultsError, UsageError) as e:
        print(f"{usage.INVOKED_AS or 'python -m reports'}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'report.md'}, {out / 'index.html'} and {out / 'results.json'} "
          f"({len(report.machines)} run(s): {', '.join(report.machines) or 'none'}; "
          f"{len(report.failures)} failed record(s)"
          + ("; INCOMPLETE results: see the warnings at the top" if _incomplete(report) else "") + ")")
    return 0
