"""End-to-end properties of the whole block, run on every backend through `forward` alone.

The comparison with the spec, causality, prefix consistency, batch independence, padding and
fully masked rows, and output dtype/shape draw from the size regime (`conformance.suite.sizes`): a
share of their examples at the sizes real kernels run at, and matches_spec first runs fixed
representatives of every size class. The others stay at small sizes, to keep the default run
within its time: their extra draws (token permutations, a second case) grow with size.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import strategies as st

from conformance.suite import strategies as cs
from conformance.suite.case import round_to
from conformance.suite.checks import CheckFailure, check, everyday_cases
from conformance.suite.checks.localize import first_wrong_step
from conformance.suite.conditioning import decided_output_rows
from conformance.suite.judgement import active
from conformance.suite.reference import forward_golden_and_plain, leading_golden_and_plain
from spec import conventions as conv
from spec import invariants as inv
from spec.config import AttentionConfig


def _rows(run, case) -> np.ndarray:
    """[B, T]: the rows a property judges (those no declared row convention decides)."""
    return run.property_rows(case.config, case.key_padding_mask, case.B, case.T)


def _sized_cases(caps, dtype):
    return cs.cases(caps, dtype, large=True, bias_array=True)


@check(step=None, strategy=_sized_cases, examples=cs.class_representatives)
def matches_spec(run, case):
    """The whole block matches the float64 spec within the tolerance model."""
    got = run.forward(case)
    golden, plain = forward_golden_and_plain(case)
    try:
        run.assert_close("forward", got, golden, plain)
    except CheckFailure as e:
        words = row_in_words(case, e.where)
        if words:  # the probe of this row says more than any step could
            raise CheckFailure(f"{e}; {words}", e.max_error, e.tolerance, e.where) from None
        diagnosis = first_wrong_step(run, case)
        if diagnosis is None:
            raise
        raise CheckFailure(f"{e}; {diagnosis}", e.max_error, e.tolerance, e.where) from None


def row_in_words(case, where: tuple[int, ...] | None) -> str | None:
    """What is special about the output row of the worst element [b, t, :], in plain words, or None."""
    if where is None or len(where) != 3 or case.key_padding_mask is None:
        return None
    b, t = where[0], where[1]
    if conv.empty_rows(case.config, case.B, case.T, case.T, case.key_padding_mask)[b, t]:
        return (f"query {t} of batch element {b} has no visible key (every key "
                f"{'up to it ' if case.config.causal else ''}is padding): the spec gives it a zero context, "
                f"so its output is b_o")
    if not case.key_padding_mask[b, t]:
        return (f"query {t} of batch element {b} is a padded token that sees keys: the spec computes its output "
                f"like any other row (the padding mask masks keys, not queries)")
    return None


@check(step=None, strategy=_sized_cases)
def output_dtype_and_shape(run, case):
    """forward returns an array of shape [B, T, d_out] in the input's dtype, with no NaN or inf."""
    got = run.forward(case)  # shape and dtype are checked on the way back
    run.assert_exact("forward output finite", inv.all_finite(got[_rows(run, case)]))


@st.composite
def _split_cases(draw, caps, dtype, causal=None, min_batch=1, padding=True):
    case = draw(cs.cases(caps, dtype, causal=causal, min_tokens=2, min_batch=min_batch, padding=padding,
                         large=True))
    t = draw(st.integers(0, case.T - 2))
    return case.with_(extra={**case.extra, "t": t, "perturb_seed": draw(st.integers(0, 2**31 - 1))})


def _perturbed(case, where):
    """x with the entries selected by `where` (an index tuple) replaced by new, larger values."""
    x = case.x.copy()
    rng = np.random.default_rng(case.extra["perturb_seed"])
    x[where] = round_to(rng.standard_normal(x[where].shape) * case.x_scale * 4, case.dtype)
    return x


