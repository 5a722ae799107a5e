"""ALiBi and sink mutants: `PlainBackend` with one bug in a score term (spec/scores.py).

Each declares the bias and sinks (so the suite draws them) and overrides one piece of
`impls.array_steps.ArraySteps` or `impls.array_vjps.ArrayVJPs`: ALiBi's slopes in reverse head
order; the bias along the wrong axis (its transpose: slope_h * (p - j), so far keys win); the bias
added after a multiplicative mask (a masked score held at 0, so the bias gives masked keys their
weight back); the sink added to every score (a numerator term, which cancels: rows sum to one
again) instead of one more denominator term; and the sink ignored in the backward of a row with
no attendable key (its weights recomputed as the softmax of its raw scores).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from conformance.mutants.base import PlainBackend, work_dtype


class ScoredPlain(PlainBackend):
    """The base of the bias and sink mutants: PlainBackend declaring both (not itself a mutant)."""

    capabilities = replace(PlainBackend.capabilities, bias=True, sinks=True)


class AlibiSlopesReversed(ScoredPlain):
    """ALiBi's slopes in reverse head order: head 0 gets the gentlest slope (2^-8 for 8 heads), not 1/2."""

    name = "mutant-alibi-slopes-reversed"

    def alibi_slopes(self, H):
        return super().alibi_slopes(H)[::-1]  # (H,)


class BiasWrongAxis(ScoredPlain):
    """The bias indexed [key, query] where [query, key] belongs (its transpose): slope_h * (p - j)."""

    name = "mutant-bias-wrong-axis"

    def bias(self, config, Tq, Tk):
        b = super().bias(config, Tk, Tk)  # (H, Tk, Tk): every position as a query
        return None if b is None else b.swapaxes(-1, -2)[:, Tk - Tq:]  # (H, Tq, Tk): the transpose's last rows


class BiasAfterMask(ScoredPlain):
    """The mask applied first as a product (masked scores held at 0), the bias added after: masked keys
    come back with weight exp(bias), and a fully masked row is no longer empty."""

    name = "mutant-bias-after-mask"

    def attn_weights(self, attn_scores, config, key_padding_mask=None, dropout_mask=None):
        if config.bias is None:
            return super().attn_weights(attn_scores, config, key_padding_mask, dropout_mask)
        B, _, Tq, Tk = attn_scores.shape
        dt, work = attn_scores.dtype, work_dtype(attn_scores.dtype)
        s = self.softcap(attn_scores.astype(work) * work.type(self.scale(config)), config.softcap)
        masked = self.mask(config, B, Tq, Tk, key_padding_mask)
        s = self.add_bias(np.where(masked, 0, s).astype(work), config)  # masked first, as a product...
        w = self.softmax(*self.with_sinks(s, np.zeros_like(masked), config))[..., :Tk]  # ...so nothing is masked
        if dropout_mask is not None:
            w = self.dropout(w, dropout_mask, config.dropout_p)
        return w.astype(dt)


class SinkInNumerator(ScoredPlain):
    """The sink logit added to every score (a numerator term) instead of one more denominator term:
    it cancels in the softmax, so rows sum to one again and the sink does nothing."""

    name = "mutant-sink-in-numerator"

    def with_sinks(self, s, masked, config):
        if config.sinks is None:
            return s, masked
        return s + np.asarray(config.sinks, dtype=s.dtype)[None, :, None, None], masked  # (B, H, Tq, Tk)


class SinkIgnoredEmptyRowGrad(ScoredPlain):
    """In the backward, a row with no attendable key recomputes its weights as the softmax of its raw
    scores, the mask and the sink left out (a kernel's empty-row path written before sinks): its
    forward is right (0), its gradients reach keys it never saw and the sink."""

    name = "mutant-sink-ignored-empty-row-grad"

    def backward_weights(self, attn_scores, config, key_padding_mask=None):
        P, w_sink = super().backward_weights(attn_scores, config, key_padding_mask)
        if config.sinks is None:
            return P, w_sink
        B, _, Tq, Tk = attn_scores.shape
        empty = ~(~self.mask(config, B, Tq, Tk, key_padding_mask)).any(-1, keepdims=True)  # (B, 1, Tq, 1)
        work = work_dtype(attn_scores.dtype)
        raw = self.softmax(attn_scores.astype(work) * work.type(self.scale(config)), np.zeros((1, 1, 1, 1), bool))
        return np.where(empty, raw, P).astype(work), w_sink


class DBiasWrongAxes(ScoredPlain):
    """A bias array's gradient summed only over the query and key axes it was broadcast on: a batch
    or head axis it was broadcast on gets the first batch row's or head's gradient, not the sum."""

    name = "mutant-dbias-wrong-axes"

    def reduce_bias(self, dS, shape):
        lead = dS.ndim - len(shape)
        full = (1,) * lead + tuple(shape)  # the bias's shape with every missing axis as size 1
        for axis in (0, 1):  # batch and heads: sliced at 0 where they were broadcast
            if full[axis] == 1 and dS.shape[axis] > 1:
                dS = dS[(slice(None),) * axis + (slice(0, 1),)]
        return super().reduce_bias(dS, shape)


#: The bias and sink mutants whose forward is wrong (the kill table runs them all).
BIAS_MUTANTS: list[type[PlainBackend]] = [AlibiSlopesReversed, BiasWrongAxis, BiasAfterMask, SinkInNumerator]
#: Their forward is right: only a gradient check kills them (the kill table runs them too).
BIAS_GRAD_MUTANTS: list[type[PlainBackend]] = [SinkIgnoredEmptyRowGrad, DBiasWrongAxes]
