"""Masks the torch backends share: which query rows have a visible key (torch imported lazily)."""

from __future__ import annotations

from typing import Any

from spec.config import AttentionConfig


def query_has_key(config: AttentionConfig, key_padding_mask: Any, Tq: int) -> Any:
    """Bool [B, Tq]: True where query i has at least one attendable key.

    Causal alone never empties a row (key i is always visible to query i, bottom-right
    aligned), so only padding can: query i is empty when no key j <= i + Tk - Tq is kept.
    """
    import torch

    Tk = key_padding_mask.shape[-1]
    if not config.causal:
        return key_padding_mask.any(-1, keepdim=True).expand(-1, Tq)  # (B, Tq)
    seen = torch.cumsum(key_padding_mask.to(torch.int32), -1) > 0  # (B, Tk): any kept key in 0..j
    return seen[:, Tk - Tq:]  # (B, Tq): query i sees keys up to i + Tk - Tq
