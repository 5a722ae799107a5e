"""The speed harness: FLOP count, timing loop, gate, timers, CLI errors, results file.

These tests check what the harness does (which calls are timed, in what order, what is
recorded and where), never how fast anything is.
"""

from __future__ import annotations

import importlib.machinery
import io
import json
import os
import subprocess
import threading
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

from conformance.speed import bench, cells, cli, harness, memory, timers, worker
from conformance.speed.flops import gflops, useful_flops
from impls.base import Backend, BackendInfo, Capabilities
from conformance.results import load, update_section

ROOT = Path(__file__).resolve().parent.parent
HAS_TORCH_BACKEND = (ROOT / "impls" / "torch_backend.py").exists()


# -- fakes ----------------------------------------------------------------------------------

class FakeBackend(Backend):
    """Returns x; logs every forward call; optionally slow first, or failing past some T."""

    name = "fake"
    capabilities = Capabilities(dtypes=("float64", "float32"), device="cpu")

    def __init__(self, name: str = "fake", log: list | None = None, first_sleep: float = 0.0,
                 fail_above_T: int | None = None, interrupt_at_T: int | None = None) -> None:
        self.name, self.log, self.first_sleep = name, log if log is not None else [], first_sleep
        self.fail_above_T, self.interrupt_at_T, self.calls = fail_above_T, interrupt_at_T, 0

    def from_numpy(self, a, dtype=None):
        return np.asarray(a, dtype=dtype or a.dtype)

    def to_numpy(self, a):
        return a

    def prepare(self, params, dtype):
        return None

    def forward(self, x, weights, config, **kw):
        self.calls += 1
        self.log.append(self.name)
        if self.calls == 1 and self.first_sleep:
            time.sleep(self.first_sleep)
        T = x.shape[1]
        if self.interrupt_at_T is not None and T == self.interrupt_at_T:
            raise KeyboardInterrupt
        if self.fail_above_T is not None and T > self.fail_above_T:
            raise RuntimeError(f"boom at T={T}")
        return x


class ConformingFake(FakeBackend):
    name = "fake-good"

    def __init__(self):
        super().__init__("fake-good")


class NonconformingFake(FakeBackend):
    name = "fake-bad"

    def __init__(self):
        super().__init__("fake-bad")


class ExitingFake(FakeBackend):
    """Ends its process (as a crash in native code would) at T > 8: only a worker can survive it."""

    name = "fake-exit"

    def __init__(self):
        super().__init__("fake-exit")

    def forward(self, x, weights, config, **kw):
        if x.shape[1] > 8:
            os._exit(3)
        return super().forward(x, weights, config, **kw)


def plan(tmp_path: Path, fakes: list, **kw) -> bench.Plan:
    infos = [BackendInfo(backend=b, spec=b.name, source="test") for b in fakes]
    args = dict(backends=infos, dtypes=["float32"], shapes=[(2, 8, 8, 8, 2), (1, 16, 8, 8, 2)], out_dir=tmp_path,
                machine="test-machine", command="test", budget_s=0.001, min_samples=3, peak_n=64, in_process=True)
    args.update(kw)
    return bench.Plan(**args)


def conformance_section(records: list[dict]) -> dict:
    return {"status": "complete", "started": "2025-01-01T00:00:00+00:00", "profile": "quick", "seed": 0,
            "command": "test", "backends": [], "checks": [], "records": records}


def record(backend: str, outcome: str) -> dict:
    return {"backend": backend, "check": "causality", "dtype": "float32", "outcome": outcome, "reason": ""}


# -- FLOPs ----------------------------------------------------------------------------------

def test_flops_hand_computed():
    # B=2, T=4, d_in=8, d_out=6, H=3 (head_dim 2):
    #   projections 2*2*4*8*3*6 = 2304, attention 4*2*3*4*4*2 = 768, output 2*2*4*6*6 = 576
    assert useful_flops(2, 4, 8, 6, 3, causal=False) == 2304 + 768 + 576
    # causal: the attention term times (T+1)/(2T) = 5/8 -> 480
    assert useful_flops(2, 4, 8, 6, 3, causal=True) == 2304 + 480 + 576
    # the default sweep's T=64 cell (B=64, d=512, H=8), by hand
    proj, attn, out = 2 * 64 * 64 * 512 * 3 * 512, 4 * 64 * 8 * 64 * 64 * 64, 2 * 64 * 64 * 512 * 512
    assert useful_flops(64, 64, 512, 512, 8) == pytest.approx(proj + attn * 65 / 128 + out, rel=1e-15)
    assert gflops(3e9, 1.5) == pytest.approx(2.0)
    assert gflops(1.0, None) is None


