"""The bench's isolation self-check (`--check-isolation`, conformance/speed/selfcheck.py): cells
off by more than 10% flagged, "cannot tell" within the calls' spread, both ways interleaved,
more passes at an unsettled shape, and the exit status."""

from __future__ import annotations

import io
import types

import pytest

from conformance.speed import bench, cells, cli, selfcheck
from tests.test_speed import _worker_plan


def _pooled(shape, values: dict[str, tuple[float, float]]) -> dict:
    return {(shape, n, way): [v] * 5 for n, (h, a) in values.items() for way, v in (("harness", h), ("alone", a))}


def test_isolation_flags_cells_off_by_more_than_ten_percent():
    shape = (1, 8, 8, 8, 2)
    pooled = _pooled(shape, {"torch": (2.0, 2.0), "numpy": (1.05, 1.0), "slow": (1.2, 1.0), "fast": (0.85, 1.0)})
    rows = selfcheck._rows([shape], ["torch", "numpy", "slow", "fast", "broken"], pooled,
                           {(shape, "broken"): "alone: RuntimeError: boom"})
    by = {r.backend: r for r in rows}
    assert [by[n].flagged for n in ("torch", "numpy", "slow", "fast", "broken")] == [False, False, True, True, True]
    assert by["slow"].ratio == pytest.approx(1.2) and by["numpy"].vs_torch_harness == pytest.approx(0.525)
    assert by["numpy"].vs_torch_alone == pytest.approx(0.5)
    p = types.SimpleNamespace(dtypes=["float32"], causal=True, in_process=False, budget_s=0.4, min_samples=8)
    text = selfcheck.render(rows, p, 2, 1.5, 2.5, 60.0)
    lines = text.splitlines()
    assert "load average 1.5 at start, 2.5 at the end" in lines[0]
    table = [ln for ln in lines if ln.startswith("| B=")]
    assert len(table) == 5 and all(ln.count("|") == 11 for ln in table)
    assert "| 1.20 |" in by_line(table, "slow") and "OFF by +20%" in by_line(table, "slow")
    assert "OFF by -15%" in by_line(table, "fast") and by_line(table, "numpy").endswith("| ok | - | - |")
    assert "ERROR alone: RuntimeError: boom" in by_line(table, "broken")
    assert lines[-1].startswith("2 of 5 cells within 10% of alone; flagged: slow at B=1 T=8, fast")


def test_isolation_cannot_tell_where_the_calls_spread_more_than_the_medians_differ(monkeypatch):
    shape = (1, 8, 8, 8, 2)
    wide = [0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5]  # median 1.1, interquartile range 0.4
    pooled = {(shape, "torch", w): [1.0] * 9 for w in ("harness", "alone")}
    pooled.update({(shape, "noisy", "harness"): wide, (shape, "noisy", "alone"): [v - 0.1 for v in wide],
                   (shape, "apart", "harness"): [v + 0.5 for v in wide], (shape, "apart", "alone"): wide})
    rows = selfcheck._rows([shape], ["torch", "noisy", "apart"], pooled, {})
    by = {r.backend: r for r in rows}
    assert by["noisy"].ratio == pytest.approx(1.1 / 1.0) and by["noisy"].cannot_tell and not by["noisy"].flagged
    assert by["apart"].ratio == pytest.approx(1.6 / 1.1) and by["apart"].flagged and not by["apart"].cannot_tell
    p = types.SimpleNamespace(dtypes=["float32"], causal=True, in_process=False, budget_s=0.4, min_samples=8)
    lines = selfcheck.render(rows, p, 2, 1.0, 1.0, 10.0).splitlines()
    assert "cannot tell (+10%, within the calls' spread)" in by_line(lines, "noisy")
    assert "OFF by +45%" in by_line(lines, "apart")
    assert lines[-1].startswith("1 of 3 cells within 10% of alone; 1 cannot tell (off by more than 10%, by less "
                                "than their calls' interquartile range: not flagged); flagged: apart at B=1 T=8")
    args = ["--check-isolation", "--backend", "tests.test_speed:FakeBackend", "--shape", "1,8,8,2"]
    for kept, rc in (([by["torch"], by["noisy"]], 0), (rows, 1)):  # cannot tell passes; apart fails
        monkeypatch.setattr(selfcheck, "check", lambda plan, out, kept=kept: kept)
        assert cli.main(args) == rc


def by_line(table: list[str], backend: str) -> str:
    (line,) = [ln for ln in table if f"| {backend} |" in ln]
    return line


