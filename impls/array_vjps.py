"""The step VJPs for NumPy-compatible array libraries (NumPy, CuPy), and the backward composed of them.

Mixed in beside `impls.array_steps.ArraySteps` (whose pieces and `xp()` it uses): the VJPs
have spec.backward's names and signatures, so the suite can name the first wrong step of a
backward; `forward_for_grad` / `backward` compose them, steps 12 down to 4 on the recomputed
forward values. The mutants' plain backend takes this backward, so a backward mutant
(`conformance.mutants.backward`) changes one VJP or hook by a few lines. The NumPy and CuPy
backends take their fast FlashAttention-2 backward (`impls.array_backward`) instead, as they
take their fast forward. float16 runs in float32.
"""

from __future__ import annotations

from typing import Any

from impls.array_steps import work_dtype
from spec.config import AttentionConfig
from spec.scores import BiasArray


def _flat(a: Any) -> Any:
    return a.reshape(-1, a.shape[-1])  # (B*T, features)


class ArrayVJPs:
    """The step VJPs (4..12), their hooks, and the backward composed of them."""

    # -- the step VJPs, spec.backward's signatures; `weights` is what `prepare` returns ----------
    def project_qkv_vjp(self, dQ, dK, dV, x, weights):
        p = self.step_params(weights)
        dx = dQ @ p.W_q + dK @ p.W_k + dV @ p.W_v  # (B, T, d_in): three paths
        d = {"W_q": _flat(dQ).T @ _flat(x), "W_k": _flat(dK).T @ _flat(x), "W_v": _flat(dV).T @ _flat(x)}
        if p.b_q is not None:
            d.update(b_q=dQ.sum(axis=(0, 1)), b_k=dK.sum(axis=(0, 1)), b_v=dV.sum(axis=(0, 1)))
        return dx, d

    def split_heads_vjp(self, dQ_split, Q, n_heads: int):
        return dQ_split.reshape(Q.shape)  # (B, T, d_out)

    def group_by_heads_vjp(self, dq, Q_split):
        return dq.transpose(0, 2, 1, 3)  # (B, T, H, hd)

    def attn_scores_vjp(self, d_scores, q, k):
        dk = self.sum_groups(d_scores.swapaxes(-1, -2) @ q, k.shape[1])  # (B, Hkv, Tk, hd): over each group
        return d_scores @ self.repeat_kv(k, q.shape[1]), dk  # dq (B, H, Tq, hd)

    def row_term(self, P, dP):
        """The softmax backward's row term rowsum(P * dP): [B, H, Tq, 1]."""
        return (P * dP).sum(axis=-1, keepdims=True)

    def attn_weights_vjp(self, d_weights, attn_scores, config: AttentionConfig, key_padding_mask=None,
                         dropout_mask=None):
        dt = attn_scores.dtype
        work = work_dtype(dt)  # the row sums in float32 for float16, as the forward's
        P, _ = self.backward_weights(attn_scores, config, key_padding_mask)  # recomputed, before dropout
        dP = d_weights.astype(work)
        if dropout_mask is not None:
            dP = self.dropout(dP, dropout_mask, config.dropout_p)
        dS = P * (dP - self.row_term(P, dP))  # (B, H, Tq, Tk): gradient of the (capped) scaled scores
        dS = self.softcap_vjp(dS, attn_scores.astype(work) * work.type(self.scale(config)), config.softcap, P)
        return (dS * self.scale(config)).astype(dt)

    def softcap_vjp(self, dS, s, c: float | None, P):
        """The softcap's backward: dS * (1 - tanh(s / c)^2) at the scaled scores s; 0 where P is 0
        (masked, whatever the score, NaN included)."""
        if c is None:
            return dS
        xp = self.xp()
        t = xp.tanh(s / c)
        return xp.where(P == 0, 0, dS * (1 - t * t)).astype(dS.dtype)

    def sinks_vjp(self, d_weights, attn_scores, config: AttentionConfig, key_padding_mask=None,
                  dropout_mask=None):
        """The sink logits' gradient [H]: -sum over b, i of w_sink * rowsum(P * dP) (spec.backward)."""
        work = work_dtype(attn_scores.dtype)
        P, w_sink = self.backward_weights(attn_scores, config, key_padding_mask)  # (B, H, Tq, Tk), (.., 1)
        dP = d_weights.astype(work)
        if dropout_mask is not None:
            dP = self.dropout(dP, dropout_mask, config.dropout_p)
        return (-(w_sink * self.row_term(P, dP)).sum(axis=(0, 2, 3))).astype(attn_scores.dtype)  # (H,)

    def bias_vjp(self, d_weights, attn_scores, config: AttentionConfig, key_padding_mask=None,
                 dropout_mask=None):
        """A bias array's gradient, in its shape: the softmax's dS (before the softcap's derivative and
        the scale: the bias is added after both) summed over its broadcast axes (`reduce_bias`)."""
        work = work_dtype(attn_scores.dtype)
        P, _ = self.backward_weights(attn_scores, config, key_padding_mask)
        dP = d_weights.astype(work)
        if dropout_mask is not None:
            dP = self.dropout(dP, dropout_mask, config.dropout_p)
        dS = P * (dP - self.row_term(P, dP))  # (B, H, Tq, Tk)
        return self.reduce_bias(dS, config.bias.shape).astype(attn_scores.dtype)

    def context_vjp(self, d_context, attn_weights, v):
        dv = self.sum_groups(attn_weights.swapaxes(-1, -2) @ d_context, v.shape[1])  # (B, Hkv, Tk, hd)
        return d_context @ self.repeat_kv(v, d_context.shape[1]).swapaxes(-1, -2), dv

    def permute_back_vjp(self, d_tokens, context):
        return d_tokens.transpose(0, 2, 1, 3)  # (B, H, T, hd)

    def concat_heads_vjp(self, d_concat, context_tokens):
        return d_concat.reshape(context_tokens.shape)  # (B, T, H, hd)

    def out_proj_vjp(self, d_out, context_concat, weights):
        p = self.step_params(weights)
        return d_out @ p.W_o, {"W_o": _flat(d_out).T @ _flat(context_concat), "b_o": d_out.sum(axis=(0, 1))}

    # -- hooks a mutant may override ----------------------------------------------------------
    def backward_weights(self, attn_scores, config: AttentionConfig, key_padding_mask=None):
        """The backward's recomputed step 8, before dropout, in the work dtype: the weights
        [B, H, Tq, Tk] and each row's sink weight [B, H, Tq, 1] (zeros without sinks)."""
        work = work_dtype(attn_scores.dtype)
        B, H, Tq, Tk = attn_scores.shape
        if config.sinks is None:  # step 8 itself (a mutant's step 8 reaches its backward too)
            P = self.attn_weights(attn_scores, config, key_padding_mask).astype(work)
            return P, self.xp().zeros((B, H, Tq, 1), dtype=work)
        s = attn_scores.astype(work) * work.type(self.scale(config))
        s = self.add_bias(self.softcap(s, config.softcap), config)
        full = self.softmax(*self.with_sinks(s, self.mask(config, B, Tq, Tk, key_padding_mask), config))
        return full[..., :Tk], full[..., Tk:]  # (B, H, Tq, Tk), (B, H, Tq, 1)

    def backward_dropout_mask(self, keep: Any, config: AttentionConfig) -> Any:
        """The keep mask the backward applies: the forward's (replayed)."""
        return keep

    def qkv_cotangents(self, dQ, dK, dV):
        """dQ, dK, dV in the order step 4's VJP takes them."""
        return dQ, dK, dV

    def finish_grads(self, grads: dict[str, Any]) -> dict[str, Any]:
        """The gradients as returned; a hook for state kept across calls (none here)."""
        return grads

    # -- the contract, composed of the VJPs ---------------------------------------------------
    def forward_for_grad(self, x, weights, config: AttentionConfig, *, key_padding_mask=None,
                         dropout_mask=None, training: bool = False) -> tuple[Any, dict[str, Any]]:
        B, T = x.shape[:2]
        keep = self.forward_dropout_mask((B, config.n_heads, T, T), config, dropout_mask, training)
        out = self.forward(x, weights, config, key_padding_mask=key_padding_mask, dropout_mask=keep,
                           training=keep is not None)
        return out, {"x": x, "weights": weights, "config": config, "kpm": key_padding_mask, "keep": keep}

    def backward(self, saved: dict[str, Any], grad_out) -> dict[str, Any]:
        """Steps 12 down to 4, each step's VJP on the recomputed forward values, in the work dtype."""
        x, config, kpm, w = saved["x"], saved["config"], saved["kpm"], saved["weights"]
        H, Hkv, dt = config.n_heads, config.kv_heads, x.dtype
        xw = x.astype(work_dtype(dt))
        Q, K, V = self.project_qkv(xw, w)  # (B, T, d_out), K and V (B, T, d_kv)
        Qs, Ks, Vs = self.split_heads(Q, H), self.split_heads(K, Hkv), self.split_heads(V, Hkv)  # (B, T, H or Hkv, hd)
        q, k, v = (self.group_by_heads(a) for a in (Qs, Ks, Vs))  # (B, H or Hkv, T, hd)
        scores = self.attn_scores(q, k)
        weights = self.attn_weights(scores, config, kpm, saved["keep"])
        context = self.context(weights, v)
        tokens = self.permute_back(context)
        concat = self.concat_heads(tokens)
        d_concat, d_out_params = self.out_proj_vjp(grad_out.astype(xw.dtype), concat, w)    # step 12
        d_context = self.permute_back_vjp(self.concat_heads_vjp(d_concat, tokens), context)  # 11, 10
        d_weights, dv = self.context_vjp(d_context, weights, v)                            # step 9
        keep = self.backward_dropout_mask(saved["keep"], config)
        d_scores = self.attn_weights_vjp(d_weights, scores, config, kpm, keep)             # step 8
        d_sinks = None if config.sinks is None else self.sinks_vjp(d_weights, scores, config, kpm, keep)
        d_bias = self.bias_vjp(d_weights, scores, config, kpm, keep) if isinstance(config.bias, BiasArray) else None
        dq, dk = self.attn_scores_vjp(d_scores, q, k)                                      # step 7
        dQ, dK, dV = (self.split_heads_vjp(self.group_by_heads_vjp(d, s), a, h)            # steps 6, 5
                      for d, s, a, h in ((dq, Qs, Q, H), (dk, Ks, K, Hkv), (dv, Vs, V, Hkv)))
        dx, d_in_params = self.project_qkv_vjp(*self.qkv_cotangents(dQ, dK, dV), xw, w)    # step 4
        grads = {"dx": dx, **{"d" + n: a for n, a in {**d_in_params, **d_out_params}.items()}}
        if d_sinks is not None:
            grads["dsinks"] = d_sinks
        if d_bias is not None:
            grads["dbias"] = d_bias
        return self.finish_grads({n: a.astype(dt) for n, a in grads.items()})
