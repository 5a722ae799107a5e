"""One backend's timing process, and the requests it answers (the same ones in process).

`python -m conformance.speed.worker SPEC THREADS` resolves one backend and answers JSON
requests, one per line on stdin, with one JSON line each on its stdout: "prepare"
(build a cell's inputs, time the first call), "prepare_fwd_bwd" (the same for forward plus
backward), "prepare_decode" (prefill a KV cache, time the first decode step), "time" (a chunk of warm calls, then wait until
this process is idle), "memory" (one untimed call), "threads", "release". A backend's own
prints go to stderr, never into the replies. `Handler` is the same logic for a backend timed
inside the calling process (`--in-process`).

Why a process per backend, and why wait for idle: after a call, OpenBLAS's worker threads
spin for about 2**28 cycles (about 0.1 s here) before they sleep, and libgomp's (PyTorch's
OpenMP) for a few milliseconds. A backend timed while another library's threads spin shares
the cores with them (10x to 100x slower at small shapes on 2 cores). `settle` waits until
the process has stopped using CPU before it answers, so the next backend starts on quiet
cores; separate processes keep the libraries' pools, allocators and caches apart.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from typing import Any

import numpy as np

from conformance.speed import harness
from conformance.speed.harness import Entry, describe_error

SETTLE_WINDOW_S = 0.01  # CPU use is sampled over windows this long
SETTLE_IDLE = 0.10  # a window in which the process used under 10% of one core counts as idle
SETTLE_CAP_S = 2.0  # a pool that never sleeps (OMP_WAIT_POLICY=active) must not hang the run
# glibc malloc serves a block above its mmap threshold with fresh pages (a page fault per 4 KiB
# on every call that allocates it) and raises the threshold to the largest such block freed so
# far, up to 32 MiB on 64-bit; it also hands the heap's free top back to the kernel once it
# exceeds twice the threshold (trimming), so the next call faults those pages in again. Which
# of that happens to a call hangs on the process's history: a fresh process's threshold is
# 128 KiB, and whether the free top is trimmed depends on which small blocks landed above it.
# Measured at B=64 T=64 d=512 in a worker: numpy 2551 faults per call as the first cell and
# 0 or 3066 as the second (after B=4 T=512, depending on one unrelated request in between);
# torch 14304 to 16352 as the first cell, 0 after a B=4 T=512 cell. So every timing process
# fixes both at the start: threshold 32 MiB (the cap any process reaches once it has freed one
# large array), no trimming. A block of 32 MiB or more still hung on history: malloc serves it
# from a free heap block that large if there is one (left by an earlier cell), and maps it anew
# otherwise. Measured with torch-mha at B=4 T=512 (two 32 MiB temporaries a call), fresh: 16,386
# to 17,069 faults a call, 80-100 ms; after a B=64 T=64 cell: 8,193 faults and 72-74 ms in 4 of
# 6 runs; the isolation check flagged torch-mha there 24-27% faster in the harness than alone.
# So mapping is off too (M_MMAP_MAX = 0): every block comes from the heap, which keeps what is
# freed, so a warm call faults no pages whatever came before it.
MMAP_THRESHOLD = 32 << 20  # glibc's cap for the dynamic threshold on 64-bit (HEAP_MAX_SIZE / 2)
# The heap's free top was kept up to 1 GiB; with mapping off, torch's B=1 T=4096 cell (512 MiB
# temporaries, 1.6 GiB at its peak) freed more than that, so the top was trimmed and faulted in
# again: 526 to 2088 ms and ~290,000 faults a call, against 513 to 571 ms and 0 faults once warm
# with trimming off (3 chunks each way in a worker, idle; 2026-12-07).
TRIM_THRESHOLD = -1  # mallopt's "never trim": the heap keeps what it freed
MMAP_MAX = 0  # blocks mapped at a time: none, every block from the heap
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4  # mallopt parameters (malloc.h)
_primed: list[bool] = []
#: Environment variables that set thread counts or how idle threads wait; recorded as found.
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OPENBLAS_NUM_THREADS",
              "OPENBLAS_THREAD_TIMEOUT", "MKL_NUM_THREADS", "MKL_DYNAMIC")


def settle(window_s: float = SETTLE_WINDOW_S, idle: float = SETTLE_IDLE, cap_s: float = SETTLE_CAP_S) -> float:
    """Sleep until this process's threads together use under `idle` of a core over a window
    (spinning thread pools have gone to sleep); returns the seconds waited (at most ~cap_s)."""
    t0 = time.perf_counter()
    while True:
        c0, w0 = time.process_time(), time.perf_counter()
        time.sleep(window_s)
        busy = (time.process_time() - c0) / max(time.perf_counter() - w0, 1e-9)
        waited = time.perf_counter() - t0
        if busy < idle or waited >= cap_s:
            return waited


def prime_allocator() -> bool:
    """Fix glibc malloc's mmap threshold at its cap, turn heap trimming and mapping off (see above), so
    that a cell's page faults, and its time, do not hang on what the process did before it.
    Called by every timing process before its backend builds anything; once per process;
    False where libc is not glibc (nothing done, the figures then keep that dependence)."""
    if _primed:
        return _primed[0]
    ok = False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        if hasattr(libc, "gnu_get_libc_version"):  # mallopt's parameters above are glibc's
            ok = all(bool(libc.mallopt(param, value)) for param, value in (
                (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_MMAP_MAX, MMAP_MAX)))
    except (OSError, AttributeError):
        pass
    _primed.append(ok)
    return ok


def minor_faults() -> int | None:
    """This process's minor page faults so far (None where getrusage is missing)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return None


