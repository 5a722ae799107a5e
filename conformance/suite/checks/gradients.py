"""Gradients: every backend declaring `gradients` is checked against the spec's backward.

Each check draws a case and a grad_out (standard normal, rounded to the dtype), asks the
backend for the block's gradients (`Runner.grads`: forward_for_grad, then backward) and holds
them to the tolerance model against `spec.block.grads` (conformance/suite/grad_reference.py:
the golden, the plain reference over correct backward orders, and the scale each gradient is
compared on). Gradient checks form their own group in the report ("gradients").
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import strategies as st

from conformance.suite import strategies as cs
from conformance.suite.case import round_to
from conformance.suite.checks import CheckFailure, check
from conformance.suite.checks.dropout import P_VALUES
from conformance.suite.checks.localize_backward import first_wrong_vjp
from conformance.suite.conditioning import decided_output_rows
from conformance.suite.grad_reference import golden_and_plain_grads, sizes
from conformance.suite.tolerance import compare, largest_finite
from conformance.suite.judgement import active
from conformance.suite.reused import reused
from spec import invariants as inv
from spec.block import sample_dropout_mask
from spec.config import AttentionConfig

GROUP = "gradients"


def grad_out_for(case, seed: int | None = None) -> np.ndarray:
    """A standard normal grad_out [B, T, d_out] from the case's grad seed, rounded to the dtype."""
    rng = np.random.default_rng(case.extra["grad_seed"] if seed is None else seed)
    g = round_to(rng.standard_normal((case.B, case.T, case.config.d_out)), case.dtype)
    # rows a declared convention decides (a query with no visible key, a padded query) take no
    # part in the gradients: their forward values are the convention's, their VJP the backend's own
    g[active().governed(case.config, case.B, case.T, case.key_padding_mask)] = 0.0
    return g


def _with_grad_seed(draw, case):
    return case.with_(extra={**case.extra, "grad_seed": draw(st.integers(0, 2**31 - 1))})


@reused
@st.composite
def grad_cases(draw, caps, dtype, causal=None, min_tokens=1):
    """An everyday case and the seed of its grad_out."""
    return _with_grad_seed(draw, draw(cs.cases(caps, dtype, causal=causal, min_tokens=min_tokens, grads=True)))


def assert_grads_close(run, case, got: dict, grad_out: np.ndarray, what: str, dropout: bool = False,
                       reference: tuple | None = None) -> None:
    """Every gradient within the tolerance model on its scale; the message names each one that is not.

    `reference` = (golden, plain) by name replaces the spec's on (case, grad_out)."""
    golden, plain = reference or golden_and_plain_grads(case, grad_out, dropout)
    size = sizes(case, grad_out, dropout)
    bad, worst = [], None
    for name, g in golden.items():
        c = run.observe(f"{what} {name}", compare(got[name], g, plain[name], case.dtype,
                                                  scale=max(size[name], float(np.max(np.abs(g), initial=0.0)))))
        if not c.ok:
            bad.append(f"{name}: {c.summary()} (scale {c.scale:.3g})")
            worst = c if worst is None or c.err / c.allowed > worst.err / worst.allowed else worst
    if bad:
        raise CheckFailure(f"{what}: {len(bad)} of {len(golden)} gradients wrong; " + "; ".join(bad),
                           worst.err, worst.allowed)


#: A gradient example costs about 16 forwards (the backend's backward, the golden, three plain
#: runs and the magnitudes): the size regime's large shapes are drawn within 1/16 of its budget.
GRAD_BUDGET_SCALE = 1 / 16


@st.composite
def _sized_grad_cases(draw, caps, dtype):
    return _with_grad_seed(draw, draw(cs.cases(caps, dtype, large=True, budget_scale=GRAD_BUDGET_SCALE,
                                                       grads=True, bias_array=True)))


