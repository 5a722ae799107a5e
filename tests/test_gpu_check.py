"""The prepared GPU script runs to the end on a machine without a GPU, skipping with reasons."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conformance.results import load

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_skips_every_gpu_backend_with_its_reason_here(tmp_path):
    torch = pytest.importorskip("torch", reason="the GPU script names the GPU through torch")
    if torch.cuda.is_available():
        pytest.skip("skipped: a CUDA device is present; this test covers machines without one")
    proc = subprocess.run([sys.executable, "-m", "conformance.gpu_check", "--quick", "--out", str(tmp_path),
                           "--machine", "no-gpu", "--workers", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    run = load(tmp_path)["runs"][0]
    assert run["machine"] == "no-gpu"
    records = run["conformance"]["records"]
    assert {r["backend"] for r in records} == {"cupy", "torch-cuda", "torch-sdpa-cuda"}
    assert {r["outcome"] for r in records} == {"skipped"}
    assert all(r["reason"] for r in records)
    assert "speed: skipped, no GPU backend can run here" in proc.stdout
