"""The gradients' golden and plain reference, and the scale each gradient is compared on.

The golden is `spec.block.grads` in float64 (long double when float64 is under test, as for
the forward). The plain reference (`reference.golden_and_plain`) spans, in dtype D: the spec's
order on the inputs; the spec's order on ulp-moved inputs (x, the weights and grad_out: the
problem's conditioning); and FlashAttention-2's order (`grads_flash`): the scale applied after
the score matmul and again to dq and dk, the softmax recomputed from its row log-sum-exp, and
the softmax backward's row term computed as rowsum(dO * O) instead of rowsum(P * dP).

Scale. A gradient is a sum of products (dW_q sums dQ * x over every token); where those
products cancel, the gradient is near zero relative to its own terms and its rounding error is
relative to the terms, not to the result. db_k is the clearest case: the softmax does not change
when one adds the same q . b_k to every score of a row, so db_k is exactly 0 in exact arithmetic
and pure rounding in D. Every gradient is therefore compared on the scale
max(max |golden|, size), where size is the largest sum of magnitudes of the terms of one entry
(`sizes`: |dQ| @ |W_q| + |dK| @ |W_k| + |dV| @ |W_v| for dx, |dQ|^T |x| for dW_q, sum |dQ|
for db_q, and so on), computed from the golden's own cotangents.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.suite.case import Case
from conformance.suite.reference import golden_and_plain
from conformance.suite.tolerance import FLOOR, K, Comparison, plain_error
from spec import backward as BW
from spec import steps as S
from spec.block import backward_trace, intermediates
from spec.block import grads as spec_grads
from spec.config import AttentionConfig
from spec.params import Params

#: The gradients in a fixed order; the bias ones only when qkv_bias.
ORDER = ("dx", "dW_q", "dW_k", "dW_v", "dW_o", "db_o", "db_q", "db_k", "db_v")


def grad_shapes(case: Case) -> dict[str, tuple[int, ...]]:
    """Each gradient the spec has for the case, by name, with its shape."""
    c = case.config
    shapes = {"dx": case.x.shape, "dW_q": (c.d_out, c.d_in), "dW_k": (c.d_out, c.d_in),
              "dW_v": (c.d_out, c.d_in), "dW_o": (c.d_out, c.d_out), "db_o": (c.d_out,)}
    if case.params.b_q is not None:
        shapes.update(db_q=(c.d_out,), db_k=(c.d_out,), db_v=(c.d_out,))
    return shapes


def _names(params: Params) -> tuple[str, ...]:
    return ORDER if params.b_q is not None else ORDER[:6]


def spec_order(x, params, config, grad_out, key_padding_mask=None, dropout_mask=None) -> tuple:
    """spec.block.grads as a tuple in ORDER (what golden_and_plain compares run by run)."""
    g = spec_grads(x, params, config, grad_out, key_padding_mask, dropout_mask).arrays()
    return tuple(g[k] for k in _names(params))


def grads_flash(x: np.ndarray, params: Params, config: AttentionConfig, grad_out: np.ndarray,
                key_padding_mask: np.ndarray | None = None, dropout_mask: np.ndarray | None = None) -> tuple:
    """FlashAttention-2's backward order in x's dtype, the block's gradients as a tuple in ORDER."""
    dt = x.dtype.type
    H, hd = config.n_heads, config.head_dim
    heads = lambda a: S.group_by_heads(S.split_heads(a, H))  # noqa: E731  (B, T, d_out) -> (B, H, T, hd)
    Q, K_, V = S.project_qkv(x, params)  # (B, T, d_out)
    q, k, v = heads(Q), heads(K_), heads(V)  # (B, H, T, hd)
    scale = dt(1.0 / np.sqrt(hd))
    s = S._mm(q, k.swapaxes(-2, -1)) * scale  # (B, H, Tq, Tk): FA2 scales the product
    B, _, Tq, Tk = s.shape
    masked = np.zeros((B, 1, Tq, Tk), dtype=bool)
    if config.causal:
        masked = masked | S.causal_mask(Tq, Tk)
    if key_padding_mask is not None:
        masked = masked | ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
    s = np.where(masked, dt(-np.inf), s)
    m = s.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, dt(0))
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        total = np.exp(s - m).sum(axis=-1, keepdims=True)  # (B, H, Tq, 1)
        lse = (m + np.log(total)).astype(x.dtype)  # the row statistic FA2 saves
        P = np.where(total > 0, np.exp(s - np.where(total > 0, lse, dt(0))), dt(0)).astype(x.dtype)
    keep = dt(1.0 / (1.0 - config.dropout_p))
    Pd = P if dropout_mask is None else np.where(dropout_mask, P * keep, dt(0)).astype(x.dtype)
    O = S._mm(Pd, v)  # (B, H, Tq, hd)
    concat = S.concat_heads(S.permute_back(O))  # (B, T, d_out)
    d_concat, d_p = BW.out_proj_vjp(grad_out, concat, params)
    dO = heads(d_concat)  # (B, H, Tq, hd)
    dv = S._mm(Pd.swapaxes(-2, -1), dO)  # (B, H, Tk, hd)
    dPd = S._mm(dO, v.swapaxes(-2, -1))  # (B, H, Tq, Tk)
    dP = dPd if dropout_mask is None else np.where(dropout_mask, dPd * keep, dt(0)).astype(x.dtype)
    D = (dO * O).sum(axis=-1, keepdims=True)  # (B, H, Tq, 1): FA2's row term, rowsum(dO * O)
    dS = (P * (dP - D)).astype(x.dtype)
    dq = S._mm(dS, k) * scale  # (B, H, Tq, hd)
    dk = S._mm(dS.swapaxes(-2, -1), q) * scale  # (B, H, Tk, hd)
    back = lambda a: a.transpose(0, 2, 1, 3).reshape(Q.shape)  # noqa: E731  (B, H, T, hd) -> (B, T, d_out)
    dx, d_in = BW.project_qkv_vjp(back(dq), back(dk), back(dv), x, params)
    g = {"dx": dx, **{"d" + n: a for n, a in {**d_in, **d_p}.items()}}
    return tuple(np.asarray(g[n]).astype(x.dtype, copy=False) for n in _names(params))