def _grouped_grad_cases(caps, dtype) -> list:
    """The fixed grouped-query examples (cs.grouped_representatives, none unless grouped_kv), with a grad seed."""
    return [c.with_(extra={**c.extra, "grad_seed": c.seed}) for c in cs.grouped_representatives(caps, dtype)]


#: Past this T the gradient checks' fixed examples sit: one past a 256-row tile, and the longest
#: T their budget allows (about 410 in float16, 440 in float64: T past 512 fits only float32 and bfloat16).
GRAD_LONG_PAST = 256


def grad_representatives(caps, dtype) -> list:
    """Fixed examples at the size classes' edges within the gradient budget, every dtype: each class's
    first edge that fits (H = 9, head_dim = 72, d_in = 70, B x H = 33, T = 513 where it fits), T = 257
    and the longest T that fits. Run before the drawn examples, as `matches_spec`'s are."""
    reps = cs.class_representatives(caps, dtype, budget_scale=GRAD_BUDGET_SCALE, first_edges=True,
                                    long_past=GRAD_LONG_PAST)
    return ([c.with_(extra={**c.extra, "grad_seed": c.T * 7 + c.config.d_out}) for c in reps]
            + _grouped_grad_cases(caps, dtype) + _score_term_grad_cases(caps, dtype))


def _score_term_grad_cases(caps, dtype) -> list:
    """Fixed examples for a backend declaring a bias or sinks, B = 3, 4 heads, T = 9: a bias array per
    head (its batch axis broadcast, so dbias sums over the 3 rows); and the sinks with batch row 1's
    first keys padded (its early causal queries see nothing: the sink takes their rows)."""
    param_scale = cs.value_scales(dtype)[1][0]
    out = []
    if caps.bias:
        bias = round_to(np.random.default_rng(27).standard_normal((1, 4, 9, 9)) * 2.0, dtype)  # (1, H, T, T)
        config = AttentionConfig(d_in=8, d_out=16, n_heads=4, causal=caps.causal, bias=bias)
        out.append(cs.case_from(config, 3, 9, dtype, seed=27, param_scale=param_scale))
    if caps.sinks and caps.key_padding_mask:
        config = AttentionConfig(d_in=8, d_out=16, n_heads=4, causal=caps.causal, sinks=(0.5, -1.0, 2.0, 0.0))
        kpm = np.ones((3, 9), dtype=bool)
        kpm[1, :3] = False
        out.append(cs.case_from(config, 3, 9, dtype, seed=28, param_scale=param_scale).with_(key_padding_mask=kpm))
    return [c.with_(extra={**c.extra, "grad_seed": c.seed}) for c in out]


@check(step=None, strategy=_sized_grad_cases, needs=("gradients",), group=GROUP,
       examples=grad_representatives)
def grads_match_spec(run, case):
    """Every gradient (dx, dW_q, dW_k, dW_v, dW_o, db_o, db_q/k/v) matches the spec's backward."""
    g = grad_out_for(case)
    got = run.grads(case, g)
    try:
        assert_grads_close(run, case, got, g, "gradients")
    except CheckFailure as e:
        diagnosis = first_wrong_vjp(run, case, g)
        if diagnosis is None:
            raise
        raise CheckFailure(f"{e}; {diagnosis}", e.max_error, e.tolerance) from None


@st.composite
def _split_grad_cases(draw, caps, dtype, causal=None):
    case = draw(grad_cases(caps, dtype, causal=causal, min_tokens=2))
    return case.with_(extra={**case.extra, "t": draw(st.integers(0, case.T - 2))})


