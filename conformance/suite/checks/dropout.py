"""Dropout on the attention weights: exact replay where a backend takes a mask, else statistics.

RNG streams differ between backends, so a backend that accepts a keep mask is replayed against
the spec exactly; one that has only its own stream is checked statistically through an
identity construction that makes forward's output equal the dropped attention weights.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import strategies as st

from conformance.suite import strategies as cs
from conformance.suite.checks import CheckFailure, check
from conformance.suite.checks.localize import step_matches_spec
from conformance.suite.reference import forward_golden_and_plain, step_inputs
from conformance.suite.tolerance import distinct_digits, eps
from spec import steps as S
from spec.block import sample_dropout_mask
from spec.config import AttentionConfig
from spec.params import Params

P_VALUES = (0.1, 0.5, 0.9)
#: the binomial test's significance level: a correct backend fails it once in a million runs
ALPHA = 1e-6


@st.composite
def _dropout_cases(draw, caps, dtype):
    case = draw(cs.cases(caps, dtype))
    p = draw(st.sampled_from(P_VALUES))
    config = replace(case.config, dropout_p=p)
    H, T = config.n_heads, case.T
    mask = sample_dropout_mask((case.B, H, T, T), p, seed=case.seed)
    return case.with_(config=config, dropout_mask=mask)


@check(step=None, strategy=_dropout_cases, needs=("dropout_replay",))
def dropout_replay_matches_spec(run, case):
    """With an explicit keep mask, forward equals the spec's inverted dropout (kept weights / (1 - p))."""
    got = run.forward(case, training=True)  # the case's keep mask, replayed
    golden, plain = forward_golden_and_plain(case)
    run.assert_close(f"forward with dropout_p={case.config.dropout_p} and a given keep mask", got, golden, plain)


@check(step=8, strategy=_dropout_cases, needs=("dropout_replay",))
def dropout_replay_weights(run, case):
    """attn_weights with a keep mask zeroes the dropped weights and scales the kept by 1/(1 - p)."""
    scores = step_inputs(case.with_(dropout_mask=None))["attn_scores"]
    step_matches_spec(run, case, 8, {"attn_scores": scores}, what=" with dropout")  # the case's keep mask


@check(step=None, strategy=_dropout_cases, needs=("dropout",))
def dropout_off_in_eval(run, case):
    """With dropout_p > 0 but training=False, forward is the deterministic no-dropout block."""
    got = run.forward(case)  # training defaults to False
    golden, plain = forward_golden_and_plain(case.with_(dropout_mask=None))
    run.assert_close(f"forward in eval mode with dropout_p={case.config.dropout_p}", got, golden, plain)


@st.composite
def _identity_cases(draw, caps, dtype):
    T = draw(st.integers(8, 32))
    causal = draw(st.sampled_from([m for m, ok in ((True, caps.causal), (False, caps.non_causal)) if ok]))
    p = draw(st.sampled_from(P_VALUES))
    config = AttentionConfig(d_in=T, d_out=T, n_heads=1, causal=causal, dropout_p=p)
    eye = np.eye(T)
    # x = I, W_q = 0 (uniform weights), W_v = W_o = I, b_o = 0: output row i = weights row i
    params = Params(W_q=np.zeros((T, T)), W_k=eye.copy(), W_v=eye.copy(), W_o=eye.copy(), b_o=np.zeros(T))
    from conformance.suite.case import Case

    return Case(config=config, dtype=dtype, x=np.broadcast_to(eye, (4, T, T)).copy(), params=params,
                seed=draw(st.integers(0, 2**31 - 1)))


@check(step=None, strategy=_identity_cases, needs=("dropout",))
def dropout_statistics(run, case):
    """Own-RNG dropout: each weight is 0 or w/(1-p), and the dropped fraction is near p (binomial test)."""
    p, T = case.config.dropout_p, case.T
    got = run.forward(case, training=True)  # (B, T, T): the dropped weights themselves
    ok = S.visible(T, T, case.config.causal)[0, 0]  # (T, T): the spec's mask
    w = 1.0 / ok.sum(-1, keepdims=True)  # uniform weights per row
    kept = w / (1 - p)
    tol = 4 * eps(case.dtype)  # a kept weight is w/(1-p) up to a few roundings in D
    is_zero = np.abs(got) <= tol * kept
    is_kept = np.abs(got - kept) <= tol * kept * 4
    stray = ok & ~is_zero & ~is_kept
    if stray.any():
        b, i, j = (int(v) for v in np.argwhere(stray)[0])
        g, k = float(got[b, i, j]), float(kept[i, 0])
        n = distinct_digits(g, k)
        raise CheckFailure(f"weight [{b}, {i}, {j}] = {g:.{n}g} is neither 0 nor w/(1-p) = {k:.{n}g} "
                           f"(w = 1/{int(ok[i].sum())} uniform, p = {p}; allowed rounding {tol * kept[i, 0] * 4:.3g}): "
                           f"inverted dropout keeps a weight scaled by 1/(1-p) or drops it to 0",
                           max_error=abs(g - k), tolerance=float(tol * kept[i, 0] * 4))
    future = np.abs(got) * ~ok
    if future.max(initial=0.0) > 0:
        b, i, j = (int(v) for v in np.argwhere(future > 0)[0])
        raise CheckFailure(f"dropout made a masked (future) position non-zero: weight [{b}, {i}, {j}] = "
                           f"{got[b, i, j]:.6g}, must be exactly 0 (query {i} cannot see key {j} > {i})",
                           max_error=float(future.max()), tolerance=0.0)
    n = int(np.broadcast_to(ok, got.shape).sum())
    dropped = int((is_zero & ok).sum())
    # two-sided binomial test at ALPHA: runs often, so a correct backend must essentially never fail
    from scipy import stats  # here: importing scipy.stats takes 1.4 s, and most runs never get here

    pv = stats.binomtest(dropped, n, p).pvalue
    if pv < ALPHA:
        raise CheckFailure(f"dropped fraction {dropped / n:.4f} ({dropped} of {n} weights), expected p = {p}: "
                           f"two-sided binomial test p-value {pv:.2g} < {ALPHA:g} (each weight must be dropped "
                           f"independently with probability p; a fraction this far from p is that unlikely)",
                           max_error=abs(dropped / n - p))
