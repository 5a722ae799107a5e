"""Per-example time limits, outside Hypothesis's deadline.

A soft limit raises `BackendHang` in the main thread, which Hypothesis does not catch or
shrink, so a hanging backend costs one limit, not one per shrink step. Three soft limits:

- **CPU time** (SIGPROF): `seconds` of the process's CPU time. Not the wall clock: on a loaded
  machine a correct backend's call (or a lazy import inside it) can take ten times its CPU
  time in wall time, and a wall limit then failed it.
- **Idle**: `idle` seconds of wall time during which the process used less than IDLE_SHARE of
  one core (a backend that sleeps or blocks). It does not grow with the first example's
  allowance. A correct backend is not caught by it on a loaded machine: a runnable process
  gets far more than 1% of a core unless a hundred others compete for each core.
- **Wall time**: WALL_FACTOR x `seconds`, for a backend that uses a little CPU, too slowly.

A watchdog thread (one per process) measures the idle and wall limits and sends SIGALRM to the main thread. A
backend that blocks or ignores SIGALRM (or sits in C code that never returns to Python) is
ended by the **hard limit**: GRACE_S after a soft limit that was not obeyed, the watchdog
thread calls the `last_words` hook (the suite writes the test's record there) and ends the
process; it needs no signal. Should the watchdog thread itself never run (C code holding the
GIL), faulthandler ends the process between the wall limit plus 2 x GRACE_S and twice that
after the example started. Under pytest-xdist the worker is replaced and the hang is recorded
against that backend and check.

Examples come thousands to a run, most of them milliseconds long, so starting one must cost
little: faulthandler's timer (a thread started per arming) stays armed across examples and is
re-armed only when its horizon runs short; the watchdog thread cancels it once it finds no
example running. The watchdog thread polls every tick and is woken only when an example needs
a shorter tick than the one it sleeps (measured: 0.1-0.5 ms per example before, on 30-example
checks of 5 ms examples).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

#: Wall-clock limit = WALL_FACTOR x the CPU-time limit: room for a machine loaded tenfold.
WALL_FACTOR = 10.0
#: The idle limit = IDLE_FACTOR x the later examples' CPU-time limit (60 s at the default 30 s),
#: the same for the first example.
IDLE_FACTOR = 2.0
#: An example is idle while the process uses less than this share of one core.
IDLE_SHARE = 0.01
#: Seconds between a soft limit the backend did not obey and the end of the process.
GRACE_S = 10.0
#: Seconds the watchdog thread sleeps between looks while no example runs.
IDLE_TICK = 1.0
#: Exit status of a process ended by the hard limit.
HARD_LIMIT_EXIT = 70

#: Called with the reason, from the watchdog thread, just before the hard limit ends the
#: process (the suite sets it to write the test's record).
last_words: Callable[[str], None] | None = None


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


class _Example:
    """One example's limits and what the watchdog thread has seen of it."""

    def __init__(self, what: str, seconds: float, idle: float):
        self.what, self.seconds, self.idle, self.wall = what, seconds, idle, seconds * WALL_FACTOR
        self.tick = max(0.01, min(1.0, idle / 10, self.wall / 10))
        self.t0 = self.last_active = time.monotonic()
        self.cpu = time.process_time()
        self.reason: str | None = None
        self.signalled_at: float | None = None


