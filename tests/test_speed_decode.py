"""The decode bench (`python -m conformance.speed --decode`): backends alternate at each cell, the
cache is prefilled once per backend and cell, and each ratio to torch gets its rounds' verdict."""

from __future__ import annotations

from conformance.speed import cells, decode
from impls.numpy_backend import NumpyBackend
from impls.torch_backend import TorchBackend


class CountingNumpy(NumpyBackend):
    prefills = decodes = 0

    def prefill(self, *a, **kw):
        self.prefills += 1
        return super().prefill(*a, **kw)

    def decode(self, *a, **kw):
        self.decodes += 1
        return super().decode(*a, **kw)


def test_decode_cells_alternate_prefill_once_and_judge_the_ratio_to_torch():
    b = CountingNumpy()
    units = [cells.LocalUnit(b), cells.LocalUnit(TorchBackend())]
    got = decode._cells(units, B=1, L=16, dtype="float32", budget=0.0, min_samples=6, bandwidth=10.0)
    assert [c["backend"] for c in got] == ["numpy", "torch"]
    np_cell, torch_cell = got
    # a fresh worker builds its first cell twice (worker._prepare); then no rebuild per round
    assert b.prefills == 2
    assert len(np_cell["samples_s"]) >= 6 and len(np_cell["round_medians_s"]) >= cells.ROUNDS
    assert b.decodes >= len(np_cell["samples_s"]) + 2  # the timed steps and the first calls
    assert np_cell["time_vs_torch"] > 0 and np_cell["ratio_verdict"] in ("faster", "slower", "level", "undecided")
    assert len(np_cell["round_ratios"]) == len(np_cell["round_medians_s"])
    assert "ratio_verdict" not in torch_cell and torch_cell["time_vs_torch"] == 1.0
    assert np_cell["kv_bytes"] == 2 * 1 * decode.HEADS * 17 * (decode.D_OUT // decode.HEADS) * 4
    line = decode._line(np_cell)
    assert "t/torch" in line and "of copy bandwidth" in line and "t/torch" not in decode._line(torch_cell)


def test_without_torch_there_is_no_ratio():
    (c,) = decode._cells([cells.LocalUnit(NumpyBackend())], B=1, L=8, dtype="float32", budget=0.0,
                         min_samples=3, bandwidth=10.0)
    assert c["error"] is None and c["median_s"] > 0
    assert "time_vs_torch" not in c and "ratio_verdict" not in c


def _timing(name: str, rounds: list[list[float]]) -> cells.Timing:
    return cells.Timing(name, samples=[s for r in rounds for s in r], rounds=rounds)


def test_forward_backward_cells_get_the_ratio_to_torch_and_its_verdict():
    import io

    from conformance.speed.backward import _fill

    torch_t = _timing("torch", [[1.0, 1.0, 1.0]] * 3)
    fast = _timing("numpy", [[0.5, 0.5, 0.5]] * 3)
    mixed = _timing("other", [[0.5, 0.5, 0.5], [2.0, 2.0, 2.0], [1.0, 1.0, 1.0]])
    cell = {"backend": "numpy", "dtype": "float32", "B": 1, "T": 8, "d_in": 8, "n_heads": 2, "median_s": 0.1}
    out = io.StringIO()
    c_fast, c_mixed, c_torch = dict(cell), dict(cell, backend="other"), dict(cell, backend="torch")
    _fill(c_fast, fast, (1, 8, 8, 8, 2), True, out, torch_t)
    _fill(c_mixed, mixed, (1, 8, 8, 8, 2), True, out, torch_t)
    _fill(c_torch, torch_t, (1, 8, 8, 8, 2), True, out, torch_t)
    assert c_fast["fwd_bwd_time_vs_torch"] == 0.5 and c_fast["fwd_bwd_ratio_verdict"] == "faster"
    assert c_mixed["fwd_bwd_ratio_verdict"] == "undecided"
    assert c_torch["fwd_bwd_time_vs_torch"] == 1.0 and "fwd_bwd_ratio_verdict" not in c_torch
    lines = out.getvalue().splitlines()
    assert "t/torch 0.50" in lines[0] and "faster" in lines[0] and "undecided" in lines[1] and "t/torch" not in lines[2]


def test_reports_show_the_decode_and_forward_backward_ratios():
    from reports.speed_model import _decode_tables, _row

    base = {"backend": "numpy", "dtype": "float32", "B": 1, "L": 128, "kv_bytes": 2**20, "median_s": 1e-3,
            "gb_per_s": 1.0, "bandwidth_fraction": 0.1}
    dec = {"bandwidth": {"gb_per_s": 10.0}, "cells": [
        {**base, "time_vs_torch": 0.8, "ratio_verdict": "faster", "ratio_interval": [0.7, 0.85]},
        {**base, "L": 256, "time_vs_torch": 1.0, "ratio_verdict": "undecided", "ratio_interval": [0.6, 1.5]},
        {**base, "L": 512}]}
    rows = _decode_tables("m", dec)[0].rows
    assert [r[6] for r in rows] == ["0.80× (faster)", "undecided 0.60–1.50", "—"]
    cell = {"backend": "numpy", "dtype": "float32", "B": 1, "T": 8, "d_in": 8, "d_out": 8, "n_heads": 2,
            "causal": True, "flops": 1e6, "median_s": 1e-3, "fwd_bwd_median_s": 3e-3, "fwd_bwd_time_vs_torch": 1.3,
            "fwd_bwd_ratio_verdict": "undecided", "fwd_bwd_ratio_interval": [0.9, 1.6]}
    r = _row(cell, None, None)
    assert r.fwd_bwd_ratio == 1.3 and any("forward + backward ratio to torch undecided" in n for n in r.notes)
