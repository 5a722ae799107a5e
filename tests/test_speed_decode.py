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
    # a line of 8 steps from L=16: 17 to 24 tokens read, 20.5 on average
    assert decode.decode_line_steps(16) == 8
    assert np_cell["kv_bytes"] == 2 * 1 * decode.HEADS * 20.5 * (decode.D_OUT // decode.HEADS) * 4
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


def test_the_fit_separates_a_fixed_cost_from_the_bandwidth_and_reports_show_it():
    from reports.speed_model import _decode_tables

    cells = [{"backend": "numpy", "dtype": "float32", "B": 8, "L": L, "kv_bytes": 2**20 * L // 128,
              "median_s": 50e-6 + (2**20 * L // 128) / 20e9, "error": None} for L in (128, 1024, 8192)]
    cells.append({**cells[0], "backend": "torch", "L": 128})  # one length only: no fit
    (f,) = decode.fit(cells, bandwidth=40.0)
    assert f["backend"] == "numpy" and f["B"] == 8 and f["lengths"] == [128, 1024, 8192]
    assert abs(f["t0_s"] - 50e-6) < 1e-9 and abs(f["gb_per_s"] - 20.0) < 1e-6
    assert abs(f["bandwidth_fraction"] - 0.5) < 1e-9 and f["worst_residual"] < 1e-6
    assert "t0 0.050 ms + bytes at 20.0 GB/s (50% of copy)" in decode.fit_line(f)
    (table,) = _decode_tables("m", {"bandwidth": {"gb_per_s": 40.0}, "cells": [
        {**c, "gb_per_s": 1.0, "bandwidth_fraction": 0.1} for c in cells], "fits": [f]})
    assert table.fits == ["numpy B=8: t0 0.0500 ms, 20.0 GB/s (50% of copy); worst cell 0% off the fit"]


class DecodeLog(NumpyBackend):
    """Records the length of each cache decode is given."""

    def __init__(self):
        super().__init__()
        self.given: list[int] = []

    def decode(self, x_new, cache, *a, **kw):
        self.given.append(cache.k.shape[2])
        return super().decode(x_new, cache, *a, **kw)


def test_a_decode_cell_times_a_line_of_steps_that_starts_again_from_the_prompt():
    from conformance.speed.worker import Handler

    b = DecodeLog()
    h = Handler(b, None)
    assert h.handle({"op": "prepare_decode", "B": 1, "L": 16, "dtype": "float32", "seed": 0}).get("error") is None
    b.given.clear()
    for _ in range(20):
        h.entry.call()
    # each step continues the line (16, 17, ...); after 8 steps it starts again from the prompt
    g = b.given
    assert all(n == m + 1 or (m == 23 and n == 16) for m, n in zip(g, g[1:])), g
    assert g.count(16) >= 2 and max(g) == 23, g
