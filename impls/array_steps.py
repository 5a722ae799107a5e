"""Steps 3 to 12 for NumPy-compatible array libraries (NumPy itself, CuPy), written once.

The one array-generic implementation of the steps: the NumPy and CuPy backends expose them
for step-by-step checking (their fast forward stays their own), and the mutants' plain backend
(`conformance.mutants.base.PlainBackend`) is this class with NumPy arrays, its forward composed
of the steps. Each step is built from small pieces (`linear`, `scale`, `causal_mask`,
`window_mask`, `softcap`, `alibi_slopes`, `bias`, `with_sinks`, `padding`, `mask`, `softmax`, `dropout`,
`kv_head_of`), so a mutant overrides one piece by a
few lines and the bug reaches every path that uses it: the forward, the steps, the backward
(`impls.array_vjps`) and the KV cache (`impls.array_cache`).

A backend mixes in `ArraySteps` and says which module its arrays come from (`xp()`) and where
the step-level weights (a `Params` in the computing dtype) live in what its `prepare` returns
(`step_params`; by default `weights["params"]`). float16 is computed in float32 and rounded
back, so the softmax and the sums never accumulate in half precision.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spec.config import AttentionConfig
from spec.params import Params
from spec.scores import BiasArray


def work_dtype(dt: Any) -> np.dtype:
    """The dtype arithmetic runs in: float16 is accumulated in float32."""
    return np.dtype(np.float32) if np.dtype(dt) == np.float16 else np.dtype(dt)


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
    """The steps from overridable pieces, and the forward composed of them."""

    def xp(self) -> Any:
        """The array module of this backend's arrays (numpy, cupy)."""
        raise NotImplementedError

    def step_params(self, weights: Any) -> Params:
        """The step-level weights inside what `prepare` returned."""
        return weights["params"]

    # -- small pieces (a mutant overrides one) -------------------------------------------------
    def linear(self, x, W, b):
        """nn.Linear: y = x @ W.T (+ b); W is [out, in]."""
        y = x @ W.T  # (..., out)
        return y if b is None else y + b

    def scale(self, config: AttentionConfig) -> float:
        """The softmax scale 1/sqrt(head_dim)."""
        return 1.0 / np.sqrt(config.head_dim)

    def causal_mask(self, Tq: int, Tk: int):
        """True where query i must not see key j (j > i + Tk - Tq): bottom-right aligned."""
        xp = self.xp()
        return xp.triu(xp.ones((Tq, Tk), dtype=bool), k=1 + Tk - Tq)  # (Tq, Tk)

    def window_mask(self, Tq: int, Tk: int, window: tuple[int, int]):
        """True where key j is outside query i's sliding window (left, right): j < p - left or
        j > p + right, p = i + Tk - Tq its position (the queries are the last Tq keys)."""
        xp = self.xp()
        left, right = window
        pos = xp.arange(Tq)[:, None] + (Tk - Tq)  # (Tq, 1)
        j = xp.arange(Tk)[None, :]  # (1, Tk)
        return (j < pos - left) | (j > pos + right)  # (Tq, Tk)

    def softcap(self, s, c: float | None):
        """The logit softcap c * tanh(s / c) on the scaled scores s (before any mask); None: s."""
        if c is None:
            return s
        xp = self.xp()
        return (c * xp.tanh(s / c)).astype(s.dtype)

    def alibi_slopes(self, H: int):
        """ALiBi's standard slopes for H heads, [H] float64: 2^(-8/n)^(h+1) for n a power of two;
        otherwise the n = 2^floor(log2 H) slopes, then every other slope of 2n (Press et al., BLOOM)."""
        def powers(n: int) -> list[float]:
            return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

        n = 1 << (H.bit_length() - 1)
        return np.array(powers(n) + powers(2 * n)[0::2][: H - n])  # (H,)

    def bias(self, config: AttentionConfig, Tq: int, Tk: int):
        """The score bias (float64) or None: ALiBi's slope_h * (j - p), p = i + Tk - Tq, [H, Tq, Tk];
        or a bias array as given (broadcastable to [B, H, Tq, Tk])."""
        if config.bias is None:
            return None
        xp = self.xp()
        if isinstance(config.bias, BiasArray):
            return xp.asarray(config.bias.array)
        p = xp.arange(Tq)[:, None] + (Tk - Tq)  # (Tq, 1): the query's position
        j = xp.arange(Tk)[None, :]  # (1, Tk)
        return xp.asarray(self.alibi_slopes(config.n_heads))[:, None, None] * (j - p)[None]  # (H, Tq, Tk)

    def add_bias(self, s, config: AttentionConfig):
        """The scaled (capped) scores [B, H, Tq, Tk] plus the bias, before the masks."""
        b = self.bias(config, *s.shape[2:])
        return s if b is None else (s + b.astype(s.dtype)).astype(s.dtype)

    def reduce_bias(self, dS, shape: tuple[int, ...]):
        """A bias array's gradient: dS [B, H, Tq, Tk] summed over the axes the bias was broadcast on."""
        lead = dS.ndim - len(shape)
        out = dS.sum(axis=tuple(range(lead))) if lead else dS  # axes the bias does not have
        axes = tuple(i for i, n in enumerate(shape) if n == 1 and out.shape[i] != 1)  # size-1 axes stretched
        return (out.sum(axis=axes, keepdims=True) if axes else out).reshape(shape)

    def with_sinks(self, s, masked, config: AttentionConfig):
        """The sinks as one more key per row: scores [B, H, Tq, Tk + 1] with head h's sink logit last,
        never masked, and the mask widened to match; the softmax's weight on it is the sink's share,
        and it has no value (attn_weights drops the column). Unchanged without sinks."""
        if config.sinks is None:
            return s, masked
        xp = self.xp()
        B, H, Tq, _ = s.shape
        sink = xp.broadcast_to(xp.asarray(config.sinks, dtype=s.dtype)[None, :, None, None], (B, H, Tq, 1))
        masked = xp.broadcast_to(masked, (B, H, Tq, s.shape[-1]))
        return (xp.concatenate([s, sink], axis=-1),  # (B, H, Tq, Tk + 1)
                xp.concatenate([masked, xp.zeros((B, H, Tq, 1), dtype=bool)], axis=-1))

    def padding(self, key_padding_mask):
        """Masked keys from a key padding mask (True = may attend): [B, Tk] -> [B, 1, 1, Tk]."""
        return ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)

    def mask(self, config: AttentionConfig, B: int, Tq: int, Tk: int, key_padding_mask):
        """True where the weight must be 0: causal, window and padding combined, [B, 1, Tq, Tk]."""
        masked = self.xp().zeros((B, 1, Tq, Tk), dtype=bool)
        if config.causal:
            masked = masked | self.causal_mask(Tq, Tk)
        if config.window is not None:
            masked = masked | self.window_mask(Tq, Tk, config.window)
        if key_padding_mask is not None:
            masked = masked | self.padding(key_padding_mask)
        return masked

    def softmax(self, s, masked):
        """Masked, max-subtracted softmax over the key axis; fully masked rows give zeros."""
        xp = self.xp()
        s = xp.where(masked, -xp.inf, s)
        m = s.max(axis=-1, keepdims=True)  # (B, H, Tq, 1)
        e = xp.exp(s - xp.where(xp.isfinite(m), m, 0))  # masked: exp(-inf) = 0 exactly
        total = e.sum(axis=-1, keepdims=True)
        return e / xp.where(total > 0, total, 1)

    def dropout(self, w, keep, p: float):
        """Inverted dropout: kept weights scaled by 1/(1 - p), the others 0."""
        return self.xp().where(keep, w / (1.0 - p), 0).astype(w.dtype)

    def forward_dropout_mask(self, shape: tuple[int, ...], config: AttentionConfig, dropout_mask: Any,
                             training: bool) -> Any:
        """The keep mask forward applies: the given one, or our own draw; none in eval mode."""
        if not training or config.dropout_p == 0:
            return None
        if dropout_mask is not None:
            return dropout_mask
        xp = self.xp()
        if xp is np:
            return np.random.default_rng().random(shape) >= config.dropout_p
        return xp.random.random(shape) >= config.dropout_p

    def kv_head_of(self, H: int, n_kv_heads: int) -> np.ndarray:
        """Grouped-query attention: which K/V head each query head reads, h // (H / n_kv_heads)."""
        return np.arange(H) // (H // n_kv_heads)  # (H,)

    def repeat_kv(self, K, n_heads: int):
        """K/V heads [B, Hkv, T, hd] -> [B, H, T, hd], one per query head (kv_head_of)."""
        of = np.asarray(self.kv_head_of(n_heads, K.shape[1]))
        if K.shape[1] == n_heads and (of == np.arange(n_heads)).all():
            return K  # every query head its own K/V head: no copy
        return K[:, self.xp().asarray(of)]  # (B, H, T, hd)

    def sum_groups(self, dK, n_kv_heads: int):
        """repeat_kv's backward: each K/V head's gradient summed over the query heads that read it."""
        H = dK.shape[1]
        of = np.asarray(self.kv_head_of(H, n_kv_heads))
        if n_kv_heads == H and (of == np.arange(H)).all():
            return dK
        xp = self.xp()
        out = xp.zeros((dK.shape[0], n_kv_heads, *dK.shape[2:]), dtype=dK.dtype)  # (B, Hkv, T, hd)
        for h, j in enumerate(of.tolist()):  # in query-head order, as the forward repeated them
            out[:, j] += dK[:, h]
        return out

    def qkv(self, x, weights):
        """Step 4 inside forward: x (caller's array, caller's dtype) -> Q, K, V in the work dtype."""
        return self.project_qkv(x.astype(work_dtype(x.dtype)), weights)

    # -- the steps (3..12), same names and shapes as spec.steps ---------------------------------
    def init_params(self, config: AttentionConfig, seed: int = 0) -> Params:
        from spec.params import init_params  # the nn.Linear recipe, drawn with NumPy's RNG

        return init_params(config, seed)

    def project_qkv(self, x, weights):
        dt, work = x.dtype, work_dtype(x.dtype)
        p = self.step_params(weights).map(lambda a: a.astype(work))
        x = x.astype(work)
        Q = self.linear(x, p.W_q, p.b_q)  # (B, T, d_out)
        K = self.linear(x, p.W_k, p.b_k)  # (B, T, d_kv)
        V = self.linear(x, p.W_v, p.b_v)  # (B, T, d_kv)
        return Q.astype(dt), K.astype(dt), V.astype(dt)

    def split_heads(self, Q, n_heads: int):
        B, T, d_out = Q.shape
        return Q.reshape(B, T, n_heads, d_out // n_heads)  # (B, T, H, hd)

    def group_by_heads(self, Q):
        return Q.transpose(0, 2, 1, 3)  # (B, H, T, hd)

    def attn_scores(self, Q, K):
        work = work_dtype(Q.dtype)
        K = self.repeat_kv(K, Q.shape[1])  # (B, H, Tk, hd): grouped K per query head
        q, k = Q.astype(work, copy=False), K.astype(work, copy=False)  # no copy if already work: a decode step reads K once
        return (q @ k.swapaxes(-1, -2)).astype(Q.dtype, copy=False)  # (B, H, Tq, Tk)

    def attn_weights(self, attn_scores, config: AttentionConfig, key_padding_mask=None, dropout_mask=None):
        B, _, Tq, Tk = attn_scores.shape
        dt = attn_scores.dtype
        s = attn_scores.astype(work_dtype(dt))
        s = s * s.dtype.type(self.scale(config))
        s = self.softcap(s, config.softcap)  # the spec's order: scale, softcap, bias, then the masks
        s = self.add_bias(s, config)
        w = self.softmax(*self.with_sinks(s, self.mask(config, B, Tq, Tk, key_padding_mask), config))
        w = w[..., :Tk]  # (B, H, Tq, Tk): a sink's column, if any, has no value
        if dropout_mask is not None:
            w = self.dropout(w, dropout_mask, config.dropout_p)
        return w.astype(dt)

    def context(self, attn_weights, V):
        work = work_dtype(V.dtype)
        V = self.repeat_kv(V, attn_weights.shape[1])  # (B, H, Tk, hd): grouped V per query head
        w, v = attn_weights.astype(work, copy=False), V.astype(work, copy=False)  # no copy if already work
        return (w @ v).astype(V.dtype, copy=False)  # (B, H, Tq, hd)

    def permute_back(self, context):
        return context.transpose(0, 2, 1, 3)  # (B, T, H, hd)

    def concat_heads(self, context):
        B, T, H, hd = context.shape
        return self.xp().ascontiguousarray(context).reshape(B, T, H * hd)  # (B, T, d_out)

    def out_proj(self, context, weights):
        work = work_dtype(context.dtype)
        p = self.step_params(weights).map(lambda a: a.astype(work))
        return self.linear(context.astype(work), p.W_o, p.b_o).astype(context.dtype)  # (B, T, d_out)

    # -- the whole block, composed of the steps ---------------------------------------------------
    def forward(self, x, weights, config: AttentionConfig, *, key_padding_mask=None, dropout_mask=None,
                training: bool = False):
        """Steps 4-12 composed from the step methods, in the work dtype; output in x's dtype.

        A backend with a fast forward of its own (NumPy, CuPy) overrides this; tests hold the
        two equal."""
        dt, H = x.dtype, config.n_heads
        Q, K, V = self.qkv(x, weights)  # step 4: (B, T, d_out), K and V (B, T, d_kv), in work
        heads = (H, config.kv_heads, config.kv_heads)
        Q, K, V = (self.group_by_heads(self.split_heads(a, h)) for a, h in zip((Q, K, V), heads))  # steps 5-6
        scores = self.attn_scores(Q, K)  # step 7: (B, H, T, T)
        keep = self.forward_dropout_mask(scores.shape, config, dropout_mask, training)
        w = self.attn_weights(scores, config, key_padding_mask, keep)  # step 8
        ctx = self.concat_heads(self.permute_back(self.context(w, V)))  # steps 9-11: (B, T, d_out)
        return self.out_proj(ctx, weights).astype(dt)  # step 12
