"""The conformance suite: one test per planned (backend, dtype, check), parametrised in conftest.py.

Outcomes: passed; failed (the property broke: shrunk example, saved inputs, repro command);
unsupported (outside the backend's declared capabilities); skipped (this machine lacks the
backend's library or device). A backend that crashed a worker, hung or kept memory alive
earlier in the run is not run again; its remaining supported checks fail with that reason, so
nothing is silently passed (the marks live in the controller's private directory).

Whatever happens inside, the test writes exactly one record for its key (`write_record`)
before telling pytest its outcome; what the backend printed is kept as a bounded tail.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from conformance import COMMAND
from conformance.pytest_entry import failure_text
from conformance.suite.checks import get
from conformance.text import first_line, safe_record
from conformance.plugin.conftest import backend_state, orphaned
from conformance.suite.engine import run_check
from conformance.suite.leaks import LeakWatch, rss_bytes
from conformance.suite.process_state import OutputTail, restored_state
from conformance.suite.plan import Key
from conformance.suite import timeshare, watchdog
from conformance.suite.recorder import crashed_during, mark, write_record
from impls.registry import import_path


_LEAKS = LeakWatch()  # this worker's


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _run(key: Key, out_dir: Path, markers: Path, seed: int | None,
         timeouts: dict[str, float] | None) -> dict[str, Any]:
    check = get(key.check)
    rec: dict[str, Any] = {"step": check.step}
    with timeshare.spent("start-up"):  # its first call in a worker imports and builds the backend
        backend, skip_reason, error = backend_state(key.spec)
    if error:
        return {**rec, "outcome": "failed", "reason": error}
    if skip_reason:
        return {**rec, "outcome": "skipped", "reason": skip_reason}
    try:
        unsupported = check.unsupported(backend, key.dtype)
    except Exception as e:  # reading the declared capabilities is third-party code
        return {**rec, "outcome": "failed", "reason": f"reading its capabilities raised {first_line(e)}"}
    if unsupported:  # before the crash marker: unsupported stays unsupported after a crash
        return {**rec, "outcome": "unsupported", "reason": unsupported}
    crashed = crashed_during(markers, key.backend)
    if crashed:
        return {**rec, "outcome": "failed",
                "reason": f"not run: {key.backend} {crashed}"}

    result = run_check(check, backend, key.dtype, seed=seed, timeouts=timeouts)
    if result.reason.startswith("hang:"):  # once is enough: its other checks would hang as long
        mark(markers, key.backend, f"hung earlier in this run (during {key.check})")
    rec.update({"outcome": result.outcome, "reason": result.reason, "max_error": result.max_error,
                "tolerance": result.tolerance, "counterexample": result.counterexample,
                "examples": result.examples,
                "grouped_examples": result.grouped, "duration_s": round(result.duration_s, 4)})
    if result.layouts:
        rec["layouts"] = result.layouts
    if result.outcome == "failed" and result.case is not None:
        path = out_dir / "failures" / f"{_slug(key.backend)}__{key.dtype}__{check.name}.npz"
        result.case.save(path, {"backend": key.backend, "backend_spec": key.spec, "import_path": import_path(key.spec),
                                "check": check.name, "reason": result.reason})
        rec["inputs"] = str(path.relative_to(out_dir))
        rec["repro"] = f"{COMMAND} repro {shlex.quote(str(path))}"
    return rec


def _last_words(key: Key, out_dir: Path, markers: Path):
    """What the watchdog's hard limit calls before it ends this worker: the record, the mark."""
    def write(reason: str) -> None:
        if orphaned():
            return
        mark(markers, key.backend, f"hung earlier in this run (during {key.check})")
        write_record(out_dir, key, {"step": get(key.check).step, "outcome": "failed", "reason": f"hang: {reason}"})
    return write


def test_check(key: Key, out_dir: Path, markers: Path, hypothesis_seed: int | None,
               example_timeouts: dict | None) -> None:
    start_up = timeshare.start_up()
    shares = timeshare.totals()
    with timeshare.spent("harness"):
        watchdog.last_words = _last_words(key, out_dir, markers)
        before = rss_bytes()
        with OutputTail() as tail, restored_state(full=True):
            try:
                rec = _run(key, out_dir, markers, hypothesis_seed, example_timeouts)
            except BaseException as e:  # anything the engine did not turn into a result is still recorded
                rec = {"outcome": "failed", "reason": f"suite error (please report): {first_line(e)}"}
        watchdog.last_words = None
        leak = _LEAKS.after_test(key.backend, before) if "examples" in rec else None  # the backend ran
    rec["time_s"] = timeshare.since(shares)
    if start_up is not None:  # added to the backend's first load, charged to start-up inside _run
        rec["time_s"]["start-up"] = round(rec["time_s"].get("start-up", 0.0) + start_up, 4)
    if leak:  # charged here, and its other checks not run: the next backend would pay for it
        mark(markers, key.backend, f"kept memory alive earlier in this run (during {key.check})")
        rec.update(outcome="failed", reason=leak if rec["outcome"] == "passed" else f"{rec['reason']}; {leak}")
    if tail.total:
        rec["output"] = tail.text()
    rec = safe_record(rec)  # backend text, escaped and bounded, before it reaches pytest's channel
    if orphaned():  # the controller died while this test ran: nobody owns the record now
        os._exit(1)
    write_record(out_dir, key, rec)
    if rec["outcome"] in ("unsupported", "skipped"):
        pytest.skip(f"{rec['outcome']}: {rec['reason']}")
    if rec["outcome"] == "failed":
        pytest.fail(failure_text(key.backend, key.dtype, key.check, rec), pytrace=False)
