"""One machine in two environments is one machine: combining its runs when results are merged.

A run is told apart from another by its machine label and the machine itself (OS, CPU, core
count, GPU): `identity`. The Python environment (interpreter, virtual environment, library
versions, commit) is a detail of the run, not part of who ran it: the suite in `.nox/conformance`
and again in a venv with the peer libraries (jax, flax, onnxruntime) are the same machine. When
`conformance.results.merge` meets a second run with the same identity, `combine` folds it into
the first: each backend's header and records come from the environment where it ran (not where
it was skipped); each environment block is kept in the run's `environments`. Runs that cannot
be combined without losing results (the same backend run in both, or two speed sections) stay
two runs, "vm" and "vm (2)", as before.
"""

from __future__ import annotations

import copy
from typing import Any

#: Status words, worst first: a combined section is as unfinished as its worst part.
_WORST_FIRST = ("running", "interrupted", "incomplete", "partial", "complete")


def identity(run: dict[str, Any]) -> tuple:
    """The machine label and the hardware: what two runs of one machine share."""
    env = run.get("environment") or {}
    gpu = env.get("gpu") or {}
    return (run.get("machine"), env.get("os"), env.get("cpu"), env.get("cpu_count"), gpu.get("name"))


def _ran(conf: dict[str, Any], name: str) -> bool:
    """The backend produced a record other than skipped (it could run in that environment)."""
    return any(r["backend"] == name and r["outcome"] != "skipped" for r in conf.get("records", []))


def _owners(a: dict[str, Any], b: dict[str, Any]) -> dict[str, str] | None:
    """backend name -> "a" or "b", the section its results come from; None on a conflict
    (a backend that ran in both environments: neither result may be dropped)."""
    names = list(dict.fromkeys([x["name"] for x in a["backends"]] + [x["name"] for x in b["backends"]]))
    owners = {}
    for n in names:
        in_a, in_b = _ran(a, n), _ran(b, n)
        if in_a and in_b:
            return None
        known_a = any(x["name"] == n for x in a["backends"])
        owners[n] = "b" if in_b or not known_a else "a"
    return owners


def _conformance(a: dict[str, Any], b: dict[str, Any], owners: dict[str, str]) -> dict[str, Any]:
    src = {"a": a, "b": b}
    out = copy.deepcopy(a)
    renamed = {f["id"]: f"{f['id']}-2" for f in b.get("findings", []) if owners.get(f.get("backend")) == "b"}
    out["backends"] = [copy.deepcopy(x) for n, o in owners.items() for x in src[o]["backends"] if x["name"] == n]
    out["records"] = []
    for n, o in owners.items():
        for r in src[o]["records"]:
            if r["backend"] == n:
                r = copy.deepcopy(r)
                if o == "b" and r.get("finding") in renamed:
                    r["finding"] = renamed[r["finding"]]
                out["records"].append(r)
    out["missing"] = [m for n, o in owners.items() for m in src[o].get("missing", []) if m["backend"] == n]
    if "findings" in a or "findings" in b:
        out["findings"] = ([f for f in a.get("findings", []) if owners.get(f.get("backend")) == "a"]
                           + [dict(f, id=renamed[f["id"]]) for f in b.get("findings", []) if f["id"] in renamed])
    names = {c["name"] for c in a["checks"]}
    out["checks"] = a["checks"] + [c for c in b["checks"] if c["name"] not in names]
    out["dtypes"] = list(dict.fromkeys(a.get("dtypes", []) + b.get("dtypes", [])))
    out["planned"] = len(out["records"]) + len(out["missing"])
    out["status"] = next(w for w in _WORST_FIRST if w in (a["status"], b["status"]) or w == "complete")
    out["started"] = min(a["started"], b["started"])
    ends = [s.get("finished") for s in (a, b)]
    out["finished"] = None if None in ends else max(ends)
    out["duration_s"] = None if None in (a.get("duration_s"), b.get("duration_s")) else a["duration_s"] + b["duration_s"]
    for key in ("command", "profile"):
        if a[key] != b[key]:
            out[key] = f"{a[key]} ; {b[key]}" if key == "command" else f"{a[key]} + {b[key]}"
    if a["seed"] != b["seed"]:
        out["seed"] = None  # each record's repro bundle holds its own example
    if "plan" in out:
        out["plan"] = dict(out["plan"], total=out["planned"])
    return out


def _semantics(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """One row per library: the environment where it ran wins over one where it was skipped."""
    out = copy.deepcopy(a)
    keys = {c["key"] for c in a["columns"]}
    out["columns"] += [c for c in b["columns"] if c["key"] not in keys]
    rows = {r["backend"]: r for r in out["rows"]}
    for r in b["rows"]:
        mine = rows.get(r["backend"])
        if mine is None:
            out["rows"].append(r)
        elif mine.get("skip_reason") and not r.get("skip_reason"):
            out["rows"][out["rows"].index(mine)] = r
    return out


def combine(first: dict[str, Any], other: dict[str, Any]) -> dict[str, Any] | None:
    """`first` and `other` (the same `identity`) as one run, or None when they cannot be one."""
    if identity(first) != identity(other) or (first.get("speed") and other.get("speed")):
        return None
    out = dict(first)
    a, b = first.get("conformance"), other.get("conformance")
    if a and b:
        if (a.get("plan") or {}).get("shards", 1) > 1 or (b.get("plan") or {}).get("shards", 1) > 1:
            return None  # shards are combined by their plan id, not here
        owners = _owners(a, b)
        if owners is None:
            return None
        out["conformance"] = _conformance(a, b, owners)
    else:
        out["conformance"] = a or b
    out["speed"] = first.get("speed") or other.get("speed")
    sa, sb = first.get("semantics"), other.get("semantics")
    if sa and sb:
        out["semantics"] = _semantics(sa, sb)
    elif sa or sb:
        out["semantics"] = sa or sb
    envs = first.get("environments") or [first["environment"]]
    out["environments"] = [*envs, other["environment"]]
    return out
