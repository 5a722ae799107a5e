"""Memory a backend keeps alive, charged to that backend, not to the next one in its worker.

Backends take turns in a worker process. One that keeps memory alive on every call (a cache
that never evicts, a list it appends its outputs to) does not fail on its own: the worker
grows, and whichever backend runs when the machine runs out is the one that crashes. So after
each test the worker's resident memory is compared with the backend's own baseline in this
worker; a backend whose test left more than LIMIT_MB behind (after a garbage collection) is
failed for it and marked, so its other checks do not run and the growth stops with it.

The baseline is taken after the backend's first test in the worker, not before it: importing
a framework and its first kernels (PyTorch: about 400 MB) is not a leak.
"""

from __future__ import annotations

import gc
import os

#: Resident memory a backend's test may leave behind (after its first test in the worker).
#: (1 GB: one large example's budget, sizes.BUDGET_BYTES; the tests set a smaller one)
LIMIT_MB = float(os.environ.get("MHA_LEAK_LIMIT_MB", "1024"))


def rss_bytes() -> int | None:
    """This process's resident memory (Linux /proc), less what the suite's own reference memo
    holds (`conformance.suite.memo`: up to its budget, kept on purpose, never the backend's);
    None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
    from conformance.suite import memo

    return rss - memo.stats()["bytes"]


def _trim() -> None:
    """Give freed heap memory back to the OS (glibc's malloc_trim), where there is glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class LeakWatch:
    """Which backends have had their first test in this worker."""

    def __init__(self, limit_mb: float = LIMIT_MB):
        self.limit = limit_mb * 2**20
        self.seen: set[str] = set()

    def after_test(self, backend: str, before: int | None) -> str | None:
        """The reason `backend`'s test, which started at `before` bytes, leaked, or None."""
        first = backend not in self.seen
        self.seen.add(backend)
        now = rss_bytes()
        if first or before is None or now is None or now - before <= self.limit:
            return None
        gc.collect()  # only when it looks like a leak: a collection costs milliseconds
        _trim()  # freed memory the allocator kept (fragmentation after large examples) is no leak
        now = rss_bytes() or now
        if now - before <= self.limit:
            return None
        return (f"leak: the worker's resident memory grew by {(now - before) / 2**20:.0f} MB during this check "
                f"and stayed (limit {self.limit / 2**20:g} MB, the backend's first check in a worker exempt); "
                f"memory a backend keeps alive would crash the next backend in this worker")