# -- the timing loop ------------------------------------------------------------------------

def _entry(b: FakeBackend) -> harness.Entry:
    x = np.zeros((1, 4, 2))
    return harness.Entry(b.name, lambda: b.forward(x, None, None), b.synchronize)


def test_chunks_alternate_in_rotating_order_each_after_an_untimed_call():
    log: list[str] = []
    units = [cells.LocalUnit(FakeBackend(n, log)) for n in "ABC"]
    ts = cells.time_cell(units, (1, 4, 8, 8, 2), "float32", True, 0, budget_s=0.0, min_samples=6, rounds=3)
    # first calls, apart from the rounds; a fresh process builds its first cell twice
    assert log[:6] == ["A", "A", "B", "B", "C", "C"]
    # 3 rounds x 3 backends x (1 untimed call + 2 timed): the re-warm call in round 0, the
    # first call on inputs built anew in rounds 1 and 2
    chunks = log[6:6 + 27]
    order = [chunks[i] for i in range(0, 27, 3)]
    assert order == ["A", "B", "C", "B", "C", "A", "C", "A", "B"]
    assert all(chunks[i:i + 3] == [chunks[i]] * 3 for i in range(0, 27, 3))  # a chunk is one backend's
    assert all(len(t.samples) == 6 and t.chunks == 3 and t.error is None for t in ts)
    assert len(log) == 6 + 27 + 3  # then one untimed call each for memory
    # settled after: the first call, each chunk, each rebuild (rounds 1, 2), the memory call
    assert all(len(t.settle_s) == 1 + 3 + 2 + 1 for t in ts)


def test_each_round_times_inputs_built_anew():
    """A cell's samples come from `rounds` builds of its inputs (memory placements), not one."""
    seen: list[int] = []

    class Tracking(FakeBackend):
        builds = 0

        def from_numpy(self, a, dtype=None):
            self.builds += a.ndim == 3  # x: one per build of the cell's inputs
            return super().from_numpy(a, dtype)

        def forward(self, x, weights, config, **kw):
            seen.append(self.builds)
            return super().forward(x, weights, config, **kw)

    cells.time_cell([cells.LocalUnit(Tracking("T"))], (1, 4, 8, 8, 2), "float32", True, 0, budget_s=0.0,
                    min_samples=6, memory=False, rounds=3)
    # the throwaway build's call, then per round an untimed call and 2 timed on one build
    assert seen == [1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 4]


def test_slow_calls_get_no_rewarm_call(monkeypatch):
    monkeypatch.setattr(cells, "REWARM_BELOW_S", 0.0)  # every call counts as slow
    b = FakeBackend("slow")
    (t,) = cells.time_cell([cells.LocalUnit(b)], (1, 4, 8, 8, 2), "float32", True, 0, budget_s=0.0, min_samples=6,
                           memory=False, rounds=3)
    # the throwaway build's call, the first call, the first calls of rounds 1 and 2, 6 timed
    assert b.calls == 2 + 2 + 6 and len(t.samples) == 6


def test_first_call_is_reported_apart():
    b = FakeBackend("slow-first", first_sleep=0.2)
    e = _entry(b)
    harness.first_call(e)
    harness.time_chunk(e, min_calls=5, seconds=0.01)
    assert e.first_call_s >= 0.2
    assert len(e.samples) == b.calls - 2 >= 5  # the first call and the re-warm call are not samples
    assert max(e.samples) < e.first_call_s  # the sleep landed in the first call only


def test_a_crashing_backend_is_recorded_and_the_others_go_on():
    log: list[str] = []
    good, bad = FakeBackend("good", log), FakeBackend("bad", log, fail_above_T=0)
    ts = cells.time_cell([cells.LocalUnit(good), cells.LocalUnit(bad)], (1, 4, 8, 8, 2), "float32", True, 0,
                         budget_s=0.0, min_samples=3)
    assert ts[1].error.startswith("RuntimeError: boom") and ts[1].samples == [] and ts[1].first_call_s is None
    assert len(ts[0].samples) == 3 and ts[0].error is None


