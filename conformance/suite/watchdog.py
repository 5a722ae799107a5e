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

A watchdog thread measures the idle and wall limits and sends SIGALRM to the main thread. A
backend that blocks or ignores SIGALRM (or sits in C code that never returns to Python) is
ended by the **hard limit**: GRACE_S after a soft limit that was not obeyed, the watchdog
thread calls the `last_words` hook (the suite writes the test's record there) and ends the
process; it needs no signal. Should the watchdog thread itself never run (C code holding the
GIL), faulthandler ends the process at the wall limit plus GRACE_S. Under pytest-xdist the
worker is replaced and the hang is recorded against that backend and check.
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


class _Watch(threading.Thread):
    """Samples the process's CPU time; sends SIGALRM at the idle or wall limit, ends the
    process GRACE_S later if the example is still running."""

    def __init__(self, what: str, seconds: float, idle: float):
        super().__init__(name="mha-watchdog", daemon=True)
        self.what, self.seconds, self.idle, self.wall = what, seconds, idle, seconds * WALL_FACTOR
        self.tick = max(0.01, min(1.0, idle / 10, self.wall / 10))
        self.lock = threading.Lock()  # held while signalling; the main thread takes it to stop us
        self.done = False
        self.reason: str | None = None
        self.main = threading.main_thread().ident

    def run(self) -> None:
        t0 = last_active = time.monotonic()
        cpu = time.process_time()
        signalled_at = None
        while True:
            time.sleep(self.tick)
            with self.lock:
                if self.done:
                    return
                now, c = time.monotonic(), time.process_time()
                if c - cpu >= IDLE_SHARE * self.tick:
                    last_active = now
                cpu = c
                if signalled_at is None:
                    if now - last_active >= self.idle:
                        self.reason = (f"{self.what} used no CPU for {self.idle:g} s (sleeping or blocked; "
                                       f"idle limit {self.idle:g} s)")
                    elif now - t0 >= self.wall:
                        self.reason = (f"{self.what} did not finish within {self.wall:g} s (per-example limit: "
                                       f"{self.seconds:g} s of CPU time, {self.wall:g} s of wall time)")
                    if self.reason is not None:
                        signalled_at = now
                        signal.pthread_kill(self.main, signal.SIGALRM)
                elif now - signalled_at >= GRACE_S:
                    self._end()

    def _end(self) -> None:
        reason = (f"{self.reason}; it did not stop within {GRACE_S:g} s of being told (SIGALRM blocked or "
                  f"ignored, or stuck in C code): the hard limit ended the process")
        try:
            if last_words is not None:
                last_words(reason)
            else:
                os.write(2, f"hard time limit: {reason}\n".encode("utf-8", "backslashreplace"))
        finally:
            os._exit(HARD_LIMIT_EXIT)


@contextmanager
def time_limit(seconds: float, what: str = "example", idle: float | None = None) -> Iterator[None]:
    """Raise BackendHang after `seconds` of CPU time, `idle` seconds without using the CPU
    (default: `seconds`) or WALL_FACTOR x `seconds` of wall time; end the process GRACE_S after
    a limit the body does not obey."""
    if seconds <= 0 or not _can_alarm():
        yield
        return
    idle = seconds if idle is None else idle
    watch = _Watch(what, seconds, idle)

    def on_cpu(signum, frame):
        raise BackendHang(f"{what} used more than {seconds:g} s of CPU time (per-example limit)")

    def on_alarm(signum, frame):
        if watch.reason is not None:
            raise BackendHang(watch.reason)

    previous = signal.signal(signal.SIGPROF, on_cpu), signal.signal(signal.SIGALRM, on_alarm)
    ours = {signal.SIGALRM, signal.SIGPROF}
    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, ours)  # a backend may have left them blocked
    signal.setitimer(signal.ITIMER_PROF, seconds)
    stream = _real_stderr()
    if stream is not None:  # the last resort, should the watchdog thread never run again
        faulthandler.dump_traceback_later(watch.wall + 2 * GRACE_S, exit=True, file=stream)
    watch.start()
    try:
        yield
    finally:
        with watch.lock:
            watch.done = True
        signal.setitimer(signal.ITIMER_PROF, 0)
        if stream is not None:
            faulthandler.cancel_dump_traceback_later()
        # a signal still pending (sent as the body ended, or while it blocked them) is dropped
        # while ignored, not delivered to whatever handler comes back
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        signal.signal(signal.SIGPROF, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_SETMASK, set(mask) - ours)
        signal.signal(signal.SIGPROF, previous[0])
        signal.signal(signal.SIGALRM, previous[1])
