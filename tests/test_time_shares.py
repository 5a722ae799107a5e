"""Where a run's time goes: the time shares each record carries, and the table of them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conformance.results import load
from conformance.suite import timeshare
from conformance.tools import time_shares

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def clock(monkeypatch):
    """timeshare's clock, moved by hand; the module's totals start empty."""
    now = [0.0]
    monkeypatch.setattr(timeshare.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(timeshare, "_totals", {})
    monkeypatch.setattr(timeshare, "_local", threading.local())
    return now


def test_a_nested_block_is_charged_to_its_own_share_only(clock):
    with timeshare.spent("check"):
        clock[0] += 1.0
        with timeshare.spent("plain"):
            clock[0] += 2.0
            with timeshare.spent("golden"):
                clock[0] += 4.0
            clock[0] += 8.0
        clock[0] += 16.0
    assert timeshare.totals() == {"check": 17.0, "plain": 10.0, "golden": 4.0}


def test_since_counts_an_open_block_up_to_now_and_leaves_zeros_out(clock):
    with timeshare.spent("hypothesis"):
        clock[0] += 1.0
        before = timeshare.totals()
        with timeshare.spent("backend"):
            clock[0] += 0.5
        clock[0] += 0.25
        assert timeshare.since(before) == {"backend": 0.5, "hypothesis": 0.25}


def test_an_exception_still_closes_the_block(clock):
    with pytest.raises(ValueError):
        with timeshare.spent("backend"):
            clock[0] += 3.0
            raise ValueError("the backend raised")
    with timeshare.spent("check"):
        clock[0] += 1.0
    assert timeshare.totals() == {"backend": 3.0, "check": 1.0}


def test_each_thread_nests_its_own_blocks(clock):
    with timeshare.spent("check"):
        clock[0] += 1.0
        seen = []

        def other() -> None:  # opens and closes its block while the main thread's is open
            with timeshare.spent("backend"):
                clock[0] += 2.0
            seen.append(timeshare._open())

        t = threading.Thread(target=other)
        t.start()
        t.join()
        clock[0] += 4.0
    assert seen == [[]]  # the other thread's stack, empty again; the main thread's block unaffected
    assert timeshare.totals() == {"check": 7.0, "backend": 2.0}


def _record(dtype: str, examples: int, **seconds: float) -> dict:
    return {"backend": "numpy", "dtype": dtype, "check": "matches_spec", "outcome": "passed", "reason": "",
            "examples": examples, "time_s": seconds}


def test_the_table_sums_shares_by_dtype_and_for_the_run():
    records = [_record("float32", 30, golden=1.0, plain=2.0, backend=1.0),
               _record("float32", 30, golden=1.0, hypothesis=3.0, **{"start-up": 2.0}),
               _record("float16", 10, plain=4.0, hits=7),  # not a share: left out
               {"backend": "torch", "dtype": "float16", "check": "x", "outcome": "skipped", "reason": "no torch"}]
    lines = time_shares.table(records, wall_s=7.5).splitlines()
    assert lines[0] == "| share | float32 | float16 | all |"
    row = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    golden = row[time_shares.LABELS["golden"]]
    assert "2.0 s (25%)" in golden and golden.endswith("| 2.0 s (14%) |")  # of float32's 8 s, of the run's 14 s
    assert row[time_shares.LABELS["plain"]].endswith("| 4.0 s (100%) | 6.0 s (43%) |")
    # start-up is a process's: in the run's column only
    assert row[time_shares.LABELS["start-up"]].endswith("| - | - | 2.0 s (14%) |")
    assert row["**workers' total**"] == "| **workers' total** | 8.0 s | 4.0 s | 14.0 s |"
    assert row["examples"] == "| examples | 60 | 10 | 70 |"
    assert "wall time: 7.5 s" in lines[-1]


def test_a_run_without_time_shares_is_an_error_not_an_empty_table():
    with pytest.raises(ValueError, match="time_s"):
        time_shares.table([{"backend": "numpy", "dtype": "float32", "check": "c", "outcome": "passed"}])


def test_a_run_records_each_keys_shares_and_the_command_prints_them(tmp_path):
    out = tmp_path / "run"
    run = subprocess.run([sys.executable, "-m", "conformance", "--profile", "quick", "--seed", "1", "--out", str(out),
                          "--backend", "numpy", "--dtype", "float32", "--dtype", "float16", "-n", "0",
                          "--check", "matches_spec", "--check", "decode_token_by_token"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONHASHSEED": "0"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    records = load(out / "results.json")["runs"][0]["conformance"]["records"]
    assert len(records) == 4
    for r in records:
        assert set(r["time_s"]) <= set(timeshare.SHARES), r["time_s"]
        # every check computes references and calls the backend, under Hypothesis
        assert {"golden", "plain", "backend", "check", "hypothesis"} <= set(r["time_s"]), (r["check"], r["time_s"])
    assert sum("start-up" in r["time_s"] for r in records) == 1  # one process: its first key
    shown = subprocess.run([sys.executable, "-m", "conformance", "time-shares", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == "| share | float32 | float16 | all |" or \
        shown.stdout.splitlines()[0] == "| share | float16 | float32 | all |"
    assert time_shares.LABELS["plain"] in shown.stdout


def test_the_command_names_a_missing_file(tmp_path):
    shown = subprocess.run([sys.executable, "-m", "conformance", "time-shares", str(tmp_path / "nope.json")],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 2 and "nope.json: no such file" in shown.stderr


def test_measure_runs_every_check_in_process_and_prints_its_shares():
    shown = subprocess.run([sys.executable, "-m", "conformance", "time-shares", "--measure", "--backend", "numpy",
                            "--dtype", "float32", "--profile", "quick", "--seed", "2"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "CI": "true"})
    assert shown.returncode == 0, shown.stderr[-2000:]
    line = shown.stdout.strip().splitlines()[-1]
    examples, shares = line.split("; ")
    assert int(examples.split()[0]) >= 5 * 40  # quick: 5 examples a check, every check but a few unsupported
    seconds = dict(s.rsplit(" ", 2)[:2] for s in shares.split(", "))
    assert set(seconds) == set(timeshare.SHARES[:-2]) and float(seconds["plain"]) > 0, line


@pytest.mark.parametrize("args, words", [(["--measure", "--dtype", "float8"], "--dtype 'float8': valid"),
                                         (["--measure", "--backend", "nosuch"], "unknown backend 'nosuch'"),
                                         ([], "or --measure")])
def test_measure_names_a_bad_value(args, words):
    shown = subprocess.run([sys.executable, "-m", "conformance", "time-shares", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 2 and words in shown.stderr, shown.stderr
