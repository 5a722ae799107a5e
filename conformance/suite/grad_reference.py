"""The gradients' golden and plain reference, and the scale each gradient is compared on.

The golden is `spec.block.grads` in float64 (long double when float64 is under test, as for
the forward). The plain reference (`reference.golden_and_plain`) spans, in dtype D: the spec's
order on the inputs; the spec's order on ulp-moved inputs (x, the weights and grad_out: the
problem's conditioning); and FlashAttention-2's order (`grads_flash`): the scale applied after
the score matmul and again to dq and dk, the softmax recomputed from its row log-sum-exp, and
the softmax backward's row term computed as rowsum(dO * O) instead of rowsum(P * dP); and the
same with the backward's recomputed scores rounded differently from the forward's, by an ulp
(`grads_flash_rescored`), as recomputing kernels do.

Scale. A gradient is a sum of products (dW_q sums dQ * x over every token); where those
products cancel, the gradient is near zero relative to its own terms and its rounding error is
relative to the terms, not to the result. db_k is the clearest case: the softmax does not change
when one adds the same q . b_k to every score of a row, so db_k is exactly 0 in exact arithmetic
and pure rounding in D. Every gradient is therefore compared on the scale
max(max |golden|, size), where size is the largest sum of magnitudes of the terms of one entry
(`sizes`: the backward run on magnitudes, e.g. |dQ| @ |W_q| + |dK| @ |W_k| + |dV| @ |W_v| for
dx, |dQ|^T |x| for dW_q, sum |dQ| for db_q, with |dQ| itself from magnitudes), so the softmax
backward's own cancellation (exact where the weights are one-hot) is measured on its terms too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.suite.case import Case
from conformance.suite.reference import golden_and_plain
from conformance.suite.tolerance import eps
from spec import backward as BW
from spec import steps as S
from spec.block import intermediates
from spec.block import grads as spec_grads
from spec.config import AttentionConfig
from spec.params import Params
from spec.scores import BiasArray, add_bias, reduce_to, sink_logits

#: The gradients in a fixed order; the bias ones only when qkv_bias, dsinks only with sinks,
#: dbias only with a bias array.
ORDER = ("dx", "dW_q", "dW_k", "dW_v", "dW_o", "db_o", "db_q", "db_k", "db_v", "dsinks", "dbias")


def grad_shapes(case: Case) -> dict[str, tuple[int, ...]]:
    """Each gradient the spec has for the case, by name, with its shape."""
    c = case.config
    shapes = {"dx": case.x.shape, "dW_q": (c.d_out, c.d_in), "dW_k": (c.d_kv, c.d_in),
              "dW_v": (c.d_kv, c.d_in), "dW_o": (c.d_out, c.d_out), "db_o": (c.d_out,)}
    if case.params.b_q is not None:
        shapes.update(db_q=(c.d_out,), db_k=(c.d_kv,), db_v=(c.d_kv,))
    if c.sinks is not None:
        shapes["dsinks"] = (c.n_heads,)
    if isinstance(c.bias, BiasArray):
        shapes["dbias"] = c.bias.shape
    return shapes


def _names(params: Params, config: AttentionConfig) -> tuple[str, ...]:
    names = ORDER[:9] if params.b_q is not None else ORDER[:6]
    return (names + (("dsinks",) if config.sinks is not None else ())
            + (("dbias",) if isinstance(config.bias, BiasArray) else ()))


def spec_order(x, params, config, grad_out, key_padding_mask=None, dropout_mask=None) -> tuple:
    """spec.block.grads as a tuple in ORDER (what golden_and_plain compares run by run)."""
    g = spec_grads(x, params, config, grad_out, key_padding_mask, dropout_mask).arrays()
    return tuple(g[k] for k in _names(params, config))


def grads_flash(x: np.ndarray, params: Params, config: AttentionConfig, grad_out: np.ndarray,
                key_padding_mask: np.ndarray | None = None, dropout_mask: np.ndarray | None = None,
                rescored: bool = False) -> tuple:
    """FlashAttention-2's backward order in x's dtype, the block's gradients as a tuple in ORDER.

    `rescored`: the backward's recomputed scores, and each row's lse, round differently from the
    forward's: a score by two roundings of its terms (|q| . |k| * scale; the forward's and the
    backward's each carry one), each row's lse as much as its largest score (another blocking or kernel for q @ k^T, the scale applied elsewhere), so the
    recomputed weights exp(s - lse) are off by about eps * |s| relative: what PyTorch's CPU
    SDPA backward shows (its dV off by ~30 float32 ulps at scores near 60, measured).
    """
    dt = x.dtype.type
    H, Hkv, hd = config.n_heads, config.kv_heads, config.head_dim
    Q, K_, V = S.project_qkv(x, params)  # (B, T, d_out), K and V (B, T, d_kv)
    q = S.heads(Q, H)  # (B, H, T, hd)
    k, v = (S.repeat_kv(S.heads(a, Hkv), H) for a in (K_, V))  # (B, H, T, hd): grouped K/V per query head
    scale = dt(1.0 / np.sqrt(hd))
    s = S.matmul(q, k.swapaxes(-2, -1)) * scale  # (B, H, Tq, Tk): FA2 scales the product
    s = S.softcap(s, config.softcap)  # (B, H, Tq, Tk): capped before the mask, as the spec
    capped = s
    s = add_bias(s, config.bias)  # (B, H, Tq, Tk): the bias after the cap, before the mask
    s = np.where(~S.visible(*s.shape[2:], config.causal, key_padding_mask, config.window), dt(-np.inf), s)  # the spec's mask
    sink = sink_logits(config.sinks, x.dtype)  # (1, H, 1, 1) or None: one more logit of each row
    m = s.max(axis=-1, keepdims=True)
    if sink is not None:
        m = np.maximum(m, sink)
    m = np.where(np.isfinite(m), m, dt(0))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        total = np.exp(s - m).sum(axis=-1, keepdims=True)  # (B, H, Tq, 1)
        if sink is not None:
            total = total + np.exp(sink - m)
        lse = (m + np.log(total)).astype(x.dtype)  # the row statistic FA2 saves
        if rescored:  # the backward's own rounding of each score and of each row's lse: an ulp either way
            rng = np.random.default_rng(1)
            # a score's rounding is eps times its terms' size, |q| @ |k|^T * scale; the forward's
            # and the backward's scores each carry one, so they may differ by two
            terms = S.matmul(np.abs(q).astype(np.float64), np.abs(k).astype(np.float64).swapaxes(-2, -1))
            ulp = 2 * np.maximum(np.abs(s).astype(np.float64), terms / np.sqrt(hd)) * eps(x.dtype.name)
            moved = rng.choice([-1.0, 1.0], s.shape) * np.where(np.isfinite(s), ulp, 0)
            # the lse moves against its row's largest score, whose weight (most of the row's, often
            # nearly 1) then moves by both roundings: with a random sign the two cancelled half the
            # time, and a row whose weight is all on one key kept it exact in every plain run while
            # nn.MultiheadAttention's float64 backward has it an ulp of that score away (dV 500 ulps)
            top = np.argmax(np.where(np.isfinite(s), s, -np.inf), axis=-1)[..., None]  # (B, H, Tq, 1)
            against = -np.where(np.take_along_axis(moved, top, axis=-1) < 0, -1.0, 1.0)  # (B, H, Tq, 1)
            s = (s + moved.astype(x.dtype)).astype(x.dtype)
            big = np.max(np.where(np.isfinite(ulp), ulp, 0), axis=-1, keepdims=True)  # (B, H, Tq, 1)
            row = against * np.maximum(np.abs(lse).astype(np.float64) * eps(x.dtype.name), big)
            lse = (lse + np.where(np.isfinite(lse), row, 0).astype(x.dtype)).astype(x.dtype)
        P = np.where(total > 0, np.exp(s - np.where(total > 0, lse, dt(0))), dt(0)).astype(x.dtype)
    keep = dt(1.0 / (1.0 - config.dropout_p))
    Pd = P if dropout_mask is None else np.where(dropout_mask, P * keep, dt(0)).astype(x.dtype)
    O = S.matmul(Pd, v)  # (B, H, Tq, hd)
    concat = S.merge_heads(O)  # (B, T, d_out)
    d_concat, d_p = BW.out_proj_vjp(grad_out, concat, params)
    dO = S.heads(d_concat, H)  # (B, H, Tq, hd)
    dv = S.matmul(Pd.swapaxes(-2, -1), dO)  # (B, H, Tk, hd)
    dPd = S.matmul(dO, v.swapaxes(-2, -1))  # (B, H, Tq, Tk)
    dP = dPd if dropout_mask is None else np.where(dropout_mask, dPd * keep, dt(0)).astype(x.dtype)
    D = (dO * O).sum(axis=-1, keepdims=True)  # (B, H, Tq, 1): FA2's row term, rowsum(dO * O)
    dS = (P * (dP - D)).astype(x.dtype)
    d_bias = reduce_to(dS, config.bias.shape).astype(x.dtype) if isinstance(config.bias, BiasArray) else None
    d_sinks = None
    if sink is not None:  # d sink_h = -sum w_sink * D, the sink's weight exp(sink - lse)
        with np.errstate(over="ignore", invalid="ignore"):
            w_sink = np.where(total > 0, np.exp(sink - np.where(total > 0, lse, dt(0))), dt(0)).astype(x.dtype)
        d_sinks = (-(w_sink * D).sum(axis=(0, 2, 3))).astype(x.dtype)  # (H,)
    if config.softcap is not None:  # the softcap's derivative 1 - tanh^2 = 1 - (s / c)^2 at the capped s
        t = np.where(P == 0, dt(0), capped / dt(config.softcap))  # masked (P = 0, s = -inf): no gradient
        dS = (dS * (dt(1) - t * t)).astype(x.dtype)
    dq = S.matmul(dS, k) * scale  # (B, H, Tq, hd)
    dk = S.matmul(dS.swapaxes(-2, -1), q) * scale  # (B, H, Tk, hd)
    dk, dv = BW.sum_groups(dk, Hkv), BW.sum_groups(dv, Hkv)  # (B, Hkv, T, hd): summed over each group
    dx, d_in = BW.project_qkv_vjp(S.merge_heads(dq), S.merge_heads(dk), S.merge_heads(dv), x, params)
    g = {"dx": dx, **{"d" + n: a for n, a in {**d_in, **d_p}.items()}, "dsinks": d_sinks, "dbias": d_bias}
    return tuple(np.asarray(g[n]).astype(x.dtype, copy=False) for n in _names(params, config))


def grads_flash_rescored(*args, **kwargs) -> tuple:
    """grads_flash with the backward's scores rounded differently from the forward's (see there)."""
    return grads_flash(*args, **kwargs, rescored=True)


#: The backward's correct orders besides the spec's own (same signature as spec_order).
ORDERS = (grads_flash, grads_flash_rescored)


def golden_and_plain_grads(case: Case, grad_out: np.ndarray, dropout: bool = False) -> tuple[dict, dict]:
    """(golden, plain) by gradient name for the case (its keep mask replayed when `dropout`)."""
    dmask = case.dropout_mask if dropout else None
    golden, plain = golden_and_plain(spec_order, case.dtype, case.x, case.params, case.config, grad_out,
                                     case.key_padding_mask, dmask, orders=ORDERS)
    names = _names(case.params, case.config)
    return dict(zip(names, golden)), dict(zip(names, plain))


def sizes(case: Case, grad_out: np.ndarray, dropout: bool = False) -> dict[str, float]:
    """Per gradient, the largest sum of |terms| of one entry: the backward run on magnitudes.

    Each linear step's VJP applied to |cotangent| and |forward values| gives, per entry, the sum
    of the magnitudes of the products it adds up. The softmax backward dS = P * (dP - rowsum(P * dP))
    cancels (exactly, where P is one-hot), so its magnitude is P * (|dP| + rowsum(P * |dP|)). In
    float64, from the spec's own forward trace.
    """
    dmask = case.dropout_mask if dropout else None
    c, p, H = case.config, case.params.map(np.abs), case.config.n_heads
    tr = intermediates(case.x, case.params, c, case.key_padding_mask, dmask)
    a = {k: np.abs(tr[k]) for k in ("x", "Q", "q", "k", "v", "attn_weights", "context_concat")}
    d_concat, d_o = BW.out_proj_vjp(np.abs(grad_out), a["context_concat"], p)
    d_w, dv = BW.context_vjp(S.heads(d_concat, H), a["attn_weights"], a["v"])  # (B, H, Tq, Tk), (B, H, Tk, hd)
    P = S.attn_weights(tr["attn_scores"], c, case.key_padding_mask)  # before dropout
    dP = d_w if dmask is None else np.where(dmask, d_w / (1.0 - c.dropout_p), 0.0)
    dS = P * (dP + (P * dP).sum(axis=-1, keepdims=True)) / np.sqrt(c.head_dim)
    d_bias = reduce_to(dS * np.sqrt(c.head_dim), c.bias.shape) if isinstance(c.bias, BiasArray) else None
    dq, dk = BW.attn_scores_vjp(dS, a["q"], a["k"])  # dk, dv (B, Hkv, Tk, hd): |terms| summed over each group
    dx, d_in = BW.project_qkv_vjp(S.merge_heads(dq), S.merge_heads(dk), S.merge_heads(dv), a["x"], p)
    out = {"dx": dx, **{"d" + k: v for k, v in {**d_in, **d_o}.items()}}
    if c.sinks is not None:  # d sink_h sums w_sink * rowsum(P * dP) over b and i: its terms' magnitudes
        w_sink = S.sink_weight(tr["attn_scores"], c, case.key_padding_mask)  # (B, H, Tq, 1)
        out["dsinks"] = (w_sink * (P * dP).sum(axis=-1, keepdims=True)).sum(axis=(0, 2, 3))  # (H,)
    if d_bias is not None:  # a bias array's gradient sums the unscaled dS over its broadcast axes
        out["dbias"] = d_bias
    return {n: float(np.max(out[n], initial=0.0)) for n in _names(case.params, c)}
