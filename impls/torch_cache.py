"""KV-cache decoding for the torch backends: past keys and values concatenated with torch.cat.

The array version (`impls.array_cache`) composed from the torch step methods, with torch's
own concatenation and masks on the backend's device. torch-sdpa replaces `attend` by its
fused call (impls.torch_sdpa), where the alignment of the causal mask must be chosen.
torch is imported inside methods only.
"""

from __future__ import annotations

from typing import Any

from impls.array_cache import ArrayCache, ArrayKV


class TorchCache(ArrayCache):
    """prefill / decode / cache_kv on torch tensors (B, H, t, hd), appended with torch.cat."""

    def keep(self, x: Any, key_padding_mask: Any) -> Any:
        import torch

        if key_padding_mask is not None:
            return key_padding_mask
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # (B, n)

    def append(self, cache: ArrayKV, k: Any, v: Any, key_padding_mask: Any) -> ArrayKV:
        import torch

        return ArrayKV(torch.cat([cache.k, k], dim=2),  # (B, H, t + n, hd)
                       torch.cat([cache.v, v], dim=2),  # (B, H, t + n, hd)
                       torch.cat([cache.key_padding_mask, key_padding_mask], dim=1))  # (B, t + n)
