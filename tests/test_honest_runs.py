"""A run never lies: each defect a hostile user found, reproduced with the backends of
tests/hostile_backends.py next to the NumPy backend (quick profile, float32, few checks).

Numbered as in the issue: 1 KeyboardInterrupt, 2 crash budget, 3 odd names, 4 partial cells,
5 --example-timeout, 6 bad --out, 7 captured output, 8 concurrent runs, 9 isolation with -n 0,
10 process-wide state, 11 the smaller defects; plus the user's own Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.suite import rundir
from reports import model
from conformance.results import load
from tests import hostile_backends as hb

ROOT = Path(__file__).resolve().parent.parent
H = "tests.hostile_backends"


def conformance(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conformance", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONHASHSEED": "0"})


def quick(out: Path, backends: list[str], checks: list[str], *extra: str) -> list[str]:
    args = ["--profile", "quick", "--seed", "1", "--out", str(out), *extra]
    args += [a for b in backends for a in ("--backend", b)]
    return args + [a for c in checks for a in ("--check", c)]


def section(out: Path) -> dict:
    return load(out)["runs"][0]["conformance"]


def keys(sec: dict) -> list[tuple[str, str, str]]:
    return [(r["backend"], r["dtype"], r["check"]) for r in sec["records"]]


def one_line_error(proc: subprocess.CompletedProcess, words: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert words in lines[0], lines[0]


# -- 1, 9, 10, 11 (--check twice, stale bundles): one worker, backends that try to stop it ----------

@pytest.fixture(scope="module")
def one_worker(tmp_path_factory) -> dict:
    """`-n 0`: KeyboardInterrupt, SystemExit, os._exit(0) and a state changer, then numpy, all
    in one worker in that order; `--check matches_spec` given twice; a stale failure bundle."""
    out = tmp_path_factory.mktemp("one-worker")
    stale = out / "failures" / "gone__float32__matches_spec.npz"
    stale.parent.mkdir()
    stale.write_bytes(b"an earlier run's bundle")
    (out / ".plan.json").write_text("[]")  # an earlier run's directory: only such a one is cleaned
    backends = [f"{H}:RaisesKeyboardInterrupt", f"{H}:RaisesSystemExit", f"{H}:ExitsZero",
                f"{H}:ChangesProcessState", "numpy"]
    checks = ["matches_spec", "output_dtype_and_shape", "causality", "matches_spec"]
    proc = conformance(*quick(out, backends, checks, "--dtype", "float32", "-n", "0"))
    return {"proc": proc, "sec": section(out), "out": out, "stale": stale}


def test_every_planned_record_exists_once_and_the_run_goes_on(one_worker):
    proc, sec = one_worker["proc"], one_worker["sec"]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert sec["status"] == "complete" and sec["missing"] == []
    assert len(keys(sec)) == len(set(keys(sec))) == sec["planned"] == 5 * 3  # matches_spec once (11)
    assert "numpy" in proc.stdout and "conforms" in proc.stdout


@pytest.mark.parametrize("name, words", [(hb.RaisesKeyboardInterrupt.name, "KeyboardInterrupt"),
                                         (hb.RaisesSystemExit.name, "SystemExit")])
def test_base_exceptions_fail_the_backend_not_the_run(one_worker, name, words):  # 1
    recs = [r for r in one_worker["sec"]["records"] if r["backend"] == name]
    assert len(recs) == 3 and all(r["outcome"] == "failed" and words in r["reason"] for r in recs), recs


def test_exit_zero_in_a_worker_is_a_crash_not_a_successful_run(one_worker):  # 9
    recs = [r for r in one_worker["sec"]["records"] if r["backend"] == hb.ExitsZero.name]
    assert {r["outcome"] for r in recs} == {"failed"}
    assert sum("crashed the worker process" in r["reason"] for r in recs) == 1
    assert "checked 15 of 15 planned" in one_worker["proc"].stdout  # the summary is printed


def test_process_state_changed_by_one_backend_does_not_fail_numpy(one_worker):  # 10
    numpy = {r["check"]: r["outcome"] for r in one_worker["sec"]["records"] if r["backend"] == "numpy"}
    assert numpy == {"matches_spec": "passed", "output_dtype_and_shape": "passed", "causality": "passed"}


def test_failure_bundles_of_an_earlier_run_are_removed(one_worker):  # 11
    assert not one_worker["stale"].exists()
    bundles = {p.name for p in (one_worker["out"] / "failures").iterdir()}
    recorded = {Path(r["inputs"]).name for r in one_worker["sec"]["records"] if r.get("inputs")}
    assert bundles == recorded


# -- 2, 3, 11 (availability, unsupported after a crash): many crashing backends, odd names ----------

@pytest.fixture(scope="module")
def crashes(tmp_path_factory) -> dict:
    """One worker, ten crashing backends (xdist's default budget for one worker is 4 restarts),
    two with names that are not plain ASCII, one declaring float32 only, and a bad availability()."""
    out = tmp_path_factory.mktemp("crashes")
    backends = (["numpy"] + [f"{H}:Segfault{i:02d}" for i in range(7)]
                + [f"{H}:Cafe", f"{H}:NewLine", f"{H}:SegfaultsFloat32Only", f"{H}:AvailabilityRaises"])
    proc = conformance(*quick(out, backends, ["output_dtype_and_shape"], "--dtype", "float32", "--dtype",
                              "float16", "-n", "1", "--example-timeout", "5"))
    return {"proc": proc, "sec": section(out)}


def test_any_number_of_crashes_still_records_every_planned_key(crashes):  # 2
    proc, sec = crashes["proc"], crashes["sec"]
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert sec["status"] == "complete" and sec["planned"] == 12 * 2
    assert sorted(keys(sec)) == sorted({(b["name"], d, "output_dtype_and_shape") for b in sec["backends"]
                                        for d in ("float32", "float16")})


@pytest.mark.parametrize("name", [*hb.ODD_NAMES.values(), hb.MANY_SEGFAULTS[0]])
def test_crashes_are_attributed_to_the_backend_whatever_its_name(crashes, name):  # 3
    recs = [r for r in crashes["sec"]["records"] if r["backend"] == name]
    assert len(recs) == 2 and {r["outcome"] for r in recs} == {"failed"}
    assert sum("crashed the worker process" in r["reason"] for r in recs) == 1
    assert sum("crashed a worker process earlier" in r["reason"] for r in recs) == 1  # marker matched


def test_unsupported_stays_unsupported_after_a_crash(crashes):  # 11
    recs = {r["dtype"]: r for r in crashes["sec"]["records"] if r["backend"] == hb.SegfaultsFloat32Only.name}
    assert recs["float32"]["outcome"] == "failed"
    assert recs["float16"]["outcome"] == "unsupported"


def test_availability_that_raises_fails_instead_of_skipping(crashes):  # 11
    recs = [r for r in crashes["sec"]["records"] if r["backend"] == hb.AvailabilityRaises.name]
    assert {r["outcome"] for r in recs} == {"failed"}
    assert all("availability() raised RuntimeError" in r["reason"] for r in recs)


# -- 4: partial results are never shown as passes -------------------------------------------------

def _doc(records: list[dict], missing: list[dict], status: str) -> dict:
    backends = [{"name": n, "spec": n, "source": "builtin", "capabilities": {}, "exposed_steps": [],
                 "skip_reason": None} for n in ("numpy", "half-done", "never-ran")]
    conf = {"status": status, "started": "t", "profile": "quick", "seed": 1, "command": "c", "backends": backends,
            "checks": [{"name": "matches_spec", "step": None, "doc": "d"}], "records": records,
            "missing": missing, "planned": len(records) + len(missing)}
    env = {"os": "x", "cpu": "x", "python": "3", "libraries": {}, "threads": {}, "commit": None, "dirty": False}
    return {"schema_version": "1.0", "kind": "mha-conformance-results",
            "runs": [{"machine": "m", "environment": env, "conformance": conf, "speed": None}]}


def test_partial_cells_and_unfinished_backends_are_not_passes():  # 4
    rec = {"check": "matches_spec", "outcome": "passed", "reason": "5 examples"}
    records = [{**rec, "backend": "numpy", "dtype": d} for d in ("float32", "float16")]
    records.append({**rec, "backend": "half-done", "dtype": "float32"})
    missing = [{"backend": "half-done", "dtype": "float16", "check": "matches_spec"}]
    missing += [{"backend": "never-ran", "dtype": d, "check": "matches_spec"} for d in ("float32", "float16")]
    report = model.build(_doc(records, missing, "incomplete"))
    m = report.matrix
    cells = {c.backend: m.cell("matches_spec", i) for i, c in enumerate(m.columns)}
    assert cells["numpy"].status == "pass"
    assert cells["half-done"].status == "incomplete" and "float16" in cells["half-done"].text
    assert cells["never-ran"].status == "none"
    summary = model.conformance_summary(report)
    assert "1 of 3 backends conform" in summary and "2 incomplete" in summary
    assert any("3 of 6 planned" in w for w in report.warnings)
    from reports import html, markdown

    for page in (markdown.render(report), html.render(report)):
        flat = page.replace("<br>", ", ")
        assert "INCOMPLETE" in page and "not run: float16" in page
        assert "1 NOT RUN" in flat and "2 NOT RUN" in flat  # half-done's and never-ran's totals


# -- 5, 6, 8, 11: user mistakes are one line and exit 2 -------------------------------------------

@pytest.mark.parametrize("value", ["nan", "inf", "1e300", "-1"])
def test_example_timeout_must_be_finite_and_sane(value, tmp_path):  # 5
    one_line_error(conformance("--backend", "numpy", "--example-timeout", value, "--out", str(tmp_path)),
                   "--example-timeout")


def test_out_naming_a_file_or_an_unwritable_place(tmp_path):  # 6
    f = tmp_path / "a-file"
    f.write_text("")
    one_line_error(conformance("--backend", "numpy", "--out", str(f)), "not a directory")
    one_line_error(conformance("--backend", "numpy", "--out", "/proc/no-such/x"), "cannot create or write")


def test_a_second_run_on_the_same_out_is_refused(tmp_path):  # 8
    lock = rundir.claim(tmp_path)  # this process is "the first run"
    try:
        one_line_error(conformance("--backend", "numpy", "--check", "matches_spec", "--out", str(tmp_path)),
                       "in use by another run")
    finally:
        lock.close()
    assert not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("command", [
    ["conformance", "--no-such-option"], ["conformance", "--seed", "x"], ["conformance.repro"],
    ["conformance.mutants", "--processes", "many"], ["reports", "--no-such-option"]])
def test_argparse_errors_are_one_line(command):  # 11
    proc = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=60)
    one_line_error(proc, "error:")


def test_deeply_nested_json_is_a_one_line_error(tmp_path):  # 11
    (tmp_path / "results.json").write_text("[" * 100000 + "]" * 100000)
    proc = subprocess.run([sys.executable, "-m", "reports", str(tmp_path), "--out", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    one_line_error(proc, "nested too deeply")


def test_repro_of_a_npy_file_is_a_one_line_error(tmp_path):  # 11
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros(3))
    proc = subprocess.run([sys.executable, "-m", "conformance.repro", str(tmp_path / "x.npy")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    one_line_error(proc, "not a .npz")


# -- 7: captured output is a bounded tail ----------------------------------------------------------

def test_output_is_kept_as_a_bounded_tail(tmp_path):  # 7
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "conformance", *quick(
        out, [f"{H}:PrintsALot"], ["matches_spec", "deterministic_on_repeat"], "--dtype", "float32", "-n", "1")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    me, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [me, *me.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(0.05)
    recs = section(out)["records"]
    assert proc.returncode == 0 and {r["outcome"] for r in recs} == {"passed"}
    printed = 0
    for r in recs:
        first, _, tail = r["output"].partition("\n")
        assert len(tail.encode()) <= 64 * 1024 and tail.endswith("x\n")
        printed += int(first.split()[1])  # "[... N earlier bytes dropped; ...]"
    # this run printed hundreds of MB; keeping it whole cost 950 MB at half this rate
    assert printed > 200 * 2**20, printed
    assert peak < 700 * 2**20, f"peak memory {peak / 2**20:.0f} MiB"


# -- the user's own Ctrl-C -------------------------------------------------------------------------

def test_ctrl_c_stops_cleanly_with_a_readable_partial_result(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "conformance", *quick(
        out, ["numpy", "conformance.mutants.misbehaving:Hangs"], ["matches_spec", "output_dtype_and_shape"],
        "--dtype", "float32", "-n", "1", "--example-timeout", "20")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline, records = time.monotonic() + 120, []
    # the run order is check by check: numpy's matches_spec, then Hangs' (hanging)
    while time.monotonic() < deadline and len(records) < 1:
        time.sleep(0.2)
        try:
            records = json.loads((out / "results.json").read_text())["runs"][0]["conformance"]["records"]
        except (OSError, ValueError, KeyError, IndexError):
            continue
    time.sleep(1.0)  # Hangs' first check starts as numpy's record arrives: let it reach the backend
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout[-3000:]
    sec = section(out)
    assert sec["status"] == "interrupted"
    assert {r["backend"] for r in sec["records"]} == {"numpy"}
    assert len(sec["missing"]) == 3 and "INTERRUPTED" in stdout and "1 of 4 planned" in stdout


def test_inputs_not_mutated_fails_when_nothing_could_be_checked():  # 11
    from conformance.suite.checks import get
    from conformance.suite.engine import run_check
    from tests.hostile_backends import ToNumpyRaises

    result = run_check(get("inputs_not_mutated"), ToNumpyRaises(), "float32", seed=1)
    assert result.outcome == "failed" and "nothing could be checked" in result.reason, result.reason