def test_summary_statistics():
    s = harness.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s["median_s"], s["p25_s"], s["p75_s"]) == (3.0, 2.0, 4.0)
    assert s["spread"] == pytest.approx(2 / 3) and s["noisy"]
    assert not harness.summarize([1.0, 1.01, 1.02])["noisy"]
    assert harness.summarize([])["median_s"] is None


def test_harness_overhead_is_what_the_clock_reads_around_an_empty_call():
    """The overhead figure is the median of the timed empty calls (none untimed, none lost),
    whatever the clock: a clock that reads 1, 2, 3 or 10 us per call gives a median of 2 us."""
    class Clock:
        def __init__(self):
            self.calls, self.readings = 0, [1e-6, 2e-6, 3e-6, 10e-6, 2e-6]

        def time(self, fn, sync):
            out = fn()
            sync()
            self.calls += 1
            return self.readings[self.calls % len(self.readings)], out

    clock = Clock()
    r = harness.measure_overhead(budget_s=0.0, timer=clock)
    assert r["samples"] >= 100 and clock.calls == r["samples"] + 1  # + the untimed first call
    assert r["overhead_s"] == 2e-6 and r["p25_s"] == 2e-6 and r["p75_s"] == 3e-6
    assert r["loop_s"] > 0


def test_settle_returns_once_the_process_is_idle():
    stop_at = time.process_time() + 0.05

    def spin():  # a pool's thread busy-waiting after a call, for 50 ms of CPU
        while time.process_time() < stop_at:
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()
    waited = worker.settle(cap_s=30.0)
    # it saw the spinning thread and waited (whether the spinner has finished by then depends on
    # how much of a core a loaded machine gives it: a starved spinner looks idle)
    assert waited > 0
    spinner.join()


# -- worker processes: layout, threads, crashes ------------------------------------------------

def _worker_plan(tmp_path: Path, specs: list[str], **kw) -> bench.Plan:
    from impls.registry import resolve

    args = dict(backends=[resolve(s) for s in specs], in_process=False)
    args.update(kw)
    return plan(tmp_path, [], **args)


def test_each_backend_is_timed_in_its_own_worker_process(tmp_path):
    p = _worker_plan(tmp_path, ["tests.test_speed:ConformingFake", "tests.test_speed:NonconformingFake"])
    out = io.StringIO()
    bench.run(p, out=out)
    speed = load(tmp_path)["runs"][0]["speed"]  # validates against the schema
    assert speed["layout"]["kind"] == "worker process per backend" and speed["layout"]["rounds"] == cells.ROUNDS
    per = speed["threads"]["per_backend"]
    assert set(per) == {"fake-good", "fake-bad"}
    pids = {t["pid"] for t in per.values()}
    assert len(pids) == 2 and os.getpid() not in pids
    assert all("env" in t and "blas" in t for t in per.values())
    assert set(speed["layout"]["settle_s"]) == {"fake-good", "fake-bad"}
    for c in speed["cells"]:
        assert c["error"] is None and c["chunks"] == cells.ROUNDS and len(c["samples_s"]) >= p.min_samples
    assert "layout: worker process per backend" in out.getvalue()


def test_a_backend_that_kills_its_process_loses_only_its_own_cells(tmp_path):
    p = _worker_plan(tmp_path, ["tests.test_speed:ExitingFake", "tests.test_speed:ConformingFake"],
                     shapes=[(1, 16, 8, 8, 2), (2, 8, 8, 8, 2)])
    section = bench.run(p, out=io.StringIO())
    by = {(c["backend"], c["T"]): c for c in section["cells"]}
    dead = by[("fake-exit", 16)]
    assert "worker process for fake-exit ended with status 3" in dead["error"] and dead["samples_s"] == []
    assert by[("fake-good", 16)]["samples_s"] and by[("fake-good", 16)]["error"] is None
    assert by[("fake-exit", 8)]["error"] is None and by[("fake-exit", 8)]["samples_s"]  # started again


def test_unresolvable_worker_spec_is_an_error_cell(tmp_path):
    info = BackendInfo(backend=FakeBackend("ghost"), spec="tests.test_speed:NoSuchBackend", source="test")
    section = bench.run(plan(tmp_path, [], backends=[info], in_process=False, shapes=[(1, 4, 8, 8, 2)]),
                         out=io.StringIO())
    (cell,) = section["cells"]
    assert "NoSuchBackend" in cell["error"] and cell["samples_s"] == []


