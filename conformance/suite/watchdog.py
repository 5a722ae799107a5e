"""Per-example time limits, outside Hypothesis's deadline.

A soft limit raises `BackendHang` in the main thread, which Hypothesis does not catch or
shrink, so a hanging backend costs one limit, not one per shrink step. The limit counts the
process's CPU time (SIGPROF), not the wall clock: on a loaded machine a correct backend's
call (or a lazy import inside it) can take ten times its CPU time in wall time, and a wall
limit then failed it, and left the interrupted import broken for every later call. A
backend that hangs without using the CPU (sleeping, blocked) is caught by a wall-clock limit
WALL_FACTOR times longer (SIGALRM). A hard limit (twice the wall limit) ends the process
through faulthandler for hangs inside C code that never return to Python; under
pytest-xdist the worker is replaced and the crash is recorded against that backend and check.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


#: Wall-clock limit = WALL_FACTOR x the CPU-time limit: room for a machine loaded tenfold.
WALL_FACTOR = 10.0


class BackendHang(BaseException):
    """A backend call exceeded the per-example time limit (BaseException: not shrunk)."""


def _can_alarm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def _real_stderr():
    """sys.stderr if it has a file descriptor (faulthandler needs one), else the process's own.

    Under pytest's capsys or in a notebook sys.stderr is an in-memory stream without one.
    """
    for stream in (sys.stderr, sys.__stderr__):
        try:
            stream.fileno()
            return stream
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            continue
    return None


@contextmanager
def time_limit(seconds: float, what: str = "example") -> Iterator[None]:
    """Raise BackendHang after `seconds` of CPU time or WALL_FACTOR x `seconds` of wall time.

    The process ends at twice the wall limit (hangs in C code that never return to Python).
    """
    if seconds <= 0 or not _can_alarm():
        yield
        return
    wall = seconds * WALL_FACTOR

    def on_cpu(signum, frame):
        raise BackendHang(f"{what} used more than {seconds:g} s of CPU time (per-example limit)")

    def on_wall(signum, frame):
        raise BackendHang(f"{what} did not finish within {wall:g} s (per-example limit: "
                          f"{seconds:g} s of CPU time, {wall:g} s of wall time)")

    previous = signal.signal(signal.SIGPROF, on_cpu), signal.signal(signal.SIGALRM, on_wall)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    signal.setitimer(signal.ITIMER_REAL, wall)
    stream = _real_stderr()
    if stream is not None:  # no hard limit where no stream has a file descriptor
        faulthandler.dump_traceback_later(2 * wall, exit=True, file=stream)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        if stream is not None:
            faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGPROF, previous[0])
        signal.signal(signal.SIGALRM, previous[1])
