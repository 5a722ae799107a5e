"""NumPy backend: vectorised CPU attention with every step exposed.

Not a copy of the spec: the forward fuses the three projections into one matmul and skips
the fully masked upper blocks of causal attention (query block i never reads key blocks
past i), which is where its speed over a naive implementation comes from.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from impls.base import Backend, Capabilities
from spec.config import AttentionConfig, numpy_dtype
from spec.params import Params

_BLOCK = 128  # query/key block for causal skipping; a multiple of common SIMD widths


class NumpyBackend(Backend):
    name = "numpy"
    capabilities = Capabilities(
        dtypes=("float64", "float32", "float16"),
        device="cpu",
        key_padding_mask=True,
        qkv_bias=True,
        dropout="replay",
        notes="float16 inputs are computed in float32 and rounded back (NumPy has no float16 BLAS).",
    )

    # -- edges -------------------------------------------------------------------------
    def from_numpy(self, a: np.ndarray, dtype: str | None = None) -> np.ndarray:
        return np.array(a, dtype=numpy_dtype(dtype) if dtype else a.dtype, copy=True)

    def to_numpy(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a)

    def prepare(self, params: Params, dtype: str) -> dict[str, Any]:
        dt = numpy_dtype(dtype)
        work = np.dtype(np.float32) if dt == np.float16 else dt  # accumulate float16 in float32
        W_qkv = np.concatenate([params.W_q, params.W_k, params.W_v], axis=0)  # (3*d_out, d_in)
        b_qkv = (np.concatenate([params.b_q, params.b_k, params.b_v]) if params.b_q is not None else None)
        return {
            "dtype": dt, "work": work,
            "W_qkv_T": np.ascontiguousarray(W_qkv.T.astype(work)),  # (d_in, 3*d_out)
            "b_qkv": None if b_qkv is None else b_qkv.astype(work),
            "W_o_T": np.ascontiguousarray(params.W_o.T.astype(work)),  # (d_out, d_out)
            "b_o": params.b_o.astype(work),
            "params": params.map(lambda a: a.astype(dt)),  # for the step methods
        }

    # -- the whole block -----------------------------------------------------------------
    def forward(self, x, weights, config: AttentionConfig, *, key_padding_mask=None,
                dropout_mask=None, training: bool = False) -> np.ndarray:
        B, T, _ = x.shape
        H, hd, d_out = config.n_heads, config.head_dim, config.d_out
        work = weights["work"]
        qkv = x.astype(work, copy=False) @ weights["W_qkv_T"]  # (B, T, 3*d_out)
        if weights["b_qkv"] is not None:
            qkv += weights["b_qkv"]
        qkv = qkv.reshape(B, T, 3, H, hd).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * work.type(1.0 / np.sqrt(hd))  # scale q once instead of every score
        if training and dropout_mask is None and config.dropout_p > 0:
            dropout_mask = np.random.default_rng().random((B, H, T, T)) >= config.dropout_p
        ctx = np.empty((B, H, T, hd), dtype=work)
        step = _BLOCK if config.causal else T
        for i0 in range(0, T, step):
            i1 = min(i0 + step, T)
            kend = i1 if config.causal else T  # causal: keys past the block's last query are masked
            s = q[:, :, i0:i1] @ k[:, :, :kend].transpose(0, 1, 3, 2)  # (B, H, bq, kend)
            masked = np.zeros((B, 1, i1 - i0, kend), dtype=bool)
            if config.causal:
                masked |= np.arange(kend)[None, :] > np.arange(i0, i1)[:, None]
            if key_padding_mask is not None:
                masked |= ~key_padding_mask[:, None, None, :kend]
            s[np.broadcast_to(masked, s.shape)] = -np.inf
            m = s.max(axis=-1, keepdims=True)
            m[~np.isfinite(m)] = 0  # fully masked rows: keep exp(-inf) = 0, not NaN
            np.exp(s - m, out=s)
            total = s.sum(axis=-1, keepdims=True)
            total[total == 0] = 1  # fully masked rows give a zero context
            s /= total
            if dropout_mask is not None:
                s *= dropout_mask[:, :, i0:i1, :kend] * work.type(1.0 / (1.0 - config.dropout_p))
            ctx[:, :, i0:i1] = s @ v[:, :, :kend]  # (B, H, bq, hd)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(B, T, d_out)  # (B, T, d_out)
        out = ctx @ weights["W_o_T"] + weights["b_o"]
        return out.astype(weights["dtype"], copy=False)

    # -- the twelve steps (3..12), same names and shapes as spec.steps ---------------------
    def init_params(self, config: AttentionConfig, seed: int = 0) -> Params:
        from spec.params import init_params  # the nn.Linear recipe, drawn with NumPy's RNG

        return init_params(config, seed)

    def project_qkv(self, x, weights):
        p = weights["params"]
        Q, K, V = x @ p.W_q.T, x @ p.W_k.T, x @ p.W_v.T  # (B, T, d_out) each
        if p.b_q is not None:
            Q, K, V = Q + p.b_q, K + p.b_k, V + p.b_v
        return Q, K, V

    def split_heads(self, Q, n_heads: int):
        B, T, d_out = Q.shape
        return Q.reshape(B, T, n_heads, d_out // n_heads)  # (B, T, H, hd)

    def group_by_heads(self, Q):
        return Q.transpose(0, 2, 1, 3)  # (B, H, T, hd)

    def attn_scores(self, Q, K):
        return Q @ K.transpose(0, 1, 3, 2)  # (B, H, Tq, Tk)

    def attn_weights(self, attn_scores, config: AttentionConfig, key_padding_mask=None, dropout_mask=None):
        from spec.steps import causal_mask

        B, H, Tq, Tk = attn_scores.shape
        dt = attn_scores.dtype
        s = attn_scores.astype(np.float32 if dt == np.float16 else dt)
        masked = np.zeros((B, 1, Tq, Tk), dtype=bool)
        if config.causal:
            masked |= causal_mask(Tq, Tk)
        if key_padding_mask is not None:
            masked |= ~key_padding_mask[:, None, None, :]
        s = np.where(masked, -np.inf, s) / s.dtype.type(np.sqrt(config.head_dim))
        m = s.max(axis=-1, keepdims=True)
        e = np.exp(s - np.where(np.isfinite(m), m, 0))
        total = e.sum(axis=-1, keepdims=True)
        w = e / np.where(total > 0, total, 1)
        if dropout_mask is not None:
            w = np.where(dropout_mask, w / (1.0 - config.dropout_p), 0)
        return w.astype(dt)

    def context(self, attn_weights, V):
        return attn_weights @ V  # (B, H, Tq, hd)

    def permute_back(self, context):
        return context.transpose(0, 2, 1, 3)  # (B, T, H, hd)

    def concat_heads(self, context):
        B, T, H, hd = context.shape
        return np.ascontiguousarray(context).reshape(B, T, H * hd)  # (B, T, d_out)

    def out_proj(self, context, weights):
        p = weights["params"]
        return context @ p.W_o.T + p.b_o  # (B, T, d_out)
