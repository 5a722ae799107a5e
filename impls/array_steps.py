"""Steps 3 to 12 for NumPy-compatible array libraries (NumPy itself, CuPy), written once.

A backend mixes in `ArraySteps` and says which module its arrays come from (`xp()`); its
`prepare` must put the step-level weights, in the computing dtype, under
`weights["params"]`. float16 is computed in float32 and rounded back, so the softmax and
the sums over keys never accumulate in half precision.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spec.config import AttentionConfig
from spec.params import Params


def fused_qkv_heads(x: Any, weights: dict[str, Any], config: AttentionConfig) -> tuple[Any, Any, Any]:
    """The fused projection (one matmul for Q, K and V) split into heads: x [B, T, d_in] in the
    work dtype -> q [B, H, T, hd], k, v [B, Hkv, T, hd], views of one (B*T, d_out + 2*d_kv) array."""
    B, T, d_in = x.shape
    H, Hkv, hd = config.n_heads, config.kv_heads, config.head_dim
    qkv = x.reshape(B * T, d_in) @ weights["W_qkv_T"]  # (B*T, d_out + 2*d_kv)
    if weights["b_qkv"] is not None:
        qkv += weights["b_qkv"]
    qkv = qkv.reshape(B, T, H + 2 * Hkv, hd).transpose(0, 2, 1, 3)  # (B, H + 2*Hkv, T, hd)
    return qkv[:, :H], qkv[:, H:H + Hkv], qkv[:, H + Hkv:]


class ArraySteps:
    """The plain per-step versions, for step-by-step checking; forward stays the backend's."""

    def xp(self) -> Any:
        """The array module of this backend's arrays (numpy, cupy)."""
        raise NotImplementedError

    def init_params(self, config: AttentionConfig, seed: int = 0) -> Params:
        from spec.params import (
            init_params,  # the nn.Linear recipe, drawn with NumPy's RNG
        )

        return init_params(config, seed)

    def project_qkv(self, x, weights):
        p = weights["params"]
        Q, K, V = x @ p.W_q.T, x @ p.W_k.T, x @ p.W_v.T  # (B, T, d_out), K and V (B, T, d_kv)
        if p.b_q is not None:
            Q, K, V = Q + p.b_q, K + p.b_k, V + p.b_v
        return Q, K, V

    def split_heads(self, Q, n_heads: int):
        B, T, d_out = Q.shape
        return Q.reshape(B, T, n_heads, d_out // n_heads)  # (B, T, H, hd)

    def group_by_heads(self, Q):
        return Q.transpose(0, 2, 1, 3)  # (B, H, T, hd)

    def repeat_kv(self, K, n_heads: int):
        """Grouped K/V heads [B, Hkv, T, hd] -> [B, H, T, hd]: query head h reads K/V head h // (H // Hkv)."""
        Hkv = K.shape[1]
        return K if Hkv == n_heads else self.xp().repeat(K, n_heads // Hkv, axis=1)  # (B, H, T, hd)

    def sum_groups(self, dK, n_kv_heads: int):
        """repeat_kv's backward: [B, H, T, hd] -> [B, Hkv, T, hd], summed over each group."""
        B, H, T, hd = dK.shape
        return dK if n_kv_heads == H else dK.reshape(B, n_kv_heads, H // n_kv_heads, T, hd).sum(axis=2)

    def attn_scores(self, Q, K):
        return Q @ self.repeat_kv(K, Q.shape[1]).swapaxes(-1, -2)  # (B, H, Tq, Tk), K per group

    def attn_weights(self, attn_scores, config: AttentionConfig, key_padding_mask=None, dropout_mask=None):
        xp = self.xp()
        B, _, Tq, Tk = attn_scores.shape
        dt = attn_scores.dtype
        s = attn_scores.astype(np.float32 if dt == np.float16 else dt)
        masked = xp.zeros((B, 1, Tq, Tk), dtype=bool)  # (B, 1, Tq, Tk)
        if config.causal:  # bottom-right aligned, as spec.steps.causal_mask
            masked |= xp.triu(xp.ones((Tq, Tk), dtype=bool), 1 + Tk - Tq)
        if key_padding_mask is not None:
            masked |= ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
        s = xp.where(masked, -xp.inf, s) / s.dtype.type(np.sqrt(config.head_dim))
        m = s.max(axis=-1, keepdims=True)
        e = xp.exp(s - xp.where(xp.isfinite(m), m, 0))  # fully masked rows: exp(-inf) = 0, not NaN
        total = e.sum(axis=-1, keepdims=True)
        w = e / xp.where(total > 0, total, 1)
        if dropout_mask is not None:
            w = xp.where(dropout_mask, w / (1.0 - config.dropout_p), 0)
        return w.astype(dt)

    def context(self, attn_weights, V):
        V = self.repeat_kv(V, attn_weights.shape[1])  # (B, H, Tk, hd), V per group
        if attn_weights.dtype == np.float16:  # accumulate the sum over keys in float32
            return (attn_weights.astype(np.float32) @ V.astype(np.float32)).astype(np.float16)
        return attn_weights @ V  # (B, H, Tq, hd)

    def permute_back(self, context):
        return context.transpose(0, 2, 1, 3)  # (B, T, H, hd)

    def concat_heads(self, context):
        B, T, H, hd = context.shape
        return self.xp().ascontiguousarray(context).reshape(B, T, H * hd)  # (B, T, d_out)

    def out_proj(self, context, weights):
        p = weights["params"]
        return context @ p.W_o.T + p.b_o  # (B, T, d_out)
