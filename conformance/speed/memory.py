"""Peak memory of one forward call, measured in a separate untimed call.

The figure is the memory the call needed above what was live before it (inputs and weights
excluded, the output included), by the best method the backend's framework offers:

- "torch.cuda.max_memory_allocated": peak statistics reset before the call;
- "cupy.memory_pool": the pool's held bytes after the call, its free blocks released first
  (an upper bound: the pool rounds block sizes up);
- "tracemalloc": NumPy reports its buffers to tracemalloc; tracing slows allocation, which is
  why this never runs while timing;
- "rss-peak": the process's peak resident set (Linux VmHWM, reset through
  /proc/self/clear_refs) minus the resident set before the call, freed heap memory handed
  back to the OS first; for CPU frameworks whose allocations tracemalloc cannot see (torch);
- "rss-delta": resident set after minus before (psutil), where the peak cannot be reset; an
  under-estimate, since temporaries freed before the end are missed.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path
from typing import Any, Callable

from conformance.speed.timers import framework_of

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc malloc_trim), so the resident set before
    the call is live memory only and the call's own growth shows in the peak; without it a
    call that reuses memory freed by an earlier call would read as needing none."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure is a lower bound then
        pass


def _reset_rss_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_memory(device: str, native: Any, call: Callable[[], Any],
                sync: Callable[[], None]) -> tuple[int | None, str | None]:
    """Run `call` once (with `sync`) and return (bytes, method); (None, None) if unmeasurable."""
    fw = framework_of(native)
    cuda = device.split(":")[0] == "cuda"
    gc.collect()
    if cuda and fw == "torch":
        return _torch_cuda(call, sync)
    if cuda and fw == "cupy":
        return _cupy(call, sync)
    if fw == "numpy":
        return _tracemalloc(call, sync)
    return _rss(call, sync)


def _torch_cuda(call, sync) -> tuple[int, str]:
    import torch  # lazily: only CUDA torch backends get here

    sync()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = call()
    sync()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return int(peak), "torch.cuda.max_memory_allocated"


def _cupy(call, sync) -> tuple[int, str]:
    import cupy  # lazily: only CuPy backends get here

    pool = cupy.get_default_memory_pool()
    sync()
    pool.free_all_blocks()  # so the pool's size afterwards reflects this call's high-water mark
    before = pool.used_bytes()
    out = call()
    sync()
    peak = pool.total_bytes() - before
    del out
    return int(peak), "cupy.memory_pool"


def _tracemalloc(call, sync) -> tuple[int, str]:
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    try:
        out = call()
        sync()
        _, peak = tracemalloc.get_traced_memory()
        del out
    finally:
        if not was_tracing:
            tracemalloc.stop()
    return int(peak - before), "tracemalloc"


def _rss(call, sync) -> tuple[int | None, str | None]:
    _trim_heap()
    before = _status_kb("VmRSS")
    if before is not None and _reset_rss_peak():
        out = call()
        sync()
        peak = _status_kb("VmHWM")
        del out
        if peak is not None:
            return max(0, (peak - before) * 1024), "rss-peak"
    try:
        import psutil  # lazily: a declared dependency, but only this fallback needs it
    except ImportError:
        return None, None
    proc = psutil.Process()
    before_b = proc.memory_info().rss
    out = call()
    sync()
    after_b = proc.memory_info().rss
    del out
    return max(0, after_b - before_b), "rss-delta"