@check(step=None, strategy=_split_grad_cases, needs=("gradients",), group=GROUP)
def grads_linear_in_grad_out(run, case):
    """Gradients for grad_out = g1 + g2 (rows split at t) equal the sum of the gradients for g1 and g2."""
    t = case.extra["t"]
    g = grad_out_for(case)
    g1, g2 = g.copy(), g.copy()
    g1[:, t + 1:] = 0  # disjoint rows: g1 + g2 == g exactly, in any dtype
    g2[:, :t + 1] = 0
    a, b = run.grads(case, g1), run.grads(case, g2)
    (gold1, p1), (gold2, p2) = golden_and_plain_grads(case, g1), golden_and_plain_grads(case, g2)
    # two backend results, each with its own rounding: the plain runs of g1 and g2, added run by run
    reference = ({k: gold1[k] + gold2[k] for k in gold1}, {k: p1[k] + p2[k] for k in p1})
    assert_grads_close(run, case, {k: a[k] + b[k] for k in a}, g,
                       f"grads(g1) + grads(g2) vs grads(g1 + g2), grad_out's rows split after {t}",
                       reference=reference)


@check(step=None, strategy=lambda caps, dtype: _split_grad_cases(caps, dtype, causal=True),
       needs=("gradients", "causal"), group=GROUP)
def grads_flow_causally(run, case):
    """With grad_out zero past row t, dx is exactly zero past t (a later token never feeds an earlier output)."""
    t = case.extra["t"]
    g = grad_out_for(case)
    g[:, t + 1:] = 0
    got = run.grads(case, g)
    run.assert_exact(f"dx past row {t} with grad_out zero past row {t}",
                     float(np.max(np.abs(np.nan_to_num(got["dx"][:, t + 1:], nan=np.inf)), initial=0.0)))
    assert_grads_close(run, case, got, g, f"gradients with grad_out zero past row {t}")


