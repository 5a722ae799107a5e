"""KV-cache decoding for NumPy-compatible array libraries (NumPy, CuPy), written once.

Mixed in next to the step methods (`impls.array_steps.ArraySteps`, or the mutants'
`PlainBackend`, which has the same methods): the cache holds each head's keys and values and
the keys' padding, and decoding concatenates the new tokens' keys and values onto the cached
ones before the scores, as the spec's cache does (`spec.cache`). The causal mask of the step
methods is aligned bottom-right, so the new queries, the last Tq of the Tk keys, see the
whole cache and the new tokens up to themselves.

`ArrayCache.append` concatenates, copying the whole cache on every step: simple, and what the
mutants (`conformance.mutants`) build on. The built-in backends mix in `InPlaceCache` instead:
preallocated storage that a step appends into in place (`KVStore`), copied only on growth and
when two continuations branch from one cache, so a step reads the cache once and writes n tokens.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from spec.config import AttentionConfig


@dataclass(frozen=True)
class ArrayKV:
    """The cache after t tokens, in the backend's arrays."""

    k: Any  # (B, Hkv, t, hd): each K/V head once (Hkv = n_kv_heads, H unless grouped)
    v: Any  # (B, Hkv, t, hd)
    key_padding_mask: Any  # (B, t) bool, True = may attend
    store: KVStore | None = field(default=None, compare=False, repr=False)  # InPlaceCache's storage


class ArrayCache:
    """prefill / decode / cache_kv from the step methods and `xp()`, the array module."""

    def heads(self, x: Any, weights: Any, config: AttentionConfig) -> tuple[Any, Any, Any]:
        """Steps 4 to 6 on x [B, n, d_in]: q [B, H, n, hd], k, v [B, Hkv, n, hd] (their K/V heads)."""
        Q, K, V = self.project_qkv(x, weights)  # (B, n, d_out), K and V (B, n, d_kv)
        heads = (config.n_heads, config.kv_heads, config.kv_heads)
        return tuple(self.group_by_heads(self.split_heads(a, h)) for a, h in zip((Q, K, V), heads))

    def keep(self, x: Any, key_padding_mask: Any) -> Any:
        """The tokens' key padding mask [B, n], all True when none is given."""
        if key_padding_mask is not None:
            return key_padding_mask
        return self.xp().ones(x.shape[:2], dtype=bool)  # (B, n)

    def prefill(self, x: Any, weights: Any, config: AttentionConfig, *, key_padding_mask: Any = None) -> ArrayKV:
        _, k, v = self.heads(x, weights, config)  # (B, Hkv, t, hd) each
        return ArrayKV(k, v, self.keep(x, key_padding_mask))

    def append(self, cache: ArrayKV, k: Any, v: Any, key_padding_mask: Any) -> ArrayKV:
        """The cache with n new tokens' keys, values and padding after the t cached ones."""
        xp = self.xp()
        return ArrayKV(xp.concatenate([cache.k, k], axis=2),  # (B, Hkv, t + n, hd)
                       xp.concatenate([cache.v, v], axis=2),  # (B, Hkv, t + n, hd)
                       xp.concatenate([cache.key_padding_mask, key_padding_mask], axis=1))  # (B, t + n)

    def attend(self, q: Any, cache: ArrayKV, weights: Any, config: AttentionConfig) -> Any:
        """Steps 7 to 12 for the new queries q [B, H, n, hd] over the whole cache: [B, n, d_out]."""
        s = self.attn_scores(q, cache.k)  # (B, H, n, t + n): step 7 repeats K per group
        w = self.attn_weights(s, config, cache.key_padding_mask)  # bottom-right causal mask
        ctx = self.concat_heads(self.permute_back(self.context(w, cache.v)))  # (B, n, d_out)
        return self.out_proj(ctx, weights)  # (B, n, d_out)

    def decode(self, x_new: Any, cache: ArrayKV, weights: Any, config: AttentionConfig, *,
               key_padding_mask: Any = None) -> tuple[Any, ArrayKV]:
        q, k, v = self.heads(x_new, weights, config)  # q (B, H, n, hd), k, v (B, Hkv, n, hd)
        cache = self.append(cache, k, v, self.keep(x_new, key_padding_mask))  # before the scores
        return self.attend(q, cache, weights, config), cache

    def cache_kv(self, cache: ArrayKV) -> tuple[Any, Any]:
        return cache.k, cache.v


