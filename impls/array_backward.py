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
the gradients are rounded back. This is the fast backward, as the backend's forward is its
fast forward; the plain per-step VJPs and the backward composed of them are
`impls.array_vjps.ArrayVJPs` (the mutants' backward), which the tests hold this one equal to;
a config with a sliding window or a softcap takes that composed backward (`modified`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from impls.array_vjps import ArrayVJPs
from spec.config import AttentionConfig


def modified(config: AttentionConfig) -> bool:
    """True when the scores carry a sliding window, a softcap, a bias or sinks: the fast blocked
    paths do not take them (yet), so the forward and backward are the ones composed of the steps
    and their VJPs."""
    return (config.window is not None or config.softcap is not None or config.bias is not None
            or config.sinks is not None)

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
        if modified(config):  # a window or softcap: the backward composed of the step VJPs
            out, saved = ArrayVJPs.forward_for_grad(self, x, weights, config, key_padding_mask=key_padding_mask,
                                                    dropout_mask=dropout_mask, training=training)
            return out, {**saved, "composed": True}
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
        if saved.get("composed"):
            return ArrayVJPs.backward(self, saved, grad_out)
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
