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


def alibi(config: AttentionConfig, Tq: int, Tk: int, device: Any, dtype: Any, bias: Any = None) -> Any:
    """The score bias in dtype, or None without one: ALiBi's [H, Tq, Tk], slope_h * (j - p) with
    p = i + Tk - Tq (spec/scores.py's slopes, computed by the spec's recipe in float64 and rounded
    once); or a bias array, `bias` (autograd's leaf) when given, else the config's."""
    import torch

    from spec.scores import BiasArray, alibi_slopes  # the slope recipe: pure arithmetic, no spec step

    if config.bias is None:
        return None
    if isinstance(config.bias, BiasArray):
        return bias.to(dtype) if bias is not None else torch.tensor(config.bias.array, dtype=dtype, device=device)
    p = torch.arange(Tq, device=device)[:, None] + (Tk - Tq)  # (Tq, 1): each query's position
    j = torch.arange(Tk, device=device)[None, :]  # (1, Tk)
    slopes = torch.tensor(alibi_slopes(config.n_heads), dtype=torch.float64, device=device)  # (H,)
    return (slopes[:, None, None] * (j - p)[None].to(torch.float64)).to(dtype)  # (H, Tq, Tk)


def sink_logits(config: AttentionConfig, sinks: Any, device: Any, dtype: Any) -> Any:
    """Head h's sink logit as a [H] tensor in dtype: `sinks` (a leaf autograd differentiates) or
    config.sinks; None without sinks."""
    import torch

    if config.sinks is None:
        return None
    return sinks.to(dtype) if sinks is not None else torch.tensor(config.sinks, dtype=dtype, device=device)


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
