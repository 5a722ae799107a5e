"""PyTorch eager backend: the source document's code, on the CPU and on CUDA where present.

Every step is the document's PyTorch line (`x @ W.T`, `view`, `permute`, `masked_fill(-inf)`,
`/ sqrt(head_dim)`, `softmax`, dropout, `@ V`, `contiguous().view`), changed only where the
spec decides otherwise: a query row with no attendable key gets weight 0 instead of NaN,
the key padding mask is boolean [B, T] with True = may attend, and dropout can replay an
explicit keep mask. torch is imported inside methods only, so importing this module (and
`impls.torch_sdpa`, `impls.torch_mha`, which reuse `TorchEdges`) never needs torch.

Arrays come back from `to_numpy` in their own dtype; bfloat16 comes back as an `ml_dtypes`
bfloat16 array (NumPy has no bfloat16 of its own), converted exactly through float32.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from impls.base import Backend, Capabilities, library_versions
from impls.strided import copy_keeping_strides
from impls.torch_cache import TorchCache
from impls.torch_grad import TorchAutograd
from impls.torch_masks import alibi, allowed_keys, query_has_key, sink_logits  # noqa: F401  (query_has_key re-exported: torch_mha, peers)
from spec.config import AttentionConfig, dtype_name, numpy_dtype
from spec.params import Params

if TYPE_CHECKING:  # annotations only: torch stays optional
    import torch

CPU_DTYPES = ("float64", "float32", "bfloat16")
CUDA_DTYPES = ("float64", "float32", "float16", "bfloat16")


def torch_missing() -> str | None:
    """Why torch cannot be used here, or None when it imports."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        return f"torch is not installed: {e} (pip install torch==2.13.0)"
    return None


