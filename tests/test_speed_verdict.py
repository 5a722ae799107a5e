"""The bench's verdict on a cell's ratio to torch (conformance/speed/verdict.py), through a fake clock.

Every sample here is made up by a fake unit (a worker's stand-in whose "time" request answers
samples drawn from distributions chosen per round), so the tests say what the bench concludes
from given samples, never how fast anything is.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from conformance.speed import bench, cells, table, verdict
from impls.base import BackendInfo
from reports.speed_model import build_speed
from tests.test_speed import FakeBackend


class FakeClockUnit:
    """A timing unit whose chunk r answers `n` samples around `centre(r)` seconds (1% jitter)."""

    def __init__(self, name: str, centre, n: int = 5, seed: int = 0) -> None:
        self.name, self.centre, self.n = name, centre, n
        self.rng = np.random.default_rng(seed)
        self.round = 0
        self.ops: list[str] = []

    def request(self, op: str, **kw) -> dict:
        self.ops.append(op)
        if op == "prepare":
            return {"first_call_s": 0.5, "timer": "fake-clock", "error": None}
        if op == "time":
            c = self.centre(self.round)
            self.round += 1
            return {"samples": list(c * (1 + 0.01 * self.rng.standard_normal(self.n))), "error": None}
        if op == "threads":
            return {"torch": None, "blas": []}
        return {}  # release, memory

    def close(self) -> None:
        pass


def _time(units, **kw):
    return cells.time_cell(units, (1, 4, 8, 8, 2), "float32", True, 0, budget_s=0.0, min_samples=3,
                           memory=False, reference="torch", **kw)


def _verdict(numpy_centre, torch_centre=lambda r: 0.020) -> tuple[dict, list[cells.Timing]]:
    ts = _time([FakeClockUnit("numpy", numpy_centre, seed=1), FakeClockUnit("torch", torch_centre, seed=2)])
    return verdict.paired(ts[0].rounds, ts[1].rounds), ts


# -- the statistics ---------------------------------------------------------------------------

def test_median_interval_takes_the_order_statistics_of_its_coverage():
    assert verdict.median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # 3 values: 75% needs min and max
    # 9 values: the 3rd and 7th cover the median with 1 - 2 * 46/512 = 82% (the 4th and 6th 49%)
    assert verdict.median_interval([float(v) for v in range(9, 0, -1)]) == (3.0, 7.0)
    assert verdict.median_interval([2.0]) == (2.0, 2.0)
    with pytest.raises(ValueError, match="no values"):
        verdict.median_interval([])


@pytest.mark.parametrize("lo, hi, says", [(0.4, 0.6, "faster"), (1.2, 1.9, "slower"), (0.95, 1.08, "level"),
                                          (0.5, 2.0, "undecided"), (0.85, 1.02, "undecided"),
                                          (0.98, 1.15, "undecided"), (1.02, 1.08, "level"),
                                          (0.85, 0.95, "faster")])
def test_judge(lo, hi, says):
    assert verdict.judge(lo, hi) == says


# -- the bench's rounds -----------------------------------------------------------------------

def test_two_clearly_different_distributions_are_undecided_after_the_cap():
    # numpy's chunks come from two distributions, 10 ms in even rounds and 40 ms in odd ones,
    # torch's all from 20 ms: paired per round, numpy is 2x faster or 2x slower by chance
    p, ts = _verdict(lambda r: 0.010 if r % 2 == 0 else 0.040)
    assert p["ratio_verdict"] == "undecided" and p["undecided_by"] == "rounds"
    assert p["ratio_interval"][0] < 0.6 and p["ratio_interval"][1] > 1.9
    assert [len(t.rounds) for t in ts] == [verdict.MAX_ROUNDS] * 2  # it pooled rounds up to the cap
    assert all(len(t.samples) == 5 * verdict.MAX_ROUNDS for t in ts)


def test_samples_from_two_distributions_within_every_round_are_undecided():
    # each of numpy's chunks mixes calls of 10 ms and 40 ms (the per-round medians all agree on
    # 10 ms); torch's take 20 ms: the spread says the calls are not one figure
    class Mixed(FakeClockUnit):
        def request(self, op: str, **kw) -> dict:
            r = super().request(op, **kw)
            if op == "time":
                r["samples"] = [0.010, 0.040, 0.010, 0.040, 0.010]
            return r

    ts = _time([Mixed("numpy", lambda r: 0.0), FakeClockUnit("torch", lambda r: 0.020)])
    p = verdict.paired(ts[0].rounds, ts[1].rounds)
    assert p["ratio_interval"][1] < 0.6  # the rounds alone would have said "faster"
    assert p["ratio_verdict"] == "undecided" and p["undecided_by"] == "spread"
    assert [len(t.rounds) for t in ts] == [verdict.MAX_ROUNDS] * 2
    assert verdict.spread([0.010, 0.040, 0.010, 0.040, 0.010]) == pytest.approx(3.0)


def test_a_clear_difference_is_decided_in_three_rounds():
    p, ts = _verdict(lambda r: 0.010)
    assert p["ratio_verdict"] == "faster" and 0.45 < p["ratio_interval"][0] <= p["ratio_interval"][1] < 0.55
    assert [len(t.rounds) for t in ts] == [cells.ROUNDS] * 2
    p, _ = _verdict(lambda r: 0.030)
    assert p["ratio_verdict"] == "slower"


def test_equal_backends_are_level():
    p, ts = _verdict(lambda r: 0.020)
    assert p["ratio_verdict"] == "level" and [len(t.rounds) for t in ts] == [cells.ROUNDS] * 2


def test_load_that_passes_is_outvoted_by_later_rounds():
    # round 1 hit numpy alone (3x slower); the rounds after it agree on 0.5, so more rounds settle it
    p, ts = _verdict(lambda r: 0.030 if r == 1 else 0.010)
    assert p["ratio_verdict"] == "faster"
    assert cells.ROUNDS < len(ts[0].rounds) < verdict.MAX_ROUNDS


def test_load_that_moves_both_backends_alike_cancels_in_the_pairs():
    # the whole machine twice as slow in odd rounds: both backends' chunks alike
    slow = lambda base: (lambda r: base * (2 if r % 2 else 1))  # noqa: E731
    p, ts = _verdict(slow(0.010), slow(0.020))
    assert p["ratio_verdict"] == "faster" and [len(t.rounds) for t in ts] == [cells.ROUNDS] * 2


def test_without_a_reference_no_extra_rounds():
    units = [FakeClockUnit("numpy", lambda r: 0.010 if r % 2 == 0 else 0.040), FakeClockUnit("x", lambda r: 0.02)]
    ts = cells.time_cell(units, (1, 4, 8, 8, 2), "float32", True, 0, budget_s=0.0, min_samples=3, memory=False)
    assert [len(t.rounds) for t in ts] == [cells.ROUNDS] * 2


# -- the table, results.json and the report ---------------------------------------------------

def test_an_undecided_cell_says_so_in_the_table_results_and_report(tmp_path: Path, monkeypatch):
    infos = [BackendInfo(backend=FakeBackend(n), spec=n, source="test") for n in ("numpy", "torch", "other")]
    centres = {"numpy": lambda r: 0.010 if r % 2 == 0 else 0.040, "torch": lambda r: 0.020,
               "other": lambda r: 0.010}
    monkeypatch.setattr(bench, "make_units",
                        lambda plan, timed: [FakeClockUnit(i.backend.name, centres[i.backend.name]) for i in timed])
    plan = bench.Plan(backends=infos, dtypes=["float32"], shapes=[(1, 8, 8, 8, 2)], out_dir=tmp_path,
                      machine="m", command="test", budget_s=0.001, min_samples=3, peak_n=64)
    out = io.StringIO()
    section = bench.run(plan, out)
    by = {c["backend"]: c for c in section["cells"]}
    assert by["numpy"]["ratio_verdict"] == "undecided" and by["other"]["ratio_verdict"] == "faster"
    assert len(by["numpy"]["round_medians_s"]) == verdict.MAX_ROUNDS and by["torch"]["ratio_verdict"] is None
    assert section["layout"]["max_rounds"] == verdict.MAX_ROUNDS
    text = out.getvalue()
    (line,) = [ln for ln in text.splitlines() if ln.startswith("  numpy ") and "t/torch" in ln]
    lo, hi = by["numpy"]["ratio_interval"]
    assert f"t/torch undecided {lo:.2f}-{hi:.2f}" in line and "*" in line.split()[-1]  # markers last
    (other,) = [ln for ln in text.splitlines() if ln.startswith("  other ") and "t/torch" in ln]
    assert "t/torch 0.50 [0." in other and "] faster" in other and "*" not in other.split()[-1]
    grid = text.split("time / torch")[1].splitlines()
    (row,) = [ln for ln in grid if ln.strip().startswith("numpy")]
    assert row.split()[-1].startswith(f"{lo:.2f}-{hi:.2f}") and "*" in row.split()[-1]  # an interval, no ratio
    assert "* undecided" in table.LEGEND
    (tab,) = build_speed([{"machine": "m", "speed": section}]).tables
    rows = {r.backend: r for r in tab.rows}
    assert rows["numpy"].ratio_verdict == "undecided" and rows["numpy"].ratio_interval == (lo, hi)
    (note,) = [n for n in rows["numpy"].notes if "undecided" in n]
    assert note == f"⚠ ratio to torch undecided: its rounds give {lo:.2f}–{hi:.2f}"
    assert rows["other"].ratio_verdict == "faster" and not any("undecided" in n for n in rows["other"].notes)
