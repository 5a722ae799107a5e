"""The block's backward for NumPy-compatible array libraries (NumPy, CuPy), written once.

FlashAttention-2's algorithm, blocked like the NumPy forward: the forward keeps only the
softmax's row log-sum-exp (lse, [B, H, T]) besides q, k, v and the context, never the
(T, T) weights; the backward recomputes each block of weights as exp(s - lse), and takes the
softmax backward's row term as rowsum(dO * O) (one number per query, computed once) instead of
rowsum(P * dP) (a pass over each block). Causal blocks past the diagonal are skipped in both
directions. Dropout is replayed with the keep mask the forward used (given, or drawn and kept).
Queries with no attendable key have lse = +inf, so their recomputed weights are exactly 0 and
they pass no gradient through the attention, as the spec decides.

A backend mixes in `ArrayBackward` beside `ArraySteps` (its `xp()`, and `prepare` putting
W_qkv_T, b_qkv, W_o_T, b_o in the work dtype into the weights). float16 runs in float32 and
the gradients are rounded back. `ArrayVJPs` are the plain per-step VJPs (spec.backward's
signatures), so the suite can name the first wrong step of a backward.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spec.config import AttentionConfig

_BLOCK = 128  # query rows per block, as the forward's
_BUDGET = 2 << 20  # bytes of one block's scores over all heads of a group: about one core's L2


def _groups(B: int, H: int, T: int, itemsize: int):
    """(batch slice, head slice) groups whose (bq, T) score blocks stay near L2-sized."""
    bq = min(_BLOCK, T)
    if H * bq * T * itemsize > _BUDGET:  # long sequences: one (b, h) at a time, 2-D BLAS calls
        return [(slice(b, b + 1), slice(h, h + 1)) for b in range(B) for h in range(H)]
    bb = max(1, _BUDGET // (H * bq * T * itemsize))
    return [(slice(b, b + bb), slice(0, H)) for b in range(0, B, bb)]


class ArrayBackward:
    """forward_for_grad and backward for ArraySteps backends (see the module docstring)."""

    def forward_for_grad(self, x, weights, config: AttentionConfig, *, key_padding_mask=None,
                         dropout_mask=None, training: bool = False) -> tuple[Any, dict]:
        xp = self.xp()
        B, T, d_in = x.shape
        H, hd, d_out = config.n_heads, config.head_dim, config.d_out
        work = weights["work"]
        Hkv = config.kv_heads
        xw = x.astype(work, copy=False).reshape(B * T, d_in)  # (B*T, d_in)
        qkv = xw @ weights["W_qkv_T"]  # (B*T, d_out + 2*d_kv)
        if weights["b_qkv"] is not None:
            qkv += weights["b_qkv"]
        qkv = qkv.reshape(B, T, H + 2 * Hkv, hd).transpose(0, 2, 1, 3)  # (B, H + 2*Hkv, T, hd)
        q = qkv[:, :H] * work.type(1.0 / np.sqrt(hd))  # scaled once; (B, H, T, hd)
        # grouped K/V heads copied to their query heads (h // group); backward sums them back
        k = xp.ascontiguousarray(self.repeat_kv(qkv[:, H:H + Hkv], H))  # (B, H, T, hd)
        v = xp.ascontiguousarray(self.repeat_kv(qkv[:, H + Hkv:], H))  # (B, H, T, hd)
        p = config.dropout_p
        if training and dropout_mask is None and p > 0:  # own dropout: drawn here, kept for backward
            shape = (B, H, T, T)
            r = np.random.default_rng().random(shape, dtype=np.float32) if xp is np else \
                xp.random.random(shape, dtype=np.float32)
            dropout_mask = r >= p
        keep = dropout_mask
        pad = None if key_padding_mask is None else xp.where(key_padding_mask, 0, -xp.inf).astype(work)  # (B, T)
        O = xp.empty((B, H, T, hd), dtype=work)
        lse = xp.empty((B, H, T, 1), dtype=work)
        for b, h in _groups(B, H, T, work.itemsize):
            for i0, i1, s, P in self._blocks(q[b, h], k[b, h], pad, b, config.causal, lse=None):
                m = s.max(axis=-1, keepdims=True)  # (..., bq, 1)
                empty = m == -xp.inf  # no attendable key
                m = xp.where(empty, 0, m)
                e = xp.exp(s - m)
                total = e.sum(axis=-1, keepdims=True)
                lse[b, h, i0:i1] = xp.where(empty, xp.inf, m + xp.log(xp.where(empty, 1, total)))
                if keep is not None:
                    e = e * keep[b, h, i0:i1, :s.shape[-1]] / (1.0 - p)
                O[b, h, i0:i1] = (e @ v[b, h, :s.shape[-1]]) / xp.where(empty, 1, total)
        ctx = O.transpose(0, 2, 1, 3).reshape(B * T, d_out)  # (B*T, d_out): heads concatenated
        out = ctx @ weights["W_o_T"] + weights["b_o"]  # (B*T, d_out)
        saved = dict(xw=xw, q=q, k=k, v=v, O=O, lse=lse, ctx=ctx, pad=pad, keep=keep, config=config,
                     weights=weights, shape=(B, T, d_in))
        return out.reshape(B, T, d_out).astype(weights["dtype"], copy=False), saved

    def _blocks(self, q, k, pad, b, causal: bool, lse):
        """(i0, i1, s, P) per query block: scaled, masked scores s (..., bq, kend); P = exp(s - lse)
        when lse is given. Causal blocks stop at the block's last query (the rest is masked)."""
        xp = self.xp()
        T = q.shape[-2]
        bq = min(_BLOCK, T)
        tri = xp.triu(xp.full((bq, bq), -xp.inf, dtype=q.dtype), 1)  # (bq, bq) additive causal mask
        for i0 in range(0, T, bq):
            i1 = min(i0 + bq, T)
            kend = i1 if causal else T
            s = q[..., i0:i1, :] @ k[..., :kend, :].swapaxes(-1, -2)  # (..., bq, kend)
            if causal:
                s[..., i0:i1] += tri[:i1 - i0, :i1 - i0]
            if pad is not None:
                s += pad[b, None, None, :kend]  # (nb, 1, 1, kend): 0 or -inf per key
            yield i0, i1, s, None if lse is None else xp.exp(s - lse[..., i0:i1, :])

    def backward(self, saved: dict, grad_out) -> dict[str, Any]:
        xp = self.xp()
        B, T, d_in = saved["shape"]
        config, w = saved["config"], saved["weights"]
        H, hd, d_out = config.n_heads, config.head_dim, config.d_out
        work, dt = w["work"], w["dtype"]
        q, k, v, O, lse, keep = (saved[n] for n in ("q", "k", "v", "O", "lse", "keep"))
        p = config.dropout_p
        dout = grad_out.astype(work, copy=False).reshape(B * T, d_out)  # (B*T, d_out)
        dW_o = dout.T @ saved["ctx"]  # (d_out, d_out)
        db_o = dout.sum(axis=0)
        dO = (dout @ w["W_o_T"].T).reshape(B, T, H, hd).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        D = (dO * O).sum(axis=-1, keepdims=True)  # (B, H, T, 1): FA2's row term rowsum(dO * O)
        dqkv = xp.zeros((B, T, 3, H, hd), dtype=work)  # dq, dk, dv written straight in projection order
        dq, dk, dv = (dqkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, H, T, hd) views
        scale = work.type(1.0 / np.sqrt(hd))
        for b, h in _groups(B, H, T, work.itemsize):
            for i0, i1, s, P in self._blocks(q[b, h], k[b, h], saved["pad"], b, config.causal, lse[b, h]):
                kend = s.shape[-1]
                dOb = dO[b, h, i0:i1]  # (..., bq, hd)
                dP = dOb @ v[b, h, :kend].swapaxes(-1, -2)  # (..., bq, kend)
                Pd = P
                if keep is not None:  # replay the forward's keep mask
                    kb = keep[b, h, i0:i1, :kend]
                    Pd, dP = P * kb / (1.0 - p), dP * kb / (1.0 - p)
                dv[b, h, :kend] += Pd.swapaxes(-1, -2) @ dOb
                dS = P * (dP - D[b, h, i0:i1])  # (..., bq, kend), gradient of the scaled scores
                dq[b, h, i0:i1] = (dS @ k[b, h, :kend]) * scale
                dk[b, h, :kend] += dS.swapaxes(-1, -2) @ q[b, h, i0:i1]  # q already carries the scale
        Hkv, d_kv = config.kv_heads, config.d_kv
        if Hkv == H:
            dqkv = dqkv.reshape(B * T, 3 * d_out)  # (B*T, 3*d_out), [dQ | dK | dV] per token
        else:  # a grouped K/V head's gradient is the sum over its query heads (consecutive, h // group)
            dkv = dqkv[:, :, 1:].reshape(B, T, 2, Hkv, H // Hkv, hd).sum(axis=4)  # (B, T, 2, Hkv, hd)
            dqkv = xp.concatenate([dqkv[:, :, 0].reshape(B * T, d_out), dkv.reshape(B * T, 2 * d_kv)], axis=1)
        dx = dqkv @ w["W_qkv_T"].T  # (B*T, d_in): the three paths summed by the matmul
        dW = dqkv.T @ saved["xw"]  # (d_out + 2*d_kv, d_in)
        e = d_out + d_kv  # where dV's rows start
        grads = {"dx": dx.reshape(B, T, d_in), "dW_q": dW[:d_out], "dW_k": dW[d_out:e],
                 "dW_v": dW[e:], "dW_o": dW_o, "db_o": db_o}
        if w["b_qkv"] is not None:
            db = dqkv.sum(axis=0)
            grads.update(db_q=db[:d_out], db_k=db[d_out:e], db_v=db[e:])
        with np.errstate(over="ignore"):  # a gradient past float16's range is inf, as the spec's would be
            return {n: a.astype(dt) for n, a in grads.items()}


class ArrayVJPs:
    """The plain per-step VJPs (spec.backward's signatures) on this backend's arrays, for
    naming the first wrong step of a backward; `weights` is what `prepare` returns."""

    def project_qkv_vjp(self, dQ, dK, dV, x, weights):
        p = weights["params"]
        dx = dQ @ p.W_q + dK @ p.W_k + dV @ p.W_v  # (B, T, d_in)
        flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731  (B*T, features)
        d = {"W_q": flat(dQ).T @ flat(x), "W_k": flat(dK).T @ flat(x), "W_v": flat(dV).T @ flat(x)}
        if p.b_q is not None:
            d.update(b_q=dQ.sum(axis=(0, 1)), b_k=dK.sum(axis=(0, 1)), b_v=dV.sum(axis=(0, 1)))
        return dx, d

    def split_heads_vjp(self, dQ_split, Q, n_heads: int):
        return dQ_split.reshape(Q.shape)  # (B, T, d_out)

    def group_by_heads_vjp(self, dq, Q_split):
        return dq.transpose(0, 2, 1, 3)  # (B, T, H, hd)

    def attn_scores_vjp(self, d_scores, q, k):
        H, Hkv = q.shape[1], k.shape[1]  # grouped K: repeated forward, summed over each group back
        dk = self.sum_groups(d_scores.swapaxes(-1, -2) @ q, Hkv)  # (B, Hkv, Tk, hd)
        return d_scores @ self.repeat_kv(k, H), dk  # (B, H, Tq, hd), (B, Hkv, Tk, hd)

    def attn_weights_vjp(self, d_weights, attn_scores, config: AttentionConfig, key_padding_mask=None,
                         dropout_mask=None):
        xp = self.xp()
        dt = attn_scores.dtype
        work = np.float32 if dt == np.float16 else dt  # the row sums in float32, as the forward's
        P = self.attn_weights(attn_scores, config, key_padding_mask).astype(work)  # before dropout
        dP = d_weights.astype(work)
        if dropout_mask is not None:
            dP = xp.where(dropout_mask, dP / (1.0 - config.dropout_p), 0)
        dS = P * (dP - (P * dP).sum(axis=-1, keepdims=True))  # (B, H, Tq, Tk)
        return (dS / np.sqrt(config.head_dim)).astype(dt)

    def context_vjp(self, d_context, attn_weights, v):
        H, Hkv = d_context.shape[1], v.shape[1]  # grouped V: repeated forward, summed over each group back
        dv = self.sum_groups(attn_weights.swapaxes(-1, -2) @ d_context, Hkv)  # (B, Hkv, Tk, hd)
        return d_context @ self.repeat_kv(v, H).swapaxes(-1, -2), dv

    def permute_back_vjp(self, d_tokens, context):
        return d_tokens.transpose(0, 2, 1, 3)  # (B, H, T, hd)

    def concat_heads_vjp(self, d_concat, context_tokens):
        return d_concat.reshape(context_tokens.shape)  # (B, T, H, hd)

    def out_proj_vjp(self, d_out, context_concat, weights):
        p = weights["params"]
        flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731  (B*T, features)
        return d_out @ p.W_o, {"W_o": flat(d_out).T @ flat(context_concat), "b_o": d_out.sum(axis=(0, 1))}
