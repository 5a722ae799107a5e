"""The semantic profile's rows: a library row and a contract row per backend, each marked by "via".

A built-in name with a raw probe (`libraries.all_raw`) gets the library row (what the library
itself does) and the contract row (what the backend delivers, `contract.py`); every other
backend, plug-ins included, gets the contract row. A backend that fails to load or whose
`availability()` gives a reason gets a row saying so. Built-ins are probed in this process
(this project's code); a `module:attr` or entry-point backend is probed in a child process with
a wall-clock limit, because it runs before the suite and a segfault, `os._exit` or a hang in C
code there must not take the profile (or `nox -s conformance`) down.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from conformance.semantics.contract import ALL_COLUMNS, CONTRACT_ONLY
from conformance.semantics.contract import profile as contract_profile
from conformance.semantics.libraries import all_raw
from conformance.semantics.probes import profile as library_profile

#: Wall seconds for one plug-in's contract probes in its child process: the probes take well
#: under 10 s on a 2-core machine (tiny inputs, about 25 forwards), so 120 s is only reached by a hang.
CONTRACT_WALL_S = 120.0
ONLY_CONTRACT = "measured through the contract only (the library probes have no such column)"


def unknown(spec: str) -> str | None:
    """The one-line error for a spec that names no backend at all (not one that fails to load), or None."""
    from impls.registry import _MODULE_ATTR, BUILTINS, available_names, entry_points

    spec = spec.strip()
    if spec in BUILTINS or spec in entry_points():
        return None
    if ":" in spec:
        return None if _MODULE_ATTR.match(spec) else (
            f"malformed backend {spec!r}: expected a built-in name ({', '.join(available_names())}) or 'module.path:attr'")
    return f"unknown backend {spec!r}; available: {', '.join(available_names())}, or 'module.path:attr'"


def library_row(raw: Any) -> dict[str, Any]:
    """The library's own behaviour (`probes.profile`); the contract-only columns say they are not probed here."""
    from impls.registry import BUILTINS, _load_module_attr

    reason = raw.missing()
    entries = {} if reason else library_profile(raw)
    if not reason:
        entries.update({k: {"value": "—", "detail": ONLY_CONTRACT} for k, _ in CONTRACT_ONLY})
    notes = _load_module_attr(BUILTINS[raw.name]).capabilities.notes  # a class attribute: no framework import
    return {"backend": raw.name, "via": "library", "spec": raw.name, "source": "builtin", "library": raw.library,
            "skip_reason": reason, "entries": entries, "adapter_notes": notes}


def failed_row(spec: str, reason: str, source: str | None = None) -> dict[str, Any]:
    """A contract row for a backend that could not be measured: it says why."""
    return {"backend": spec, "via": "contract", "spec": spec, "source": source or _source(spec), "library": spec,
            "skip_reason": reason, "entries": {}}


def _source(spec: str) -> str:
    from impls.registry import BUILTINS

    return "builtin" if spec in BUILTINS else "module:attr" if ":" in spec else "entry point"


def _called(info: Any) -> str:
    """What the contract row called: the adapter's module:attr, the plug-in's spec, or the entry point's target."""
    from impls.registry import BUILTINS, entry_points

    if info.source == "builtin":
        return f"backend adapter {BUILTINS[info.spec]}"
    if info.source == "entry point":
        return f"entry point {info.spec} = {entry_points()[info.spec].value}"
    return info.spec


def contract_row(spec: str) -> dict[str, Any]:
    """Resolve the spec and run the contract probes in this process; every failure becomes the row's reason."""
    from impls.registry import BackendSpecError, resolve

    try:
        info = resolve(spec)
    except BackendSpecError as e:
        return failed_row(spec, str(e))
    b = info.backend
    caps = b.capabilities
    row = {"backend": b.name, "via": "contract", "spec": info.spec, "source": info.source, "library": _called(info),
           "skip_reason": None, "entries": {}, "adapter_notes": str(caps.notes),
           "conventions": dict(caps.conventions)}
    if info.skip_reason:
        row["skip_reason"] = f"not available here: {info.skip_reason}"
        return row
    if info.error:  # the registry's policy: a failing availability() is the backend's failure, not a skip
        row["skip_reason"] = f"the backend failed: {info.error}"
        return row
    row["entries"] = contract_profile(b)
    return row


def isolated_contract_row(spec: str, timeout_s: float = CONTRACT_WALL_S) -> dict[str, Any]:
    """`contract_row(spec)` in a child process; a crash, an exit or a timeout there is the row's reason."""
    with tempfile.TemporaryDirectory(prefix="mha-semantics-") as tmp:
        out, err = Path(tmp) / "row.json", Path(tmp) / "stderr.txt"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))  # the parent's imports
        with open(err, "wb") as stderr:
            try:
                p = subprocess.run([sys.executable, "-m", "conformance.semantics.rows", spec, str(out)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, env=env,
                                   timeout=timeout_s)
                rc = p.returncode
            except subprocess.TimeoutExpired:  # subprocess.run has killed the child
                return failed_row(spec, f"the contract probes did not finish within {timeout_s:g} s of wall time "
                                        f"(run in a child process; the backend hangs or is very slow)")
        if out.exists():
            return json.loads(out.read_text())
        tail = err.read_text(errors="replace").strip().splitlines()[-3:]
        died = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with status {rc}"
        return failed_row(spec, f"the contract probes' child process {died} before writing its row"
                                + (f"; its last stderr lines: {' | '.join(tail)[:400]}" if tail else ""))


def rows_for(spec: str, timeout_s: float = CONTRACT_WALL_S) -> list[dict[str, Any]]:
    """A built-in's library row (when it has a raw probe) and its contract row; a plug-in's contract row."""
    from impls.registry import BUILTINS

    spec = spec.strip()
    if spec not in BUILTINS:
        return [isolated_contract_row(spec, timeout_s)]
    raws = {r.name: r for r in all_raw()}
    return ([library_row(raws[spec])] if spec in raws else []) + [contract_row(spec)]


def columns() -> list[dict[str, str]]:
    return [{"key": k, "title": t} for k, t in ALL_COLUMNS]


def _child(spec: str, out: str) -> int:
    row = contract_row(spec)
    Path(out).write_text(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(_child(*sys.argv[1:3]))
