"""PyTorch `scaled_dot_product_attention` as a backend: a real peer, not code written here.

The projections and head reshapes are the document's lines (shared with the eager torch
backend); steps 7-9 are one fused SDPA call, so those steps are not exposed. SDPA's boolean
`attn_mask` has the spec's polarity (True = may attend) and its default scale is
1/sqrt(head_dim), the spec's.

Fully masked query rows: in torch 2.13 on the CPU, SDPA already returns a zero context for a
row with no attendable key (measured, float64/float32/bfloat16). Which kernel runs is chosen
at run time (and differs on CUDA), and older releases returned NaN there, so the backend
zeroes those rows itself after the call instead of relying on it.

KV-cache decoding: the new queries are the last Tq of Tk keys. `is_causal=True` aligns the
causal mask top-left (query i sees keys j <= i), which for Tq < Tk hides from the new tokens
most of the cache; the spec aligns it bottom-right (query i sees keys j <= Tk - Tq + i). So
for Tq != Tk this backend passes `torch.nn.attention.bias.causal_lower_right(Tq, Tk)`, or an
explicit bottom-right boolean mask when there is padding, never `is_causal`.

Bias and sinks: SDPA adds a float `attn_mask` to the scaled scores, so ALiBi is that float mask
(the bias, -inf where masked). Sinks: one more key per K/V head with k = 0 and v = 0, and the
float mask's column for it holding head h's sink logit: its score is q . 0 * scale + sink_h =
sink_h, so it joins the softmax's denominator and adds nothing to the context. The sinks'
gradient flows through the float mask (autograd).

Dropout: SDPA's `dropout_p` draws from torch's own RNG and cannot take a keep mask, so this
backend declares dropout "rng" (checked statistically) and refuses an explicit mask.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from impls.base import Capabilities
from impls.array_cache import ArrayKV
from impls.torch_grad import TorchAutograd
from impls.torch_backend import (
    CPU_DTYPES,
    CUDA_DTYPES,
    TorchEdges,
    TorchLinearSteps,
    query_has_key,
)
from impls.torch_cache import TorchCache
from impls.torch_masks import alibi, allowed_keys, sink_logits
from spec.config import AttentionConfig
from spec.params import Params

if TYPE_CHECKING:  # annotations only: torch stays optional
    import torch


class TorchSdpaBackend(TorchCache, TorchAutograd, TorchEdges, TorchLinearSteps):
    name = "torch-sdpa"
    device = "cpu"
    capabilities = Capabilities(
        dtypes=CPU_DTYPES,
        device="cpu",
        key_padding_mask=True,
        qkv_bias=True,
        dropout="rng",
        kv_cache=True,
        cache_arrays=True,
        gradients=True,  # through autograd (impls.torch_grad)
        grouped_kv=True,  # SDPA's enable_gqa
        notes="torch.nn.functional.scaled_dot_product_attention for steps 7-9; fully masked "
              "rows zeroed after the call; dropout only with SDPA's own RNG; decode passes "
              "causal_lower_right (or an explicit bottom-right mask) for several new tokens, since "
              "is_causal aligns top-left when Tq != Tk, and no mask for one (it sees every key); "
              "a sliding window is an explicit boolean mask; no softcap: "
              "SDPA takes no score modifier (a softcap needs flex_attention's score_mod); ALiBi as a "
              "float attn_mask; sinks as a zero key and value whose float-mask column is the sink logit.",
        window=True,  # as an explicit bottom-right attn_mask (impls.torch_masks.allowed_keys)
        bias=True,  # ALiBi as a float attn_mask (impls.torch_masks.alibi)
        sinks=True,  # a zero key and value per head, its float-mask column the sink logit
    )

    def forward(self, x: torch.Tensor, weights: Params, config: AttentionConfig, *,
                key_padding_mask: Any = None, dropout_mask: Any = None,
                training: bool = False, sinks: Any = None, bias: Any = None) -> torch.Tensor:
        if dropout_mask is not None:
            raise ValueError(f"backend {self.name!r} cannot replay a dropout mask (SDPA draws its own; "
                             f"dropout='rng'); pass dropout_mask=None and training=True")
        Q, K, V = self.heads(x, weights, config)  # steps 4-6: (B, H, T, hd), K and V (B, Hkv, T, hd)
        dropout_p = config.dropout_p if training else 0.0
        context = self.sdpa(Q, K, V, config, key_padding_mask, dropout_p, sinks, bias)  # (B, H, T, hd)
        context = self.concat_heads(self.permute_back(context))  # (B, T, d_out)
        return self.out_proj(context, weights)  # (B, T, d_out)

    def sdpa(self, Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, config: AttentionConfig,
             key_padding_mask: Any = None, dropout_p: float = 0.0, sinks: Any = None,
             bias: Any = None) -> torch.Tensor:
        """Steps 7-9 in one SDPA call, Tq <= Tk queries, causal aligned bottom-right: (B, H, Tq, hd)."""
        import torch
        import torch.nn.functional as F

        Tq, Tk = Q.shape[2], K.shape[2]
        gqa = K.shape[1] != Q.shape[1]  # grouped K/V heads: SDPA maps query head h to h // group
        if config.softcap is not None:
            raise ValueError(f"backend {self.name!r} cannot softcap (softcap={config.softcap}): SDPA takes no "
                             f"score modifier; valid: softcap=None")
        if config.bias is not None or config.sinks is not None:
            return self.sdpa_float_mask(Q, K, V, config, key_padding_mask, dropout_p, sinks, bias)
        if config.window is not None:  # no window argument in SDPA: the band as an explicit mask
            allowed = allowed_keys(config, Tq, Tk, Q.device)  # (Tq, Tk), True = may attend
            if key_padding_mask is None:  # a window alone never empties a row
                return F.scaled_dot_product_attention(Q, K, V, attn_mask=allowed, dropout_p=dropout_p,
                                                      enable_gqa=gqa)
            allowed = allowed & key_padding_mask[:, None, None, :]  # (B, 1, Tq, Tk)
            context = F.scaled_dot_product_attention(Q, K, V, attn_mask=allowed, dropout_p=dropout_p, enable_gqa=gqa)
            empty = ~query_has_key(config, key_padding_mask, Tq)[:, None, :, None]  # (B, 1, Tq, 1)
            return context.masked_fill(empty, 0.0)  # spec: no attendable key -> zero context
        if key_padding_mask is None:
            # is_causal aligns top-left: the spec's only when Tq == Tk; one query (a decode step) is the
            # last position and sees every key, so it needs no mask (a lower-right mask costs 12 -> 15 ms
            # a step at B=8, L=8192 on the CPU)
            if not config.causal or Tq == Tk or Tq == 1:
                return F.scaled_dot_product_attention(Q, K, V, dropout_p=dropout_p,
                                                      is_causal=config.causal and Tq > 1, enable_gqa=gqa)
            # imported here only: torch.nn.attention.bias brings in torch._dynamo (2 s of start-up)
            from torch.nn.attention.bias import causal_lower_right

            return F.scaled_dot_product_attention(Q, K, V, attn_mask=causal_lower_right(Tq, Tk),
                                                  dropout_p=dropout_p, enable_gqa=gqa)
        allowed = key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk): True = may attend
        if config.causal:  # (Tq, Tk), bottom-right aligned as the spec
            allowed = allowed & torch.ones(Tq, Tk, dtype=torch.bool, device=Q.device).tril(Tk - Tq)
        context = F.scaled_dot_product_attention(Q, K, V, attn_mask=allowed, dropout_p=dropout_p, enable_gqa=gqa)
        empty = ~query_has_key(config, key_padding_mask, Tq)[:, None, :, None]  # (B, 1, Tq, 1)
        return context.masked_fill(empty, 0.0)  # spec: no attendable key -> zero context

    def sdpa_float_mask(self, Q: torch.Tensor, K: torch.Tensor, V: torch.Tensor, config: AttentionConfig,
                        key_padding_mask: Any, dropout_p: float, sinks: Any, bias: Any = None) -> torch.Tensor:
        """SDPA with a float attn_mask: the bias (ALiBi or an array), -inf where masked, and a sink key
        (k = v = 0) whose mask column is the sink logit: (B, H, Tq, hd)."""
        import torch
        import torch.nn.functional as F

        B, H, Tq, _ = Q.shape
        Tk = K.shape[2]
        allowed = allowed_keys(config, Tq, Tk, Q.device)  # (Tq, Tk) or None
        allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=Q.device) if allowed is None else allowed
        allowed = allowed[None, None]  # (1, 1, Tq, Tk)
        if key_padding_mask is not None:
            allowed = allowed & key_padding_mask[:, None, None, :]  # (B, 1, Tq, Tk)
        zero = torch.zeros((), dtype=Q.dtype, device=Q.device)
        fmask = torch.where(allowed, zero, torch.full((), float("-inf"), dtype=Q.dtype, device=Q.device))
        bias = alibi(config, Tq, Tk, Q.device, Q.dtype, bias)  # ALiBi (H, Tq, Tk), an array, or None
        if bias is not None:
            fmask = fmask + bias  # broadcast as numpy does: aligned on the right
        fmask = fmask.expand(fmask.shape[0], H, Tq, Tk)  # (B or 1, H, Tq, Tk)
        sink = sink_logits(config, sinks, Q.device, Q.dtype)  # (H,) or None
        if sink is not None:  # a key with k = v = 0 per K/V head; its mask column is the sink logit
            pad = torch.zeros(B, K.shape[1], 1, K.shape[3], dtype=K.dtype, device=K.device)  # (B, Hkv, 1, hd)
            K, V = torch.cat([K, pad], dim=2), torch.cat([V, pad], dim=2)  # (B, Hkv, Tk + 1, hd)
            column = sink[None, :, None, None].expand(fmask.shape[0], H, Tq, 1)  # (B or 1, H, Tq, 1)
            fmask = torch.cat([fmask, column], dim=-1)  # (B or 1, H, Tq, Tk + 1)
        context = F.scaled_dot_product_attention(Q, K, V, attn_mask=fmask, dropout_p=dropout_p,
                                                 enable_gqa=K.shape[1] != H)
        if key_padding_mask is None:
            return context
        empty = ~query_has_key(config, key_padding_mask, Tq)[:, None, :, None]  # (B, 1, Tq, 1)
        return context.masked_fill(empty, 0.0)  # spec: no attendable key -> zero context

    def attend(self, q: torch.Tensor, cache: ArrayKV, weights: Params, config: AttentionConfig) -> torch.Tensor:
        """Decoding's steps 7-12: the new queries over the whole cache, through SDPA."""
        mask = cache.key_padding_mask
        context = self.sdpa(q, cache.k, cache.v, config, None if bool(mask.all()) else mask)  # (B, H, n, hd)
        return self.out_proj(self.concat_heads(self.permute_back(context)), weights)  # (B, n, d_out)


class TorchSdpaCudaBackend(TorchSdpaBackend):
    name = "torch-sdpa-cuda"
    device = "cuda"
    capabilities = replace(TorchSdpaBackend.capabilities, dtypes=CUDA_DTYPES, device="cuda",
                           notes="SDPA on CUDA (flash / memory-efficient / math kernel chosen by torch); "
                                 "fully masked rows zeroed after the call; dropout only with SDPA's own RNG.")
