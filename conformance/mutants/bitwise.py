"""Batch-invariance mutants: a backend that promises `Capabilities.batch_invariant` and breaks it.

`PerSequence` is the correct control: each sequence runs alone through `PlainBackend`, so its
bits cannot depend on the batch. `BatchSplitK` is the bug real kernels have: the output
projection's reduction is split in two (split-K) when the batch holds more than one sequence,
as a kernel tuned by shape does. Its values stay within the tolerance model; only the promised
bits change, so only `batch_invariant_bitwise` kills it.
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


BITWISE_MUTANTS: list[type[PlainBackend]] = [BatchSplitK]
