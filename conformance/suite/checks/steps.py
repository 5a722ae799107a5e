"""Properties of the individual steps 3 to 12, run on backends that expose the step.

Each step check feeds the backend's step the exact (dtype-rounded) output of the spec's
previous step, so a failure points at that step alone.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import strategies as st

from conformance.suite import strategies as cs
from conformance.suite.case import round_to
from conformance.suite.checks import CheckFailure, check, everyday_cases
from conformance.suite.conditioning import decided_step8_rows
from conformance.suite.checks.localize import step_matches_spec
from conformance.suite.reference import golden_and_plain, step_inputs
from conformance.suite.tolerance import distinct_digits
from impls.base import exposed_steps
from spec import invariants as inv
from spec import steps as S


def _causal_cases(caps, dtype):
    return cs.cases(caps, dtype, causal=True, padding=False)


def _ok_mask(case):
    T = case.T
    return inv.attendable(case.config, case.B, T, T, case.key_padding_mask)


# -- step 3 ---------------------------------------------------------------------------------
#: the uniformity test's significance level: a correct init fails it once in a million draws
INIT_ALPHA = 1e-6


@st.composite
def _init_cases(draw, caps, dtype):
    case = draw(cs.cases(caps, dtype, padding=False, max_batch=1))
    return case.with_(extra={"init_seed": draw(st.integers(0, 2**31 - 1))})


@check(step=3, strategy=_init_cases)
def init_follows_nn_linear(run, case):
    """init_params draws weights and biases from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) in nn.Linear's layout."""
    cfg = case.config
    p = run.call("init_params", run.backend.init_params, cfg, case.extra["init_seed"])
    try:
        p.check(cfg)
    except (ValueError, AttributeError) as e:
        raise CheckFailure(f"init_params returned the wrong layout: {e}") from None
    from scipy import stats  # here: importing scipy.stats takes 1.4 s, which every process paid at start

    for name, a in p.arrays().items():
        fan_in = cfg.d_out if name in ("W_o", "b_o") else cfg.d_in
        bound = 1.0 / np.sqrt(fan_in)
        a = np.asarray(a, dtype=np.float64)
        worst = float(np.max(np.abs(a), initial=0.0))
        if worst > bound * (1 + 1e-6):
            n = distinct_digits(worst, bound, least=4)
            raise CheckFailure(f"{name}: |value| {worst:.{n}g} exceeds nn.Linear's bound 1/sqrt({fan_in}) = "
                               f"{bound:.{n}g} (init draws from U(-bound, bound); allowed rounding 1e-6 relative)",
                               max_error=worst, tolerance=bound)
        if a.size >= 64:
            # INIT_ALPHA: this runs thousands of times; a correct init must essentially never fail
            ks = stats.kstest(a.ravel() / bound, "uniform", args=(-1, 2))
            if ks.pvalue < INIT_ALPHA:
                raise CheckFailure(f"{name}: not uniform on (-{bound:.4g}, {bound:.4g}): Kolmogorov-Smirnov "
                                   f"statistic D = {ks.statistic:.3g} over {a.size} values, p-value "
                                   f"{ks.pvalue:.2g} < {INIT_ALPHA:g} (the largest gap between the values' "
                                   f"distribution and U(-bound, bound) is that unlikely for a uniform draw)",
                                   max_error=float(ks.statistic))


# -- step 4 ---------------------------------------------------------------------------------
@check(step=4, strategy=everyday_cases)
def qkv_projection_matches_spec(run, case):
    """Q, K, V = x @ W.T (+ b): the projections match the spec in nn.Linear's layout."""
    step_matches_spec(run, case, 4, {"x": case.x, "params": case.params})


@st.composite
def _pair_cases(draw, caps, dtype):
    case = draw(cs.cases(caps, dtype, padding=False))
    return case.with_(extra={"x2_seed": draw(st.integers(0, 2**31 - 1))})


