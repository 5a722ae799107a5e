"""Masks the torch backends share: which query rows have a visible key, and the sliding window's
keys (torch imported lazily)."""

from __future__ import annotations

from typing import Any

from spec.config import AttentionConfig


def allowed_keys(config: AttentionConfig, Tq: int, Tk: int, device: Any) -> Any:
    """Bool [Tq, Tk], True = may attend, from causality and the sliding window (no padding); None
    when neither masks anything. Bottom-right aligned as the spec: query i is position p = i + Tk - Tq
    and sees keys j <= p (causal) and p - left <= j <= p + right (window (left, right))."""
    import torch

    if not config.causal and config.window is None:
        return None
    p = torch.arange(Tq, device=device)[:, None] + (Tk - Tq)  # (Tq, 1): each query's position
    j = torch.arange(Tk, device=device)[None, :]  # (1, Tk)
    ok = torch.ones(Tq, Tk, dtype=torch.bool, device=device)
    if config.causal:
        ok = ok & (j <= p)
    if config.window is not None:
        left, right = config.window
        ok = ok & (j >= p - left) & (j <= p + right)
    return ok  # (Tq, Tk)


def query_has_key(config: AttentionConfig, key_padding_mask: Any, Tq: int) -> Any:
    """Bool [B, Tq]: True where query i has at least one attendable key.

    Causal alone never empties a row (key i is always visible to query i, bottom-right
    aligned), nor does a window, so only padding can: query i is empty when no key it may see
    is kept.
    """
    import torch

    Tk = key_padding_mask.shape[-1]
    if config.window is not None:  # the keys a query sees form a band: check it whole
        ok = allowed_keys(config, Tq, Tk, key_padding_mask.device)  # (Tq, Tk)
        return (ok[None] & key_padding_mask[:, None, :]).any(-1)  # (B, Tq)
    if not config.causal:
        return key_padding_mask.any(-1, keepdim=True).expand(-1, Tq)  # (B, Tq)
    seen = torch.cumsum(key_padding_mask.to(torch.int32), -1) > 0  # (B, Tk): any kept key in 0..j
    return seen[:, Tk - Tq:]  # (B, Tq): query i sees keys up to i + Tk - Tq
