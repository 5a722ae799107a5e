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

from conformance.speed import bench, fresh, selfcheck, worker
from tests.test_speed import _worker_plan

ROOT = Path(__file__).resolve().parent.parent
GLIBC = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# a fresh process allocates and fills blocks, frees them, then allocates and fills them again
_REUSE = """
import ctypes, sys
from conformance.speed.worker import minor_faults, prime_allocator
state, mib, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if state == "primed":
    assert prime_allocator()
elif state == "dynamic":  # where a process is once it has freed one block at the threshold's cap
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    libc.free(libc.malloc((32 << 20) - (64 << 10)))
blocks = [bytearray(mib << 20) for _ in range(n)]  # filled with zeros: every page touched
del blocks
f0 = minor_faults()
blocks = [bytearray(mib << 20) for _ in range(n)]
print(minor_faults() - f0)
"""


def _faults(state: str, mib: int, n: int) -> int:
    r = subprocess.run([sys.executable, "-c", _REUSE, state, str(mib), str(n)], cwd=ROOT, capture_output=True,
                       text=True, check=True)
    return int(r.stdout)


@pytest.mark.skipif(not GLIBC, reason="the mmap and trim thresholds being fixed are glibc malloc's")
def test_a_primed_process_reuses_freed_memory_where_a_fresh_one_faults_it_in_again():
    pages = (8 << 20) // 4096
    assert _faults("fresh", 8, 1) > pages // 2  # mapped anew at the threshold it raised to: faulted again
    assert _faults("primed", 8, 1) < pages // 10  # kept in the heap and reused (measured: 2048 against 101)
    # 3 x 30 MiB freed: a heap whose threshold reached its cap still trims a free top over 64 MiB
    pages = 3 * (30 << 20) // 4096
    assert _faults("dynamic", 30, 3) > pages // 2
    assert _faults("primed", 30, 3) < pages // 10
    # a block over the threshold's 32 MiB cap: mapped anew on every allocation, unless mapping is off
    pages = (40 << 20) // 4096
    assert _faults("dynamic", 40, 1) > pages // 2
    assert _faults("primed", 40, 1) < pages // 10


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


# -- one meaning of "alone": the independent fresh-process timer -------------------------------

def test_fresh_timer_pairs_processes_with_the_reference(tmp_path):
    specs = [("fake-good", "tests.test_speed:ConformingFake"), ("fake", "tests.test_speed:FakeBackend"),
             ("nothing", "tests.test_speed:NoSuchBackend")]
    got = fresh.fresh(specs, (1, 8, 8, 8, 2), "float32", True, 0, reference="fake", procs=2, calls=3)
    good, ref = got["fake-good"], got["fake"]
    assert len(good["medians_s"]) == len(ref["medians_s"]) == 2 and good["median_s"] > 0
    lo, hi = good["interval"]
    ratios = sorted(a / b for a, b in zip(good["medians_s"], ref["medians_s"]))
    assert (lo, hi) == (ratios[0], ratios[-1]) and lo <= good["vs_torch"] <= hi
    assert ref["vs_torch"] == 1.0
    assert got["nothing"]["error"].startswith("fresh process for tests.test_speed:NoSuchBackend ended with status 1")


@pytest.mark.parametrize("alone, fresh_row, agrees", [
    (0.80, {"vs_torch": 0.82, "interval": [0.78, 0.90]}, True),   # inside the processes' interval
    (1.09, {"vs_torch": 1.01, "interval": [0.99, 1.02]}, True),   # outside it, within 10% of its median
    (1.09, {"vs_torch": 0.82, "interval": [0.80, 0.84]}, False),  # the two "alone" figures
    (0.50, {"error": "boom"}, None), (None, {"vs_torch": 1.0, "interval": [1.0, 1.0]}, None)])
def test_alone_agrees_with_fresh_inside_its_interval_or_within_ten_percent(alone, fresh_row, agrees):
    r = selfcheck.Row((1, 8, 8, 8, 2), "numpy", {}, {}, ratio=1.0, vs_torch_alone=alone, fresh=fresh_row)
    assert r.fresh_agrees is agrees
    assert not r.flagged  # the fresh column informs; only harness against alone sets the exit status
