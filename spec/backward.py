"""The backward pass of steps 4 to 12: one vector-Jacobian product (VJP) per step.

Each `<step>_vjp` sits beside its forward in the step table (spec/table.py, the `vjp` field)
and follows one convention: it takes the cotangent of each of the step's outputs, then the
forward's own arguments (as `spec.table.call_args` builds them), and returns the cotangent of
each differentiable input (`Step.grad_inputs`), an array for one, a tuple for several. A
cotangent has its value's shape: d_out[i] = d(loss)/d(out[i]). The parameters' cotangent is a
dict from the `Params` field name (W_q, ..., b_o) to its gradient; steps 4 and 12 each give
their share. A VJP recomputes what it needs from the forward's arguments rather than relying on
anything a forward saved.

Like the forward, every function is plain NumPy in its inputs' dtype, so the same code is the
float64 golden and the plain reference in dtype D. Decisions (docs/spec-decisions.md):
a query with no attendable key gets zero gradient through the attention, never NaN; a grouped
K/V head's gradient is the sum over its group of query heads (`sum_groups`); masked
weights pass no gradient to their scores; dropout is replayed with the forward's keep mask.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from spec import steps as S
from spec.config import AttentionConfig
from spec.params import Params
from spec.scores import BiasArray, reduce_to
from spec.steps import matmul as _mm


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])  # (B*T, features)


def _param_grad(d_y: np.ndarray, inp: np.ndarray) -> np.ndarray:
    """dW of y = inp @ W.T summed over every token: [B, T, out], [B, T, in] -> [out, in]."""
    return _mm(_flat(d_y).T, _flat(inp))  # (out, in)


def project_qkv_vjp(dQ: np.ndarray, dK: np.ndarray, dV: np.ndarray, x: np.ndarray,
                    params: Params) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Step 4 backward: dQ [B, T, d_out], dK, dV [B, T, d_kv] -> dx [B, T, d_in] and dW_q
    [d_out, d_in], dW_k, dW_v [d_kv, d_in].

    x feeds all three projections, so dx sums the three paths. With qkv_bias, db = dY summed
    over batch and tokens.
    """
    dx = _mm(dQ, params.W_q) + _mm(dK, params.W_k) + _mm(dV, params.W_v)  # (B, T, d_in)
    d_params = {"W_q": _param_grad(dQ, x), "W_k": _param_grad(dK, x), "W_v": _param_grad(dV, x)}
    if params.b_q is not None:
        d_params.update(b_q=dQ.sum(axis=(0, 1)), b_k=dK.sum(axis=(0, 1)), b_v=dV.sum(axis=(0, 1)))
    return dx, d_params


def split_heads_vjp(dQ_split: np.ndarray, Q: np.ndarray, n_heads: int) -> np.ndarray:
    """Step 5 backward: [B, T, H, head_dim] -> [B, T, d_out], the heads joined back."""
    return dQ_split.reshape(Q.shape)  # (B, T, d_out)


def group_by_heads_vjp(dq: np.ndarray, Q_split: np.ndarray) -> np.ndarray:
    """Step 6 backward: [B, H, T, head_dim] -> [B, T, H, head_dim], the permutation undone."""
    return dq.transpose(0, 2, 1, 3)  # (B, T, H, head_dim)


