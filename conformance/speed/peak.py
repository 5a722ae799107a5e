"""This machine's matrix-multiply peak, measured in the same run as the cells it normalises.

A large square matmul is as close to peak as a library gets; each cell's GFLOP/s is then
reported as a fraction of the best such figure for its device and dtype. On CPU the matmul
runs through NumPy and, when importable, PyTorch (they may link different BLAS libraries;
the peak is the better of the two, both are recorded). On CUDA it runs through torch, or
CuPy without torch. Each measurement: one untimed warm-up, then up to `reps` timed calls
(fewer if they pass a time cap), best of them.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import numpy as np

CPU_N, CUDA_N = 2048, 8192
_CAP_S = 3.0  # stop repeating a slow matmul (float16 on CPU can be 100x off peak)
_NUMPY_DTYPES = ("float32", "float64")  # NumPy float16 matmul is not BLAS: no peak to speak of


def _record(device: str, library: str, dtype: str, n: int, times: list[float],
            error: str | None = None) -> dict[str, Any]:
    best = min(times) if times else None
    return {"device": device, "library": library, "dtype": dtype, "shape": [n, n, n], "reps": len(times),
            "best_s": best, "gflops": (2.0 * n ** 3 / best / 1e9) if best else None, "error": error}


def _timed_reps(run, sync, reps: int) -> list[float]:
    run()
    sync()  # warm-up: BLAS thread pools and device kernels start here
    times, spent = [], 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        sync()
        dt = time.perf_counter() - t0
        times.append(dt)
        spent += dt
        if spent > _CAP_S:
            break
    return times


def numpy_peak(dtype: str, n: int = CPU_N, reps: int = 3) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
    c = np.empty((n, n), dtype=dtype)
    return _record("cpu", "numpy", dtype, n, _timed_reps(lambda: np.matmul(a, b, out=c), lambda: None, reps))


def torch_cpu_peak(dtype: str, n: int = CPU_N, reps: int = 3) -> dict[str, Any]:
    import torch  # lazily: only when torch is installed

    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(getattr(torch, dtype)) for _ in range(2))
    c = torch.empty_like(a)
    return _record("cpu", "torch", dtype, n, _timed_reps(lambda: torch.mm(a, b, out=c), lambda: None, reps))


def cuda_peak(dtype: str, n: int = CUDA_N, reps: int = 5) -> dict[str, Any]:
    """Matmul peak on the first CUDA device, timed with CUDA events (torch, else CuPy)."""
    if importlib.util.find_spec("torch") is not None:
        import torch  # lazily: GPU machines only

        if torch.cuda.is_available():
            a, b = (torch.randn(n, n, device="cuda", dtype=getattr(torch, dtype)) for _ in range(2))
            c = torch.empty_like(a)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

            def run():
                start.record()
                torch.mm(a, b, out=c)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e-3)

            times: list[float] = []
            _timed_reps(run, torch.cuda.synchronize, reps)
            return _record("cuda", "torch", dtype, n, times[1:])  # times[0] is the warm-up
    import cupy  # lazily: GPU machines without torch

    a, b = (cupy.random.standard_normal((n, n)).astype(dtype) for _ in range(2))
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    times = []

    def run_cp():
        start.record()
        cupy.matmul(a, b)
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) * 1e-3)

    _timed_reps(run_cp, cupy.cuda.Device().synchronize, reps)
    return _record("cuda", "cupy", dtype, n, times[1:])


def _safe(fn, device: str, library: str, dtype: str, n: int, reps: int) -> dict[str, Any]:
    try:
        return fn(dtype, n, reps)
    except Exception as e:  # a missing kernel for a dtype is a gap in the peak, not a crash
        return _record(device, library, dtype, n, [], error=f"{type(e).__name__}: {e}"[:200])


def measure(targets: set[tuple[str, str]], cpu_n: int = CPU_N, cuda_n: int = CUDA_N, reps: int = 5,
            when: str = "start", earlier: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Measure the peak for every (device, dtype) in `targets`; returns the "peak" section.

    "by_device_dtype" maps "cpu/float32" etc. to the best GFLOP/s; "gflops", "dtype",
    "device" and "shape" give the headline figure (CPU float32 when measured). `earlier`
    measurements (the run's start, when this is its end) count too: a peak is a best case,
    and a background process during one measurement must not lower it.
    """
    has_torch = importlib.util.find_spec("torch") is not None
    ms: list[dict[str, Any]] = list(earlier or [])
    for device, dtype in sorted(targets):
        if device == "cpu":
            if dtype in _NUMPY_DTYPES:
                ms.append(dict(_safe(numpy_peak, "cpu", "numpy", dtype, cpu_n, reps), when=when))
            if has_torch:
                ms.append(dict(_safe(torch_cpu_peak, "cpu", "torch", dtype, cpu_n, reps), when=when))
        elif device.split(":")[0] == "cuda":
            lib = "torch" if has_torch else "cupy"
            ms.append(dict(_safe(cuda_peak, "cuda", lib, dtype, cuda_n, reps), when=when))
    best: dict[str, dict[str, Any]] = {}
    for m in ms:
        key = f"{m['device']}/{m['dtype']}"
        if m["gflops"] is not None and (key not in best or m["gflops"] > best[key]["gflops"]):
            best[key] = m
    head = best.get("cpu/float32") or (max(best.values(), key=lambda m: m["gflops"]) if best else None)
    return {
        "gflops": head["gflops"] if head else None,
        "device": head["device"] if head else None,
        "dtype": head["dtype"] if head else None,
        "library": head["library"] if head else None,
        "shape": head["shape"] if head else None,
        "by_device_dtype": {k: m["gflops"] for k, m in best.items()},
        "measurements": ms,
    }


def peak_for(peak: dict[str, Any], device: str, dtype: str) -> float | None:
    """The measured peak GFLOP/s for a cell on `device` in `dtype`, or None if not measured."""
    return peak.get("by_device_dtype", {}).get(f"{device.split(':')[0]}/{dtype}")
