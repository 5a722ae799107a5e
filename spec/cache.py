"""KV-cache decoding: the block run on a prompt, then on new tokens that attend over it.

`prefill(x[:, :t])` keeps each head's projected keys and values of the t prompt tokens;
`decode(x_new, cache)` projects the new tokens, appends their keys and values to the cache,
then lets the new queries attend over all of them (spec.block.attend: causal aligned
bottom-right, the new queries are the last positions). With `causal=True`, decoding every
token after a prefill of any length t >= 1, or in chunks of any sizes, gives the outputs
`forward` gives on the whole sequence; with `causal=False` a chunk's tokens see each other and
the whole cache, so only one chunk after the prompt equals the encoder's forward. Plain
NumPy, dtype-preserving like the steps: the same code is the float64 golden and the plain
reference in dtype D.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spec.block import attend, qkv_heads
from spec.config import AttentionConfig, validate_key_padding_mask
from spec.params import Params


@dataclass(frozen=True)
class Cache:
    """What the cache holds after t tokens: each K/V head's K and V, and which keys may be attended.

    k, v: (B, Hkv, t, head_dim), Hkv = n_kv_heads (H unless grouped: a grouped cache holds each
    K/V head once, never repeated per query head), steps 4 to 6 applied to the t tokens (the spec's trace entries
    "k" and "v"), never the tokens x themselves. key_padding_mask: (B, t) boolean, True = may
    attend; all True where the tokens came without a mask. A cached token's mask is kept for
    every later query: a padded prompt token stays invisible to every new token.
    """

    k: np.ndarray  # (B, Hkv, t, head_dim)
    v: np.ndarray  # (B, Hkv, t, head_dim)
    key_padding_mask: np.ndarray  # (B, t), bool

    @property
    def length(self) -> int:
        """t, the number of cached tokens."""
        return self.k.shape[2]


def prefill(
    x: np.ndarray,
    params: Params,
    config: AttentionConfig,
    key_padding_mask: np.ndarray | None = None,
) -> Cache:
    """The cache of the prompt x [B, t, d_in]: its keys and values, and its key padding mask [B, t]."""
    _, k, v = qkv_heads(x, params, config)                         # steps 1-6: (B, Hkv, t, hd) each
    return Cache(k, v, _mask(key_padding_mask, x.shape[0], x.shape[1], "key_padding_mask"))


def decode(
    x_new: np.ndarray,
    cache: Cache,
    params: Params,
    config: AttentionConfig,
    key_padding_mask_new: np.ndarray | None = None,
) -> tuple[np.ndarray, Cache]:
    """New tokens x_new [B, n, d_in] after the t cached ones: -> (y_new [B, n, d_out], cache').

    The new keys and values are appended before the scores, so new token i attends to the
    t cached tokens, the new tokens before it and itself (each once). cache' holds t + n tokens;
    the cache given is not changed. key_padding_mask_new [B, n] marks the new tokens' keys.
    """
    q, k_new, v_new = qkv_heads(x_new, params, config)             # steps 1-6: q (B, H, n, hd), k, v Hkv
    _check_cache(cache, k_new, config)
    B, n = x_new.shape[:2]
    cache = Cache(
        k=np.concatenate([cache.k, k_new], axis=2),                # (B, Hkv, t + n, hd)
        v=np.concatenate([cache.v, v_new], axis=2),                # (B, Hkv, t + n, hd)
        key_padding_mask=np.concatenate(
            [cache.key_padding_mask, _mask(key_padding_mask_new, B, n, "key_padding_mask_new")], axis=1),
    )
    y_new = attend(q, cache.k, cache.v, params, config, cache.key_padding_mask)  # steps 7-12
    return y_new, cache


def _mask(mask: np.ndarray | None, B: int, T: int, name: str) -> np.ndarray:
    """The key padding mask [B, T] as given (validated), or all True when none is given."""
    if mask is None:
        return np.ones((B, T), dtype=bool)
    try:
        validate_key_padding_mask(mask, B, T)
    except ValueError as e:
        raise ValueError(str(e).replace("key_padding_mask", name, 1)) from None
    return mask


def _check_cache(cache: Cache, k_new: np.ndarray, config: AttentionConfig) -> None:
    """ValueError naming the bad value unless the cache fits the config and the new tokens."""
    if not isinstance(cache, Cache):
        raise ValueError(f"cache must be a spec.cache.Cache from prefill or decode, got {type(cache).__name__}")
    B, H, _, hd = k_new.shape
    t = cache.k.shape[2] if getattr(cache.k, "ndim", None) == 4 else None
    for name in ("k", "v"):
        a = getattr(cache, name)
        if getattr(a, "shape", None) != (B, H, t, hd):
            raise ValueError(f"cache.{name} has shape {getattr(a, 'shape', None)}; the new tokens need "
                             f"(B, n_kv_heads, t, head_dim) = ({B}, {H}, t, {hd}) for {config}")
        if a.dtype != k_new.dtype:
            raise ValueError(f"cache.{name} has dtype {a.dtype} but x_new has dtype {k_new.dtype}; "
                             f"decode in the cache's dtype")
    m = cache.key_padding_mask
    if getattr(m, "dtype", None) != np.bool_ or m.shape != (B, t):
        raise ValueError(f"cache.key_padding_mask must be boolean of shape (B, t) = {(B, t)}, "
                         f"got {getattr(m, 'dtype', None)} {getattr(m, 'shape', None)}")
