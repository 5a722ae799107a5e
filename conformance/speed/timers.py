"""Timers for one forward call: a host clock on CPU, device events on CUDA.

Every timer times the same region: `forward(...)` then `synchronize()`, the output kept
alive until the clock has stopped (freeing it is not part of the call). A timer is chosen
by the backend's declared device and the framework of its native arrays (the type that
`from_numpy` returned), so a plug-in backend gets events without declaring anything more.
Frameworks are imported lazily, only when a CUDA timer is actually built.
"""

from __future__ import annotations

import time
from typing import Any, Callable

Forward = Callable[[], Any]


class CpuTimer:
    """Host wall clock (perf_counter_ns): the right clock for synchronous CPU backends, and
    still correct for a device backend whose synchronize() really waits."""

    kind = "perf_counter_ns"

    def time(self, call: Forward, sync: Callable[[], None]) -> tuple[float, Any]:
        t0 = time.perf_counter_ns()
        out = call()
        sync()
        t1 = time.perf_counter_ns()
        return (t1 - t0) * 1e-9, out


class _EventTimer:
    """Shared logic of CUDA-event timers: events bracket the call on the current stream, so
    the time is the device's, free of host jitter after the launch."""

    kind = "events"

    def __init__(self, start: Any, end: Any) -> None:
        self._start, self._end = start, end

    def _elapsed_ms(self) -> float:
        raise NotImplementedError

    def time(self, call: Forward, sync: Callable[[], None]) -> tuple[float, Any]:
        sync()  # untimed: work queued earlier must not land in this sample
        self._start.record()
        out = call()
        self._end.record()
        sync()
        self._end.synchronize()
        return self._elapsed_ms() * 1e-3, out


class TorchCudaTimer(_EventTimer):
    kind = "torch.cuda.Event"

    def __init__(self) -> None:
        import torch  # lazily: only CUDA torch backends need it

        super().__init__(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

    def _elapsed_ms(self) -> float:
        return float(self._start.elapsed_time(self._end))


class CupyTimer(_EventTimer):
    kind = "cupy.cuda.Event"

    def __init__(self) -> None:
        import cupy  # lazily: only CuPy backends need it

        self._cupy = cupy
        super().__init__(cupy.cuda.Event(), cupy.cuda.Event())

    def _elapsed_ms(self) -> float:
        return float(self._cupy.cuda.get_elapsed_time(self._start, self._end))


def framework_of(native: Any) -> str:
    """The top-level package of a native array's type ("numpy", "torch", "cupy", ...)."""
    return (type(native).__module__ or "").split(".")[0]


def select_timer(device: str, native: Any) -> CpuTimer | TorchCudaTimer | CupyTimer:
    """The timer for a backend on `device` whose arrays look like `native`.

    CUDA devices get their framework's events (torch or CuPy); anything else, including an
    unknown CUDA framework, gets the host clock around forward + synchronize.
    """
    if device.split(":")[0] == "cuda":
        fw = framework_of(native)
        if fw == "torch":
            return TorchCudaTimer()
        if fw == "cupy":
            return CupyTimer()
    return CpuTimer()
