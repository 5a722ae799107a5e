"""Gradients of the torch-based backends through autograd: the contract in a few lines each.

`forward_for_grad` makes leaf tensors of x and of the weights (detached copies that require
grad), runs the backend's own forward on them and keeps (out, leaves) as `saved`; `backward`
asks `torch.autograd.grad` for the leaves' gradients. autograd.grad returns them instead of
accumulating into `.grad`, so two calls never add up. torch-mha's weights are packed
(in_proj = [W_q; W_k; W_v]); its gradients are split back into the spec's layout here.
torch is imported inside functions only.
"""

from __future__ import annotations

from typing import Any

from impls.torch_masks import query_has_key
from spec.config import AttentionConfig
from spec.params import Params
from spec.scores import BiasArray


def _leaf(t: Any) -> Any:
    return t.detach().clone().requires_grad_(True)


def _grads(out: Any, leaves: dict[str, Any], grad_out: Any) -> dict[str, Any]:
    """d(sum(grad_out * out)) / d(leaf) for every leaf; an unused leaf gets zeros, not None."""
    import torch

    names = list(leaves)
    got = torch.autograd.grad(out, [leaves[n] for n in names], grad_out, allow_unused=True)
    return {n: torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(names, got)}


class TorchAutograd:
    """For backends whose `forward` takes x and a Params of tensors (torch, torch-sdpa)."""

    def forward_for_grad(self, x: Any, weights: Params, config: AttentionConfig, *,
                         key_padding_mask: Any = None, dropout_mask: Any = None,
                         training: bool = False) -> tuple[Any, Any]:
        import torch

        leaves = {"x": _leaf(x), **{k: _leaf(v) for k, v in weights.arrays().items()}}
        params = Params(**{k: v for k, v in leaves.items() if k not in ("x", "sinks", "bias")})
        extra = {}
        if config.sinks is not None:  # the sink logits live in the config: a leaf of x's dtype for dsinks
            leaves["sinks"] = _leaf(torch.tensor(config.sinks, dtype=x.dtype, device=x.device))
            extra["sinks"] = leaves["sinks"]
        if isinstance(config.bias, BiasArray):  # so does a bias array: a leaf in its shape for dbias
            leaves["bias"] = _leaf(torch.tensor(config.bias.array, dtype=x.dtype, device=x.device))
            extra["bias"] = leaves["bias"]
        out = self.forward(leaves["x"], params, config, key_padding_mask=key_padding_mask,
                           dropout_mask=dropout_mask, training=training, **extra)
        return out.detach(), (out, leaves)

    def backward(self, saved: Any, grad_out: Any) -> dict[str, Any]:
        out, leaves = saved
        g = _grads(out, leaves, grad_out)
        return {("dx" if k == "x" else "d" + k): v for k, v in g.items()}


class TorchMhaAutograd:
    """torch-mha: nn.MultiheadAttention run by `torch.func.functional_call` on leaf tensors."""

    def forward_for_grad(self, x: Any, weights: dict[str, Any], config: AttentionConfig, *,
                         key_padding_mask: Any = None, dropout_mask: Any = None,
                         training: bool = False) -> tuple[Any, Any]:
        import torch

        if dropout_mask is not None:
            raise ValueError(f"backend {self.name!r} cannot replay a dropout mask (dropout='rng'); "
                             f"pass dropout_mask=None and training=True")
        mha = self.module(weights, config)
        leaves = {"x": _leaf(x), "in_proj_weight": _leaf(weights["in_proj_weight"]),
                  "in_proj_bias": _leaf(weights["in_proj_bias"]), "W_o": _leaf(weights["W_o"]),
                  "b_o": _leaf(weights["b_o"])}
        mha.dropout = config.dropout_p
        mha.train(training)
        T = x.shape[1]
        attn_mask = None if not config.causal else torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        ignore = None if key_padding_mask is None else ~key_padding_mask  # (B, T): True = ignore
        state = {"in_proj_weight": leaves["in_proj_weight"], "in_proj_bias": leaves["in_proj_bias"],
                 "out_proj.weight": leaves["W_o"], "out_proj.bias": leaves["b_o"]}
        xl = leaves["x"]
        out, _ = torch.func.functional_call(mha, state, (xl, xl, xl), dict(
            key_padding_mask=ignore, attn_mask=attn_mask, need_weights=False, is_causal=config.causal))
        if key_padding_mask is not None:  # rows with no attendable key: zero context -> b_o

            has_key = query_has_key(config, key_padding_mask, T)[:, :, None]  # (B, T, 1)
            out = torch.where(has_key, out, leaves["b_o"])
        return out.detach(), (out, leaves, config.qkv_bias)

    def backward(self, saved: Any, grad_out: Any) -> dict[str, Any]:
        out, leaves, qkv_bias = saved
        g = _grads(out, leaves, grad_out)
        dW_q, dW_k, dW_v = g["in_proj_weight"].chunk(3)  # (d_out, d_in) each: in_proj is [W_q; W_k; W_v]
        grads = {"dx": g["x"], "dW_q": dW_q, "dW_k": dW_k, "dW_v": dW_v, "dW_o": g["W_o"], "db_o": g["b_o"]}
        if qkv_bias:  # without it the packed bias is a constant zero, not a parameter of the spec
            grads.update(zip(("db_q", "db_k", "db_v"), g["in_proj_bias"].chunk(3)))
        return grads