@check(step=None, strategy=lambda caps, dtype: _split_cases(caps, dtype, causal=True),
       needs=("causal",))
def causality(run, case):
    """Changing tokens after position t leaves every output up to t unchanged."""
    t = case.extra["t"]
    x2 = _perturbed(case, np.s_[:, t + 1:])
    y1, y2 = run.forward(case), run.forward(case.with_(x=x2))
    # the allowance's scale, on the compared rows; agreement is matches_spec's job
    golden, plain = leading_golden_and_plain(case, tokens=t + 1)  # (B, t + 1, d_out)
    rows = _rows(run, case)[:, : t + 1]
    run.assert_same(f"outputs 0..{t} after changing tokens {t + 1}.. vs before", y2[:, : t + 1], y1[:, : t + 1],
                    golden, plain, rows)


@check(step=None, strategy=lambda caps, dtype: _split_cases(caps, dtype, causal=True),
       needs=("causal",))
def prefix_consistency(run, case):
    """Running on the first t tokens gives the first t outputs of the full run."""
    t = case.extra["t"] + 1
    kpm = None if case.key_padding_mask is None else case.key_padding_mask[:, :t]
    y_full = run.forward(case)
    y_pre = run.forward(case.with_(x=case.x[:, :t], key_padding_mask=kpm))
    golden, plain = leading_golden_and_plain(case, tokens=t)  # (B, t, d_out)
    run.assert_same(f"forward(x[:, :{t}]) vs forward(x)[:, :{t}]", y_pre, y_full[:, :t], golden, plain,
                    _rows(run, case)[:, :t])


@check(step=None, strategy=lambda caps, dtype: _split_cases(caps, dtype, min_batch=2))
def batch_independence(run, case):
    """Changing batch elements 1.. leaves the output of batch element 0 unchanged."""
    x2 = _perturbed(case, np.s_[1:])
    y1, y2 = run.forward(case), run.forward(case.with_(x=x2))
    golden, plain = leading_golden_and_plain(case, batch=1)  # (1, T, d_out)
    run.assert_same("output of batch element 0 after changing the others vs before", y2[:1], y1[:1], golden,
                    plain, _rows(run, case)[:1])


@st.composite
def _perm_cases(draw, caps, dtype):
    case = draw(cs.cases(caps, dtype, causal=False))
    if case.config.window is not None:  # a window is positional: permuting the tokens changes who sees whom
        case = case.with_(config=replace(case.config, window=None))
    if case.config.bias is not None:  # so is ALiBi: it changes how far each key is
        case = case.with_(config=replace(case.config, bias=None))
    perm = draw(st.permutations(range(case.T)))
    return case.with_(extra={**case.extra, "perm": list(perm)})


@check(step=None, strategy=_perm_cases, needs=("non_causal",))
def permutation_equivariance(run, case):
    """Without the causal mask, permuting the tokens (and the padding mask) permutes the outputs."""
    perm = np.array(case.extra["perm"], dtype=int)
    kpm = None if case.key_padding_mask is None else case.key_padding_mask[:, perm]
    y, y_perm = run.forward(case), run.forward(case.with_(x=case.x[:, perm], key_padding_mask=kpm))
    golden, plain = forward_golden_and_plain(case)
    run.assert_same("forward(x[:, perm]) vs forward(x)[:, perm]", y_perm, y[:, perm], golden[:, perm], plain[:, perm],
                    _rows(run, case)[:, perm])


