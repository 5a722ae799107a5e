"""Reading and writing `results.json`: one file per run directory, validated by a JSON Schema.

Layout (schema `reports/schema/results.schema.json`, version SCHEMA_VERSION):

    {"schema_version": "1.0", "kind": "mha-conformance-results",
     "runs": [ {"machine": "label", "environment": {...},
                "conformance": {"status": "running|complete|partial", "started": ..., "finished": ...,
                                "duration_s": ..., "profile": ..., "seed": ..., "command": ...,
                                "backends": [...], "records": [...]} | null,
                "speed": {"status": ..., "started": ..., "peak": {...}, "cells": [...], ...} | null} ]}

A run directory written by one machine holds one run; a merged report holds several. The
conformance suite and the speed harness each own one section of the run and rewrite the file
atomically (write to a temporary file, then rename), so a reader never sees half a file and a
run killed halfway leaves its last complete snapshot, marked "running" (read as partial).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = "1.0"
KIND = "mha-conformance-results"
SCHEMA_PATH = Path(__file__).parent / "schema" / "results.schema.json"
OUTCOMES = ("passed", "failed", "unsupported", "skipped")


class ResultsError(ValueError):
    """An unreadable or invalid results file; the message is one line for users."""


def empty_document() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "kind": KIND, "runs": []}


def atomic_write_json(path: Path, doc: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, default=str)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a results file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def validate(doc: Any, where: str = "results") -> None:
    """Raise ResultsError naming the first schema violation."""
    import jsonschema  # lazily: only readers and tests validate

    schema = json.loads(SCHEMA_PATH.read_text())
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError as e:
        at = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ResultsError(f"{where}: not a valid results file at {at}: {e.message[:200]}") from None


def load(path: Path) -> dict[str, Any]:
    """Read and validate a results.json (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"{path}: no such results file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ResultsError(f"{path}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    validate(doc, str(path))
    return doc


def update_section(path: Path, machine: str, environment: dict, section: str, data: dict) -> None:
    """Set one section ("conformance" or "speed") of this machine's run in results.json.

    The other section of the same machine's run is kept; runs of other machines are kept too.
    An unreadable existing file is replaced (the new data matters more than a broken file).
    """
    if section not in ("conformance", "speed"):
        raise ValueError(f"section must be 'conformance' or 'speed', got {section!r}")
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        if doc.get("kind") != KIND or not isinstance(doc.get("runs"), list):
            doc = empty_document()
    except (OSError, ValueError):
        doc = empty_document()
    run = next((r for r in doc["runs"] if r.get("machine") == machine), None)
    if run is None:
        run = {"machine": machine, "environment": environment, "conformance": None, "speed": None}
        doc["runs"].append(run)
    run["environment"] = environment
    run[section] = data
    atomic_write_json(path, doc)


def merge(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """One document holding every run of `docs`; runs with the same machine label get a suffix."""
    out, seen = empty_document(), {}
    for doc in docs:
        for run in doc["runs"]:
            label = run["machine"]
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                run = dict(run, machine=f"{label} ({seen[label]})")
            out["runs"].append(run)
    return out
