"""Other correct operation orders, in dtype D, for the plain reference to span.

The spec fixes one order of operations: scale the masked scores, subtract the row maximum,
exponentiate, normalise the weights, then multiply by V. A correct implementation in dtype D
may do otherwise and round differently: fold the scale into q (or into q and k, as PyTorch's
math path does), normalise the context after P @ V instead of the weights, run an online
(blockwise) softmax as FlashAttention does, or sum the matmuls' products in another order.
Each function here is one such order, written plainly in the inputs' dtype, so that the plain
reference (`conformance.suite.reference`) measures what rounding any correct order may cost, not
what the spec's own order happens to cost. All of them equal the spec in exact arithmetic;
`tests/test_orders.py` checks that in float64.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from spec import steps as S
from spec.config import AttentionConfig
from spec.params import Params
from spec.scores import bias_values, sink_logits


def _NEG_INF(a: np.ndarray):
    """-inf in a's dtype: a Python float would promote ml_dtypes' bfloat16 to float64."""
    return a.dtype.type(-np.inf)


def _mm_split(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b with the reduction split in two halves added last: another summation order."""
    n = a.shape[-1]
    if n < 2:
        return _mm(a, b)
    k = n // 2
    return (_mm(a[..., :k], b[..., :k, :]) + _mm(a[..., k:], b[..., k:, :])).astype(a.dtype, copy=False)


_mm = S.matmul  # every matmul in the inputs' dtype, as the spec's


def _masked(config: AttentionConfig, Tq: int, Tk: int, kpm: np.ndarray | None) -> np.ndarray:
    return ~S.visible(Tq, Tk, config.causal, kpm, config.window)  # (B or 1, 1, Tq, Tk): the spec's mask


def _biased(s: np.ndarray, config: AttentionConfig, Tq: int, Tk: int, keys: slice = slice(None)) -> np.ndarray:
    """s [B, H, Tq, blk] plus the spec's bias on keys `keys` of Tk, in s's dtype (None: s)."""
    b = bias_values(config.bias, (s.shape[0], config.n_heads, Tq, Tk))  # float64, broadcastable, or None
    if b is None:
        return s
    b = np.broadcast_to(b, (*b.shape[:-1], Tk) if b.shape[-1] == 1 else b.shape)[..., keys]
    return (s + b.astype(s.dtype)).astype(s.dtype, copy=False)


def _row_max(s: np.ndarray, config: AttentionConfig) -> np.ndarray:
    """Each row's maximum over its scores and its head's sink (the spec's), 0 where -inf."""
    m = S.max_over_keys(s)  # (B, H, Tq, 1)
    sink = sink_logits(config.sinks, s.dtype)
    if sink is not None:
        m = np.maximum(m, sink)  # (B, H, Tq, 1)
    return np.where(np.isfinite(m), m, 0)


def _sink_term(config: AttentionConfig, m: np.ndarray):
    """exp(sink_h - m) [B, H, Tq, 1], the sink's share of a denominator; 0 without sinks."""
    sink = sink_logits(config.sinks, m.dtype)
    if sink is None:
        return m.dtype.type(0)
    with np.errstate(over="ignore"):
        return np.exp(sink - m)


def _qkv_heads(x: np.ndarray, params: Params, config: AttentionConfig) -> tuple[np.ndarray, ...]:
    """q (B, H, T, hd); k, v (B, Hkv, T, hd), their K/V heads (n_kv_heads; H unless grouped)."""
    Q, K, V = S.project_qkv(x, params)
    return S.heads(Q, config.n_heads), S.heads(K, config.kv_heads), S.heads(V, config.kv_heads)


def _keep(config: AttentionConfig, dropout_mask: np.ndarray | None, e: np.ndarray) -> np.ndarray:
    """Unnormalised weights after inverted dropout (normalising later commutes with it)."""
    if dropout_mask is None:
        return e
    return np.where(dropout_mask, e * e.dtype.type(1.0 / (1.0 - config.dropout_p)), 0).astype(e.dtype)


def _finish(ctx: np.ndarray, params: Params) -> np.ndarray:
    return S.out_proj(S.merge_heads(ctx), params)  # (B, T, d_out)


def forward_scale_on_q_late_norm(x: np.ndarray, params: Params, config: AttentionConfig,
                                 key_padding_mask: np.ndarray | None = None,
                                 dropout_mask: np.ndarray | None = None) -> np.ndarray:
    """q scaled by 1/sqrt(hd) before q @ k^T; the context normalised after P @ V."""
    Q, K, V = _qkv_heads(x, params, config)  # (B, H, T, hd), K and V with Hkv heads
    return _finish(context_scale_on_q_late_norm(Q, K, V, config, key_padding_mask, dropout_mask), params)


