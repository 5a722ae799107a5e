"""Writing results.json while the suite runs (a pytest plugin living in the controller).

Each test is one planned key (`conformance.suite.plan`). The worker that runs it writes its record
to `<out>/.records/<index>.json`; when the test's last report reaches the controller, this
plugin reads that file, appends the record to `records.jsonl` and rewrites results.json
atomically (at most twice a second; a timer writes held-back records within half a second,
so a long next test does not hide them, and at the end). A run killed halfway leaves a
readable file whose status says "running".

A test that ends without a record file gets one here: pytest-xdist's crash hook names the
test whose worker died (no test id is parsed and no failure text is searched), so that test
is recorded as failed with "crashed the worker process" and its backend is marked so that the
workers record its remaining checks as not run. At the end, every planned key without a
record is listed in the section's "missing" and the status is "complete" only if none is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from conformance.results import collect, machine_label
from conformance.text import safe_record
from conformance.suite.plan import Key
from conformance.suite.process_state import OUTPUT_LIMIT
from conformance.suite.rundir import RECORDS
from conformance.results import update_section


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def crash_marker(markers: Path, backend: str) -> Path:
    """The file in the run's markers directory (the controller's private one, not in --out)
    that says `backend` crashed or hung; named by a digest, so any name works."""
    return Path(markers) / hashlib.sha256(backend.encode("utf-8", "surrogatepass")).hexdigest()[:20]


def crashed_during(markers: Path, backend: str) -> str | None:
    """What `backend` did earlier in this run that stops its other checks ("crashed a worker
    process earlier in this run (during CHECK)", "hung ..."), if it did."""
    path = crash_marker(markers, backend)
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def mark(markers: Path, backend: str, what: str) -> None:
    """Say that `backend` crashed or hung (`what`, a phrase): its later checks are not run."""
    path = crash_marker(markers, backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(what)


def record_path(out_dir: Path, key: Key) -> Path:
    return Path(out_dir) / RECORDS / f"{key.index}.json"


def write_record(out_dir: Path, key: Key, rec: dict[str, Any]) -> None:
    """Worker side: this test's record, written atomically (the controller reads it whole)."""
    path = record_path(out_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)  # a backend may have deleted it
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(safe_record(rec), default=str))  # escaped and bounded: backend text
    os.replace(tmp, path)


class Recorder:
    """Collects the planned keys' records and keeps results.json up to date."""

    def __init__(self, out_dir: Path, header: dict[str, Any], keys: list[Key], machine: str | None = None):
        self.out_dir = Path(out_dir)
        self.keys = keys
        self.run_keys = keys  # what the workers run (`skip_unavailable` takes some out)
        self.by_nodeid: dict[str, Key] = {}  # filled from the workers' collection, in plan order
        self.done: set[int] = set()
        self.errors: dict[int, str] = {}  # setup/call/teardown errors of a test without a record
        self.machine = machine or machine_label()
        self.environment = collect()
        self.section = {**header, "status": "running", "started": now(), "finished": None,
                        "duration_s": None, "planned": len(keys), "missing": [], "records": []}
        self.t0 = time.monotonic()
        self.last_write = 0.0
        self.lock = threading.Lock()  # the flush timer writes from its own thread
        self.timer: threading.Timer | None = None
        self.transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # e.g. --expect's
        # crash and hang markers live outside --out, where a backend writing into --out cannot
        # fake or remove one; new workers learn the directory (and the plan) from workerinput
        self.markers = Path(tempfile.mkdtemp(prefix="mha-markers-"))
        self.jsonl = self.out_dir / "records.jsonl"
        self.jsonl.write_text("")
        self.write(force=True)

    @property
    def records(self) -> list[dict]:
        return self.section["records"]

    def write(self, force: bool = False, final: bool = False) -> None:
        """results.json with the records so far, at most every half second unless `force`; on
        one line until the `final` write (indented JSON is encoded in Python, 4x slower)."""
        with self.lock:
            wait = 0.5 - (time.monotonic() - self.last_write)
            if not force and wait > 0:
                if self.timer is None:  # write the held-back records when the half second is over,
                    # not only at the next record: the next test may hang or be killed
                    self.timer = threading.Timer(wait, self.write, kwargs={"force": True})
                    self.timer.daemon = True
                    self.timer.start()
                return
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self.section["duration_s"] = round(time.monotonic() - self.t0, 2)
            update_section(self.out_dir / "results.json", self.machine, self.environment, "conformance", self.section,
                           compact=not final)
            self.last_write = time.monotonic()

    def skip_unavailable(self, states: dict[str, tuple[str | None, str | None]]) -> None:
        """Record here, as skipped, every key of a backend this machine cannot run (its library
        or device missing: `states[spec]` = (skip reason, error) from the run's one availability
        check); the workers run the rest (`run_keys`). A backend whose check failed is run, and
        fails, in the workers as before."""
        from conformance.suite.checks import get

        self.run_keys = []
        for key in self.keys:
            skip, error = states.get(key.spec, (None, None))
            if skip and not error:
                self.add(key, {"step": get(key.check).step, "outcome": "skipped", "reason": skip})
            else:
                self.run_keys.append(key)

    @pytest.hookimpl(tryfirst=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """pytest's last line counts the keys recorded here as skipped, as when workers ran them."""
        here = len(self.keys) - len(self.run_keys)
        terminalreporter.stats.setdefault("skipped", []).extend(SimpleNamespace() for _ in range(here))

    def add(self, key: Key, rec: dict[str, Any]) -> None:
        """Record `key` once; a second record for the same key is ignored."""
        if key.index in self.done:
            return
        self.done.add(key.index)
        rec = safe_record({"step": None, "reason": "", **rec, "backend": key.backend, "dtype": key.dtype,
                           "check": key.check})
        if self.transform is not None:
            rec = self.transform(rec)
        with self.lock:
            self.records.append(rec)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        self.write()

    def _fault_dump(self, report: Any) -> str | None:
        """The crashed worker's faulthandler dump (a segfault's tracebacks), its last 64 KiB."""
        from conformance.plugin.conftest import fault_dump

        try:
            path = fault_dump(self.markers, report.node.workerinput["workerid"])
            data = path.read_bytes()[-OUTPUT_LIMIT:]
            path.write_bytes(b"")  # its replacement reopens it; nothing of this crash is kept twice
        except (AttributeError, KeyError, TypeError, OSError):
            return None
        return data.decode("utf-8", "replace") or None

    def _from_worker(self, key: Key) -> dict[str, Any] | None:
        try:
            return json.loads(record_path(self.out_dir, key).read_text())
        except (OSError, ValueError):
            return None

    # -- pytest hooks ------------------------------------------------------------------------
    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """pytest-xdist: each worker (a replacement too) gets the plan and the markers directory
        from this process, not from files in --out that a backend could have changed."""
        node.workerinput["mha_plan"] = [asdict(k) for k in self.run_keys]
        node.workerinput["mha_markers"] = str(self.markers)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """pytest-xdist: a worker collected the plan; its node ids come in plan order."""
        if len(ids) == len(self.run_keys) and all(i.endswith(f"[{k.test_id}]") for i, k in zip(ids, self.run_keys)):
            self.by_nodeid = dict(zip(ids, self.run_keys))

    @pytest.hookimpl(optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: pytest.TestReport, sched: Any) -> None:
        """pytest-xdist: the worker running `crashitem` died (exit, signal, segfault, hard limit)."""
        key = self.by_nodeid.get(crashitem)
        if key is None or key.index in self.done:
            return
        rec = self._from_worker(key)  # it may have finished its record before dying
        if rec is None:
            mark(self.markers, key.backend, f"crashed a worker process earlier in this run (during {key.check})")
            rec = {"outcome": "failed", "reason": f"crashed the worker process during this check (process "
                   f"exit, fatal signal or hard time limit); the worker was replaced and {key.backend}'s "
                   f"remaining checks are not run"}
            dump = self._fault_dump(report)
            if dump:
                rec["output"] = dump
        self.add(key, rec)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        key = self.by_nodeid.get(report.nodeid)
        if key is None or key.index in self.done:
            return
        if report.failed and report.when in ("setup", "call", "teardown"):
            text = str(report.longrepr or "").strip().splitlines()
            self.errors.setdefault(key.index, f"error in the {report.when} phase: {text[-1] if text else 'no detail'}")
        if report.when != "teardown":
            return
        rec = self._from_worker(key)
        if rec is None:
            rec = {"outcome": "failed", "reason": self.errors.get(key.index, "the test ended without a record")}
        self.add(key, rec)

    def finish(self, interrupted: bool) -> list[Key]:
        """Final status and the planned keys that have no record (written into the section)."""
        missing = [k for k in self.keys if k.index not in self.done]
        self.section["missing"] = [{"backend": k.backend, "dtype": k.dtype, "check": k.check} for k in missing]
        self.section["status"] = "interrupted" if interrupted else "incomplete" if missing else "complete"
        self.section["finished"] = now()
        self.write(force=True, final=True)
        shutil.rmtree(self.markers, ignore_errors=True)
        return missing