@check(step=4, strategy=_pair_cases)
def projection_is_linear(run, case):
    """project_qkv(a + b) == project_qkv(a) + project_qkv(b) - bias: the projection is affine."""
    rng = np.random.default_rng(case.extra["x2_seed"])
    a = case.x
    b = round_to(rng.standard_normal(a.shape) * case.x_scale, case.dtype)
    fa, fb = (run.table_step(4, case, {"x": v}) for v in (a, b))
    _, pa = golden_and_plain(S.project_qkv, case.dtype, a, case.params)
    _, pb = golden_and_plain(S.project_qkv, case.dtype, b, case.params)
    golden = S.project_qkv(a + b, case.params)  # exact a + b, in float64
    for i, name in enumerate("QKV"):
        bias = getattr(case.params, f"b_{name.lower()}")
        bias = 0.0 if bias is None else bias
        # f(a) + f(b) - bias carries three roundings in D, hence the wider floor
        run.assert_close(f"step 4 {name}: f(a) + f(b) - bias vs f(a + b)", fa[i] + fb[i] - bias,
                         golden[i], pa[i] + pb[i] - bias, floor_scale=3.0)


# -- steps 5, 6, 10, 11: pure index bookkeeping, exact in every dtype ------------------------
@check(step=5, strategy=everyday_cases)
def split_heads_matches_index(run, case):
    """split_heads(Q)[b, t, h, d] == Q[b, t, h*head_dim + d] exactly."""
    trace = step_inputs(case)
    Q, got = trace["Q"], run.table_step(5, case, trace)
    run.assert_exact("step 5 split_heads", inv.split_matches_index(Q, got, case.config.n_heads))


@check(step=6, strategy=everyday_cases)
def group_by_heads_is_permutation(run, case):
    """group_by_heads(s)[b, h, t, d] == s[b, t, h, d] exactly: heads grouped, nothing computed."""
    trace = step_inputs(case)
    s, got = trace["Q_split"], run.table_step(6, case, trace)
    run.assert_exact("step 6 group_by_heads", inv.grouped_matches_index(s, got))


@check(step=10, strategy=everyday_cases)
def permute_back_restores_order(run, case):
    """permute_back(c)[b, t, h, d] == c[b, h, t, d] exactly: token order restored."""
    trace = step_inputs(case)
    c, got = trace["context"], run.table_step(10, case, trace)
    run.assert_exact("step 10 permute_back", inv.permute_back_restores_order(c, got))


@check(step=11, strategy=everyday_cases)
def concat_heads_matches_index(run, case):
    """concat_heads(c)[b, t, h*head_dim + d] == c[b, t, h, d] exactly."""
    trace = step_inputs(case)
    c, got = trace["context_tokens"], run.table_step(11, case, trace)
    run.assert_exact("step 11 concat_heads", inv.split_matches_index(got, c, case.config.n_heads))


@check(step=11, strategy=everyday_cases, steps=(5, 6, 10, 11))
def split_merge_round_trip(run, case):
    """concat_heads(permute_back(group_by_heads(split_heads(x)))) == x: split and merge are inverse."""
    x = step_inputs(case)["Q"]
    s = run.table_step(5, case, {"Q": x})
    g = run.table_step(6, case, {"Q_split": s})
    p = run.table_step(10, case, {"context": g})
    m = run.table_step(11, case, {"context_tokens": p})
    run.assert_exact("steps 5-6-10-11 round trip", inv.merge_inverts_split(x, m))


# -- step 7 ---------------------------------------------------------------------------------
@check(step=7, strategy=everyday_cases)
def scores_are_dot_products(run, case):
    """attn_scores[b, h, i, j] == Q[b, h, i] . K[b, h, j]: per-head dot products, unscaled."""
    step_matches_spec(run, case, 7, step_inputs(case))


# -- step 8 ---------------------------------------------------------------------------------
def _weights(run, case, scores):
    return run.table_step(8, case, {"attn_scores": scores})