@st.composite
def _padded_grad_cases(draw, caps, dtype):
    case = draw(grad_cases(caps, dtype))
    kpm = np.ones((case.B, case.T), dtype=bool)
    kpm[:, : max(1, case.T // 2)] = False  # left padding: early causal queries see nothing
    return case.with_(key_padding_mask=kpm)


@check(step=None, strategy=_padded_grad_cases, needs=("gradients", "key_padding_mask"), group=GROUP)
def grads_padded_and_empty_rows(run, case):
    """Padded keys and fully masked queries: no NaN, exactly zero dx where the spec's is, the rest as the spec."""
    g = grad_out_for(case)
    got = run.grads(case, g)
    for name, a in got.items():
        run.assert_exact(f"{name} finite with padding", inv.all_finite(a))
    # a padded token whose own query sees no key feeds nothing: its dx is exactly 0 in the spec
    empty = ~inv.attendable(case.config, case.B, case.T, case.T, case.key_padding_mask)[:, 0].any(-1)  # (B, T)
    dead = empty & ~case.key_padding_mask
    run.assert_exact(f"dx of {int(dead.sum())} padded tokens whose queries see no key",
                     float(np.max(np.abs(got["dx"][dead]), initial=0.0)))
    assert_grads_close(run, case, got, g, "gradients with padding")


#: Scores the gradients are checked at: past exp's overflow (88 in float32, 11 in float16), yet
#: where one rounding of a score in float32 (what bfloat16 and float32 backwards recompute in)
#: stays near 1/16. A backward recomputes its weights as exp(s - lse): at |s| = 1e11 the
#: exponent is only known to +-8192 in float32, and PyTorch's CPU SDPA backward then returns
#: inf (float32) or zero (bfloat16) gradients (torch 2.13, measured), not a property of the
#: block. float64 keeps the forward's 1e11; float16 the forward's 2e4.
GRAD_LOGIT_TARGET = {"float64": 1e11, "float32": 5e5, "bfloat16": 5e5, "float16": 2e4}


@st.composite
def _large_grad_cases(draw, caps, dtype):
    return _with_grad_seed(draw, draw(cs.large_logit_cases(caps, dtype, target=GRAD_LOGIT_TARGET[dtype])))


@check(step=None, strategy=_large_grad_cases, needs=("gradients",), group=GROUP)
def grads_finite_at_large_logits(run, case):
    """Scores far past exp's overflow still give finite gradients, matching the spec where D decides every row."""
    g = grad_out_for(case)
    got = run.grads(case, g)
    size = sizes(case, g)
    top = largest_finite(case.dtype) / 4
    for name, a in got.items():
        # float16's large logits reach 2e4 and a weight gradient sums T of them times |x|: past
        # D's range the spec's own gradient is not representable, so finiteness is not asked there
        if size.get(name, 0.0) < top:
            run.assert_exact(f"{name} finite at large logits", inv.all_finite(a))
    # a near tie at the top is decided by one rounding, and every gradient sums over all rows:
    # compare only when D decides every query row
    if decided_output_rows(case.x, case.params, case.config, case.key_padding_mask, case.dtype).all():
        assert_grads_close(run, case, got, g, "gradients at large logits")


@st.composite
def _dropout_grad_cases(draw, caps, dtype):
    case = draw(grad_cases(caps, dtype))
    p = draw(st.sampled_from(P_VALUES))
    config = replace(case.config, dropout_p=p)
    mask = sample_dropout_mask((case.B, config.n_heads, case.T, case.T), p, seed=case.seed)
    return case.with_(config=config, dropout_mask=mask)


@check(step=None, strategy=_dropout_grad_cases, needs=("gradients", "grad_replay"), group=GROUP)
def grads_replay_dropout(run, case):
    """With a given keep mask, backward replays it: the gradients equal the spec's with the same mask."""
    g = grad_out_for(case)
    got = run.grads(case, g, training=True)
    assert_grads_close(run, case, got, g, f"gradients with dropout_p={case.config.dropout_p} and a given keep mask",
                       dropout=True)


def _head_perm_grad_cases(caps, dtype):
    return cs.head_perm_cases(caps, dtype, base=grad_cases(caps, dtype))


@check(step=None, strategy=_head_perm_grad_cases, needs=("gradients",), group=GROUP)
def grads_head_permutation_invariant(run, case):
    """Permuting heads consistently permutes the weight gradients the same way and leaves dx unchanged.

    With grouped K/V heads, the K/V heads move with their groups of query heads (cs.head_permutations).
    """
    q_idx, kv_idx = cs.head_perm_indices(case.config, case.extra["head_perm"])
    p = case.params
    idx_of = lambda k: q_idx if k[-1] in "qo" else kv_idx  # noqa: E731  W_q, b_q (and W_o's columns): query heads
    rows = {k: getattr(p, k)[idx_of(k)] for k in ("W_q", "W_k", "W_v", "b_q", "b_k", "b_v") if getattr(p, k) is not None}
    g = grad_out_for(case)
    config = cs.permuted_sinks(case.config, q_idx)  # each head's sink moves with its head
    got = run.grads(case.with_(params=replace(p, W_o=p.W_o[:, q_idx], **rows), config=config), g)
    # undo the permutation on the backend's gradients, then compare with the unpermuted spec
    inv = {k: np.argsort(idx_of(k)) for k in ("W_q", "W_k", "W_v", "W_o")}
    back = {k: (a[inv["W_" + k[-1]]] if k[1:] in rows else a[:, inv["W_o"]] if k == "dW_o" else a)
            for k, a in got.items()}
    if "dsinks" in back:
        back["dsinks"] = got["dsinks"][np.argsort(cs.head_order(case.config, q_idx))]
    assert_grads_close(run, case, back, g, f"gradients with heads permuted {case.extra['head_perm']}, permuted back")


@check(step=None, strategy=grad_cases, needs=("gradients", "deterministic"), group=GROUP)
def grads_deterministic(run, case):
    """The same inputs and grad_out twice give bit-identical gradients (no state kept between calls)."""
    g = grad_out_for(case)
    a, b = run.grads(case, g), run.grads(case, g)
    for name in a:
        same = np.array_equal(a[name], b[name], equal_nan=True)
        run.assert_exact(f"{name}: second call vs first call",
                         0.0 if same else float(np.nanmax(np.abs(a[name] - b[name]), initial=np.inf)))