def sum_groups(dk: np.ndarray, n_kv_heads: int) -> np.ndarray:
    """repeat_kv's backward: [B, H, T, hd] -> [B, Hkv, T, hd], each group's gradients summed.

    A K/V head feeds every query head of its group, so its gradient is the sum over the group.
    """
    B, H, T, hd = dk.shape
    if n_kv_heads == H:
        return dk
    return dk.reshape(B, n_kv_heads, H // n_kv_heads, T, hd).sum(axis=2)  # (B, Hkv, T, hd)


def attn_scores_vjp(d_scores: np.ndarray, q: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 7 backward: d attn_scores [B, H, Tq, Tk] -> dq [B, H, Tq, hd], dk [B, Hkv, Tk, hd]."""
    dq = _mm(d_scores, S.repeat_kv(k, q.shape[1]))  # (B, H, Tq, head_dim)
    dk = _mm(d_scores.swapaxes(-2, -1), q)  # (B, H, Tk, head_dim): one per query head
    return dq, sum_groups(dk, k.shape[1])  # (B, Hkv, Tk, head_dim)


def attn_weights_vjp(d_weights: np.ndarray, attn_scores: np.ndarray, config: AttentionConfig,
                     key_padding_mask: np.ndarray | None = None,
                     dropout_mask: np.ndarray | None = None) -> np.ndarray:
    """Step 8 backward: d attn_weights [B, H, Tq, Tk] -> d attn_scores [B, H, Tq, Tk].

    The softmax P is recomputed from the scores (no dropout). Dropout is replayed: dP is the
    incoming gradient where the forward's keep mask kept a weight, times 1/(1 - dropout_p), and
    0 where it dropped one. The softmax Jacobian gives dS = P * (dP - rowsum(P * dP)); masked
    entries have P = 0 so their scores get exactly 0, and a row with no attendable key (P all 0)
    gets 0, never NaN. With a softcap, dS is multiplied by its derivative 1 - tanh(s / c)^2 at
    the scaled scores s (0 where masked, whatever the score). Last, the scale 1/sqrt(head_dim).
    """
    P = S.attn_weights(attn_scores, config, key_padding_mask)  # before dropout
    dt = P.dtype.type
    dP = d_weights
    if dropout_mask is not None:
        dP = np.where(dropout_mask, d_weights * dt(1.0 / (1.0 - config.dropout_p)), dt(0)).astype(P.dtype)
    row = (P * dP).sum(axis=-1, keepdims=True)  # (B, H, Tq, 1): the softmax's row term
    dS = P * (dP - row)  # (B, H, Tq, Tk), gradient of the capped scaled scores
    if config.softcap is not None:
        c = dt(config.softcap)
        with np.errstate(invalid="ignore"):
            t = np.tanh(attn_scores / dt(np.sqrt(config.head_dim)) / c)  # (B, H, Tq, Tk)
            dS = np.where(P == 0, dt(0), dS * (dt(1) - t * t)).astype(P.dtype)  # masked: 0, even if NaN
    return (dS / dt(np.sqrt(config.head_dim))).astype(P.dtype, copy=False)


def bias_vjp(d_weights: np.ndarray, attn_scores: np.ndarray, config: AttentionConfig,
             key_padding_mask: np.ndarray | None = None,
             dropout_mask: np.ndarray | None = None) -> np.ndarray:
    """Step 8's gradient with respect to a bias array (config.bias a BiasArray), in its shape.

    The bias is added to the scaled, capped scores, so its gradient is the softmax's
    dS = P * (dP - rowsum(P * dP)) itself (before the softcap's derivative and the scale), summed
    over the axes the bias was broadcast on (`spec.scores.reduce_to`); masked entries get 0.
    """
    P = S.attn_weights(attn_scores, config, key_padding_mask)  # before dropout
    dt = P.dtype.type
    dP = d_weights
    if dropout_mask is not None:
        dP = np.where(dropout_mask, d_weights * dt(1.0 / (1.0 - config.dropout_p)), dt(0)).astype(P.dtype)
    dS = P * (dP - (P * dP).sum(axis=-1, keepdims=True))  # (B, H, Tq, Tk)
    return reduce_to(dS, config.bias.shape).astype(P.dtype, copy=False)


def sinks_vjp(d_weights: np.ndarray, attn_scores: np.ndarray, config: AttentionConfig,
              key_padding_mask: np.ndarray | None = None,
              dropout_mask: np.ndarray | None = None) -> np.ndarray:
    """Step 8's gradient with respect to the sink logits (config.sinks): [H].

    A sink only divides: d w_ij / d sink_h = -w_ij * w_sink, so d sink_h = -sum over b, i of
    w_sink * rowsum(P * dP), dP the incoming gradient with dropout replayed (as attn_weights_vjp).
    A row with no attendable key has P = 0, so it adds exactly 0. The bias needs no such term:
    ALiBi's slopes are fixed, and the scores' gradient is the same with or without it.
    """
    P = S.attn_weights(attn_scores, config, key_padding_mask)  # before dropout
    dt = P.dtype.type
    dP = d_weights
    if dropout_mask is not None:
        dP = np.where(dropout_mask, d_weights * dt(1.0 / (1.0 - config.dropout_p)), dt(0)).astype(P.dtype)
    row = (P * dP).sum(axis=-1, keepdims=True)  # (B, H, Tq, 1)
    w_sink = S.sink_weight(attn_scores, config, key_padding_mask)  # (B, H, Tq, 1)
    return (-(w_sink * row).sum(axis=(0, 2, 3))).astype(P.dtype, copy=False)  # (H,)


def context_vjp(d_context: np.ndarray, attn_weights: np.ndarray,
                v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 9 backward: d context [B, H, Tq, hd] -> d attn_weights [B, H, Tq, Tk], dv [B, Hkv, Tk, hd]."""
    d_weights = _mm(d_context, S.repeat_kv(v, d_context.shape[1]).swapaxes(-2, -1))  # (B, H, Tq, Tk)
    P = attn_weights
    dv = _mm(P.swapaxes(-2, -1), d_context)  # (B, H, Tk, head_dim): one per query head
    return d_weights, sum_groups(dv, v.shape[1])  # (B, Hkv, Tk, head_dim)


def permute_back_vjp(d_tokens: np.ndarray, context: np.ndarray) -> np.ndarray:
    """Step 10 backward: [B, T, H, head_dim] -> [B, H, T, head_dim]."""
    return d_tokens.transpose(0, 2, 1, 3)  # (B, H, T, head_dim)


def concat_heads_vjp(d_concat: np.ndarray, context_tokens: np.ndarray) -> np.ndarray:
    """Step 11 backward: [B, T, d_out] -> [B, T, H, head_dim], split as the heads were joined."""
    return d_concat.reshape(context_tokens.shape)  # (B, T, H, head_dim)


def out_proj_vjp(d_out: np.ndarray, context_concat: np.ndarray,
                 params: Params) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Step 12 backward: d out [B, T, d_out] -> d context [B, T, d_out], dW_o [d_out, d_out], db_o."""
    d_context = _mm(d_out, params.W_o)  # (B, T, d_out)
    return d_context, {"W_o": _param_grad(d_out, context_concat), "b_o": d_out.sum(axis=(0, 1))}


@dataclass(frozen=True)
class Grads:
    """The block's gradients, each in the layout and dtype of what it differentiates."""

    dx: np.ndarray  # (B, T, d_in)
    dW_q: np.ndarray  # (d_out, d_in)
    dW_k: np.ndarray  # (d_kv, d_in)
    dW_v: np.ndarray  # (d_kv, d_in)
    dW_o: np.ndarray  # (d_out, d_out)
    db_o: np.ndarray  # (d_out,)
    db_q: np.ndarray | None = None  # (d_out,) when qkv_bias
    db_k: np.ndarray | None = None  # (d_kv,)
    db_v: np.ndarray | None = None  # (d_kv,)
    dsinks: np.ndarray | None = None  # (H,) when config.sinks: the sink logits' gradient
    dbias: np.ndarray | None = None  # the bias array's shape, when config.bias is one

    def arrays(self) -> dict[str, np.ndarray]:
        """The gradients that are present, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_cotangents(cls, dx: np.ndarray, d_params: dict[str, np.ndarray],
                        dsinks: np.ndarray | None = None, dbias: np.ndarray | None = None) -> "Grads":
        return cls(dx=dx, **{"d" + k: v for k, v in d_params.items()}, dsinks=dsinks, dbias=dbias)