def golden_and_plain_grads(case: Case, grad_out: np.ndarray, dropout: bool = False) -> tuple[dict, dict]:
    """(golden, plain) by gradient name for the case (its keep mask replayed when `dropout`)."""
    dmask = case.dropout_mask if dropout else None
    golden, plain = golden_and_plain(spec_order, case.dtype, case.x, case.params, case.config, grad_out,
                                     case.key_padding_mask, dmask, orders=(grads_flash,))
    names = _names(case.params)
    return dict(zip(names, golden)), dict(zip(names, plain))


def sizes(case: Case, grad_out: np.ndarray, dropout: bool = False) -> dict[str, float]:
    """Per gradient, the largest sum of |terms| of one entry (float64, from the golden's cotangents)."""
    dmask = case.dropout_mask if dropout else None
    cot = backward_trace(case.x, case.params, case.config, grad_out, case.key_padding_mask, dmask)
    p, x = case.params, np.abs(case.x)
    a = {n: np.abs(cot[n]) for n in ("Q", "K", "V", "out")}
    ctx = np.abs(intermediates(case.x, p, case.config, case.key_padding_mask, dmask)["context_concat"])
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731  (B*T, features)
    out = {"dx": a["Q"] @ np.abs(p.W_q) + a["K"] @ np.abs(p.W_k) + a["V"] @ np.abs(p.W_v),
           "dW_q": flat(a["Q"]).T @ flat(x), "dW_k": flat(a["K"]).T @ flat(x), "dW_v": flat(a["V"]).T @ flat(x),
           "dW_o": flat(a["out"]).T @ flat(ctx), "db_o": a["out"].sum(axis=(0, 1)),
           "db_q": a["Q"].sum(axis=(0, 1)), "db_k": a["K"].sum(axis=(0, 1)), "db_v": a["V"].sum(axis=(0, 1))}
    return {n: float(np.max(out[n], initial=0.0)) for n in _names(p)}


def compare_on_scale(actual: np.ndarray, golden: np.ndarray, plain: Any, dtype: str, scale: float) -> Comparison:
    """The tolerance model (K, FLOOR unchanged) with errors relative to `scale`, not max |golden|."""
    actual = np.asarray(actual, dtype=np.float64)
    golden = np.asarray(golden, dtype=np.float64)
    diff = np.abs(actual - golden)
    diff = np.where(np.isnan(diff) | np.isinf(diff), np.inf, diff)
    scale = scale if scale > 0 else 1.0
    err = float(np.max(diff, initial=0.0)) / scale
    plain_err = plain_error(golden, plain) / scale
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape)) if diff.size else None
    return Comparison(err, plain_err, K * plain_err + FLOOR[dtype], scale, idx,
                      float(actual[idx]) if idx is not None else None,
                      float(golden[idx]) if idx is not None else None)
