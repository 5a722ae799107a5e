"""Input-keyed mutants: `PlainBackend` with a bug that only real inputs or index-width sizes show.

- A linear layer's accumulator with float16's range on scaled weights: right on Gaussian
  draws, where no sum comes near 65,504, overflowing where an outlier channel of x (the
  activation-like draws, `conformance.suite.activations`) meets it.
- Indices kept in 16 bits: a key count or a (batch, head) pair past 65,535 wraps to the
  start, reached only by the index-width examples (`sizes.INDEX_EDGES`, the 2^16 + 1-key decode
  of `checks.cache.longest_cache`).
"""

from __future__ import annotations

import numpy as np

from conformance.mutants.base import PlainBackend

#: float16's largest finite value: what a half-precision accumulator overflows past.
FLOAT16_MAX = float(np.finfo(np.float16).max)
#: One past the largest 16-bit unsigned index.
INDEX_16 = 2**16


class Float16Accumulator(PlainBackend):
    """Linear layers accumulated in float16's range on per-row scaled weights, the scale applied after.

    As a weight-quantised (W8A16-style) GEMM: each weight row is stored divided by its scale
    max|W_row| / 127 (so its largest entry is 127), x @ W_scaled^T is summed in a half-precision
    accumulator, and the result multiplied by the scale. The sum is 127 / max|W_row| times the
    true output: for Gaussian inputs it stays well under 65,504, but an outlier channel 100 to
    1000 times the rest overflows it (the failure LLM.int8's outlier features describe). The
    mutant keeps the dtype's rounding and adds only float16's range: what kills it is the
    overflow alone.
    """

    name = "mutant-float16-accumulator"

    def linear(self, x, W, b):
        s = np.abs(W).max(axis=1) / 127  # (out,): each row's scale
        s = np.where(s > 0, s, 1).astype(W.dtype)
        acc = x @ (W / s[:, None]).T  # (..., out): the scaled sum a half accumulator holds
        acc = np.where(np.abs(acc) > FLOAT16_MAX, np.copysign(np.inf, acc), acc)  # half's range
        y = acc * s
        return y if b is None else y + b


class KeyIndex16(PlainBackend):
    """The key count in 16 bits: past 65,535 keys it wraps, and only the first (Tk mod 65,536) are read.

    A length field or loop bound kept as uint16: right up to 65,535 keys; a decode step over a
    cache of 2^16 + 1 keys reads only the first key.
    """

    name = "mutant-key-index-16"
    checks_first = ("decode_long_cache",)  # the checks before it pass: the kill run starts here

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