def test_a_failing_availability_is_an_error_cell_not_a_skip(tmp_path):
    """The registry's one policy: availability() raising is the backend's failure, so the bench
    times it (its worker answers every cell with the error) instead of listing it as skipped."""
    runnable, skipped = cli._backends(["tests.hostile_backends:AvailabilityRaises", "numpy"])
    assert skipped == [] and [i.backend.name for i in runnable] == ["hostile-availability-raises", "numpy"]
    section = bench.run(plan(tmp_path, [], backends=runnable[:1], in_process=False, shapes=[(1, 4, 8, 8, 2)]),
                        out=io.StringIO())
    (cell,) = section["cells"]
    assert cell["error"] == "availability() raised RuntimeError: probing the device failed" and cell["samples_s"] == []


# -- timers and memory on CUDA, through fakes -------------------------------------------------

class _FakeEvent:
    def __init__(self, log: list, enable_timing: bool = True):
        self.log = log

    def record(self):
        self.log.append("record")

    def synchronize(self):
        self.log.append("event-sync")

    def elapsed_time(self, other):
        return 2.5  # milliseconds, as torch returns


def _fake_torch(log: list) -> types.SimpleNamespace:
    mem = {"now": 1000, "peak": 1000}

    def forward_alloc():
        mem["peak"] = mem["now"] + 4096

    cuda = types.SimpleNamespace(
        Event=lambda enable_timing=False: _FakeEvent(log, enable_timing), is_available=lambda: False,
        reset_peak_memory_stats=lambda: mem.update(peak=mem["now"]), memory_allocated=lambda: mem["now"],
        max_memory_allocated=lambda: mem["peak"], synchronize=lambda: None)
    return types.SimpleNamespace(cuda=cuda, get_num_threads=lambda: 1, _alloc=forward_alloc, Tensor=FakeTensor,
                                 __spec__=importlib.machinery.ModuleSpec("torch", None))


class FakeTensor:
    """Looks like a torch tensor to the timer selection (its type's module is torch)."""

    shape = (1, 4, 2)


FakeTensor.__module__ = "torch"


class FakeCupyArray:
    pass


FakeCupyArray.__module__ = "cupy._core.core"


def test_timer_is_chosen_by_device_and_framework(monkeypatch):
    log: list[str] = []
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(log))
    assert isinstance(timers.select_timer("cuda", FakeTensor()), timers.TorchCudaTimer)
    assert isinstance(timers.select_timer("cuda:1", FakeTensor()), timers.TorchCudaTimer)
    assert isinstance(timers.select_timer("cpu", FakeTensor()), timers.CpuTimer)  # torch on CPU: host clock
    assert isinstance(timers.select_timer("cpu", np.zeros(1)), timers.CpuTimer)
    assert isinstance(timers.select_timer("cuda", object()), timers.CpuTimer)  # unknown framework
    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(Event=lambda: _FakeEvent(log),
                                                            get_elapsed_time=lambda a, b: 1.5))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    t = timers.select_timer("cuda", FakeCupyArray())
    assert isinstance(t, timers.CupyTimer)
    assert t.time(lambda: "out", lambda: None) == (pytest.approx(1.5e-3), "out")


def test_cuda_event_timer_brackets_the_call(monkeypatch):
    log: list[str] = []
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(log))
    t = timers.select_timer("cuda", FakeTensor())
    seconds, out = t.time(lambda: log.append("forward") or "y", lambda: log.append("sync"))
    assert (seconds, out) == (pytest.approx(2.5e-3), "y")
    assert log == ["sync", "record", "forward", "record", "sync", "event-sync"]


def test_cuda_memory_uses_torch_peak_statistics(monkeypatch):
    fake = _fake_torch([])
    monkeypatch.setitem(sys.modules, "torch", fake)
    n, method = memory.peak_memory("cuda", FakeTensor(), lambda: fake._alloc(), lambda: None)
    assert (n, method) == (4096, "torch.cuda.max_memory_allocated")