@check(step=None, strategy=cs.head_perm_cases)
def head_permutation_invariance(run, case):
    """Permuting heads consistently in W_q, W_k, W_v (rows) and W_o (columns) changes nothing.

    With grouped K/V heads the K/V heads move together with their groups of query heads (and
    query heads may move within their group): the output's heads are permuted, then W_o's
    columns put them back.
    """
    q_idx, kv_idx = cs.head_perm_indices(case.config, case.extra["head_perm"])
    p = case.params
    rows = {k: getattr(p, k)[q_idx if k[-1] == "q" else kv_idx] for k in ("W_q", "W_k", "W_v", "b_q", "b_k", "b_v")
            if getattr(p, k) is not None}
    permuted = replace(p, W_o=p.W_o[:, q_idx], **rows)  # W_o's columns are the concatenated heads
    config = cs.permuted_sinks(case.config, q_idx)  # each head's sink moves with its head
    y, got = run.forward(case), run.forward(case.with_(params=permuted, config=config))
    golden, plain = forward_golden_and_plain(case)
    run.assert_same(f"forward with heads permuted {case.extra['head_perm']} vs unpermuted", got, y, golden, plain,
                    _rows(run, case))


@check(step=None, strategy=everyday_cases)
def zero_wq_uniform_attention(run, case):
    """With W_q = 0 every score is 0: causal output is the running mean of V, projected."""
    if case.config.bias is not None or case.config.sinks is not None:  # the oracle is for plain scores
        case = case.with_(config=replace(case.config, bias=None, sinks=None))
    p = replace(case.params, W_q=np.zeros_like(case.params.W_q),
                b_q=None if case.params.b_q is None else np.zeros_like(case.params.b_q))
    got = run.forward(case.with_(params=p))
    # closed form in float64: uniform weights over the attendable keys of each query
    V = case.x @ p.W_v.T + (0 if p.b_v is None else p.b_v)  # (B, T, d_kv)
    V = cs.kv_to_query_heads(V, case.config)  # (B, T, d_out): each query head's V
    kpm = active().mask(case.key_padding_mask)  # as the judgement reads it (the diagnosis's hypotheses)
    ok = inv.attendable(case.config, case.B, case.T, case.T, kpm)[:, 0]  # (B, T, T)
    counts = ok.sum(-1, keepdims=True)
    mean_v = (ok / np.maximum(counts, 1)) @ V  # (B, T, d_out); zero rows where nothing is attendable
    oracle = mean_v @ p.W_o.T + p.b_o
    adjusted = conv.adjusted_rows(active().conventions, case.x, p, case.config, kpm)
    if adjusted is not None:  # rows a declared convention decides hold its values
        oracle = np.where(adjusted[0][..., None], adjusted[1], oracle)
    _, plain = forward_golden_and_plain(case, params=p)
    run.assert_close("forward with W_q = 0 vs the running-mean oracle", got, oracle, plain)


@check(step=None, strategy=everyday_cases, needs=("deterministic",))
def deterministic_on_repeat(run, case):
    """The same inputs twice give bit-identical outputs."""
    y1, y2 = run.forward(case), run.forward(case)
    diff = float(np.max(np.abs(y1 - y2), initial=0.0)) if np.isfinite(y1).all() and np.isfinite(y2).all() \
        else (0.0 if np.array_equal(y1, y2, equal_nan=True) else float("inf"))
    run.assert_exact("second call vs first call", diff)


@st.composite
def _two_cases(draw, caps, dtype):
    a = draw(cs.cases(caps, dtype))
    b = draw(cs.cases(caps, dtype, padding=False))
    other = {"config": b.config.to_dict(), "B": b.B, "T": b.T, "seed": b.seed, "x_scale": b.x_scale}
    return a.with_(extra={**a.extra, "other": other})


@check(step=None, strategy=_two_cases, needs=("deterministic",))
def independent_of_previous_calls(run, case):
    """A call's result does not depend on earlier calls with other shapes or configs."""
    o = case.extra["other"]
    other = cs.case_from(AttentionConfig.from_dict(o["config"]), o["B"], o["T"], case.dtype, o["seed"], o["x_scale"])
    y1 = run.forward(case)
    run.forward(other)
    y2 = run.forward(case)
    same = np.array_equal(y1, y2, equal_nan=True)
    run.assert_exact(f"call after a call with B={other.B}, T={other.T}, {other.config}",
                     0.0 if same else float(np.nanmax(np.abs(y1 - y2), initial=np.inf)))


