"""Input-keyed mutants: `PlainBackend` with a bug that only real inputs or index-width sizes show.

- An output accumulator with float16's range: right on Gaussian draws, where no context sum
  comes near 65,504, overflowing only where outlier channels of V meet near-tied keys, as the
  activation-like draws (`conformance.suite.activations`) make them.
- Indices kept in 16 bits: a key count or a (batch, head) pair past 65,535 wraps to the
  start, reached only by the index-width examples (`sizes.INDEX_EDGES`, the 2^16 + 1-key decode
  of `checks.cache.longest_cache`).
"""

from __future__ import annotations

import numpy as np

from conformance.mutants.base import PlainBackend, work_dtype

#: float16's largest finite value: what a half-precision accumulator overflows past.
FLOAT16_MAX = float(np.finfo(np.float16).max)
#: One past the largest 16-bit unsigned index.
INDEX_16 = 2**16


class Float16Accumulator(PlainBackend):
    """FlashAttention-style deferred normalisation with the unnormalised accumulator in float16's range.

    The kernel sums exp(s - m) @ V (each weight at most 1, their row sum l up to Tk) and divides
    by l at the end; held in half precision, the sum overflows once l x |v| passes 65,504: many
    near-tied keys (l large) over an outlier channel of V (|v| large). The mutant keeps the
    dtype's rounding and adds only float16's range, so what kills it is the overflow alone.
    """

    name = "mutant-float16-accumulator"

    def context(self, attn_weights, V):
        work = work_dtype(V.dtype)
        w, V_ = attn_weights.astype(work), self.repeat_kv(V, attn_weights.shape[1]).astype(work)
        top = w.max(axis=-1, keepdims=True)  # (B, H, Tq, 1): exp(s - m) = w / top, l = 1 / top
        e = np.where(top > 0, w / np.where(top > 0, top, 1), w)  # a row with no key keeps w (zeros)
        acc = e @ V_  # (B, H, Tq, hd): the unnormalised sum
        acc = np.where(np.abs(acc) > FLOAT16_MAX, np.copysign(np.inf, acc), acc)  # half's range
        return (acc * np.where(top > 0, top, 1)).astype(V.dtype)


class KeyIndex16(PlainBackend):
    """The key count in 16 bits: past 65,535 keys it wraps, and only the first (Tk mod 65,536) are read.

    A length field or loop bound kept as uint16: right up to 65,535 keys; a decode step over a
    cache of 2^16 + 1 keys reads only the first key.
    """

    name = "mutant-key-index-16"

    def mask(self, config, B, Tq, Tk, key_padding_mask):
        masked = super().mask(config, B, Tq, Tk, key_padding_mask)  # (B, 1, Tq, Tk)
        if Tk >= INDEX_16:
            masked = masked.copy()
            masked[..., Tk % INDEX_16:] = True  # keys past the wrapped count are never read
        return masked


class PairIndex16(PlainBackend):
    """(batch, head) pairs in a 16-bit grid index: pair p past 65,535 gets pair (p mod 65,536)'s context.

    A launch over B x H blocks with the block index in 16 bits (or a grid's y/z dimension,
    65,535 at most, reused modulo): right while B x H <= 65,536, wrong past it.
    """

    name = "mutant-pair-index-16"

    def context(self, attn_weights, V):
        out = super().context(attn_weights, V)  # (B, H, Tq, hd)
        B, H, Tq, hd = out.shape
        if B * H > INDEX_16:
            flat = out.reshape(B * H, Tq, hd)  # one row per (batch, head) pair
            flat[INDEX_16:] = flat[np.arange(INDEX_16, B * H) % INDEX_16]
            out = flat.reshape(B, H, Tq, hd)
        return out


#: The mutants only activation-like values or index-width sizes kill.
INPUT_MUTANTS: list[type[PlainBackend]] = [Float16Accumulator, KeyIndex16, PairIndex16]
