"""The environment block of a results file: machine, libraries, BLAS, threads, commit.

Libraries are looked up by version only (importlib.metadata), so collecting the environment
imports no framework; GPU details come from torch or CuPy only when they are already imported
or cheap to ask.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
LIBRARIES = ("numpy", "ml_dtypes", "scipy", "hypothesis", "pytest", "pytest-xdist", "torch",
             "cupy-cuda12x", "cupy", "threadpoolctl", "jax", "jaxlib", "flax", "onnx", "onnxruntime")


def machine_label() -> str:
    """Default label for this machine's run: $MHA_MACHINE, else the host name."""
    return os.environ.get("MHA_MACHINE") or socket.gethostname() or "this-machine"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout, or (None, None) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return commit, dirty
    except (OSError, subprocess.SubprocessError):
        return None, None


def blas_info() -> list[dict[str, Any]]:
    """BLAS/OpenMP libraries loaded in this process and their thread counts (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keep = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture", "prefix")
    return [{k: info.get(k) for k in keep} for info in threadpool_info()]


def gpu_info() -> dict[str, Any] | None:
    """Name, driver and runtime of the first CUDA GPU, or None; asks torch if it is imported."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"name": props.name, "memory_bytes": int(props.total_memory),
                "cuda_runtime": torch.version.cuda, "driver": _nvidia_driver(),
                "capability": f"{props.major}.{props.minor}"}
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            if cupy.is_available():
                dev = cupy.cuda.runtime.getDeviceProperties(0)
                return {"name": dev["name"].decode(), "memory_bytes": int(dev["totalGlobalMem"]),
                        "cuda_runtime": str(cupy.cuda.runtime.runtimeGetVersion()),
                        "driver": _nvidia_driver()}
        except Exception:  # a broken driver is reported as no GPU, not a crash
            return None
    return None


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def thread_counts() -> dict[str, Any]:
    torch = sys.modules.get("torch")
    return {
        "torch": torch.get_num_threads() if torch is not None else None,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "blas": [{"internal_api": b.get("internal_api"), "num_threads": b.get("num_threads")} for b in blas_info()],
    }


def collect() -> dict[str, Any]:
    """The environment block for results.json."""
    commit, dirty = git_state()
    return {
        "os": f"{platform.system()} {platform.release()}",
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": gpu_info(),
        "python": platform.python_version(),
        "libraries": {name: _version(name) for name in LIBRARIES if _version(name)},
        "blas": blas_info(),
        "threads": thread_counts(),
        "commit": commit,
        "dirty": dirty,
    }
