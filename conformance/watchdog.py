"""Per-example time limits, outside Hypothesis's deadline.

A soft limit raises `BackendHang` in the main thread (SIGALRM), which Hypothesis does not
catch or shrink, so a hanging backend costs one limit, not one per shrink step. A hard limit
(twice the soft one) ends the process through faulthandler for hangs inside C code that never
return to Python; under pytest-xdist the worker is replaced and the crash is recorded against
that backend and check.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator


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
    """Raise BackendHang if the body runs longer than `seconds`; end the process at twice that."""
    if seconds <= 0 or not _can_alarm():
        yield
        return

    def on_alarm(signum, frame):
        raise BackendHang(f"{what} did not finish within {seconds:g} s (per-example limit)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    stream = _real_stderr()
    if stream is not None:  # no hard limit where no stream has a file descriptor
        faulthandler.dump_traceback_later(2 * seconds, exit=True, file=stream)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if stream is not None:
            faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGALRM, previous)
