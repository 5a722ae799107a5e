"""The suite survives misbehaving backends, kills, and user mistakes (subprocess runs of the CLI).

One run checks the NumPy backend next to every backend of `conformance.mutants.misbehaving`
(raises, junk output, hangs, crashes the process, segfaults, ...): it must finish, record each
misbehaviour against the right backend with a reason that names it, and leave the NumPy
backend's results exactly as in a run of NumPy alone. A run killed with SIGKILL must leave a
readable results.json marked "running". Bad command lines exit with status 2 and one line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.mutants.misbehaving import MISBEHAVING, Hangs
from conformance.results import load

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ("matches_spec", "output_dtype_and_shape", "deterministic_on_repeat", "inputs_not_mutated")
MODULE = "conformance.mutants.misbehaving"
SPECS = [f"{MODULE}:{cls.__name__}" for cls in MISBEHAVING]


def _command(out: Path, backends: list[str], workers: str, checks=CHECKS) -> list[str]:
    cmd = [sys.executable, "-m", "conformance", "--profile", "quick", "--example-timeout", "2",
           "--seed", "1", "--dtype", "float32", "--out", str(out), "-n", workers]
    cmd += [a for b in backends for a in ("--backend", b)]
    return cmd + [a for c in checks for a in ("--check", c)]


def _start(cmd: list[str], log: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with log.open("w") as f:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, **kw)


def _section(out: Path) -> dict:
    return load(out)["runs"][0]["conformance"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """numpy + every misbehaving backend, and numpy alone, run side by side."""
    tmp = tmp_path_factory.mktemp("robustness")
    both, alone = tmp / "all", tmp / "numpy"
    procs = {"all": _start(_command(both, ["numpy", *SPECS], "3"), tmp / "all.log"),
             "numpy": _start(_command(alone, ["numpy"], "0"), tmp / "numpy.log")}
    # 600 s: the Hangs backend is stopped by the wall-clock limit, 10x its CPU-time limit
    # (first example 4 x 2 s of CPU -> 80 s of wall time), once per check
    codes = {k: p.wait(timeout=600) for k, p in procs.items()}
    return {"codes": codes, "all": _section(both), "numpy": _section(alone),
            "log": (tmp / "all.log").read_text()}


def test_run_with_misbehaving_backends_finishes(runs):
    assert runs["codes"] == {"all": 1, "numpy": 0}, runs["log"][-3000:]
    section = runs["all"]
    assert section["status"] == "complete"
    got = {(r["backend"], r["check"]) for r in section["records"]}
    names = ["numpy"] + [cls.name for cls in MISBEHAVING]
    assert got == {(b, c) for b in names for c in CHECKS}, "a (backend, check) has no record"


@pytest.mark.parametrize("cls", list(MISBEHAVING), ids=[c.name for c in MISBEHAVING])
def test_each_misbehaviour_is_named(runs, cls):
    records = [r for r in runs["all"]["records"] if r["backend"] == cls.name]
    failed = [r for r in records if r["outcome"] == "failed"]
    pattern = MISBEHAVING[cls]
    assert any(re.search(pattern, r["reason"], re.IGNORECASE) for r in failed), \
        f"{cls.name}: no failure reason matches {pattern!r}: {[(r['check'], r['outcome'], r['reason']) for r in records]}"
    if "crashed" in pattern:  # nothing of a crashing backend may pass silently
        assert len(failed) == len(CHECKS)
        assert sum("crashed the worker process" in r["reason"] for r in failed) >= 1


def test_numpy_results_unaffected_by_misbehaving_neighbours(runs):
    def key(section):
        return sorted((r["check"], r["dtype"], r["outcome"]) for r in section["records"] if r["backend"] == "numpy")

    assert key(runs["all"]) == key(runs["numpy"])
    assert {o for _, _, o in key(runs["numpy"])} == {"passed"}


def test_killed_run_leaves_partial_results(tmp_path):
    out = tmp_path / "killed"
    proc = _start(_command(out, ["numpy", f"{MODULE}:Hangs"], "0"), tmp_path / "log", start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        records: list = []
        # check by check: numpy's first check, then Hangs' (hanging for its idle limit, 4 s)
        while time.monotonic() < deadline and len(records) < 1:
            time.sleep(0.2)
            try:
                records = json.loads((out / "results.json").read_text())["runs"][0]["conformance"]["records"]
            except (OSError, ValueError, KeyError, IndexError):
                continue
        time.sleep(0.5)  # Hangs' first check starts as numpy's record arrives
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    section = _section(out)  # loads and validates against the schema
    assert section["status"] == "running"
    finished = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(section["records"]) >= 1
    assert section["records"] == finished, "results.json lost records that had finished"
    assert {r["backend"] for r in finished} <= {"numpy", Hangs.name}


@pytest.mark.parametrize("args, message", [
    (["--backend", "no-such-backend"], "unknown backend 'no-such-backend'"),
    (["--profile", "no-such-profile"], "unknown profile 'no-such-profile'"),
    (["--backend", "a:b:c"], "malformed backend 'a:b:c'"),
    (["--backend", f"{MODULE}:NoSuchClass"], "has no attribute 'NoSuchClass'"),
    (["--backend", "impls.base:Backend"], "does not satisfy the backend contract"),
    (["--dtype", "float8"], "unknown dtype 'float8'"),
    (["--check", "no_such_check"], "unknown check 'no_such_check'"),
], ids=["backend", "profile", "malformed", "attr", "contract", "dtype", "check"])
def test_bad_input_is_one_line_and_status_2(args, message, tmp_path):
    cmd = [sys.executable, "-m", "conformance", "--out", str(tmp_path), *args]
    r = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert message in lines[0]
    assert not (tmp_path / "results.json").exists()
