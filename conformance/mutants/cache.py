"""KV-cache mutants: `PlainBackend` whose decoding (impls.array_cache) has one planted bug each.

Their forward is `PlainBackend`'s and correct: only the cache checks
(`conformance.suite.checks.cache`) can kill them. The bugs are those of real decoders: the
causal mask aligned top-left when Tq != Tk (`is_causal=True` in SDPA), the new key appended
before the scores and again for them, a cache write one position off, a cache never
updated, the wrong tensor cached (the tokens x, or K in V's slot), the prompt's padding
dropped from the cache, and a static cache whose decode writes into the buffers it was given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conformance.mutants.base import PlainBackend
from impls.array_cache import ArrayKV


class CacheTopLeft(PlainBackend):
    """Causal mask aligned top-left when Tq != Tk: new token i sees keys j <= i, not the whole cache.

    What `scaled_dot_product_attention(is_causal=True)` does with fewer queries than keys;
    the same as bottom-right when Tq == Tk, so the full forward stays right.
    """

    name = "mutant-cache-top-left"

    def causal_mask(self, Tq, Tk):
        return np.triu(np.ones((Tq, Tk), dtype=bool), k=1)  # (Tq, Tk): j > i masked


class CacheSelfTwice(PlainBackend):
    """New keys and values appended to the cache, then appended again for the scores: each new token attends to itself twice."""

    name = "mutant-cache-self-twice"

    def decode(self, x_new, cache, weights, config, *, key_padding_mask=None):
        q, k, v = self.heads(x_new, weights, config)  # (B, H, n, hd) each
        keep = self.keep(x_new, key_padding_mask)
        cache = self.append(cache, k, v, keep)  # the cache is updated first...
        return self.attend(q, self.append(cache, k, v, keep), weights, config), cache  # ...then the new keys again


class CacheOffByOne(PlainBackend):
    """New keys and values written one position early: each decode overwrites the last cached token."""

    name = "mutant-cache-off-by-one"

    def append(self, cache, k, v, key_padding_mask):
        t = cache.k.shape[2]
        kept = ArrayKV(cache.k[:, :, :t - 1], cache.v[:, :, :t - 1], cache.key_padding_mask[:, :t - 1])
        return super().append(kept, k, v, key_padding_mask)  # written at position t - 1, not t


class CacheNeverUpdated(PlainBackend):
    """decode returns the cache it was given: later steps never see the tokens decoded before them."""

    name = "mutant-cache-never-updated"

    def decode(self, x_new, cache, weights, config, *, key_padding_mask=None):
        y, _ = super().decode(x_new, cache, weights, config, key_padding_mask=key_padding_mask)
        return y, cache  # the updated cache is dropped


class CacheHoldsX(PlainBackend):
    """The prompt's cache holds the tokens x (cut or zero-padded to d_out), not their keys and values."""

    name = "mutant-cache-holds-x"

    def prefill(self, x, weights, config, *, key_padding_mask=None):
        cache = super().prefill(x, weights, config, key_padding_mask=key_padding_mask)
        B, t, d_in = x.shape
        m = min(d_in, config.d_out)
        xs = np.zeros((B, t, config.d_out), dtype=cache.k.dtype)  # (B, t, d_out)
        xs[..., :m] = x[..., :m]
        h = self.group_by_heads(self.split_heads(xs, config.n_heads))  # (B, H, t, hd)
        return ArrayKV(h, h, cache.key_padding_mask)


class CacheVHoldsK(PlainBackend):
    """V's slot of the cache holds K: every token's value is its key."""

    name = "mutant-cache-v-holds-k"

    def prefill(self, x, weights, config, *, key_padding_mask=None):
        cache = super().prefill(x, weights, config, key_padding_mask=key_padding_mask)
        return ArrayKV(cache.k, cache.k, cache.key_padding_mask)

    def append(self, cache, k, v, key_padding_mask):
        return super().append(cache, k, k, key_padding_mask)


class CachePaddingIgnored(PlainBackend):
    """The prompt's key padding mask is not kept in the cache: padded prompt tokens become visible to new tokens."""

    name = "mutant-cache-padding-ignored"

    def prefill(self, x, weights, config, *, key_padding_mask=None):
        return super().prefill(x, weights, config)  # the mask never reaches the cache


@dataclass(frozen=True)
class BufferKV:
    """A cache of t tokens in the first t slots of preallocated buffers (a static cache)."""

    buf_k: np.ndarray  # (B, H, capacity, hd)
    buf_v: np.ndarray  # (B, H, capacity, hd)
    buf_mask: np.ndarray  # (B, capacity) bool
    t: int

    @property
    def k(self) -> np.ndarray:
        return self.buf_k[:, :, :self.t]  # (B, H, t, hd)

    @property
    def v(self) -> np.ndarray:
        return self.buf_v[:, :, :self.t]  # (B, H, t, hd)

    @property
    def key_padding_mask(self) -> np.ndarray:
        return self.buf_mask[:, :self.t]  # (B, t)


class CacheWrittenInPlace(PlainBackend):
    """decode writes the new keys and values into the buffers of the cache it was given (a static cache).

    A static cache (preallocated to the prompt plus HEADROOM tokens, grown by doubling) whose
    decode returns a longer view of the same buffers. Each cache passed once decodes right;
    two continuations from one cache share the slots after it, so the later one's tokens
    replace the earlier one's (the contract: decode leaves the cache it is given usable).
    """

    name = "mutant-cache-written-in-place"
    headroom = 256

    def prefill(self, x, weights, config, *, key_padding_mask=None):
        c = super().prefill(x, weights, config, key_padding_mask=key_padding_mask)
        return self._grown(BufferKV(c.k, c.v, c.key_padding_mask, c.k.shape[2]), c.k.shape[2] + self.headroom)

    @staticmethod
    def _grown(cache: BufferKV, capacity: int) -> BufferKV:
        B, H, t, hd = cache.k.shape
        k, v = (np.zeros((B, H, capacity, hd), dtype=cache.k.dtype) for _ in range(2))  # (B, H, capacity, hd)
        m = np.zeros((B, capacity), dtype=bool)
        k[:, :, :t], v[:, :, :t], m[:, :t] = cache.k, cache.v, cache.key_padding_mask
        return BufferKV(k, v, m, t)

    def append(self, cache, k, v, key_padding_mask):
        t, n = cache.t, k.shape[2]
        if t + n > cache.buf_k.shape[2]:
            cache = self._grown(cache, 2 * (t + n))
        cache.buf_k[:, :, t:t + n] = k  # in place: every cache on these buffers sees it
        cache.buf_v[:, :, t:t + n] = v
        cache.buf_mask[:, t:t + n] = key_padding_mask
        return BufferKV(cache.buf_k, cache.buf_v, cache.buf_mask, t + n)


#: The KV-cache mutants, in table order.
CACHE_MUTANTS: list[type[PlainBackend]] = [CacheTopLeft, CacheSelfTwice, CacheOffByOne, CacheNeverUpdated,
                                           CacheHoldsX, CacheVHoldsK, CachePaddingIgnored, CacheWrittenInPlace]