def fix_threads(n: int | None, import_torch: bool) -> Any:
    """Fix torch's and every loaded BLAS/OpenMP pool's thread count to n (None: leave as is).

    import_torch: import torch first when installed, so the BLAS it loads is limited too (the
    calling process times several backends); otherwise torch is limited only if loaded.
    Returns the threadpoolctl limiter, which must stay referenced for the limits to hold.
    """
    if import_torch and importlib.util.find_spec("torch") is not None:
        import torch  # noqa: F401  (lazily: loaded here so its thread pools exist before they are fixed)
    if n is None:
        return None
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    from threadpoolctl import threadpool_limits  # lazily: only --threads needs it

    return threadpool_limits(limits=n)


def thread_settings() -> dict[str, Any]:
    """Thread counts in force in this process, and the thread environment variables set."""
    from conformance.results import thread_counts

    return {**thread_counts(), "pid": os.getpid(),
            "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}


class Handler:
    """Answers the requests for one backend; holds at most one cell's inputs at a time."""

    def __init__(self, backend: Any, threads: int | None = None, import_torch: bool = False) -> None:
        self.backend, self.threads, self.import_torch = backend, threads, import_torch
        self.entry: Entry | None = None
        self._limiter: Any = None
        self.fresh = True  # no cell built yet in this process (see _prepare)
        self.primed = prime_allocator()  # before any array of the backend's is built

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg.get("op")
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            return {"error": f"unknown request {op!r}"}
        args = {k: v for k, v in msg.items() if k != "op"}
        try:
            return fn(**args)
        except Exception as e:  # third-party code: the parent records it and goes on
            return {"error": describe_error(e)}

    def op_prepare(self, shape: list[int], dtype: str, causal: bool, seed: int) -> dict[str, Any]:
        """Build the cell's inputs and weights (forward), time the first call."""
        b = self.backend

        def build() -> tuple[Any, Any]:
            config, params, rng = _cell(shape, causal, seed)
            x = b.from_numpy(rng.standard_normal(shape[:2] + [config.d_in]), dtype)  # (B, T, d_in)
            weights = b.prepare(params, dtype) if hasattr(b, "prepare") else params.map(lambda a: b.from_numpy(a, dtype))
            return (lambda: b.forward(x, weights, config)), x

        return self._prepare(build, "preparing inputs")

    def op_prepare_fwd_bwd(self, shape: list[int], dtype: str, causal: bool, seed: int) -> dict[str, Any]:
        """Build a training step's attention work, forward_for_grad then backward; time the first."""
        b = self.backend

        def build() -> tuple[Any, Any]:
            config, params, rng = _cell(shape, causal, seed)
            x = b.from_numpy(rng.standard_normal(shape[:2] + [config.d_in]), dtype)  # (B, T, d_in)
            g = b.from_numpy(rng.standard_normal(shape[:2] + [config.d_out]), dtype)  # (B, T, d_out)
            w = b.prepare(params, dtype)
            return (lambda: b.backward(b.forward_for_grad(x, w, config)[1], g)), x

        return self._prepare(build, "preparing inputs")

    def op_prepare_decode(self, B: int, L: int, dtype: str, seed: int) -> dict[str, Any]:
        """Prefill a cache of L tokens (untimed), then time the first step of a line of decoding."""
        b = self.backend

        def build() -> tuple[Any, Any]:
            config, params, x = decode_inputs(B, L, dtype, seed)
            w = b.prepare(params, dtype)
            prompt = b.prefill(b.from_numpy(x[:, :L], dtype), w, config)
            x_new = b.from_numpy(x[:, L:], dtype)  # (B, 1, d_in)
            line = {"cache": prompt, "steps": 0}
            R = decode_line_steps(L)

            def step() -> Any:
                # each step continues from the cache the last returned, as a generation loop does;
                # after R steps the line starts again from the prompt's cache (a branch: a cache that
                # appends in place copies it once there), so the cache stays within R tokens of L
                if line["steps"] == R:
                    line["cache"], line["steps"] = prompt, 0
                y, line["cache"] = b.decode(x_new, line["cache"], w, config)
                line["steps"] += 1
                return y

            return step, x_new

        return self._prepare(build, "prefill")

    def _prepare(self, build: Any, what: str) -> dict[str, Any]:
        """Build a cell's call (`build() -> (call, native input)`) and time its first call.

        `build` makes everything the cell allocates, its inputs' source arrays included. A fresh
        process builds its first cell twice (the first time run once, then freed): measured
        with NumPy at B=4, T=512, float32, calls on the first cell a process prepares take 45 to 54 ms for as long as they are repeated, and 38 ms once the
        cell has been released and prepared again (where the process's first large arrays land
        in memory differs from where later ones land). A worker's first cell must be timed as
        its later ones are, and as the backend timed alone in a fresh process.
        """
        from conformance.speed.timers import select_timer

        self.entry = None
        b = self.backend
        sync = getattr(b, "synchronize", None) or (lambda: None)
        try:
            if self.fresh:
                self.fresh = False
                self._throwaway(build, sync)
            call, native = build()
            sync()
            timer = select_timer(b.capabilities.device, native)
        except Exception as e:  # conversion and prefill are third-party code too
            return {"first_call_s": None, "timer": None, "error": f"{what}: " + describe_error(e)}
        self._limit()  # the framework's pools are loaded now
        self.entry = Entry(b.name, call, sync, timer, native=native)
        harness.first_call(self.entry)
        self._limit()  # and pools the first call loaded lazily
        return {"first_call_s": self.entry.first_call_s, "timer": timer.kind, "error": self.entry.error,
                "settle_s": settle()}

    @staticmethod
    def _throwaway(build: Any, sync: Any) -> None:
        """Build a cell, run it once and free it all, the inputs' source arrays included."""
        import gc

        call, native = build()
        try:
            call()
            sync()
        except Exception:  # the timed first call meets it again and records it
            pass
        del call, native
        gc.collect()

    def _limit(self) -> None:
        if self.threads is not None:
            self._limiter = fix_threads(self.threads, self.import_torch)

    def op_time(self, min_calls: int, seconds: float, max_calls: int = 2000, rewarm: bool = True) -> dict[str, Any]:
        """One chunk of warm calls; answers once the process is idle again."""
        e = self._entry()
        e.samples = []
        f0 = minor_faults()
        harness.time_chunk(e, min_calls, seconds, max_calls, rewarm)
        f1 = minor_faults()
        calls = len(e.samples) + (1 if rewarm else 0)
        faults = (f1 - f0) / calls if f0 is not None and f1 is not None and calls else None
        return {"samples": e.samples, "error": e.error, "settle_s": settle(), "faults_per_call": faults}

    def op_memory(self) -> dict[str, Any]:
        from conformance.speed.memory import peak_memory

        e = self._entry()
        try:
            mem, method = peak_memory(self.backend.capabilities.device, e.native, e.call, e.sync)
        except Exception as ex:
            mem, method = None, f"failed: {describe_error(ex)}"[:200]
        return {"memory": mem, "memory_method": method, "settle_s": settle()}

    def op_threads(self) -> dict[str, Any]:
        return {**thread_settings(), "allocator_primed": self.primed}

    def op_release(self) -> dict[str, Any]:
        import gc

        self.entry = None
        gc.collect()
        return {}

    def _entry(self) -> Entry:
        if self.entry is None:
            raise RuntimeError("no cell prepared")
        return self.entry


def _cell(shape: list[int], causal: bool, seed: int) -> tuple[Any, Any, np.random.Generator]:
    """(config, float64 params, rng for the inputs) of a forward cell [B, T, d_in, d_out, H]."""
    from spec.config import AttentionConfig
    from spec.params import init_params

    _, _, d_in, d_out, H = shape
    config = AttentionConfig(d_in, d_out, H, causal=causal)
    return config, init_params(config, seed), np.random.default_rng(seed)


#: The decode cell's shape (`conformance.speed.decode` says why): d_in, d_out, heads.
DECODE_D_IN, DECODE_D_OUT, DECODE_HEADS = 64, 512, 8


def decode_line_steps(L: int) -> int:
    """Steps in a line of decoding from a prompt of L tokens before it starts again: L / 32, at
    least 8, so a line's restart (which may copy the cache) is at most 1 call in 8, outside the
    median's middle half, and the cache grows by at most a thirty-second (8 tokens at L=128)."""
    return max(8, L // 32)


def decode_inputs(B: int, L: int, dtype: str, seed: int = 0) -> tuple[Any, Any, np.ndarray]:
    """(config, float64 params, x) of one decode cell: x holds the L prompt tokens and the new one.

    Here, beside the forward cells' `_cell`, so the worker imports nothing of the controller's
    side (decode -> cells -> worker, never back)."""
    from spec.config import AttentionConfig
    from spec.params import init_params

    config = AttentionConfig(d_in=DECODE_D_IN, d_out=DECODE_D_OUT, n_heads=DECODE_HEADS, causal=True)
    x = np.random.default_rng(seed + L + B).standard_normal((B, L + 1, DECODE_D_IN))  # (B, L + 1, d_in)
    return config, init_params(config, seed=seed), x


def main(argv: list[str]) -> int:
    """Serve requests for backend argv[0] with threads argv[1] ("-": as is) until stdin ends."""
    from impls.registry import BackendSpecError, resolve

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a backend's prints land on stderr, never in a reply
    sys.stdout = os.fdopen(1, "w", buffering=1)
    threads = None if argv[1] == "-" else int(argv[1])
    try:
        info = resolve(argv[0])
        why = info.skip_reason or info.error  # a skip was filtered out by the controller; an error is every cell's
        handler: Handler | None = Handler(info.backend, threads) if why is None else None
    except BackendSpecError as e:
        handler, why = None, str(e)
    try:
        for line in sys.stdin:
            msg = json.loads(line)
            if msg.get("op") == "quit":
                break
            reply = handler.handle(msg) if handler is not None else {"error": why}
            replies.write(json.dumps(reply) + "\n")
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
