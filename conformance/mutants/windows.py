"""Sliding-window and softcap mutants: `PlainBackend` with one bug in a score modifier.

Each declares the window and the softcap (so the suite draws them) and overrides one piece of
`impls.array_steps.ArraySteps`: the window's mask (`window_mask`) or the order of the modifiers in
step 8 (`attn_weights`). They are the bugs the issue lists from real code: a window one key too
wide or too narrow on either side (Hugging Face transformers #29623 and #39408, vLLM #3385), the
window aligned top-left when Tq < Tk, the window forgotten in decode, the softcap applied after
the mask (masked keys come back with weight exp(-c - max)) or to the unscaled scores.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from conformance.mutants.base import PlainBackend, work_dtype


class WindowedPlain(PlainBackend):
    """The base of the window mutants: PlainBackend declaring windows and softcaps (not itself a mutant)."""

    capabilities = replace(PlainBackend.capabilities, window=True, softcap=True)


def _shifted(left_by: int = 0, right_by: int = 0):
    def window_mask(self, Tq, Tk, window):
        return PlainBackend.window_mask(self, Tq, Tk, (window[0] + left_by, window[1] + right_by))
    return window_mask


class WindowLeftWide(WindowedPlain):
    """left = w covers w + 2 keys: one key too many before the query (a window of w passed where w - 1 was meant)."""

    name = "mutant-window-left-wide"
    window_mask = _shifted(left_by=1)


class WindowLeftNarrow(WindowedPlain):
    """left = w covers w keys: one key too few before the query (JAX's length L read as FlashAttention's w)."""

    name = "mutant-window-left-narrow"
    window_mask = _shifted(left_by=-1)


class WindowRightWide(WindowedPlain):
    """One key too many after the query (right + 1): only non-causal windows show it."""

    name = "mutant-window-right-wide"
    window_mask = _shifted(right_by=1)


class WindowRightNarrow(WindowedPlain):
    """One key too few after the query (right - 1; right = 0 then hides the query's own key)."""

    name = "mutant-window-right-narrow"
    window_mask = _shifted(right_by=-1)


class WindowTopLeft(WindowedPlain):
    """The window aligned top-left when Tq < Tk: query i's window centred on position i, not i + Tk - Tq."""

    name = "mutant-window-top-left"

    def window_mask(self, Tq, Tk, window):
        left, right = window
        i, j = np.arange(Tq)[:, None], np.arange(Tk)[None, :]  # (Tq, 1), (1, Tk)
        return (j < i - left) | (j > i + right)  # (Tq, Tk)


class WindowForgottenInDecode(WindowedPlain):
    """The window applied only when Tq == Tk: decode (fewer queries than keys) sees the whole cache."""

    name = "mutant-window-forgotten-in-decode"

    def window_mask(self, Tq, Tk, window):
        if Tq != Tk:
            return np.zeros((Tq, Tk), dtype=bool)  # (Tq, Tk): nothing outside
        return super().window_mask(Tq, Tk, window)


class _ModifierOrder(WindowedPlain):
    """Step 8 with the modifiers in another order (`modified`), where a softcap is set."""

    def modified(self, s, scale, c, masked):
        """(scores for the softmax, what the softmax masks) from the raw scores s."""
        raise NotImplementedError

    def attn_weights(self, attn_scores, config, key_padding_mask=None, dropout_mask=None):
        if config.softcap is None:
            return super().attn_weights(attn_scores, config, key_padding_mask, dropout_mask)
        B, _, Tq, Tk = attn_scores.shape
        dt, work = attn_scores.dtype, work_dtype(attn_scores.dtype)
        masked = self.mask(config, B, Tq, Tk, key_padding_mask)
        s, masked = self.modified(attn_scores.astype(work), work.type(self.scale(config)), config.softcap, masked)
        w = self.softmax(s, masked)
        if dropout_mask is not None:
            w = self.dropout(w, dropout_mask, config.dropout_p)
        return w.astype(dt)


class SoftcapAfterMask(_ModifierOrder):
    """The softcap applied after the mask: a masked key's -inf becomes -c and gets weight exp(-c - max) back.

    A fully masked row becomes a uniform one."""

    name = "mutant-softcap-after-mask"

    def modified(self, s, scale, c, masked):
        s = np.where(masked, -np.inf, s * scale)  # masked first...
        return self.softcap(s, c), np.zeros_like(masked)  # ...then capped: -inf -> -c, kept by the softmax


class SoftcapUnscaled(_ModifierOrder):
    """The softcap applied to the unscaled scores, the scale after it: c * tanh(q.k / c) / sqrt(hd)."""

    name = "mutant-softcap-unscaled"

    def modified(self, s, scale, c, masked):
        return self.softcap(s, c) * scale, masked  # capped at c before the scale: at c / sqrt(hd) after


#: The window and softcap mutants the forward checks kill (the kill table runs them all).
WINDOW_MUTANTS: list[type[PlainBackend]] = [WindowLeftWide, WindowLeftNarrow, WindowRightWide, WindowRightNarrow,
                                            SoftcapAfterMask, SoftcapUnscaled]
#: Only queries apart from keys (decoding, steps_with_fewer_queries) can kill these: their forward is right.
WINDOW_DECODE_MUTANTS: list[type[PlainBackend]] = [WindowTopLeft, WindowForgottenInDecode]
