"""The score terms' own properties: sinks at minus infinity are no sinks.

A sink is one more logit in each row's softmax denominator (spec/scores.py); at -inf its term
exp(-inf) is 0, so a backend given sinks of -inf in every head must give what it gives without
sinks. Compared with itself (`assert_same`), the golden only for the allowance's scale. Drawn only
for backends declaring `Capabilities.sinks`. Agreement with the spec, with ALiBi and sinks drawn,
is `matches_spec`'s job; the sinks' share of each row is `rows_sum_to_one`'s.
"""

from __future__ import annotations

import math
from dataclasses import replace

from conformance.suite.checks import check, everyday_cases
from conformance.suite.checks.end_to_end import _rows
from conformance.suite.reference import forward_golden_and_plain


@check(step=None, strategy=everyday_cases, needs=("sinks",))
def sinks_at_minus_infinity_are_none(run, case):
    """Sinks of -inf in every head give the outputs of no sinks (an exp(-inf) = 0 term)."""
    plain_config = replace(case.config, sinks=None)
    case = case.with_(config=plain_config)
    off = case.with_(config=replace(plain_config, sinks=(-math.inf,) * plain_config.n_heads))
    y, y_off = run.forward(case), run.forward(off)
    golden, plain = forward_golden_and_plain(case)  # the allowance's scale; agreement is matches_spec's job
    run.assert_same("forward with sinks of -inf vs without sinks", y_off, y, golden, plain, _rows(run, case))