def test_cpu_memory_methods():
    n, method = memory.peak_memory("cpu", np.zeros(1), lambda: np.ones(1 << 20), lambda: None)
    assert method == "tracemalloc" and n >= 8 << 20
    n, method = memory.peak_memory("cpu", object(), lambda: bytearray(64 << 20), lambda: None)
    assert method in ("rss-peak", "rss-delta") and n >= 0


class CudaFake(FakeBackend):
    name = "fake-cuda"
    capabilities = Capabilities(dtypes=("float32",), device="cuda")

    def from_numpy(self, a, dtype=None):
        return FakeTensor()

    def forward(self, x, weights, config, **kw):
        self.calls += 1
        sys.modules["torch"]._alloc()
        return x


def test_a_cuda_backend_gets_events_and_device_memory_in_a_run(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", _fake_torch([]))
    section = bench.run(plan(tmp_path, [CudaFake()], shapes=[(1, 4, 8, 8, 2)]), out=io.StringIO())
    (cell,) = section["cells"]
    assert cell["timer"] == "torch.cuda.Event" and cell["median_s"] == pytest.approx(2.5e-3)
    assert cell["memory_method"] == "torch.cuda.max_memory_allocated" and cell["peak_memory_bytes"] == 4096
    assert cell["device"] == "cuda" and cell["peak_fraction"] is None  # no CUDA peak on a fake


# -- whole runs in process: gate, errors, interruption ---------------------------------------

def test_nonconforming_backend_is_gated(tmp_path):
    update_section(tmp_path / "results.json", "test-machine", {}, "conformance",
                   conformance_section([record("fake-bad", "failed"), record("fake-bad", "passed"),
                                        record("fake-good", "passed")]))
    out = io.StringIO()
    section = bench.run(plan(tmp_path, [ConformingFake(), NonconformingFake(), FakeBackend("fake-unknown")]), out=out)
    assert {c["backend"] for c in section["cells"]} == {"fake-good", "fake-unknown"}
    assert any(s["backend"] == "fake-bad" and "nonconforming" in s["reason"] for s in section["skipped"])
    assert {c["backend"]: c["conforming"] for c in section["cells"]} == {"fake-good": True, "fake-unknown": None}
    assert "skipped fake-bad: nonconforming" in out.getvalue()

    section = bench.run(plan(tmp_path, [ConformingFake(), NonconformingFake()], include_nonconforming=True),
                         out=io.StringIO())
    bad = [c for c in section["cells"] if c["backend"] == "fake-bad"]
    assert len(bad) == 2 and all(c["conforming"] is False and c["samples_s"] for c in bad)
    doc = load(tmp_path)  # the conformance section is kept, the speed section validates
    (run,) = doc["runs"]
    assert run["conformance"]["records"][0]["backend"] == "fake-bad" and run["speed"]["status"] == "complete"


def test_gate_through_the_command_line(tmp_path, capsys):
    update_section(tmp_path / "results.json", "m", {}, "conformance",
                   conformance_section([record("fake-bad", "failed")]))
    common = ["--backend", "tests.test_speed:NonconformingFake", "--out", str(tmp_path), "--machine", "m",
              "--shape", "1,8,8,2", "--budget", "0.001", "--peak-size", "64"]
    assert cli.main(common) == 2  # nothing left to time
    assert "nonconforming" in capsys.readouterr().err
    assert cli.main(common + ["--include-nonconforming"]) == 0
    (cell,) = load(tmp_path)["runs"][0]["speed"]["cells"]
    assert cell["backend"] == "fake-bad" and cell["conforming"] is False
    assert "!" in capsys.readouterr().out


def test_errors_are_cells_and_the_run_goes_on(tmp_path):
    section = bench.run(plan(tmp_path, [FakeBackend("ok"), FakeBackend("crashy", fail_above_T=8)]), out=io.StringIO())
    by = {(c["backend"], c["T"]): c for c in section["cells"]}
    assert by[("crashy", 8)]["error"] is None and by[("crashy", 8)]["samples_s"]
    crash = by[("crashy", 16)]
    assert crash["error"].startswith("RuntimeError: boom at T=16") and crash["samples_s"] == []
    assert crash["median_s"] is None and by[("ok", 16)]["samples_s"]
    load(tmp_path)


def test_interrupted_run_keeps_finished_cells(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        bench.run(plan(tmp_path, [FakeBackend("f", interrupt_at_T=16)]), out=io.StringIO())
    speed = load(tmp_path)["runs"][0]["speed"]
    assert speed["status"] == "partial" and [c["T"] for c in speed["cells"]] == [8]


def test_unsupported_dtype_is_skipped_per_cell(tmp_path):
    section = bench.run(plan(tmp_path, [FakeBackend("f")], dtypes=["float16"], shapes=[(1, 4, 8, 8, 2)]),
                         out=io.StringIO())
    assert section["cells"] == [] and "float16 not declared" in section["skipped"][0]["reason"]


# -- the command line in a subprocess --------------------------------------------------------

def _speed(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conformance.speed", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, says", [
    (["--backend", "nosuch"], "unknown backend 'nosuch'"),
    (["--shape", "4,x,2"], "--shape '4,x,2'"),
    (["--shape", "1,8,30,4"], "not divisible"),
    (["--tokens", "-5"], "-5 is not a positive integer"),
    (["--tokens=64,-5"], "-5 is not a positive integer"),
    (["--tokens", "64,abc"], "'abc' is not an integer"),
    (["--dtype", "float8"], "--dtype 'float8': unknown"),
    (["--budget", "0"], "--budget 0"),
    (["--threads", "0"], "--threads 0"),
    (["--no-such-option"], "unrecognized arguments"),
    (["--check-isolation", "--shape", "1,8"], "--shape '1,8'"),
    (["--budget"], "expected one argument"),
])
def test_bad_input_exits_2_with_one_line(args, says):
    p = _speed(*args)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_quick_mode_end_to_end(tmp_path):
    specs = ["numpy"] + (["torch"] if HAS_TORCH_BACKEND else [])
    p = _speed("--quick", "--out", str(tmp_path), "--machine", "quick-test",
               *[a for s in specs for a in ("--backend", s)])
    assert p.returncode == 0, p.stderr[-2000:]
    doc = load(tmp_path / "results.json")  # validates against the schema
    (run,) = doc["runs"]
    speed = run["speed"]
    assert run["machine"] == "quick-test" and speed["status"] == "complete"
    assert speed["command"].startswith("python -m conformance.speed --quick")
    assert speed["peak"]["gflops"] > 0 and speed["peak"]["measurements"]
    assert speed["threads"]["blas"] is not None
    cells = speed["cells"]
    assert {c["backend"] for c in cells} == set(specs)
    assert {c["T"] for c in cells} == set(cli.QUICK["tokens"])
    for c in cells:
        assert c["error"] is None and len(c["samples_s"]) >= cli.QUICK["min_samples"]
        assert c["first_call_s"] > 0 and c["p25_s"] <= c["median_s"] <= c["p75_s"]
        assert c["gflops"] == pytest.approx(c["flops"] / c["median_s"] / 1e9)
        assert c["conforming"] is None and c["memory_method"]
    if HAS_TORCH_BACKEND:
        assert all(c["time_vs_torch"] == pytest.approx(1.0) for c in cells if c["backend"] == "torch")
    assert "median ms" in p.stdout and "[1/2]" in p.stdout
    if not HAS_TORCH_BACKEND:
        pytest.skip("impls/torch_backend.py does not exist yet: only numpy was timed")


def test_results_file_is_json_even_with_other_machines(tmp_path):
    update_section(tmp_path / "results.json", "other", {}, "speed",
                   {"status": "complete", "started": "x", "command": "c", "peak": {}, "cells": []})
    bench.run(plan(tmp_path, [FakeBackend("f")], shapes=[(1, 4, 8, 8, 2)]), out=io.StringIO())
    doc = json.loads((tmp_path / "results.json").read_text())
    assert [r["machine"] for r in doc["runs"]] == ["other", "test-machine"]


def test_gate_does_not_call_an_incomplete_backend_conforming(tmp_path):
    from conformance.speed.gate import conformance_status

    section = conformance_section([record("fake-good", "passed"), record("fake-half", "passed")])
    section["status"] = "incomplete"
    section["missing"] = [{"backend": "fake-half", "dtype": "float32", "check": "matches_spec"}]
    update_section(tmp_path / "results.json", "m", {}, "conformance", section)
    status = conformance_status(tmp_path / "results.json", "m", ["fake-good", "fake-half"])
    assert status["fake-good"][0] is True
    assert status["fake-half"][0] is None and "incomplete" in status["fake-half"][1]

