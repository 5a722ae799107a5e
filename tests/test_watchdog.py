"""The per-example limit counts CPU time, with a wall-clock limit behind it for sleepers."""

from __future__ import annotations

import time

import pytest

from conformance.suite.watchdog import WALL_FACTOR, BackendHang, time_limit


def test_a_busy_loop_is_stopped_by_its_cpu_time():
    with pytest.raises(BackendHang, match="CPU time"):
        with time_limit(0.2, "busy"):
            while True:
                pass


def test_a_sleeping_backend_is_stopped_by_the_wall_clock():
    t0 = time.monotonic()
    with pytest.raises(BackendHang, match="did not finish within"):
        with time_limit(0.1, "sleeper"):
            time.sleep(60)
    assert time.monotonic() - t0 >= 0.1 * WALL_FACTOR * 0.9


def test_waiting_is_not_counted_as_cpu_time():
    # 0.5 s of waiting (as a starved process waits for a core) under a 0.2 s CPU limit passes
    with time_limit(0.2, "waits"):
        time.sleep(0.5)