def context_scale_on_q_late_norm(Q: np.ndarray, K: np.ndarray, V: np.ndarray, config: AttentionConfig,
                                 key_padding_mask: np.ndarray | None = None,
                                 dropout_mask: np.ndarray | None = None) -> np.ndarray:
    """Steps 7-9 of forward_scale_on_q_late_norm for Tq <= Tk queries: (B, H, Tq, hd)."""
    w, total, V = _unnormalised(Q, K, V, config, key_padding_mask, dropout_mask)
    ctx = _mm(w, V) / np.where(total > 0, total, 1)  # (B, H, Tq, hd)
    return ctx.astype(Q.dtype, copy=False)


def _unnormalised(Q: np.ndarray, K: np.ndarray, V: np.ndarray, config: AttentionConfig,
                  key_padding_mask: np.ndarray | None, dropout_mask: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """The scale on q, exp(s - max) kept or dropped (B, H, Tq, Tk), each row's total (B, H, Tq, 1)
    with the sink, and V per query head (B, H, Tk, hd): the late-normalised orders' terms."""
    K, V = S.repeat_kv(K, Q.shape[1]), S.repeat_kv(V, Q.shape[1])  # grouped K/V: (B, H, Tk, hd)
    q = Q * Q.dtype.type(1.0 / np.sqrt(config.head_dim))
    s = S.softcap(_mm(q, K.swapaxes(-2, -1)), config.softcap)  # (B, H, Tq, Tk), capped after the scale
    s = _biased(s, config, *s.shape[2:])  # the bias after the cap, before the mask
    s = np.where(_masked(config, *s.shape[2:], key_padding_mask), _NEG_INF(s), s)
    m = _row_max(s, config)
    with np.errstate(over="ignore"):
        e = np.exp(s - m)
    total = e.sum(axis=-1, keepdims=True) + _sink_term(config, m)
    return _keep(config, dropout_mask, e), total, V


#: Queries of a chunk up to which context_keys_in_sequence sums key by key: a decode step's few
#: queries make P @ V a matrix-vector product, which kernels accumulate along the keys; a chunk of
#: more goes through a blocked matrix product (the other orders' kind of sum).
SEQUENCE_MAX_QUERIES = 16
#: Elements of one block of products (B x H x Tq x keys x head_dim) summed at a time: bounds memory.
SEQUENCE_BLOCK_ELEMENTS = 1 << 20


def context_keys_in_sequence(Q: np.ndarray, K: np.ndarray, V: np.ndarray, config: AttentionConfig,
                             key_padding_mask: np.ndarray | None = None,
                             dropout_mask: np.ndarray | None = None) -> np.ndarray:
    """Steps 7-9 as context_scale_on_q_late_norm, but for a chunk of up to SEQUENCE_MAX_QUERIES
    queries the context is summed over the keys one after another in D: PyTorch's CPU bmm for a
    decode step does so (one float32 token over 4,093 cached keys, head_dim 3: 7.5e-6 relative
    error, that of this order exactly, against ~6e-7 for every blocked order): (B, H, Tq, hd)."""
    if Q.shape[2] > SEQUENCE_MAX_QUERIES:
        return context_scale_on_q_late_norm(Q, K, V, config, key_padding_mask, dropout_mask)
    w, total, V = _unnormalised(Q, K, V, config, key_padding_mask, dropout_mask)  # w (B, H, Tq, Tk)
    B, H, Tq, Tk = w.shape
    step = max(1, SEQUENCE_BLOCK_ELEMENTS // (B * H * Tq * V.shape[-1] or 1))
    acc = np.zeros((B, H, Tq, V.shape[-1]), dtype=Q.dtype)
    for j in range(0, Tk, step):
        terms = (w[..., j:j + step, None] * V[:, :, None, j:j + step, :]).astype(Q.dtype)  # (B, H, Tq, blk, hd)
        terms[..., 0, :] += acc  # the running sum, then each key's term in turn
        acc = np.add.accumulate(terms, axis=-2)[..., -1, :]  # (B, H, Tq, hd)
    ctx = acc / np.where(total > 0, total, 1)  # (B, H, Tq, hd)
    return ctx.astype(Q.dtype, copy=False)


def project_qkv_fused(x: np.ndarray, params: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 4 as one matmul with [W_q; W_k; W_v] over the (B T, d_in) rows, as nn.MultiheadAttention's
    in_proj and most fused kernels compute it: the GEMM's blocking and rounding differ from three
    separate ones (measured: 7x the output error of the separate projections at d_in = 559 and
    scores near 1e3, in NumPy and torch alike)."""
    B, T, d_in = x.shape
    W = np.concatenate([params.W_q, params.W_k, params.W_v])  # (d_out + 2 d_kv, d_in)
    F = _mm(x.reshape(B * T, d_in), W.T).reshape(B, T, -1)  # (B, T, d_out + 2 d_kv)
    n, m = params.W_q.shape[0], params.W_k.shape[0]
    Q, K, V = F[..., :n], F[..., n:n + m], F[..., n + m:]
    if params.b_q is not None:
        Q, K, V = Q + params.b_q, K + params.b_k, V + params.b_v
    return Q, K, V


def forward_online_softmax(x: np.ndarray, params: Params, config: AttentionConfig,
                           key_padding_mask: np.ndarray | None = None,
                           dropout_mask: np.ndarray | None = None, block: int = 16) -> np.ndarray:
    """FlashAttention's order: sqrt(scale) on q and k, keys in blocks, running max and sum; the
    projections fused into one matmul (`project_qkv_fused`)."""
    Q, K, V = project_qkv_fused(x, params)  # (B, T, d_out), K and V (B, T, d_kv)
    Q, K, V = S.heads(Q, config.n_heads), S.heads(K, config.kv_heads), S.heads(V, config.kv_heads)  # (B, H, T, hd)
    return _finish(context_online_softmax(Q, K, V, config, key_padding_mask, dropout_mask, block), params)


def context_online_softmax(Q: np.ndarray, K: np.ndarray, V: np.ndarray, config: AttentionConfig,
                           key_padding_mask: np.ndarray | None = None,
                           dropout_mask: np.ndarray | None = None, block: int = 16) -> np.ndarray:
    """Steps 7-9 of forward_online_softmax for Tq <= Tk queries: (B, H, Tq, hd)."""
    dt = Q.dtype.type
    K, V = S.repeat_kv(K, Q.shape[1]), S.repeat_kv(V, Q.shape[1])  # grouped K/V: (B, H, Tk, hd)
    r = dt(config.head_dim ** -0.25)  # PyTorch's math path scales q and k by sqrt(scale) each
    q, k = Q * r, K * r
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    masked = _masked(config, Tq, Tk, key_padding_mask)  # (B or 1, 1, Tq, Tk)
    m = np.full((B, H, Tq, 1), -np.inf, dtype=Q.dtype)
    total = np.zeros((B, H, Tq, 1), dtype=Q.dtype)
    acc = np.zeros((B, H, Tq, V.shape[-1]), dtype=Q.dtype)
    for j in range(0, Tk, block):
        sl = slice(j, j + block)
        s = S.softcap(_mm(q, k[:, :, sl].swapaxes(-2, -1)), config.softcap)  # (B, H, Tq, blk), scaled, capped
        s = _biased(s, config, Tq, Tk, sl)
        s = np.where(masked[..., sl], dt(-np.inf), s)
        m_new = np.maximum(m, S.max_over_keys(s))
        base = np.where(np.isfinite(m_new), m_new, 0)
        with np.errstate(over="ignore", invalid="ignore"):
            e = np.exp(s - base)
            rescale = np.where(np.isfinite(m), np.exp(m - base), 0).astype(Q.dtype)
        keep = None if dropout_mask is None else dropout_mask[..., sl]
        total = (total * rescale + e.sum(axis=-1, keepdims=True)).astype(Q.dtype)
        acc = (acc * rescale + _mm(_keep(config, keep, e), V[:, :, sl])).astype(Q.dtype)
        m = m_new
    sink = sink_logits(config.sinks, Q.dtype)
    if sink is not None:  # the sink joins last, as one more block of one logit with no value
        m_new = np.maximum(m, sink)
        base = np.where(np.isfinite(m_new), m_new, 0)
        with np.errstate(over="ignore", invalid="ignore"):
            rescale = np.where(np.isfinite(m), np.exp(m - base), 0).astype(Q.dtype)
            total = (total * rescale + np.exp(sink - base)).astype(Q.dtype)
        acc = (acc * rescale).astype(Q.dtype)
    ctx = acc / np.where(total > 0, total, 1)  # (B, H, Tq, hd); rows with no key stay 0
    return ctx.astype(Q.dtype, copy=False)


def attn_weights_scale_first(attn_scores: np.ndarray, config: AttentionConfig,
                             key_padding_mask: np.ndarray | None = None,
                             dropout_mask: np.ndarray | None = None) -> np.ndarray:
    """Scores multiplied by the rounded 1/sqrt(hd), then masked; max subtracted after."""
    s = attn_scores * attn_scores.dtype.type(1.0 / np.sqrt(config.head_dim))
    s = S.softcap(s, config.softcap)
    s = _biased(s, config, *s.shape[2:])
    s = np.where(_masked(config, *s.shape[2:], key_padding_mask), _NEG_INF(s), s)
    m = _row_max(s, config)
    with np.errstate(over="ignore"):
        e = np.exp(s - m)
    w = e / np.where((t := e.sum(axis=-1, keepdims=True) + _sink_term(config, m)) > 0, t, 1)
    if dropout_mask is not None:
        w = _keep(config, dropout_mask, w)
    return w.astype(attn_scores.dtype, copy=False)


def attn_weights_max_first(attn_scores: np.ndarray, config: AttentionConfig,
                           key_padding_mask: np.ndarray | None = None,
                           dropout_mask: np.ndarray | None = None) -> np.ndarray:
    """The row maximum of the raw scores subtracted first, the scale applied to the difference.
    With a softcap, a bias or sinks (the scale cannot follow the max: the cap is not linear, the
    bias and the sink are not scaled): the scaled, capped, biased scores' maximum, sinks included."""
    scale = attn_scores.dtype.type(1.0 / np.sqrt(config.head_dim))
    scaled_first = config.softcap is not None or config.bias is not None or config.sinks is not None
    s = _biased(S.softcap(attn_scores * scale, config.softcap), config, *attn_scores.shape[2:]) \
        if scaled_first else attn_scores
    s = np.where(_masked(config, *attn_scores.shape[2:], key_padding_mask), _NEG_INF(s), s)
    m = _row_max(s, config) if scaled_first else np.where(np.isfinite(m := S.max_over_keys(s)), m, 0)
    with np.errstate(over="ignore", invalid="ignore"):
        d = s - m
        d = d if scaled_first else d * scale
        e = np.exp(d)
    sink = _sink_term(config, m) if scaled_first else 0
    w = e / np.where((t := e.sum(axis=-1, keepdims=True) + sink) > 0, t, 1)
    if dropout_mask is not None:
        w = _keep(config, dropout_mask, w)
    return w.astype(attn_scores.dtype, copy=False)


def project_qkv_split_sum(x: np.ndarray, params: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 4 with the sum over d_in split in two halves."""
    Q, K, V = (_mm_split(x, W.T) for W in (params.W_q, params.W_k, params.W_v))  # (B, T, d_out or d_kv)
    if params.b_q is not None:
        Q, K, V = Q + params.b_q, K + params.b_k, V + params.b_v
    return Q, K, V


def attn_scores_split_sum(Q: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Step 7 with the sum over head_dim split in two halves."""
    return _mm_split(Q, S.repeat_kv(K, Q.shape[1]).swapaxes(-2, -1))  # (B, H, Tq, Tk), K per group


def context_split_sum(attn_weights: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Step 9 with the sum over keys split in two halves."""
    return _mm_split(attn_weights, S.repeat_kv(V, attn_weights.shape[1]))  # (B, H, Tq, hd), V per group


def out_proj_split_sum(context: np.ndarray, params: Params) -> np.ndarray:
    """Step 12 with the sum over d_out split in two halves."""
    return _mm_split(context, params.W_o.T) + params.b_o  # (B, T, d_out)


#: Spec function -> other correct orders of the same computation (same signature).
ORDERS: dict[Callable, tuple[Callable, ...]] = {
    S.project_qkv: (project_qkv_split_sum, project_qkv_fused),
    S.attn_scores: (attn_scores_split_sum,),
    S.attn_weights: (attn_weights_scale_first, attn_weights_max_first),
    S.context: (context_split_sum,),
    S.out_proj: (out_proj_split_sum,),
}

#: The whole block's other orders (spec.block.forward's signature).
FORWARD_ORDERS: tuple[Callable, ...] = (forward_scale_on_q_late_norm, forward_online_softmax)
#: Their steps 7-9 alone, for queries apart from keys (KV-cache decoding, Tq <= Tk), and a decode
#: step's sum along the keys.
CONTEXT_ORDERS: tuple[Callable, ...] = (context_scale_on_q_late_norm, context_online_softmax,
                                        context_keys_in_sequence)
