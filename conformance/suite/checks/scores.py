"""The score terms' own properties: sinks at minus infinity are no sinks; a per-row constant in
the bias changes nothing.

A sink is one more logit in each row's softmax denominator (spec/scores.py); at -inf its term
exp(-inf) is 0, so a backend given sinks of -inf in every head must give what it gives without
sinks. The softmax is shift-invariant, so a bias array plus a constant per query row gives the
same outputs; with sinks only when the constant is per head and the sinks get it too (the sink is
one more logit of every row). Each compares the backend with itself (`assert_same`), the golden
only for the allowance's scale. Drawn only for backends declaring `Capabilities.sinks` / `.bias`.
Agreement with the spec, with ALiBi, bias arrays and sinks drawn, is `matches_spec`'s job; the
sinks' share of each row is `rows_sum_to_one`'s.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from hypothesis import strategies as st

from conformance.suite import strategies as cs
from conformance.suite.case import round_to
from conformance.suite.checks import check, everyday_cases
from conformance.suite.checks.end_to_end import _rows
from conformance.suite.reference import forward_golden_and_plain
from spec.scores import BiasArray


@check(step=None, strategy=everyday_cases, needs=("sinks",))
def sinks_at_minus_infinity_are_none(run, case):
    """Sinks of -inf in every head give the outputs of no sinks (an exp(-inf) = 0 term)."""
    plain_config = replace(case.config, sinks=None)
    case = case.with_(config=plain_config)
    off = case.with_(config=replace(plain_config, sinks=(-math.inf,) * plain_config.n_heads))
    y, y_off = run.forward(case), run.forward(off)
    golden, plain = forward_golden_and_plain(case)  # the allowance's scale; agreement is matches_spec's job
    run.assert_same("forward with sinks of -inf vs without sinks", y_off, y, golden, plain, _rows(run, case))


#: The constants added: powers of two, so bias + c rounds no worse than the bias itself.
ROW_CONSTANTS = (4.0, -2.0, 1.0, -8.0)


@st.composite
def _biased_cases(draw, caps, dtype):
    """A case with a bias array and, per query row (per head with sinks), a drawn constant."""
    case = draw(cs.cases(caps, dtype))
    config = draw(cs.bias_arrays(caps, replace(case.config, bias=None), case.B, case.T, dtype, always=True))
    if not isinstance(config.bias, BiasArray):  # past SCORE_TERMS_MAX_SCORES none is drawn: a zero bias
        config = replace(config, bias=BiasArray(np.zeros((1, 1, case.T, case.T))))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return case.with_(config=config, extra={**case.extra, "constant_seed": int(rng.integers(2**31))})


@check(step=None, strategy=_biased_cases, needs=("bias",))
def bias_row_constant_changes_nothing(run, case):
    """A bias array plus a constant per query row (per head, added to the sinks too, with sinks) gives
    the same outputs."""
    c, B, T = case.config, case.B, case.T
    H = c.n_heads
    rng = np.random.default_rng(case.extra["constant_seed"])
    per = (1, H, 1, 1) if c.sinks is not None else (B, H, T, 1)  # with sinks: one constant per head
    const = rng.choice(ROW_CONSTANTS, per)
    bias = round_to(np.broadcast_to(c.bias.array, (B, H, T, T)) + const, case.dtype)  # (B, H, T, T)
    sinks = None if c.sinks is None else tuple(s + float(k) for s, k in zip(c.sinks, const.ravel()))
    moved = case.with_(config=replace(c, bias=BiasArray(bias), sinks=sinks))
    y, y_moved = run.forward(case), run.forward(moved)
    golden, plain = forward_golden_and_plain(case)  # the allowance's scale; agreement is matches_spec's job
    what = "per head, the sinks moved too" if c.sinks is not None else "per query row"
    run.assert_same(f"forward with the bias plus a constant {what} vs without", y_moved, y, golden, plain,
                    _rows(run, case))
