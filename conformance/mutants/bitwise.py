"""Bitwise-invariance mutants: backends that promise `Capabilities.batch_invariant` or
`Capabilities.decode_invariant` and break it, and the correct controls that keep each.

`PerSequence` is the correct control: each sequence runs alone through `PlainBackend`, so its
bits cannot depend on the batch. `BatchSplitK` is the bug real kernels have: the output
projection's reduction is split in two (split-K) when the batch holds more than one sequence,
as a kernel tuned by shape does. Its values stay within the tolerance model; only the promised
bits change, so only `batch_invariant_bitwise` kills it.

`TokenByToken` is the decoding control: every causal forward is decoded one token at a time
from an empty cache, and a prefill appends one token at a time, so a token's row is computed by
the same calls on the same shapes whichever way it is reached. `SplitKVDecode` is the bug real
decoding kernels have (flash-decoding): a decode step sums its context over the cache in two
halves and combines them, while the forward sums in one pass. Its values stay within the
tolerance model; only `decode_invariant_bitwise` kills it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from conformance.mutants.base import PlainBackend, work_dtype
from spec.params import Params


class PerSequence(PlainBackend):
    """Correct and batch-invariant by construction: each sequence of the batch is run alone."""

    name = "plain-per-sequence"
    capabilities = replace(PlainBackend.capabilities, batch_invariant=True)

    def forward(self, x, weights, config, *, key_padding_mask=None, dropout_mask=None, training=False):
        def one(a, b):
            return None if a is None else a[b:b + 1]

        self.batched = x.shape[0] > 1  # what a shape-tuned kernel sees
        return np.concatenate([super(PerSequence, self).forward(
            x[b:b + 1], weights, config, key_padding_mask=one(key_padding_mask, b),
            dropout_mask=one(dropout_mask, b), training=training) for b in range(x.shape[0])], axis=0)  # (B, T, d_out)


class BatchSplitK(PerSequence):
    """Declares batch invariance, but with more than one sequence in the batch the output
    projection sums its two halves of d_out separately (split-K chosen by batch size)."""

    name = "mutant-batch-split-k"

    def out_proj(self, context: np.ndarray, weights: Params) -> np.ndarray:
        C = context.shape[-1]
        if not getattr(self, "batched", False) or C < 2:
            return super().out_proj(context, weights)
        work = work_dtype(context.dtype)
        c, W = context.astype(work), weights.W_o.astype(work)
        h = C // 2
        y = c[..., :h] @ W[:, :h].T + c[..., h:] @ W[:, h:].T  # (B, T, d_out): two partial sums
        return (y + weights.b_o.astype(work)).astype(context.dtype)


class TokenByToken(PlainBackend):
    """Correct and decode-invariant by construction: the causal forward is token-by-token decoding."""

    name = "plain-token-by-token"
    capabilities = replace(PlainBackend.capabilities, decode_invariant=True)

    def forward(self, x, weights, config, *, key_padding_mask=None, dropout_mask=None, training=False):
        if not config.causal or training:  # dropout: its own mask over the whole block, as PlainBackend
            return super().forward(x, weights, config, key_padding_mask=key_padding_mask,
                                   dropout_mask=dropout_mask, training=training)
        cache = self._empty(x, weights, config)
        y, _ = self._tokens(x, cache, weights, config, key_padding_mask)
        return y.astype(x.dtype)  # (B, T, d_out)

    def _empty(self, x, weights, config):
        return super().prefill(x[:, :0], weights, config)  # t = 0: nothing cached yet

    def _tokens(self, x, cache, weights, config, key_padding_mask):
        """Each token of x decoded alone, in order: (outputs [B, n, d_out], the cache after them)."""
        ys = []
        for i in range(x.shape[1]):
            kpm = None if key_padding_mask is None else key_padding_mask[:, i:i + 1]
            y, cache = super().decode(x[:, i:i + 1], cache, weights, config, key_padding_mask=kpm)
            ys.append(y)  # (B, 1, d_out)
        return np.concatenate(ys, axis=1), cache

    def prefill(self, x, weights, config, *, key_padding_mask=None):
        cache = self._empty(x, weights, config)
        for i in range(x.shape[1]):  # one token at a time: its K and V as the forward computes them
            _, k, v = self.heads(x[:, i:i + 1], weights, config)
            kpm = self.keep(x[:, i:i + 1], None if key_padding_mask is None else key_padding_mask[:, i:i + 1])
            cache = self.append(cache, k, v, kpm)
        return cache

    def decode(self, x_new, cache, weights, config, *, key_padding_mask=None):
        if not config.causal:  # a non-causal chunk's tokens see each other: one call, as PlainBackend
            return super().decode(x_new, cache, weights, config, key_padding_mask=key_padding_mask)
        return self._tokens(x_new, cache, weights, config, key_padding_mask)


class SplitKVDecode(TokenByToken):
    """Declares decode invariance, but a decode step sums its context over the cache in two halves (split-KV).

    As flash-decoding does, each half's partial kept in the output dtype; the forward sums the
    context in one pass, so the decoded bits differ though the values are within tolerance."""

    name = "mutant-split-kv-decode"

    def decode(self, x_new, cache, weights, config, *, key_padding_mask=None):
        self.splitting = True  # what a decoding kernel's launcher decides
        try:
            return super().decode(x_new, cache, weights, config, key_padding_mask=key_padding_mask)
        finally:
            self.splitting = False

    def context(self, attn_weights, V):
        Tk = attn_weights.shape[-1]
        if not getattr(self, "splitting", False) or Tk < 2:
            return super().context(attn_weights, V)
        work = work_dtype(V.dtype)
        w, V = attn_weights.astype(work), self.repeat_kv(V, attn_weights.shape[1]).astype(work)  # (B, H, Tk, hd)
        h, dt = Tk // 2, attn_weights.dtype
        # two partial sums, each kept in the output dtype (float16 partials: the split shows there too)
        a, b = (w[..., :h] @ V[..., :h, :]).astype(dt), (w[..., h:] @ V[..., h:, :]).astype(dt)
        return (a.astype(work) + b.astype(work)).astype(dt)  # (B, H, 1, hd)


BITWISE_MUTANTS: list[type[PlainBackend]] = [BatchSplitK, SplitKVDecode]
