"""Writing results.json while the suite runs (a pytest plugin living in the controller).

Every record is appended to `records.jsonl` at once and results.json is rewritten atomically
at most twice a second (a timer writes held-back records within half a second, so a long
next test does not hide them) and at the end, so a run killed halfway leaves a readable file
whose status says "running" (read as partial). A test with no record of its own (its xdist worker
crashed, or the suite itself errored) is recorded as failed against its backend and check,
parsed from the test id, and a crash marks the backend so the other workers skip it.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from conformance.environment import collect, machine_label
from reports.results_io import update_section

_ID = re.compile(r"test_check\[(?P<backend>.+)\|(?P<dtype>[^|]+)\|(?P<check>[^|\]]+)\]$")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def crash_marker(out_dir: Path, backend: str) -> Path:
    return Path(out_dir) / ".crashed" / re.sub(r"[^A-Za-z0-9_.-]+", "_", backend)


def crashed_during(out_dir: Path, backend: str) -> str | None:
    """The check during which `backend` crashed the process earlier in this run, if it did."""
    path = crash_marker(out_dir, backend)
    return path.read_text() if path.exists() else None


class Recorder:
    """Collects records from test reports and keeps results.json up to date."""

    def __init__(self, out_dir: Path, header: dict[str, Any], machine: str | None = None):
        self.out_dir = Path(out_dir)
        self.machine = machine or machine_label()
        self.environment = collect()
        self.section = {**header, "status": "running", "started": now(), "finished": None,
                        "duration_s": None, "records": []}
        self.t0 = time.monotonic()
        self.last_write = 0.0
        self.lock = threading.Lock()  # the flush timer writes from its own thread
        self.timer: threading.Timer | None = None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in (self.out_dir / ".crashed").glob("*"):
            stale.unlink()
        self.jsonl = self.out_dir / "records.jsonl"
        self.jsonl.write_text("")
        self.write(force=True)

    @property
    def records(self) -> list[dict]:
        return self.section["records"]

    def write(self, force: bool = False) -> None:
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
            update_section(self.out_dir / "results.json", self.machine, self.environment, "conformance", self.section)
            self.last_write = time.monotonic()

    def add(self, rec: dict[str, Any]) -> None:
        rec = {"step": None, "reason": "", **rec}
        with self.lock:
            self.records.append(rec)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        self.write()

    # -- pytest hooks ------------------------------------------------------------------------
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties or [])
        if "mha_record" in props:
            if report.when == "call" or (report.when == "setup" and report.skipped):
                self.add(json.loads(props["mha_record"]))
            return
        if not report.failed:
            return
        m = _ID.search(report.nodeid)
        if not m:
            return
        text = str(report.longrepr or "").strip().splitlines()
        detail = text[-1] if text else "no detail"
        crashed = "crashed" in " ".join(text[:3]).lower() or report.when not in ("setup", "call", "teardown")
        if crashed:
            marker = crash_marker(self.out_dir, m["backend"])
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(m["check"])
            reason = f"crashed the test process (worker replaced): {detail}"
        else:
            reason = f"error in the {report.when} phase: {detail}"
        self.add({"backend": m["backend"], "check": m["check"], "dtype": m["dtype"], "outcome": "failed",
                  "reason": reason})

    def finish(self, interrupted: bool) -> None:
        self.section["status"] = "partial" if interrupted else "complete"
        self.section["finished"] = now()
        self.write(force=True)