@check(step=8, strategy=everyday_cases)
def weights_match_spec(run, case):
    """attn_weights == softmax(mask(softcap(scores / sqrt(head_dim)))) along the key axis."""
    step_matches_spec(run, case, 8, step_inputs(case))


@check(step=8, strategy=everyday_cases)
def masked_weights_are_zero(run, case):
    """Future keys (causal), keys outside the window and padded keys get weight exactly 0; every weight is >= 0."""
    got = _weights(run, case, step_inputs(case)[7])
    ok = _ok_mask(case)
    bad = np.argwhere((got != 0) & ~ok)
    detail = "" if not len(bad) else f"; first at [b, h, i, j] = {tuple(int(v) for v in bad[0])}"
    run.assert_exact("step 8 masked weights", inv.masked_weights_are_zero(got, ok), detail)
    run.assert_exact("step 8 weights >= 0", inv.weights_nonnegative(got))


def _row_sums(case, scores: np.ndarray) -> np.ndarray:
    """[B, H, Tq]: what each row of step 8's weights sums to: 1 with an attendable key, 0 without;
    with sinks, 1 minus the sink's share (float64, from the spec's sink weight)."""
    has_key = np.broadcast_to(_ok_mask(case).any(-1), scores.shape[:-1])  # (B, H, Tq)
    sink = S.sink_weight(scores, case.config, case.key_padding_mask)[..., 0]  # (B, H, Tq); 0 without sinks
    return np.where(has_key, 1.0 - sink, 0.0)


@check(step=8, strategy=everyday_cases)
def rows_sum_to_one(run, case):
    """Each query row with an attendable key sums to 1 (with sinks: 1 minus the sink's share); a row
    with none sums to 0."""
    scores = step_inputs(case)[7]
    got = _weights(run, case, scores)
    target = _row_sums(case, scores)
    _, plain = golden_and_plain(S.attn_weights, case.dtype, scores, case.config, case.key_padding_mask)
    run.assert_close("step 8 row sums", got.sum(-1), target, plain.sum(-1), floor_scale=2.0)


@st.composite
def _shift_cases(draw, caps, dtype):
    case = draw(cs.cases(caps, dtype))
    if case.config.softcap is not None:  # tanh is not shift-invariant: the property holds without a softcap only
        case = case.with_(config=replace(case.config, softcap=None))
    if case.config.sinks is not None:  # a sink is a logit the shift does not move: without sinks only
        case = case.with_(config=replace(case.config, sinks=None))
    return case.with_(extra={"shift": draw(st.sampled_from((100.0, -100.0, 1000.0, 20000.0)))})


@check(step=8, strategy=_shift_cases)
def softmax_shift_invariant(run, case):
    """Adding a constant to every score leaves the weights unchanged (needs max-subtraction)."""
    scores = step_inputs(case)[7]
    shifted = round_to(scores + case.extra["shift"], case.dtype)
    base = shifted - case.extra["shift"]  # exact in D: both within a factor 2 of each other (Sterbenz)
    got, got_base = _weights(run, case, shifted), _weights(run, case, base)
    _, plain = golden_and_plain(S.attn_weights, case.dtype, shifted, case.config, case.key_padding_mask)
    golden = S.attn_weights(base, case.config, case.key_padding_mask)  # the allowance's scale only
    run.assert_exact("step 8 finite after shift", inv.all_finite(got))
    run.assert_same("step 8 weights(s + c) vs weights(s)", got, got_base, golden, plain)


@st.composite
def _large_score_cases(draw, caps, dtype):
    case = draw(cs.cases(caps, dtype))
    return case.with_(extra={"score_magnitude": cs.large_logit_target(dtype)})


