"""Grouped-query attention mutants: `PlainBackend` with one bug in how query heads share K/V heads.

Each overrides one piece of `conformance.mutants.base.PlainBackend` (`kv_head_of`, the mapping of
query heads to K/V heads; `sum_groups`, its backward; the cache's `heads`). They are bugs real
GQA code has had: heads interleaved instead of grouped, a group's gradient taken from one head or
averaged, a cache that stores the repeated heads or that decodes against group 0's keys after its
first step, a mapping right only at the two ends.
Killed by the grouped draws and the fixed examples (n_kv_heads = 1 and a group of 2,
`conformance.suite.strategies.GROUPED_EXAMPLES`).
"""

from __future__ import annotations

import numpy as np

from conformance.mutants.backward import BackwardMutant
from conformance.mutants.base import PlainBackend
from impls.array_cache import ArrayKV


class GroupInterleaved(PlainBackend):
    """Query head h reads K/V head h % n_kv_heads (interleaved) instead of h // group (consecutive)."""

    name = "mutant-gqa-interleaved"

    def kv_head_of(self, H, n_kv_heads):
        return np.arange(H) % n_kv_heads  # (H,): right only when n_kv_heads is 1 or H


class GroupOnlyAtTheEnds(PlainBackend):
    """Grouping right only for multi-query (n_kv_heads = 1) and ordinary attention (n_kv_heads = H):
    any other grouping reads K/V head 0 for every query head."""

    name = "mutant-gqa-only-at-the-ends"

    def kv_head_of(self, H, n_kv_heads):
        return np.arange(H) if n_kv_heads == H else np.zeros(H, dtype=int)  # (H,)


class GroupGradFirstHead(BackwardMutant):
    """A K/V head's gradient taken from the first query head of its group, not summed over the group."""

    name = "mutant-gqa-grad-first-head"

    def sum_groups(self, dK, n_kv_heads):
        return dK[:, :: dK.shape[1] // n_kv_heads]  # (B, Hkv, T, hd): one head per group


class GroupGradAveraged(BackwardMutant):
    """A K/V head's gradient averaged over its group of query heads instead of summed."""

    name = "mutant-gqa-grad-averaged"

    def sum_groups(self, dK, n_kv_heads):
        return super().sum_groups(dK, n_kv_heads) / (dK.shape[1] // n_kv_heads)


class GroupCacheRepeated(PlainBackend):
    """The cache stores the K/V heads repeated per query head: right values, [B, H, t, hd] instead
    of [B, n_kv_heads, t, hd]."""

    name = "mutant-gqa-cache-repeated"

    def heads(self, x, weights, config):
        q, k, v = super().heads(x, weights, config)
        return q, self.repeat_kv(k, config.n_heads), self.repeat_kv(v, config.n_heads)  # (B, H, n, hd)


class DecodedKV(ArrayKV):
    """A cache that has been through at least one decode step (the type is the mark)."""


class GroupCacheReadsGroupZero(PlainBackend):
    """Past the first decode step, every query head reads K/V head 0 of the cache (grouped heads only).

    The cache itself stays right (cache_kv gives the spec's K and V); only the later steps'
    attention indexes the wrong group, as a decode kernel that takes the K/V head from a stale
    or zeroed head index does. Right for multi-query (one group) and on the first step.
    """

    name = "mutant-gqa-cache-group-zero"

    def decode(self, x_new, cache, weights, config, *, key_padding_mask=None):
        q, k, v = self.heads(x_new, weights, config)  # q (B, H, n, hd), k, v (B, Hkv, n, hd)
        c = self.append(cache, k, v, self.keep(x_new, key_padding_mask))
        new = DecodedKV(c.k, c.v, c.key_padding_mask)  # right values, marked as decoded
        read = new
        if isinstance(cache, DecodedKV) and config.kv_heads < config.n_heads:  # past the first decode step
            Hkv = new.k.shape[1]
            read = ArrayKV(np.repeat(new.k[:, :1], Hkv, axis=1),  # (B, Hkv, t + n, hd): group 0 everywhere
                           np.repeat(new.v[:, :1], Hkv, axis=1), new.key_padding_mask)
        return self.attend(q, read, weights, config), new


#: Grouped mutants the forward and gradient checks kill (the kill table runs them all).
GROUPED_MUTANTS: list[type[PlainBackend]] = [GroupInterleaved, GroupOnlyAtTheEnds, GroupGradFirstHead,
                                             GroupGradAveraged]
#: Only the cache checks can kill these: its forward is right.
GROUPED_CACHE_MUTANTS: list[type[PlainBackend]] = [GroupCacheRepeated, GroupCacheReadsGroupZero]