def test_isolation_check_times_both_ways_interleaved(tmp_path):
    p = _worker_plan(tmp_path, ["tests.test_speed:ConformingFake", "tests.test_speed:FakeBackend"],
                     shapes=[(1, 8, 8, 8, 2)])
    out = io.StringIO()
    rows = selfcheck.check(p, out, passes=2, fresh_procs=1, max_passes=2)
    assert [(r.backend, r.shape) for r in rows] == [("fake-good", (1, 8, 8, 8, 2)), ("fake", (1, 8, 8, 8, 2))]
    for r in rows:
        assert r.error is None and r.ratio is not None and r.harness["median_s"] and r.alone["median_s"]
    text = out.getvalue()
    progress = [ln.split(": ", 1)[1] for ln in text.splitlines() if ": pass " in ln]
    assert progress == ["pass 1, harness", "pass 1, alone", "pass 2, alone", "pass 2, harness"]
    assert [r.fresh["median_s"] > 0 and len(r.fresh["medians_s"]) == 1 for r in rows] == [True, True]
    assert "fresh timer, 1 processes per backend" in text and "| t/torch fresh [processes' interval] |" in text
    assert "| shape | backend | harness ms (spread) | alone ms (spread) | harness / alone |" in text
    assert "harness layout: worker process per backend" in text


def test_check_isolation_exit_status_follows_the_flags(monkeypatch, capsys):
    flagged = [selfcheck.Row((1, 8, 8, 8, 2), "x", {}, {}, ratio=1.5)]
    fine = [selfcheck.Row((1, 8, 8, 8, 2), "x", {}, {}, ratio=1.02)]
    args = ["--check-isolation", "--backend", "tests.test_speed:FakeBackend", "--shape", "1,8,8,2"]
    for rows, rc in ((flagged, 1), (fine, 0)):
        monkeypatch.setattr(selfcheck, "check", lambda plan, out, rows=rows: rows)
        assert cli.main(args) == rc
    plan_seen = []
    monkeypatch.setattr(selfcheck, "check", lambda plan, out: plan_seen.append(plan) or fine)
    cli.main(["--check-isolation"])
    (p,) = plan_seen  # the defaults: the three shapes and four backends (those available)
    assert p.shapes == selfcheck.CHECK_SHAPES
    assert {i.backend.name for i in p.backends} | {s["backend"] for s in p.skipped} == set(selfcheck.CHECK_BACKENDS)


def test_isolation_gives_a_shape_off_by_more_than_ten_percent_more_passes_up_to_the_cap(monkeypatch):
    """Synthetic timings (no clock): at one shape a backend is 20% slower in the harness than
    alone in every pass, at another all agree; only the first gets passes past the two."""
    off, level = (1, 8, 8, 8, 2), (2, 8, 8, 8, 2)

    def harness(units, shape, *a, **kw):
        return [cells.Timing(n, samples=[1.2 if (n == "slow" and shape == off) else 1.0] * 4) for n in ("torch", "slow")]

    monkeypatch.setattr(selfcheck.cells_mod, "time_cell", harness)
    monkeypatch.setattr(selfcheck, "alone", lambda name, *a, **kw: cells.Timing(name, samples=[1.0] * 4))
    monkeypatch.setattr(bench, "make_units", lambda plan, infos: [])
    infos = [types.SimpleNamespace(backend=types.SimpleNamespace(name=n), spec=n) for n in ("torch", "slow")]
    p = types.SimpleNamespace(dtypes=["float32"], backends=infos, shapes=[off, level], causal=True, seed=0,
                              budget_s=0.4, min_samples=8, max_samples=100, threads=None, in_process=False)
    out = io.StringIO()
    rows = selfcheck.check(p, out, passes=2, fresh_procs=0, max_passes=5)
    assert {(r.shape, r.backend): r.passes for r in rows} == {(off, "torch"): 5, (off, "slow"): 5,
                                                              (level, "torch"): 2, (level, "slow"): 2}
    by = {(r.shape, r.backend): r for r in rows}
    assert by[(off, "slow")].flagged and by[(off, "slow")].ratio == pytest.approx(1.2)
    text = out.getvalue()
    assert "B=1 T=8 d=8 H=2: pass 5, " in text and "B=2 T=8 d=8 H=2: pass 3" not in text
    assert "| B=1 T=8 d=8 H=2 (5 passes) | slow |" in text and "| B=2 T=8 d=8 H=2 | slow |" in text
    assert "2 passes alternating the ways, up to 5 at a shape with a cell off by more than 10%" in text