@check(step=8, strategy=_large_score_cases)
def softmax_finite_for_large_logits(run, case):
    """Scores far past exp's overflow (1e11; 2e4 in float16) still give finite rows summing to 1."""
    rng = np.random.default_rng(case.seed)
    B, H, T = case.B, case.config.n_heads, case.T
    scores = round_to(rng.uniform(-1, 1, (B, H, T, T)) * case.extra["score_magnitude"], case.dtype)
    got = _weights(run, case, scores)
    run.assert_exact("step 8 finite weights", inv.all_finite(got))
    target = _row_sums(case, scores)
    golden, plain = golden_and_plain(S.attn_weights, case.dtype, scores, case.config, case.key_padding_mask)
    run.assert_close("step 8 row sums at large logits", got.sum(-1), target, plain.sum(-1), floor_scale=2.0)
    # a near tie at the top is decided by one rounding: compare the rows that D decides
    rows = decided_step8_rows(scores, case.config, case.key_padding_mask, case.dtype)  # (B, H, T)
    run.assert_close(f"step 8 weights at large logits ({int(rows.sum())} of {rows.size} rows without a near tie)",
                     got[rows], golden[rows], plain[rows])


# -- step 9 ---------------------------------------------------------------------------------
@check(step=9, strategy=everyday_cases)
def context_matches_spec(run, case):
    """context = attn_weights @ V, per head."""
    step_matches_spec(run, case, 9, step_inputs(case))


@check(step=9, strategy=everyday_cases)
def context_in_convex_hull(run, case):
    """Each context vector lies in the convex hull of the value rows it may attend to (with sinks: and
    of 0, the sink's value)."""
    trace = step_inputs(case)
    w, V, got = trace["attn_weights"], trace["v"], run.table_step(9, case, trace)
    _, plain = golden_and_plain(S.context, case.dtype, w, V)
    V = S.repeat_kv(V, case.config.n_heads)  # (B, H, Tk, hd): the value rows each query head reads
    ok = _ok_mask(case)
    if case.config.sinks is not None:  # the sink is one more row, of zeros, that every query sees
        V = np.concatenate([V, np.zeros_like(V[:, :, :1])], axis=2)  # (B, H, Tk + 1, hd)
        ok = np.concatenate([np.broadcast_to(ok, (*ok.shape[:3], ok.shape[-1])),
                             np.ones((*ok.shape[:3], 1), dtype=bool)], axis=-1)  # (B, 1, Tq, Tk + 1)
    excursion = inv.context_in_convex_hull(got, V, ok)
    # the plain reference's own excursion, worst of its runs
    allowed = max(inv.context_in_convex_hull(r, V, ok) for r in plain.runs)
    scale = max(float(np.max(np.abs(V), initial=0.0)), 1.0)
    # golden excursion is 0: compare the backend's with K x the plain reference's, plus the floor
    run.assert_close("step 9 excursion outside the value rows' range", np.array([excursion / scale]),
                     np.zeros(1), np.array([allowed / scale]), floor_scale=2.0)


@check(step=9, strategy=_causal_cases, needs=("causal",))
def first_causal_row_equals_first_value(run, case):
    """With the causal mask, query 0 sees only key 0: context[:, :, 0] == V[:, :, 0] (with sinks:
    times key 0's weight, 1 minus the sink's share)."""
    trace = step_inputs(case)
    V, got = S.repeat_kv(trace["v"], case.config.n_heads), run.table_step(9, case, trace)  # V per query head
    if case.config.sinks is None:
        run.assert_close("step 9 first causal row", got[:, :, 0], V[:, :, 0], V[:, :, 0])
        return
    # with sinks: key 0's weight times V[0], the weight 1 minus the sink's share, rounded in D
    golden, plain = golden_and_plain(S.context, case.dtype, trace["attn_weights"], trace["v"])
    run.assert_close("step 9 first causal row (key 0's weight beside the sink)", got[:, :, 0], golden[:, :, 0],
                     plain[:, :, 0])


# -- step 12 --------------------------------------------------------------------------------
@check(step=12, strategy=everyday_cases)
def out_proj_matches_spec(run, case):
    """output = context @ W_o.T + b_o, with the output bias."""
    step_matches_spec(run, case, 12, step_inputs(case))
