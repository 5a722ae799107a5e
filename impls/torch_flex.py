"""PyTorch `flex_attention` as an opt-in backend: the score modifiers as its own `score_mod`
and `mask_mod`, run eagerly on the CPU.

The projections and head reshapes are the document's lines (shared with the eager torch
backend); steps 7-9 are one `torch.nn.attention.flex_attention.flex_attention` call, so those
steps are not exposed. How the spec's decisions are expressed with flex's own arguments:
- masks: one `mask_mod(b, h, q_idx, kv_idx)` turned into a `BlockMask` (`create_block_mask`):
  the key padding mask (True = may attend, the spec's polarity), causal and the sliding window
  bottom-right, query i at position p = i + Tk - Tq (flex has no causal flag: the mask is ours);
- softcap: `score_mod` returns `c * tanh(s / c)`; flex hands `score_mod` the scores already
  multiplied by the scale, so the cap sees the scaled scores, before the mask (the spec's order);
- scale: flex's default 1/sqrt(head_dim); grouped K/V heads: `enable_gqa=True` (query head h
  reads K/V head h // group, measured by the semantic profile);
- a query with no attendable key: flex returns a zero context (its logsumexp is -inf and the
  row is 0; measured, float64/float32/bfloat16), the spec's, so nothing is corrected.

Not declared: gradients (torch 2.13's flex_attention raises "FlexAttention does not support
backward on CPU" for inputs that require grad) and dropout (flex has no dropout argument).

Why opt-in (not in the default run, `impls.registry.OPT_IN`): without `torch.compile`, flex
runs an unfused path that materialises the scores and dispatches `score_mod` / `mask_mod` through
`vmap` on every call, about 0.2-0.35 s of CPU for one forward at B=2, H=4, T=64 here (load ~4 on
the 2-core machine), tens of times SDPA's; compiled, it compiles per shape, and Hypothesis draws
a new shape for nearly every example. Run it by name: `python -m conformance -b torch-flex`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from impls.array_cache import ArrayKV
from impls.torch_backend import TorchEdges, TorchLinearSteps
from impls.torch_cache import TorchCache
from impls.torch_sdpa import TorchSdpaBackend
from spec.config import AttentionConfig
from spec.params import Params

if TYPE_CHECKING:  # annotations only: torch stays optional
    import torch


def mask_mod_for(config: AttentionConfig, Tq: int, Tk: int, key_padding_mask: Any) -> Any:
    """flex's mask_mod (True = may attend) for padding, causal and the window, or None when nothing masks."""
    if key_padding_mask is None and not config.causal and config.window is None:
        return None
    off = Tk - Tq  # bottom-right: query i is key position i + Tk - Tq
    left, right = config.window if config.window is not None else (None, None)

    def mask_mod(b, h, q_idx, kv_idx):
        p = q_idx + off
        ok = kv_idx >= 0  # a tensor of True: flex traces this function with tensor indices
        if key_padding_mask is not None:
            ok = ok & key_padding_mask[b, kv_idx]
        if config.causal:
            ok = ok & (kv_idx <= p)
        if left is not None:
            ok = ok & (kv_idx >= p - left) & (kv_idx <= p + right)
        return ok

    return mask_mod


class TorchFlexBackend(TorchCache, TorchEdges, TorchLinearSteps):
    name = "torch-flex"
    device = "cpu"
    capabilities = replace(  # SDPA's declarations (padding, grouped K/V, cache, window), less autograd and dropout
        TorchSdpaBackend.capabilities,
        dropout="none",
        gradients=False,  # torch 2.13: "FlexAttention does not support backward on CPU"
        softcap=True,  # score_mod, on the scaled scores
        notes="torch.nn.attention.flex_attention (eager, unfused on the CPU) for steps 7-9; padding, "
              "causal and the window as one mask_mod (bottom-right); the softcap as score_mod (flex "
              "passes it the scaled scores); fully masked rows already zero; no gradients (no CPU "
              "backward in torch 2.13) and no dropout argument; opt-in: run it by name.",
    )

    def forward(self, x: torch.Tensor, weights: Params, config: AttentionConfig, *,
                key_padding_mask: Any = None, dropout_mask: Any = None,
                training: bool = False) -> torch.Tensor:
        if dropout_mask is not None or (training and config.dropout_p > 0):
            raise ValueError(f"backend {self.name!r} has no dropout (flex_attention takes no dropout "
                             f"argument); use training=False or dropout_p=0")
        Q, K, V = self.heads(x, weights, config)  # steps 4-6: (B, H, T, hd), K and V (B, Hkv, T, hd)
        context = self.flex(Q, K, V, config, key_padding_mask)  # (B, H, T, hd)
        return self.out_proj(self.concat_heads(self.permute_back(context)), weights)  # (B, T, d_out)

    def flex(self, Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, config: AttentionConfig,
             key_padding_mask: Any = None) -> torch.Tensor:
        """Steps 7-9 in one flex_attention call, Tq <= Tk queries aligned bottom-right: (B, H, Tq, hd)."""
        import warnings

        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        B, H, Tq, _ = Q.shape
        Tk = K.shape[2]
        mask_mod = mask_mod_for(config, Tq, Tk, key_padding_mask)
        block_mask = None if mask_mod is None else create_block_mask(
            mask_mod, B if key_padding_mask is not None else None, None, Tq, Tk, device=Q.device)
        c = config.softcap
        score_mod = None if c is None else (lambda s, b, h, q_idx, kv_idx: c * (s / c).tanh())
        with warnings.catch_warnings():  # eager on purpose (see the module docstring): not a surprise
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(Q, K, V, score_mod=score_mod, block_mask=block_mask,
                                  enable_gqa=K.shape[1] != H)

    def attend(self, q: torch.Tensor, cache: ArrayKV, weights: Params, config: AttentionConfig) -> torch.Tensor:
        """Decoding's steps 7-12: the new queries over the whole cache, through flex."""
        mask = cache.key_padding_mask
        context = self.flex(q, cache.k, cache.v, config, None if bool(mask.all()) else mask)  # (B, H, n, hd)
        return self.out_proj(self.concat_heads(self.permute_back(context)), weights)  # (B, n, d_out)
