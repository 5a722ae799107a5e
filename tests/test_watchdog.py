"""The per-example limit counts CPU time, with an idle limit for sleepers, a wall-clock limit behind
them, and a hard limit that ends a process that ignores or blocks the signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conformance.suite.watchdog import HARD_LIMIT_EXIT, WALL_FACTOR, BackendHang, time_limit

ROOT = Path(__file__).resolve().parent.parent


def test_a_busy_loop_is_stopped_by_its_cpu_time():
    with pytest.raises(BackendHang, match="CPU time"):
        with time_limit(0.2, "busy"):
            while True:
                pass


def test_a_sleeping_backend_is_stopped_by_the_idle_limit_not_the_wall_limit():
    t0 = time.monotonic()
    with pytest.raises(BackendHang, match="used no CPU for 0.3 s"):
        with time_limit(5, "sleeper", idle=0.3):  # the wall limit would be 50 s
            time.sleep(60)
    assert time.monotonic() - t0 >= 0.3


def test_the_wall_clock_stops_what_the_idle_limit_does_not():
    # a backend using a little CPU, too slowly, is not idle; an idle limit longer than the wall
    # limit stands in for it here (CPU time is charged by scheduler ticks: a test cannot spend
    # "a little" of it reliably)
    t0 = time.monotonic()
    with pytest.raises(BackendHang, match="did not finish within 1 s"):
        with time_limit(0.1, "slow", idle=60):
            time.sleep(60)
    assert time.monotonic() - t0 >= 0.1 * WALL_FACTOR * 0.9


def test_waiting_is_not_counted_as_cpu_time():
    # 0.5 s of waiting under a 0.2 s CPU limit passes (the idle limit is longer)
    with time_limit(0.2, "waits", idle=5):
        time.sleep(0.5)


_IGNORES = "signal.signal(signal.SIGALRM, signal.SIG_IGN)"
_BLOCKS = "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})"


@pytest.mark.parametrize("trick", [_IGNORES, _BLOCKS], ids=["ignores", "blocks"])
def test_the_hard_limit_needs_no_signal_and_comes_soon_after_the_soft_one(trick):
    code = ("import signal, time\n"
            "from conformance.suite import watchdog as w\n"
            "w.GRACE_S = 0.5\n"
            "w.last_words = lambda reason: print('LAST WORDS', reason, flush=True)\n"
            f"with w.time_limit(30, 'stubborn', idle=0.3):\n    {trick}\n    time.sleep(600)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == HARD_LIMIT_EXIT, proc.stderr[-2000:]
    # the idle limit's reason in the last words: not the wall limit (300 s) nor faulthandler's (320 s)
    assert "LAST WORDS stubborn used no CPU for 0.3 s" in proc.stdout and "hard limit" in proc.stdout


def test_a_blocked_alarm_does_not_outlive_the_example():
    with time_limit(5, "blocks then returns", idle=5):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    assert signal.SIGALRM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    with pytest.raises(BackendHang, match="used no CPU"):  # the next example is still caught
        with time_limit(5, "sleeper", idle=0.3):
            time.sleep(60)


def test_c_code_holding_the_gil_is_ended_by_the_last_resort():
    # a libc sleep called through PyDLL keeps the GIL: neither the signal handlers nor the
    # watchdog thread run, so only faulthandler's timer (armed with a horizon of twice the wall
    # limit plus 2 x GRACE_S) can end it
    code = ("import ctypes, time\n"
            "from conformance.suite import watchdog as w\n"
            "w.GRACE_S = 0.5\n"
            "for _ in range(3):\n    with w.time_limit(0.05, 'quick'):\n        pass\n"
            "t0 = time.monotonic()\n"
            "with w.time_limit(0.1, 'holds the GIL', idle=60):\n    ctypes.PyDLL(None).sleep(600)\n")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 1 and "Timeout" in proc.stderr, (proc.returncode, proc.stderr[-2000:])
    need = 0.1 * WALL_FACTOR + 2 * 0.5  # the wall limit plus 2 x GRACE_S
    assert need <= took < 2 * need + 30, took  # + 30: the interpreter's start on a loaded machine
