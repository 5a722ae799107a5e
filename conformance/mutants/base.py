"""`PlainBackend`: a simple, correct NumPy backend built from small overridable pieces.

Every mutant in `conformance.mutants.catalogue` is a subclass that changes one piece by a
few lines, so the bug is easy to read next to the correct code. The forward is composed of
the step methods themselves (steps 4 to 12), so a bug planted in a step shows up both in
that step's checks and end to end. float16 inputs are computed in float32 and rounded back
at the end (as `impls.numpy_backend` does: NumPy has no float16 BLAS), float64 and float32
in their own precision.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from impls.array_cache import ArrayCache
from conformance.mutants.plain_backward import PlainBackward
from impls.base import Backend, Capabilities
from spec.config import AttentionConfig, numpy_dtype
from spec.params import Params


def work_dtype(dt: np.dtype) -> np.dtype:
    """The dtype arithmetic runs in: float16 is accumulated in float32."""
    return np.dtype(np.float32) if np.dtype(dt) == np.float16 else np.dtype(dt)


class PlainBackend(ArrayCache, PlainBackward, Backend):
    """Correct reference-style attention in NumPy; every step exposed, every piece overridable."""

    name = "plain"
    capabilities = Capabilities(
        dtypes=("float64", "float32", "float16"),
        device="cpu",
        key_padding_mask=True,
        qkv_bias=True,
        dropout="replay",
        kv_cache=True,  # prefill / decode / cache_kv composed from the step methods (impls.array_cache)
        cache_arrays=True,
        gradients=True,  # backward composed of its step VJPs (conformance.mutants.plain_backward)
        grouped_kv=True,  # K/V heads repeated to their query groups (repeat_kv), summed back (sum_groups)
        notes="the base of the mutants: simple and correct; float16 computed in float32.",
    )
    #: Why this backend's bug cannot exist in float16 (mutants only); None: it can.
    float16_na: str | None = None

    # -- edges -----------------------------------------------------------------------------
    def from_numpy(self, a: np.ndarray, dtype: str | None = None) -> np.ndarray:
        return np.array(a, dtype=numpy_dtype(dtype) if dtype else a.dtype, copy=True)

    def to_numpy(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def prepare(self, params: Params, dtype: str) -> Params:
        return params.map(lambda a: a.astype(numpy_dtype(dtype)))

    def xp(self):
        """The array module of the KV cache's concatenations (impls.array_cache)."""
        return np

    # -- small pieces the mutants override ----------------------------------------------------
    def linear(self, x: np.ndarray, W: np.ndarray, b: np.ndarray | None) -> np.ndarray:
        """nn.Linear: y = x @ W.T (+ b); W is [out, in]."""
        y = x @ W.T  # (..., out)
        return y if b is None else y + b

    def scale(self, config: AttentionConfig) -> float:
        """The softmax scale 1/sqrt(head_dim)."""
        return 1.0 / np.sqrt(config.head_dim)

    def causal_mask(self, Tq: int, Tk: int) -> np.ndarray:
        """True where query i must not see key j (j > i + Tk - Tq): bottom-right aligned."""
        return np.triu(np.ones((Tq, Tk), dtype=bool), k=1 + Tk - Tq)  # (Tq, Tk)

    def padding(self, key_padding_mask: np.ndarray) -> np.ndarray:
        """Masked keys from a key padding mask (True = may attend): [B, Tk] -> [B, 1, 1, Tk]."""
        return ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)

    def mask(self, config: AttentionConfig, B: int, Tq: int, Tk: int,
             key_padding_mask: np.ndarray | None) -> np.ndarray:
        """True where the weight must be 0: causal and padding combined, [B, 1, Tq, Tk]."""
        masked = np.zeros((B, 1, Tq, Tk), dtype=bool)
        if config.causal:
            masked = masked | self.causal_mask(Tq, Tk)
        if key_padding_mask is not None:
            masked = masked | self.padding(key_padding_mask)
        return masked

    def softmax(self, s: np.ndarray, masked: np.ndarray) -> np.ndarray:
        """Masked, max-subtracted softmax over the key axis; fully masked rows give zeros."""
        s = np.where(masked, -np.inf, s)
        m = s.max(axis=-1, keepdims=True)  # (B, H, Tq, 1)
        e = np.exp(s - np.where(np.isfinite(m), m, 0))  # masked: exp(-inf) = 0 exactly
        total = e.sum(axis=-1, keepdims=True)
        return e / np.where(total > 0, total, 1)

    def dropout(self, w: np.ndarray, keep: np.ndarray, p: float) -> np.ndarray:
        """Inverted dropout: kept weights scaled by 1/(1 - p), the others 0."""
        return np.where(keep, w / (1.0 - p), 0).astype(w.dtype)

    def forward_dropout_mask(self, shape: tuple[int, ...], config: AttentionConfig,
                             dropout_mask: np.ndarray | None, training: bool) -> np.ndarray | None:
        """The keep mask forward applies: the given one, or our own draw; none in eval mode."""
        if not training or config.dropout_p == 0:
            return None
        if dropout_mask is not None:
            return dropout_mask
        return np.random.default_rng().random(shape) >= config.dropout_p

    def kv_head_of(self, H: int, n_kv_heads: int) -> np.ndarray:
        """Grouped-query attention: which K/V head each query head reads, h // (H / n_kv_heads)."""
        return np.arange(H) // (H // n_kv_heads)  # (H,)

    def repeat_kv(self, K: np.ndarray, n_heads: int) -> np.ndarray:
        """K/V heads [B, Hkv, T, hd] -> [B, H, T, hd], one per query head (kv_head_of)."""
        return K[:, self.kv_head_of(n_heads, K.shape[1])]  # (B, H, T, hd)

    def sum_groups(self, dK: np.ndarray, n_kv_heads: int) -> np.ndarray:
        """repeat_kv's backward: each K/V head's gradient summed over the query heads that read it."""
        B, H, T, hd = dK.shape
        out = np.zeros((B, n_kv_heads, T, hd), dtype=dK.dtype)
        np.add.at(out, (slice(None), self.kv_head_of(H, n_kv_heads)), dK)  # (B, Hkv, T, hd)
        return out

    def qkv(self, x: np.ndarray, weights: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step 4 inside forward: x (caller's array, caller's dtype) -> Q, K, V in the work dtype."""
        work = work_dtype(x.dtype)
        return self.project_qkv(x.astype(work), weights.map(lambda a: a.astype(work)))

    # -- the steps (3..12), same names and shapes as spec.steps -------------------------------
    def init_params(self, config: AttentionConfig, seed: int = 0) -> Params:
        from spec.params import init_params

        return init_params(config, seed)

    def project_qkv(self, x: np.ndarray, weights: Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        dt, work = x.dtype, work_dtype(x.dtype)
        p = weights.map(lambda a: a.astype(work))
        x = x.astype(work)
        Q = self.linear(x, p.W_q, p.b_q)  # (B, T, d_out)
        K = self.linear(x, p.W_k, p.b_k)  # (B, T, d_kv)
        V = self.linear(x, p.W_v, p.b_v)  # (B, T, d_kv)
        return Q.astype(dt), K.astype(dt), V.astype(dt)

    def split_heads(self, Q: np.ndarray, n_heads: int) -> np.ndarray:
        B, T, d_out = Q.shape
        return Q.reshape(B, T, n_heads, d_out // n_heads)  # (B, T, H, hd)

    def group_by_heads(self, Q: np.ndarray) -> np.ndarray:
        return Q.transpose(0, 2, 1, 3)  # (B, H, T, hd)

    def attn_scores(self, Q: np.ndarray, K: np.ndarray) -> np.ndarray:
        work = work_dtype(Q.dtype)
        K = self.repeat_kv(K, Q.shape[1])  # (B, H, Tk, hd): grouped K per query head
        return (Q.astype(work) @ K.astype(work).swapaxes(-1, -2)).astype(Q.dtype)  # (B, H, Tq, Tk)

    def attn_weights(self, attn_scores: np.ndarray, config: AttentionConfig,
                     key_padding_mask: np.ndarray | None = None,
                     dropout_mask: np.ndarray | None = None) -> np.ndarray:
        B, _, Tq, Tk = attn_scores.shape
        dt = attn_scores.dtype
        s = attn_scores.astype(work_dtype(dt))
        s = s * s.dtype.type(self.scale(config))
        w = self.softmax(s, self.mask(config, B, Tq, Tk, key_padding_mask))
        if dropout_mask is not None:
            w = self.dropout(w, dropout_mask, config.dropout_p)
        return w.astype(dt)

    def context(self, attn_weights: np.ndarray, V: np.ndarray) -> np.ndarray:
        work = work_dtype(V.dtype)
        V = self.repeat_kv(V, attn_weights.shape[1])  # (B, H, Tk, hd): grouped V per query head
        return (attn_weights.astype(work) @ V.astype(work)).astype(V.dtype)  # (B, H, Tq, hd)

    def permute_back(self, context: np.ndarray) -> np.ndarray:
        return context.transpose(0, 2, 1, 3)  # (B, T, H, hd)

    def concat_heads(self, context: np.ndarray) -> np.ndarray:
        B, T, H, hd = context.shape
        return np.ascontiguousarray(context).reshape(B, T, H * hd)  # (B, T, d_out)

    def out_proj(self, context: np.ndarray, weights: Params) -> np.ndarray:
        work = work_dtype(context.dtype)
        p = weights.map(lambda a: a.astype(work))
        return self.linear(context.astype(work), p.W_o, p.b_o).astype(context.dtype)  # (B, T, d_out)

    # -- the whole block ---------------------------------------------------------------------
    def forward(self, x: np.ndarray, weights: Params, config: AttentionConfig, *,
                key_padding_mask: np.ndarray | None = None, dropout_mask: np.ndarray | None = None,
                training: bool = False) -> np.ndarray:
        """Steps 4-12 composed from the step methods, in the work dtype; output in x's dtype."""
        dt, H = x.dtype, config.n_heads
        work = work_dtype(dt)
        Q, K, V = self.qkv(x, weights)  # step 4: (B, T, d_out), K and V (B, T, d_kv), in work
        heads = (H, config.kv_heads, config.kv_heads)
        Q, K, V = (self.group_by_heads(self.split_heads(a, h)) for a, h in zip((Q, K, V), heads))  # steps 5-6
        scores = self.attn_scores(Q, K)  # step 7: (B, H, T, T)
        keep = self.forward_dropout_mask(scores.shape, config, dropout_mask, training)
        w = self.attn_weights(scores, config, key_padding_mask, keep)  # step 8
        ctx = self.concat_heads(self.permute_back(self.context(w, V)))  # steps 9-11: (B, T, d_out)
        out = self.out_proj(ctx, weights.map(lambda a: a.astype(work)))  # step 12
        return out.astype(dt)
