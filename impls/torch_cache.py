"""KV-cache decoding for the torch backends: preallocated storage appended in place.

The array version (`impls.array_cache.InPlaceCache`) composed from the torch step methods,
its storage and masks allocated by torch on the backend's device. torch-sdpa replaces `attend` by its
fused call (impls.torch_sdpa), where the alignment of the causal mask must be chosen.
torch is imported inside methods only.
"""

from __future__ import annotations

from typing import Any

from impls.array_cache import InPlaceCache


class TorchCache(InPlaceCache):
    """prefill / decode / cache_kv on torch tensors (B, Hkv, t, hd), views of preallocated storage."""

    def empty(self, like: Any, shape: tuple[int, ...]) -> Any:
        return like.new_empty(shape)  # like's dtype and device

    def keep(self, x: Any, key_padding_mask: Any) -> Any:
        import torch

        if key_padding_mask is not None:
            return key_padding_mask
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)  # (B, n)
