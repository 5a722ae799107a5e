"""Non-finite masked inputs: backends that declare `Capabilities.non_finite_masked_inputs`.

`MaskedSelect` is the correct control: `PlainBackend` masks its scores by a select already, and
its step 9 sums only the values whose weight is not 0, as the spec's does
(`spec.steps.non_finite_terms`), so a padded or future token's NaN or +-inf input reaches no
other row. The two mutants declare the same and break it the two ways real code does; both pass
the finite poison, and the non-finite variant of `poisoned_positions_ignored` (drawn for
declaring backends) kills them, in float16 too (it needs no large finite number: the backends
compute float16 in float32, where -1e9 stays finite). `BlendedSentinel` also loses a visible
score below -1e9 to the masked keys, so at float32 the large-logit step checks reach it first.

The older `mutant-padding-adds-sentinel` (catalogue.py) covers the finite half at float32 only
(a poisoned score past 1e9 wins over an added -1e9; float16 scores cannot pass it): it declares
nothing, so the non-finite variant never runs on it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from conformance.mutants.base import PlainBackend, work_dtype
from spec.steps import non_finite_terms


class MaskedSelect(PlainBackend):
    """Correct: a masked key contributes nothing, even non-finite (a select in steps 8 and 9)."""

    name = "plain-masked-select"
    capabilities = replace(PlainBackend.capabilities, non_finite_masked_inputs=True)

    def context(self, attn_weights, V):
        work = work_dtype(V.dtype)
        w, V = attn_weights.astype(work), self.repeat_kv(V, attn_weights.shape[1]).astype(work)  # (B, H, Tk, hd)
        if np.isfinite(V).all():
            return (w @ V).astype(attn_weights.dtype)
        finite = np.where(np.isfinite(V), V, 0)  # the select: a 0 weight never meets a NaN value
        return (w @ finite + non_finite_terms(w, V)).astype(attn_weights.dtype)  # (B, H, Tq, hd)


class ValueTimesZero(MaskedSelect):
    """A masked key's value read into the sum as 0 x v: a NaN or +-inf value of a padded or future token leaks."""

    name = "mutant-masked-value-times-zero"

    def context(self, attn_weights, V):
        return PlainBackend.context(self, attn_weights, V)  # weights @ V: 0 x NaN = NaN


class BlendedSentinel(MaskedSelect):
    """Masked scores set to -1e9 by arithmetic (s * keep + (1 - keep) * -1e9): 0 x NaN leaks a non-finite masked score.

    The multiplicative form of `masked_fill(mask, -1e9)`; rows with no visible key are zeroed, as
    SDPA-style kernels do, so only a masked score that is NaN or +-inf shows it (0 x inf = NaN).
    """

    name = "mutant-blended-sentinel"

    def softmax(self, s, masked):
        keep = (~masked).astype(s.dtype)  # (B, 1, Tq, Tk): 1 visible, 0 masked
        with np.errstate(invalid="ignore"):
            s = s * keep + (1 - keep) * s.dtype.type(-1e9)  # a masked NaN or inf score: 0 x NaN = NaN
        w = super().softmax(s, np.zeros_like(masked))  # no select left to catch it
        return np.where(masked.all(-1, keepdims=True), 0, w)  # fully masked rows: zeros, as they should be


NON_FINITE_MUTANTS: list[type[PlainBackend]] = [ValueTimesZero, BlendedSentinel]
