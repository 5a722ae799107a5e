"""`torch.nn.MultiheadAttention` as a backend: a real peer, configured from the spec's Params.

The module's packed `in_proj_weight` is [W_q; W_k; W_v] (3*d_out, d_in) and `in_proj_bias`
[b_q; b_k; b_v]; `out_proj` is W_o, b_o. The spec always has b_o, so the module is built
with bias=True and, without qkv_bias, a zero `in_proj_bias`: adding 0 changes nothing.
nn.MultiheadAttention needs d_in == d_out (kdim = vdim = embed_dim for self-attention).

Two differences from the spec, bridged here:
- key_padding_mask polarity: nn.MultiheadAttention's True means IGNORE; ours means may attend,
  so the mask is inverted. The causal mask goes in as a boolean attn_mask (True = not allowed).
- fully masked query rows: in torch 2.13 the inference fast path (eval, no grad) returns NaN
  for a row with no attendable key (the training path returns 0). The spec says a zero
  context, i.e. an output row equal to b_o, so those rows are set to b_o afterwards.

No step is exposed: the projections and the attention run inside the module. Dropout is the
module's own (torch's RNG, train mode), so it is declared "rng".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from impls.base import Capabilities
from impls.torch_grad import TorchMhaAutograd
from impls.torch_backend import CPU_DTYPES, TorchEdges, query_has_key, torch_dtype
from spec.config import AttentionConfig
from spec.params import Params

if TYPE_CHECKING:  # annotations only: torch stays optional
    import torch


class TorchMhaBackend(TorchMhaAutograd, TorchEdges):
    name = "torch-mha"
    device = "cpu"
    capabilities = Capabilities(
        dtypes=CPU_DTYPES,
        device="cpu",
        key_padding_mask=True,
        qkv_bias=True,
        dropout="rng",
        d_in_equals_d_out=True,
        gradients=True,  # through autograd, the packed in_proj split back (impls.torch_grad)
        grouped_kv=False,  # nn.MultiheadAttention has no grouped K/V heads: its K and V projections are embed_dim wide
        notes="torch.nn.MultiheadAttention(batch_first=True), weights packed from the spec's; "
              "padding mask inverted (its True = ignore); NaN rows of fully masked queries set to b_o; "
              "no grouped-query attention (nn.MultiheadAttention has one K/V head per query head).",
    )

    def prepare(self, params: Params, dtype: str) -> dict[str, Any]:
        """Packed tensors once; the module itself needs n_heads, so it is built on first use."""
        import torch

        self.check_dtype(dtype)
        d_out = params.W_q.shape[0]
        if params.W_q.shape[1] != d_out:
            raise ValueError(f"backend {self.name!r} needs d_in == d_out (nn.MultiheadAttention), "
                             f"got W_q of shape {params.W_q.shape}")
        t = params.map(lambda a: self.from_numpy(a, dtype))
        zeros = torch.zeros(d_out, dtype=torch_dtype(dtype), device=self.device)
        return {
            "in_proj_weight": torch.cat([t.W_q, t.W_k, t.W_v]),  # (3*d_out, d_out)
            "in_proj_bias": torch.cat([t.b_q, t.b_k, t.b_v]) if t.b_q is not None
                            else torch.cat([zeros, zeros, zeros]),  # (3*d_out,)
            "W_o": t.W_o, "b_o": t.b_o, "dtype": dtype, "modules": {},
        }

    def module(self, weights: dict[str, Any], config: AttentionConfig) -> torch.nn.MultiheadAttention:
        """The nn.MultiheadAttention for this head count, built once per prepared weights."""
        import torch

        H = config.n_heads
        if H not in weights["modules"]:
            # skip_init: nn.MHA's own (xavier) init of weights overwritten next costs more than the
            # forward where the weights are large (d_out = 1536: about 0.08 s a module, measured)
            mha = torch.nn.utils.skip_init(torch.nn.MultiheadAttention, embed_dim=config.d_out, num_heads=H,
                                           bias=True, batch_first=True, device=self.device,
                                           dtype=torch_dtype(weights["dtype"]))
            with torch.no_grad():  # every parameter: the spec's weights
                mha.in_proj_weight.copy_(weights["in_proj_weight"])
                mha.in_proj_bias.copy_(weights["in_proj_bias"])
                mha.out_proj.weight.copy_(weights["W_o"])
                mha.out_proj.bias.copy_(weights["b_o"])
            mha.requires_grad_(False)
            weights["modules"][H] = mha
        return weights["modules"][H]

    def forward(self, x: torch.Tensor, weights: dict[str, Any], config: AttentionConfig, *,
                key_padding_mask: Any = None, dropout_mask: Any = None,
                training: bool = False) -> torch.Tensor:
        import torch

        if dropout_mask is not None:
            raise ValueError(f"backend {self.name!r} cannot replay a dropout mask (nn.MultiheadAttention "
                             f"draws its own; dropout='rng'); pass dropout_mask=None and training=True")
        mha = self.module(weights, config)
        mha.dropout = config.dropout_p
        mha.train(training)
        T = x.shape[1]
        attn_mask = None
        if config.causal:  # (T, T), True = NOT allowed: nn.MHA's polarity
            attn_mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        ignore = None if key_padding_mask is None else ~key_padding_mask  # (B, T): True = ignore
        with torch.no_grad():
            out, _ = mha(x, x, x, key_padding_mask=ignore, attn_mask=attn_mask,
                         need_weights=False, is_causal=config.causal)  # (B, T, d_out)
        if key_padding_mask is not None:  # rows with no attendable key: zero context -> b_o
            has_key = query_has_key(config, key_padding_mask, T)[:, :, None]  # (B, T, 1)
            out = torch.where(has_key, out, weights["b_o"])
        return out
