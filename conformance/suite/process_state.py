"""What keeps one backend from changing the run: process state restored, output bounded.

Backends run in pytest-xdist worker processes, never in the process that writes results
(`conformance.cli`), so an exit, a signal or a segfault ends only a worker, which the run
replaces and records as a crash. Within a worker, backends take turns, so each example runs
inside `restored_state()` and each test inside `restored_state(full=True)`: whatever
process-wide state a backend changes is put back before the suite or the next backend runs
(per example: NumPy's error state, PyTorch's default dtype, thread count, grad mode and
deterministic flag, the working directory, the SIGINT/SIGTERM/SIGALRM handlers, warning
filters, stdout/stderr objects, the recursion limit; per test, in addition: environment
variables, sys.path, the umask, the other signal handlers and the BLAS/OpenMP thread counts,
which a backend can change through threadpoolctl or its libraries' own APIs). `OutputTail`
catches what a backend prints, at the file-descriptor level too, and keeps only the last
`limit` bytes, so a backend printing megabytes per call costs no memory.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

#: Signals whose handlers a backend might replace; SIGKILL/SIGSTOP cannot be caught. The first
#: four matter to the suite itself (Ctrl-C, termination, the watchdog's two timers) and are
#: restored after every example; the others after every test.
SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGALRM", "SIGPROF", "SIGHUP", "SIGUSR1",
                                               "SIGUSR2", "SIGPIPE", "SIGCHLD") if hasattr(signal, n))
SUITE_SIGNALS = SIGNALS[:4]
OUTPUT_LIMIT = 64 * 1024  # bytes of a test's captured output kept in its record


def _snapshot(full: bool) -> dict[str, Any]:
    import numpy as np

    snap: dict[str, Any] = {
        "np_err": np.geterr(), "cwd": _cwd(), "warnings": list(warnings.filters),
        "signals": {s: signal.getsignal(s) for s in (SIGNALS if full else SUITE_SIGNALS)},
        "streams": (sys.stdout, sys.stderr), "recursion": sys.getrecursionlimit(),
    }
    if full:
        snap.update(environ=dict(os.environ), path=list(sys.path), umask=os.umask(0o022), blas=_blas_threads())
        os.umask(snap["umask"])
    torch = sys.modules.get("torch")
    if torch is not None:
        snap["torch"] = (torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled(),
                         torch.are_deterministic_algorithms_enabled())
    return snap


#: threadpoolctl's view of the loaded BLAS/OpenMP libraries, with len(sys.modules) when it was
#: taken: finding the libraries costs ~1 ms (twice a test), asking each its thread count ~1 us.
_POOLS: tuple[int, Any] | None = None


def _blas_threads() -> dict[str, int] | None:
    """Thread count of every loaded BLAS/OpenMP library, by prefix (threadpoolctl).

    The libraries are looked for again when a module was imported since the last look (that is
    how numpy, torch, scipy and jax bring theirs); one loaded through ctypes alone is found at
    the next import of any module."""
    global _POOLS
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    if _POOLS is None or _POOLS[0] != len(sys.modules):
        _POOLS = len(sys.modules), ThreadpoolController()
    return {c.prefix: c.get_num_threads() for c in _POOLS[1].lib_controllers}


def _restore_blas(before: dict[str, int]) -> None:
    """Put back the BLAS thread counts a backend changed (threadpool_limits, its own API); a
    library loaded meanwhile gets OMP_NUM_THREADS, which the run sets (one thread per worker)."""
    from threadpoolctl import threadpool_limits

    now = _blas_threads() or {}
    env = os.environ.get("OMP_NUM_THREADS", "")
    want = {p: before.get(p, int(env) if env.isdigit() else n) for p, n in now.items()}
    changed = {p: n for p, n in want.items() if now[p] != n}
    if changed:
        threadpool_limits(limits=changed)


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the directory was removed under us
        return None


def _restore(snap: dict[str, Any]) -> None:
    import numpy as np

    np.seterr(**snap["np_err"])
    if snap["cwd"] is not None and _cwd() != snap["cwd"]:
        os.chdir(snap["cwd"])
    if "environ" in snap:
        if dict(os.environ) != snap["environ"]:
            os.environ.clear()
            os.environ.update(snap["environ"])
        sys.path[:] = snap["path"]
        os.umask(snap["umask"])
        if snap.get("blas") is not None:
            _restore_blas(snap["blas"])
    for s, handler in snap["signals"].items():
        if handler is not None and signal.getsignal(s) is not handler:
            signal.signal(s, handler)
    warnings.filters[:] = snap["warnings"]
    sys.stdout, sys.stderr = snap["streams"]
    sys.setrecursionlimit(snap["recursion"])
    torch = sys.modules.get("torch")
    if torch is not None and "torch" in snap:
        dtype, threads, grad, deterministic = snap["torch"]
        torch.set_default_dtype(dtype)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        torch.set_grad_enabled(grad)
        if torch.are_deterministic_algorithms_enabled() != deterministic:  # the setter costs ms
            torch.use_deterministic_algorithms(deterministic)


@contextmanager
def restored_state(full: bool = False) -> Iterator[None]:
    """Run the body, then put back the process-wide state it changed (see the module doc);
    `full` adds the environment, sys.path, the umask and every signal handler (once per test)."""
    snap = _snapshot(full)
    try:
        yield
    finally:
        _restore(snap)


class OutputTail:
    """Redirect fds 1 and 2 (and sys.stdout/sys.stderr) into a pipe; keep the last `limit` bytes."""

    def __init__(self, limit: int = OUTPUT_LIMIT):
        self.limit = limit
        self.total = 0
        self._buf = bytearray()

    def _drain(self, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            self.total += len(chunk)
            self._buf += chunk
            if len(self._buf) > 2 * self.limit:
                del self._buf[:-self.limit]

    def text(self) -> str:
        """The kept tail, with a first line saying how much was dropped (empty: nothing printed)."""
        tail = bytes(self._buf[-self.limit:]).decode("utf-8", "replace")
        dropped = self.total - min(self.total, self.limit)
        return (f"[... {dropped} earlier bytes dropped; last {self.limit} kept]\n" if dropped else "") + tail

    def __enter__(self) -> "OutputTail":
        for s in (sys.stdout, sys.stderr):
            _flush(s)
        self._read, write = os.pipe()
        self._saved = (os.dup(1), os.dup(2))
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        self._streams = (sys.stdout, sys.stderr)
        self._text = open(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace", closefd=True)
        sys.stdout = sys.stderr = self._text
        self._thread = threading.Thread(target=self._drain, args=(self._read,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for s in (sys.stdout, sys.stderr, self._text):
            _flush(s)
        sys.stdout, sys.stderr = self._streams
        try:
            self._text.close()
        except OSError:
            pass
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        # a child process of the backend may still hold the pipe open: do not wait for it forever
        self._thread.join(timeout=2.0)
        if not self._thread.is_alive():
            os.close(self._read)


def _flush(stream: Any) -> None:
    try:
        stream.flush()
    except (AttributeError, OSError, ValueError):
        pass