class KVStore:
    """Preallocated K, V and padding of one line of decoding; `length` tokens written so far.

    Every ArrayKV on a store views its first t <= length tokens. Tokens past `length` may only
    be written by a cache whose t equals `length` (the line's tip), so a view never sees a
    write: a cache passed to `decode` stays what it was, as the contract asks.
    """

    __slots__ = ("k", "v", "mask", "length", "lock")

    def __init__(self, k: Any, v: Any, mask: Any, length: int) -> None:
        self.k, self.v, self.mask, self.length = k, v, mask, length  # (B, Hkv, capacity, hd) x2, (B, capacity)
        self.lock = threading.Lock()  # two threads decoding from one tip: one writes, the other copies

    @property
    def capacity(self) -> int:
        return self.k.shape[2]

    def claim(self, t: int, n: int) -> bool:
        """Reserve tokens t..t+n for the cache of length t: only its tip, only while they fit."""
        with self.lock:
            if self.length != t or t + n > self.capacity:
                return False
            self.length = t + n
            return True

    def view(self, t: int) -> ArrayKV:
        return ArrayKV(self.k[:, :, :t], self.v[:, :, :t], self.mask[:, :t], self)  # (B, Hkv, t, hd), (B, t)


def capacity_for(n: int) -> int:
    """Storage for n tokens and the ones likely to follow: half as many again, at least 64.

    Growth by a constant factor keeps appending n tokens one by one O(n) copies in all."""
    return n + max(n // 2, 64)


class InPlaceCache(ArrayCache):
    """ArrayCache whose append writes in place into a KVStore: no copy of the cache per step.

    A step copies the cache only when its store is full (into one 1.5x larger) or when its
    cache is not the tip of the store (another continuation has written past it: this one
    branches off into storage of its own). `empty(like, shape)` allocates in the backend's
    arrays, on like's device; NumPy and CuPy here, torch in impls.torch_cache.
    """

    #: K and V stored token-minor, (B, Hkv, hd, capacity), and seen through swapped views as
    #: (B, Hkv, t, hd): a decode step's q @ K^T and w @ V then read each head's cache as hd long rows
    #: of contiguous tokens, which NumPy's OpenBLAS and torch's MKL read faster than t rows of hd
    #: (measured at B=8, L=8192, H=8, hd=64, float32, 2 cores: NumPy 4.1 -> 3.0 ms and 7.4 -> 4.0
    #: ms, torch 6.9 -> 5.3 and 5.1 -> 2.6 ms). False (token-major) where a fused kernel wants
    #: (t, hd) rows: SDPA copies a swapped V, 12 -> 61 ms a step.
    token_minor: bool = False

    def empty(self, like: Any, shape: tuple[int, ...]) -> Any:
        return self.xp().empty(shape, dtype=like.dtype)

    def kv_storage(self, like: Any, shape: tuple[int, ...]) -> Any:
        """Empty K or V storage seen as `shape` (B, Hkv, capacity, hd), laid out as `token_minor` says."""
        if not self.token_minor:
            return self.empty(like, shape)
        B, Hkv, capacity, hd = shape
        return self.empty(like, (B, Hkv, hd, capacity)).swapaxes(-1, -2)  # (B, Hkv, capacity, hd) view

    def _store(self, cache: ArrayKV, capacity: int) -> KVStore:
        """New storage holding cache's t tokens, room for `capacity`."""
        B, Hkv, t, hd = cache.k.shape
        k, v = (self.kv_storage(a, (B, Hkv, capacity, hd)) for a in (cache.k, cache.v))
        mask = self.empty(cache.key_padding_mask, (B, capacity))  # (B, capacity)
        k[:, :, :t], v[:, :, :t], mask[:, :t] = cache.k, cache.v, cache.key_padding_mask
        return KVStore(k, v, mask, t)

    def prefill(self, x: Any, weights: Any, config: AttentionConfig, *, key_padding_mask: Any = None) -> ArrayKV:
        cache = super().prefill(x, weights, config, key_padding_mask=key_padding_mask)
        return self._store(cache, capacity_for(cache.k.shape[2])).view(cache.k.shape[2])

    def append(self, cache: ArrayKV, k: Any, v: Any, key_padding_mask: Any) -> ArrayKV:
        t, n = cache.k.shape[2], k.shape[2]
        s = cache.store
        if s is None or not s.claim(t, n):  # a cache of other making, a branch, or a full store: copy once
            s = self._store(cache, capacity_for(t + n))
            s.length = t + n
        s.k[:, :, t:t + n], s.v[:, :, t:t + n], s.mask[:, t:t + n] = k, v, key_padding_mask
        return s.view(t + n)
