"""The sliding window's own property: keys outside a query's window change nothing.

Like `causality` (keys after a position may hold anything), but on the window's left edge:
the query at position p sees keys p - left .. p + right (spec/masks.py), so for every query at
t or later, the tokens before t - left are outside its window. They are replaced by new, larger
values, and the outputs from t on must not move. Drawn only for backends declaring
`Capabilities.window`; the window is always set (left drawn small, so the edge falls inside T).
Agreement with the spec, with each modifier drawn, is `matches_spec`'s job.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import strategies as st

from conformance.suite import strategies as cs
from conformance.suite.checks import check
from conformance.suite.checks.end_to_end import _perturbed, _rows
from conformance.suite.reference import forward_golden_and_plain


@st.composite
def _outside_cases(draw, caps, dtype):
    """A case (T >= 2) with a window whose left edge, for queries from t on, falls after token 0."""
    case = draw(cs.cases(caps, dtype, min_tokens=2))
    T, c = case.T, case.config
    left = draw(st.integers(0, T - 2))
    right = c.window[1] if c.window is not None else 0
    t = draw(st.integers(left + 1, T - 1))  # tokens 0 .. t - left - 1 lie outside every window from t on
    return case.with_(config=replace(c, window=(left, right)),
                      extra={**case.extra, "t": t, "perturb_seed": draw(st.integers(0, 2**31 - 1))})


@check(step=None, strategy=_outside_cases, needs=("window",))
def window_ignores_outside_keys(run, case):
    """Changing tokens before a window's left edge leaves the outputs of every query it excludes unchanged."""
    t, left = case.extra["t"], case.config.window[0]
    x2 = _perturbed(case, (slice(None), slice(0, t - left)))
    y1, y2 = run.forward(case), run.forward(case.with_(x=x2))
    golden, plain = forward_golden_and_plain(case)  # the allowance's scale; agreement is matches_spec's job
    rows = _rows(run, case)[:, t:]
    run.assert_same(f"outputs {t}.. (window {case.config.window}) after changing tokens 0..{t - left - 1} vs before",
                    y2[:, t:], y1[:, t:], golden[:, t:], plain[:, t:], rows)
