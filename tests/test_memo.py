"""The references are remembered per worker: the same inputs computed once, anything else recomputed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conformance.suite import memo
from conformance.suite.reference import forward_golden_and_plain, golden_and_plain
from conformance.suite.strategies import case_from
from spec import steps as S
from spec.config import AttentionConfig


@pytest.fixture(autouse=True)
def fresh():
    memo.clear()
    yield
    memo.clear()


def _case(dtype: str = "float32", seed: int = 0, causal: bool = True):
    return case_from(AttentionConfig(d_in=8, d_out=8, n_heads=2, causal=causal), 2, 9, dtype, seed=seed)


def test_same_inputs_are_computed_once_and_given_back_as_copies():
    case = _case()
    g1, p1 = forward_golden_and_plain(case)
    g2, p2 = forward_golden_and_plain(case.with_(x=case.x.copy()))  # equal values, another array
    assert memo.stats()["hits"] == 1
    assert np.array_equal(g1, g2) and all(np.array_equal(a, b) for a, b in zip(p1.runs, p2.runs))
    g2[...] = 0  # a check editing its reference in place changes nobody else's
    p2.runs[0][...] = 0
    g3, p3 = forward_golden_and_plain(case)
    assert np.array_equal(g3, g1) and np.array_equal(p3.runs[0], p1.runs[0]) and g3.any()


@pytest.mark.parametrize("change", ["dtype", "x", "config", "mask"])
def test_any_difference_in_the_inputs_is_computed_again(change):
    case = _case()
    forward_golden_and_plain(case)
    other = {
        "dtype": lambda c: _case("float16"),
        "x": lambda c: c.with_(x=np.where(np.arange(c.x.size).reshape(c.x.shape) == 5, c.x + 1, c.x)),
        "config": lambda c: c.with_(config=replace(c.config, causal=False)),
        "mask": lambda c: c.with_(key_padding_mask=np.ones((c.B, c.T), dtype=bool)),
    }[change](case)
    g_other, _ = forward_golden_and_plain(other)
    assert memo.stats()["hits"] == 0
    memo.clear()
    assert np.array_equal(g_other, forward_golden_and_plain(other)[0])  # and what it computed is right


def test_local_functions_are_never_remembered():
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    for scale in (1.0, 2.0):  # two closures with one name: the name does not say what they compute
        golden, _ = golden_and_plain(lambda a, s=scale: a * s, "float32", x, orders=())
        assert np.array_equal(golden, x * scale)
    assert memo.stats()["hits"] == 0 and memo.stats()["entries"] == 0


def test_least_recently_used_go_first_past_the_budget(monkeypatch):
    entry = 3 * 10 * 8 * 8  # the golden and two plain runs of a [10, 8] float64 output
    monkeypatch.setattr(memo, "BUDGET_BYTES", 3 * entry + 100)
    params = _case().params  # d_out = 8
    xs = [np.full((10, 8), float(i)) for i in range(5)]
    for x in xs:
        golden_and_plain(S.out_proj, "float32", x, params, orders=())
    assert memo.stats()["entries"] == 3 and memo.stats()["bytes"] == 3 * entry
    golden_and_plain(S.out_proj, "float32", xs[4], params, orders=())  # the newest is still there
    golden_and_plain(S.out_proj, "float32", xs[0], params, orders=())  # the oldest went first
    assert memo.stats()["hits"] == 1


def test_a_bias_array_is_part_of_the_key():
    from spec.scores import BiasArray

    case = _case()
    bias = np.zeros((2, 1, 9))  # [H, 1, Tk]
    g0, _ = forward_golden_and_plain(case.with_(config=replace(case.config, bias=BiasArray(bias))))
    bias[1, 0, 3] = 2.0
    g1, _ = forward_golden_and_plain(case.with_(config=replace(case.config, bias=BiasArray(bias))))
    assert memo.stats()["hits"] == 0 and not np.array_equal(g0, g1)
    forward_golden_and_plain(case.with_(config=replace(case.config, bias=BiasArray(bias))))
    assert memo.stats()["hits"] == 1
