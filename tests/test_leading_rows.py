"""The references of the rows a property compares equal those rows of the whole case's references."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conformance.suite.reference import forward_golden_and_plain, leading_golden_and_plain
from conformance.suite.strategies import case_from
from spec.config import AttentionConfig
from spec.scores import BiasArray


def _case(causal: bool = True, dtype: str = "float32"):
    case = case_from(AttentionConfig(d_in=12, d_out=8, n_heads=2, causal=causal), 3, 11, dtype, seed=4)
    kpm = np.ones((3, 11), dtype=bool)
    kpm[1, :3] = False  # padding, cut with the tokens
    return case.with_(key_padding_mask=kpm)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16"])
@pytest.mark.parametrize("cut", [dict(tokens=5), dict(batch=1), dict(batch=2, tokens=1)])
def test_leading_rows_match_the_whole(cut, dtype):
    case = _case(dtype=dtype)
    golden, plain = forward_golden_and_plain(case)
    g, p = leading_golden_and_plain(case, **cut)
    b, t = cut.get("batch", case.B), cut.get("tokens", case.T)
    # the same spec on the same numbers: the golden agrees to its own precision
    assert g.shape == (b, t, 8) and np.allclose(g, golden[:b, :t], rtol=1e-13, atol=1e-13)
    assert len(p.runs) == len(plain.runs)  # the same orders, each on the rows compared


def test_a_bias_array_is_cut_from_the_whole():
    case = _case()
    case = case.with_(config=replace(case.config, bias=BiasArray(np.arange(3 * 11).reshape(3, 1, 1, 11) / 50)))
    golden, plain = forward_golden_and_plain(case)
    g, p = leading_golden_and_plain(case, batch=1, tokens=4)
    assert np.array_equal(g, golden[:1, :4]) and np.array_equal(p.runs[0], plain.runs[0][:1, :4])


def test_later_tokens_matter_without_the_causal_mask():
    with pytest.raises(ValueError, match="causal"):
        leading_golden_and_plain(_case(causal=False), tokens=3)