class _Watchdog(threading.Thread):
    """One thread per process: samples the CPU time while an example runs; sends SIGALRM at its
    idle or wall limit, and ends the process GRACE_S later if the example is still running."""

    def __init__(self) -> None:
        super().__init__(name="mha-watchdog", daemon=True)
        self.cond = threading.Condition()  # held while checking, signalling or arming
        self.current: _Example | None = None
        self.main = threading.main_thread().ident
        self.sleeps = IDLE_TICK  # how long the thread waits before it looks again
        self.armed_until: float | None = None  # faulthandler's deadline (monotonic), None: not armed
        self.armed_file = None

    def start_example(self, ex: _Example, stream) -> None:
        """Make ex current (the caller holds `cond`): arm the last resort if its horizon is short
        of this example's, wake the thread if it sleeps longer than ex.tick."""
        self.current = ex
        if stream is not None:
            need = ex.wall + 2 * GRACE_S
            if self.armed_until is None or self.armed_file is not stream or self.armed_until - ex.t0 < need:
                faulthandler.dump_traceback_later(2 * need, exit=True, file=stream)
                self.armed_until, self.armed_file = ex.t0 + 2 * need, stream
        if ex.tick < self.sleeps:
            self.cond.notify()

    def run(self) -> None:
        with self.cond:
            while True:
                ex = self.current
                self.sleeps = IDLE_TICK if ex is None else ex.tick
                self.cond.wait(self.sleeps)
                if ex is not None and self.current is ex:
                    self._check(ex)
                elif self.current is None and self.armed_until is not None:  # no example: no last resort
                    faulthandler.cancel_dump_traceback_later()
                    self.armed_until = self.armed_file = None

    def _check(self, ex: _Example) -> None:
        now, c = time.monotonic(), time.process_time()
        if c - ex.cpu >= IDLE_SHARE * ex.tick:
            ex.last_active = now
        ex.cpu = c
        if ex.signalled_at is None:
            if now - ex.last_active >= ex.idle:
                ex.reason = f"{ex.what} used no CPU for {ex.idle:g} s (sleeping or blocked; idle limit {ex.idle:g} s)"
            elif now - ex.t0 >= ex.wall:
                ex.reason = (f"{ex.what} did not finish within {ex.wall:g} s (per-example limit: "
                             f"{ex.seconds:g} s of CPU time, {ex.wall:g} s of wall time)")
            if ex.reason is not None:
                ex.signalled_at = now
                signal.pthread_kill(self.main, signal.SIGALRM)
        elif now - ex.signalled_at >= GRACE_S:
            self._end(ex)

    def _end(self, ex: _Example) -> None:
        reason = (f"{ex.reason}; it did not stop within {GRACE_S:g} s of being told (SIGALRM blocked or "
                  f"ignored, or stuck in C code): the hard limit ended the process")
        try:
            if last_words is not None:
                last_words(reason)
            else:
                os.write(2, f"hard time limit: {reason}\n".encode("utf-8", "backslashreplace"))
        finally:
            os._exit(HARD_LIMIT_EXIT)


_WATCHDOG: _Watchdog | None = None


def _watchdog() -> _Watchdog:
    global _WATCHDOG
    if _WATCHDOG is None or not _WATCHDOG.is_alive():
        _WATCHDOG = _Watchdog()
        _WATCHDOG.start()
    return _WATCHDOG


@contextmanager
def time_limit(seconds: float, what: str = "example", idle: float | None = None) -> Iterator[None]:
    """Raise BackendHang after `seconds` of CPU time, `idle` seconds without using the CPU
    (default: `seconds`) or WALL_FACTOR x `seconds` of wall time; end the process GRACE_S after
    a limit the body does not obey."""
    if seconds <= 0 or not _can_alarm():
        yield
        return
    idle = seconds if idle is None else idle
    dog, ex = _watchdog(), _Example(what, seconds, idle)

    def on_cpu(signum, frame):
        raise BackendHang(f"{what} used more than {seconds:g} s of CPU time (per-example limit)")

    def on_alarm(signum, frame):
        if ex.reason is not None:
            raise BackendHang(ex.reason)

    previous = signal.signal(signal.SIGPROF, on_cpu), signal.signal(signal.SIGALRM, on_alarm)
    ours = {signal.SIGALRM, signal.SIGPROF}
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, ours)  # a backend may have left them blocked
    signal.setitimer(signal.ITIMER_PROF, seconds)
    with dog.cond:  # faulthandler is the last resort, should the watchdog thread never run again
        dog.start_example(ex, _real_stderr())
    try:
        yield
    finally:
        with dog.cond:
            dog.current = None
        signal.setitimer(signal.ITIMER_PROF, 0)
        # a signal still pending (sent as the body ended, or while it blocked them) is dropped
        # while ignored, not delivered to whatever handler comes back
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.signal(signal.SIGPROF, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, set(mask) - ours)
        signal.signal(signal.SIGPROF, previous[0])
        signal.signal(signal.SIGALRM, previous[1])