def cuda_missing() -> str | None:
    """Why torch cannot run on CUDA here, or None when a CUDA device is usable."""
    reason = torch_missing()
    if reason is not None:
        return reason
    import torch

    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False: no CUDA device"
    return None


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a spec dtype name."""
    import torch

    numpy_dtype(name)  # ValueError naming the valid names for an unknown one
    return getattr(torch, name)


class TorchEdges(Backend):
    """Conversions, availability and synchronisation shared by the torch-based backends."""

    device: str = "cpu"

    def availability(self) -> str | None:
        return cuda_missing() if self.device == "cuda" else torch_missing()

    def versions(self) -> dict[str, str]:
        return library_versions('torch')

    def from_numpy(self, a: np.ndarray, dtype: str | None = None) -> torch.Tensor:
        import torch

        a = np.asarray(a)
        if dtype is None and a.dtype == np.bool_:  # masks
            return torch.from_numpy(copy_keeping_strides(a, negative=False)).to(self.device)
        name = dtype or dtype_name(a.dtype)
        if name == "bfloat16":  # NumPy has no native bfloat16: widen exactly, round in torch
            return torch.from_numpy(a.astype(np.float32)).to(self.device, torch.bfloat16)
        if name not in ("float64", "float32", "float16"):  # ints etc.: keep as they are
            return torch.from_numpy(copy_keeping_strides(a, negative=False)).to(self.device)
        # a copy in a's layout (strided, stride 0) where a tensor can hold it: no negative strides
        return torch.from_numpy(copy_keeping_strides(a, numpy_dtype(name), negative=False)).to(self.device)

    def to_numpy(self, a: torch.Tensor) -> np.ndarray:
        import torch

        t = a.detach().to("cpu")
        if t.dtype == torch.bfloat16:  # exact: every bfloat16 is a float32
            return t.float().numpy().astype(numpy_dtype("bfloat16"))
        return t.numpy()

    def synchronize(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def check_dtype(self, dtype: str) -> None:
        if dtype not in self.capabilities.dtypes:
            raise ValueError(f"backend {self.name!r} does not compute in {dtype!r} on {self.device}; "
                             f"valid: {', '.join(self.capabilities.dtypes)}")

    def prepare(self, params: Params, dtype: str) -> Params:
        """The weights as tensors of `dtype` on the device, converted once, untimed."""
        self.check_dtype(dtype)
        return params.map(lambda a: self.from_numpy(a, dtype))


class TorchLinearSteps:
    """Steps 4-6 and 10-12, the reshapes and projections around the attention core.

    Mixed into every backend whose forward really runs these lines (not torch-mha, whose
    projections happen inside nn.MultiheadAttention).
    """

    def project_qkv(self, x: torch.Tensor, weights: Params) -> tuple[torch.Tensor, ...]:
        Q = x @ weights.W_q.T  # (B, T, d_out)
        K = x @ weights.W_k.T  # (B, T, d_kv): n_kv_heads * hd, d_out unless grouped
        V = x @ weights.W_v.T  # (B, T, d_kv)
        if weights.b_q is not None:
            Q, K, V = Q + weights.b_q, K + weights.b_k, V + weights.b_v
        return Q, K, V

    def split_heads(self, Q: torch.Tensor, n_heads: int) -> torch.Tensor:
        B, T, d_out = Q.shape
        return Q.view(B, T, n_heads, d_out // n_heads)  # (B, T, H, hd)

    def group_by_heads(self, Q: torch.Tensor) -> torch.Tensor:
        return Q.permute(0, 2, 1, 3)  # (B, H, T, hd)

    def permute_back(self, context: torch.Tensor) -> torch.Tensor:
        return context.permute(0, 2, 1, 3)  # (B, T, H, hd)

    def concat_heads(self, context: torch.Tensor) -> torch.Tensor:
        B, T, H, hd = context.shape
        return context.contiguous().view(B, T, H * hd)  # (B, T, d_out)

    def out_proj(self, context: torch.Tensor, weights: Params) -> torch.Tensor:
        return context @ weights.W_o.T + weights.b_o  # (B, T, d_out)


class TorchBackend(TorchCache, TorchAutograd, TorchEdges, TorchLinearSteps):
    name = "torch"
    device = "cpu"
    capabilities = Capabilities(
        dtypes=CPU_DTYPES,
        device="cpu",
        key_padding_mask=True,
        qkv_bias=True,
        dropout="replay",
        kv_cache=True,
        cache_arrays=True,
        gradients=True,  # through autograd (impls.torch_grad)
        grouped_kv=True,  # K/V heads repeat_interleave'd to their query heads
        notes="PyTorch eager, the source document's code; fully masked rows give weight 0 "
              "(softmax NaN replaced); to_numpy returns bfloat16 as ml_dtypes.bfloat16; "
              "decode appends in place into preallocated storage, copied on growth and on branching (impls.torch_cache).",
        window=True,  # an explicit bottom-right (Tq, Tk) mask (impls.torch_masks.allowed_keys)
        softcap=True,  # c * tanh(s / c) after the scale, before the masks
        bias=True,  # ALiBi added after the softcap, before the masks (impls.torch_masks.alibi)
        sinks=True,  # one more logit column per row, dropped after the softmax; dsinks through autograd
    )
    token_minor = True  # the cache as (B, Hkv, hd, capacity): faster decode reads with MKL (impls.array_cache)

    def init_params(self, config: AttentionConfig, seed: int = 0) -> Params:
        """Step 3 the nn.Linear way: nn.Linear's own init, under a seeded, forked RNG."""
        import torch

        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
            torch.manual_seed(seed)
            lin = {n: torch.nn.Linear(config.d_in, d, bias=config.qkv_bias, dtype=torch.float64)
                   for n, d in (("q", config.d_out), ("k", config.d_kv), ("v", config.d_kv))}
            lin["o"] = torch.nn.Linear(config.d_out, config.d_out, bias=True, dtype=torch.float64)
        arr = {f"W_{n}": layer.weight.detach().numpy().copy() for n, layer in lin.items()}
        if config.qkv_bias:
            arr.update({f"b_{n}": lin[n].bias.detach().numpy().copy() for n in ("q", "k", "v")})
        return Params(b_o=lin["o"].bias.detach().numpy().copy(), **arr)

    def repeat_kv(self, K: torch.Tensor, n_heads: int) -> torch.Tensor:
        """Grouped K/V heads [B, Hkv, T, hd] -> [B, H, T, hd]: query head h reads K/V head h // (H // Hkv)."""
        Hkv = K.shape[1]
        return K if Hkv == n_heads else K.repeat_interleave(n_heads // Hkv, dim=1)  # (B, H, T, hd)

    def attn_scores(self, Q: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        return Q @ self.repeat_kv(K, Q.shape[1]).transpose(-2, -1)  # (B, H, Tq, Tk), K per group

    def attn_weights(self, attn_scores: torch.Tensor, config: AttentionConfig,
                     key_padding_mask: torch.Tensor | None = None,
                     dropout_mask: torch.Tensor | None = None, *, sinks: Any = None, bias: Any = None) -> torch.Tensor:
        """Step 8; `sinks`, `bias`: tensors for config.sinks' values and a config's bias array
        (autograd's leaves), else read from the config."""
        import torch

        B, H, Tq, Tk = attn_scores.shape
        # the spec's order: scale, softcap, bias, then the masks (a masked score is -inf whatever it was)
        attn_scores = attn_scores / math.sqrt(config.head_dim)
        if config.softcap is not None:  # Gemma 2's attn_logit_softcapping
            attn_scores = config.softcap * torch.tanh(attn_scores / config.softcap)
        if config.bias is not None:  # ALiBi (slope_h * (j - p), bottom-right positions) or a bias array
            attn_scores = attn_scores + alibi(config, Tq, Tk, attn_scores.device, attn_scores.dtype, bias)
        ok = allowed_keys(config, Tq, Tk, attn_scores.device)  # (Tq, Tk) causal and window, bottom-right
        mask = None if ok is None else ~ok
        if key_padding_mask is not None:
            pad = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk): True = masked
            mask = pad if mask is None else mask | pad  # (B, 1, Tq, Tk)
        if mask is not None:
            attn_scores = attn_scores.masked_fill(mask, float("-inf"))
        sink = sink_logits(config, sinks, attn_scores.device, attn_scores.dtype)  # (H,) or None
        if sink is not None:  # gpt-oss: the sink as one more logit per row, dropped after the softmax
            # a -inf sink held at the lowest finite logit: a row with no key and no sink would be
            # NaN, and its NaN would reach dsinks (the masked_fill after stops it for the scores only)
            sink = sink.clamp(min=torch.finfo(sink.dtype).min)
            column = sink[None, :, None, None].expand(B, H, Tq, 1)  # (B, H, Tq, 1)
            attn_weights = torch.softmax(torch.cat([attn_scores, column], dim=-1), dim=-1)[..., :Tk]
        else:
            attn_weights = torch.softmax(attn_scores, dim=-1)
        if key_padding_mask is not None:  # a row with every key masked is NaN: the spec says 0
            attn_weights = attn_weights.masked_fill(mask, 0.0)
        if dropout_mask is not None:  # replay: inverted dropout with the given keep mask
            attn_weights = attn_weights.masked_fill(~dropout_mask, 0.0) * (1.0 / (1.0 - config.dropout_p))
        return attn_weights

    def context(self, attn_weights: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        return attn_weights @ self.repeat_kv(V, attn_weights.shape[1])  # (B, H, Tq, hd), V per group

    def forward(self, x: torch.Tensor, weights: Params, config: AttentionConfig, *,
                key_padding_mask: Any = None, dropout_mask: Any = None,
                training: bool = False, sinks: Any = None, bias: Any = None) -> torch.Tensor:
        import torch.nn.functional as F

        Q, K, V = self.heads(x, weights, config)  # steps 4-6: (B, H, T, hd), K and V (B, Hkv, T, hd)
        attn_scores = self.attn_scores(Q, K)  # (B, H, T, T)
        attn_weights = self.attn_weights(attn_scores, config, key_padding_mask, dropout_mask, sinks=sinks,
                                         bias=bias)
        if training and dropout_mask is None and config.dropout_p > 0:
            attn_weights = F.dropout(attn_weights, config.dropout_p, training=True)  # torch's own RNG
        context = self.context(attn_weights, V)  # (B, H, T, hd)
        context = self.concat_heads(self.permute_back(context))  # (B, T, d_out)
        return self.out_proj(context, weights)  # (B, T, d_out)


class TorchCudaBackend(TorchBackend):
    name = "torch-cuda"
    device = "cuda"
    token_minor = False  # the layout measured on the CPU only: the cache on CUDA stays token-major
    capabilities = replace(TorchBackend.capabilities, dtypes=CUDA_DTYPES, device="cuda",
                           notes="PyTorch eager on CUDA (TF32 left at torch's default: off for matmul).")
