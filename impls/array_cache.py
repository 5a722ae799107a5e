"""KV-cache decoding for NumPy-compatible array libraries (NumPy, CuPy), written once.

Mixed in next to the step methods (`impls.array_steps.ArraySteps`, or the mutants'
`PlainBackend`, which has the same methods): the cache holds each head's keys and values and
the keys' padding, and decoding concatenates the new tokens' keys and values onto the cached
ones before the scores, as the spec's cache does (`spec.cache`). The causal mask of the step
methods is aligned bottom-right, so the new queries, the last Tq of the Tk keys, see the
whole cache and the new tokens up to themselves.

Concatenation copies the whole cache on every step: simple, and what the decode bench
measures as the past keys and values read per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spec.config import AttentionConfig


@dataclass(frozen=True)
class ArrayKV:
    """The cache after t tokens, in the backend's arrays."""

    k: Any  # (B, Hkv, t, hd): each K/V head once (Hkv = n_kv_heads, H unless grouped)
    v: Any  # (B, Hkv, t, hd)
    key_padding_mask: Any  # (B, t) bool, True = may attend


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