def _leaves(obj):
    """Arrays inside a prepared-weights object (Params, dict, tuple, list), by path."""
    if hasattr(obj, "arrays") and callable(obj.arrays):
        yield from obj.arrays().items()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from ((f"{k}.{p}" if p else str(k), a) for p, a in _leaves(v)) if isinstance(v, (dict, list, tuple)) else [(str(k), v)]
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from ((f"{i}.{p}", a) for p, a in _leaves(v))
    else:
        yield "", obj


@check(step=None, strategy=everyday_cases)
def inputs_not_mutated(run, case):
    """forward leaves its input arrays (x, weights, padding mask) unchanged."""
    x = run.native(case.x)
    kpm = run.native(case.key_padding_mask)
    w = run.weights(case.params)
    snap = {}
    for name, obj in [("x", x), ("key_padding_mask", kpm)] + [(f"weights {p}", a) for p, a in _leaves(w)]:
        if obj is None:
            continue
        try:
            snap[name] = (obj, np.array(run.backend.to_numpy(obj), copy=True))
        except Exception as e:  # a weight that is no array of this backend (a scalar, a config): nothing to watch
            if name == "x":  # but x is the backend's own array: without it nothing could be checked
                raise CheckFailure(f"to_numpy() of the backend's own input array x raised {type(e).__name__}: {e}; "
                                   f"nothing could be checked") from None
            continue
    kwargs = {} if kpm is None else {"key_padding_mask": kpm}
    run.call("forward", run.backend.forward, x, w, case.config, **kwargs)
    run.call("synchronize", run.backend.synchronize)
    for name, (obj, before) in snap.items():
        after = np.asarray(run.backend.to_numpy(obj))
        if not np.array_equal(before, after, equal_nan=before.dtype.kind == "f"):
            changed = int(np.sum(before != after))
            raise CheckFailure(f"forward modified its input {name} in place ({changed} of {before.size} elements changed)")


@st.composite
def _large_cases(draw, caps, dtype):
    return draw(cs.large_logit_cases(caps, dtype))


@check(step=None, strategy=_large_cases)
def finite_for_large_logits(run, case):
    """Scores far past exp's overflow still give finite outputs that match the spec."""
    got = run.forward(case)
    run.assert_exact("forward finite at large logits", inv.all_finite(got[_rows(run, case)]))
    golden, plain = forward_golden_and_plain(case)
    # a near tie at the top is decided by one rounding: compare the rows that D decides
    rows = decided_output_rows(case.x, case.params, case.config, case.key_padding_mask, case.dtype)  # (B, T)
    run.assert_close(f"forward at large logits ({int(rows.sum())} of {rows.size} query rows without a near tie)",
                     got[rows], golden[rows], plain[rows])


@st.composite
def _padded_cases(draw, caps, dtype):
    case = draw(cs.cases(caps, dtype, large=True))
    kpm = np.ones((case.B, case.T), dtype=bool)
    kpm[:, : max(1, case.T // 2)] = False  # left padding: early causal queries see nothing
    return case.with_(key_padding_mask=kpm)


@check(step=None, strategy=_padded_cases, needs=("key_padding_mask",))
def fully_masked_queries_give_bias(run, case):
    """A query with no attendable key gets a zero context, so its output is exactly b_o (not NaN)."""
    got = run.forward(case)
    golden, plain = forward_golden_and_plain(case)
    empty = ~inv.attendable(case.config, case.B, case.T, case.T, case.key_padding_mask)[:, 0].any(-1)  # (B, T)
    run.assert_exact("forward finite with fully masked queries", inv.all_finite(got[_rows(run, case)]))
    run.assert_close(f"outputs of the {int(empty.sum())} queries with no visible key (the spec: b_o)", got[empty],
                     golden[empty], plain[empty])
    run.assert_close("forward with padding", got, golden, plain)
