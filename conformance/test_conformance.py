"""The conformance suite: one test per (backend, dtype, check), parametrised in conftest.py.

Outcomes: passed; failed (the property broke: shrunk example, saved inputs, repro command);
unsupported (outside the backend's declared capabilities); skipped (this machine lacks the
backend's library or device). A backend that crashed the process earlier in the run is not
run again; its remaining checks fail with that reason, so nothing is silently passed.
"""

from __future__ import annotations

import re
import shlex

import pytest

from conformance.checks import get
from conformance.engine import run_check
from conformance.recorder import crashed_during


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def test_check(backend_info, dtype, check_name, out_dir, record, hypothesis_seed, example_timeouts):
    backend = backend_info.backend
    check = get(check_name)
    base = {"backend": backend.name, "check": check.name, "step": check.step, "dtype": dtype}
    if backend_info.skip_reason:
        record({**base, "outcome": "skipped", "reason": backend_info.skip_reason})
        pytest.skip(f"skipped: {backend_info.skip_reason}")
    crashed = crashed_during(out_dir, backend.name)
    if crashed:
        reason = f"not run: {backend.name} crashed the test process earlier in this run (during {crashed})"
        record({**base, "outcome": "failed", "reason": reason})
        pytest.fail(reason, pytrace=False)

    result = run_check(check, backend, dtype, seed=hypothesis_seed, timeouts=example_timeouts)
    rec = {**base, "outcome": result.outcome, "reason": result.reason, "max_error": result.max_error,
           "tolerance": result.tolerance, "counterexample": result.counterexample,
           "examples": result.examples, "duration_s": round(result.duration_s, 4)}
    if result.outcome == "failed" and result.case is not None:
        path = out_dir / "failures" / f"{_slug(backend.name)}__{dtype}__{check.name}.npz"
        result.case.save(path, {"backend": backend.name, "backend_spec": backend_info.spec,
                                "check": check.name, "reason": result.reason})
        rec["inputs"] = str(path.relative_to(out_dir))
        rec["repro"] = f"python -m conformance.repro {shlex.quote(str(path))}"
    record(rec)
    if result.outcome == "unsupported":
        pytest.skip(f"unsupported: {result.reason}")
    if result.outcome == "failed":
        step = "end to end" if check.step is None else f"step {check.step}"
        lines = [f"{backend.name} [{dtype}] {check.name} ({step}): {check.doc}", f"  {result.reason}"]
        if result.counterexample:
            lines.append(f"  example: {result.counterexample}")
        if "repro" in rec:
            lines.append(f"  reproduce: {rec['repro']}")
        pytest.fail("\n".join(lines), pytrace=False)
