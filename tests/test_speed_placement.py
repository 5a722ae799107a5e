"""A cell's figure must not hang on its place in the sweep: the allocator state every worker starts in.

Page faults are counted, never times: a fault count does not depend on the machine's load.
"""

from __future__ import annotations

import ctypes
import io
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.speed import bench, worker
from tests.test_speed import _worker_plan

ROOT = Path(__file__).resolve().parent.parent
GLIBC = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# a fresh process frees an 8 MiB block, then allocates and fills one of the same size
_REUSE = """
import sys
from conformance.speed.worker import minor_faults, prime_allocator
if sys.argv[1] == "primed":
    assert prime_allocator()
n = 8 << 20
a = bytearray(n)  # filled with zeros: every page touched
del a
f0 = minor_faults()
b = bytearray(n)
print(minor_faults() - f0)
"""


def _faults(state: str) -> int:
    r = subprocess.run([sys.executable, "-c", _REUSE, state], cwd=ROOT, capture_output=True, text=True, check=True)
    return int(r.stdout)


@pytest.mark.skipif(not GLIBC, reason="the mmap threshold being primed is glibc malloc's")
def test_a_primed_process_reuses_freed_memory_a_fresh_one_faults_it_in_again():
    pages = (8 << 20) // 4096
    assert _faults("fresh") > pages // 2  # mmapped anew at the threshold it raised to: faulted again
    assert _faults("primed") < pages // 10  # the freed block stayed in the heap and is reused (measured: 2048 against 101)


def test_priming_is_once_per_process(monkeypatch):
    monkeypatch.setattr(worker, "_primed", [])
    calls = []
    real = ctypes.CDLL

    def counting(name, *a, **kw):
        calls.append(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(ctypes, "CDLL", counting)
    first = worker.prime_allocator()
    assert worker.prime_allocator() is first and len(calls) == 1
    assert first is GLIBC


def test_workers_are_primed_and_chunks_record_page_faults(tmp_path):
    p = _worker_plan(tmp_path, ["tests.test_speed:ConformingFake", "tests.test_speed:FakeBackend"])
    section = bench.run(p, out=io.StringIO())
    per = section["threads"]["per_backend"]
    assert set(per) == {"fake-good", "fake"} and all(t["allocator_primed"] is GLIBC for t in per.values())
    for c in section["cells"]:
        assert c["faults_per_call"] is not None and c["faults_per_call"] >= 0
        assert len(c["round_medians_s"]) >= 3
