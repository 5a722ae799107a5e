"""Each CPU backend's attention as its library ships it, for the semantic-profile probes.

A `Raw` calls the library directly, with the library's own arguments and defaults and none
of the corrections the backend adapters in `impls/` make (no mask inversion, no zeroing of
fully masked rows, no bottom-right causal mask built by hand). Projections are left out, or
set to the identity where the library has them built in (nn.MultiheadAttention, flax's
MultiHeadAttention), so that the output is the attention's context itself.

`numpy` and `torch` are this project's own code written to the spec; their rows probe the
backends' steps 7-9 (`attn_scores`, `attn_weights`, `context`) in the same way. The peers'
libraries (JAX, flax, ONNX Runtime) are in `peer_libraries.py`; the helpers both share in
`raw_common.py`.

Interface: `attend(q, k, v, *, mask=None, causal=False, dtype="float32")` with q [B, H, Tq, hd],
k and v [B, H, Tk, hd] (float64 NumPy) and mask a boolean [B, Tk] passed to the library as it
is; returns the context [B, H, Tq, hd] as NumPy. `output_dtype(q, k, v, dtype)` names the
dtype the library returns; `dropout()` measures what dropout the library offers and returns
(value, detail). `attend_grouped(q, k, v)` passes k and v of fewer heads [B, Hkv, Tk, hd] the
way the library takes them; a library that has no such way has `cannot_group()`, its reason,
read from its own signature. Frameworks are imported inside methods only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.semantics.invariance import LaysOut
from conformance.semantics.peer_libraries import Flax, Jax, OnnxRuntime
from conformance.semantics.raw_common import _differs, _no_argument, _no_kv_heads_argument, version  # noqa: F401
from spec.config import AttentionConfig, numpy_dtype


class SpecSteps(LaysOut):
    """numpy / torch: the in-house backends' steps 7-9 (the spec's decisions, by design)."""

    def __init__(self, name: str, dist: str):
        self.name, self.dist = name, dist

    @property
    def library(self) -> str:
        return f"{self.dist} {version(self.dist)} (this project's code)"

    def backend(self) -> Any:
        from impls.registry import resolve

        return resolve(self.name).backend

    def missing(self) -> str | None:
        from impls.registry import resolve

        info = resolve(self.name)
        return info.skip_reason or info.error  # not measured either way; the registry's policy names which

    def _run(self, q, k, v, mask=None, causal=False, dtype="float32", dropout_mask=None, p=0.0):
        b = self.backend()
        if dtype not in b.capabilities.dtypes:
            raise ValueError(f"{dtype} is not declared by backend {self.name!r} "
                             f"(declared: {', '.join(b.capabilities.dtypes)})")
        H, hd = q.shape[1], q.shape[-1]
        cfg = AttentionConfig(d_in=H * hd, d_out=H * hd, n_heads=H, causal=causal, dropout_p=p)
        Q, K, V = (self._laid(a.astype(numpy_dtype(dtype)), lambda a: b.from_numpy(a, dtype)) for a in (q, k, v))
        kpm = None if mask is None else b.from_numpy(mask)
        keep = None if dropout_mask is None else b.from_numpy(dropout_mask)
        w = b.attn_weights(b.attn_scores(Q, K), cfg, key_padding_mask=kpm, dropout_mask=keep)
        return b.to_numpy(b.context(w, V))

    def attend(self, q, k, v, *, mask=None, causal=False, dtype="float32"):
        return self._run(q, k, v, mask, causal, dtype)

    def attend_grouped(self, q, k, v):
        return self._run(q, k, v)  # steps 7 and 9 take K and V of their own head count

    def attend_modified(self, q, k, v, *, window=None, softcap=None, mask=None):
        """A window of `window` keys back (causal, AttentionConfig.window = (window, 0)) or a softcap, float64."""
        b = self.backend()
        H, hd = q.shape[1], q.shape[-1]
        cfg = AttentionConfig(d_in=H * hd, d_out=H * hd, n_heads=H, causal=window is not None,
                              window=None if window is None else (window, 0), softcap=softcap)
        Q, K, V = (b.from_numpy(a, "float64") for a in (q, k, v))
        kpm = None if mask is None else b.from_numpy(mask)
        return b.to_numpy(b.context(b.attn_weights(b.attn_scores(Q, K), cfg, key_padding_mask=kpm), V))

    def output_dtype(self, q, k, v, dtype):
        return str(self._run(q, k, v, dtype=dtype).dtype)

    def dropout(self) -> tuple[str, str]:
        from conformance.semantics.probes import inputs

        q, k, v = inputs(1, 2, 4, 4, 4, seed=7)
        keep = np.random.default_rng(0).random((1, 2, 4, 4)) > 0.5
        got = self._run(q, k, v, dtype="float64", dropout_mask=keep, p=0.5)
        b, cfg = self.backend(), AttentionConfig(d_in=8, d_out=8, n_heads=2, causal=False)
        w = b.to_numpy(b.attn_weights(b.attn_scores(*(b.from_numpy(a, "float64") for a in (q, k))), cfg))
        exact = np.allclose(got, (w * keep / 0.5) @ v, rtol=1e-12, atol=1e-12)
        return ("replay" if exact else "other",
                "takes an explicit keep mask: weights * keep / (1-p) reproduced exactly" if exact
                else "a keep mask was accepted but did not give weights * keep / (1-p)")


class TorchSdpa(LaysOut):
    name, dist = "torch-sdpa", "torch"
    library = property(lambda self: f"torch {version('torch')}: torch.nn.functional.scaled_dot_product_attention")

    def missing(self) -> str | None:
        from impls.torch_backend import torch_missing

        return torch_missing()

    def _t(self, a, dtype):
        import warnings

        import torch

        with warnings.catch_warnings():  # a stride-0 view is read-only: torch warns, and only reads it here
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return self._laid(a.astype(np.float32 if dtype == "bfloat16" else numpy_dtype(dtype)),
                              lambda a: torch.from_numpy(a).to(getattr(torch, dtype)))  # from_numpy keeps strides

    def _run(self, q, k, v, mask=None, causal=False, dtype="float32", **kw):
        import torch
        import torch.nn.functional as F

        attn_mask = None if mask is None else torch.from_numpy(mask)[:, None, None, :]  # (B, 1, 1, Tk)
        return F.scaled_dot_product_attention(self._t(q, dtype), self._t(k, dtype), self._t(v, dtype),
                                              attn_mask=attn_mask, is_causal=causal, **kw)

    def attend(self, q, k, v, *, mask=None, causal=False, dtype="float32"):
        import torch

        return self._run(q, k, v, mask, causal, dtype).to(torch.float64).numpy()

    def attend_grouped(self, q, k, v):
        import torch

        return self._run(q, k, v, enable_gqa=True).to(torch.float64).numpy()  # K, V (B, Hkv, Tk, hd)

    def output_dtype(self, q, k, v, dtype):
        return str(self._run(q, k, v, dtype=dtype).dtype).replace("torch.", "")

    def no_modifier(self, kind: str) -> str | None:
        import torch.nn.functional as F

        return _no_argument(F.scaled_dot_product_attention, "scaled_dot_product_attention", kind)

    def dropout(self) -> tuple[str, str]:
        from conformance.semantics.probes import inputs

        q, k, v = inputs(1, 2, 8, 8, 4, seed=7)
        a, b, c = (self._run(q, k, v, dropout_p=0.5) for _ in range(3))
        return ("own RNG" if _differs(a, b) and _differs(b, c) else "not random",
                "dropout_p draws from torch's RNG (repeated calls differ); no argument takes a keep mask")


class TorchMha(TorchSdpa):
    """nn.MultiheadAttention with identity projections and no biases: its output is the context."""

    name = "torch-mha"
    library = property(lambda self: f"torch {version('torch')}: torch.nn.MultiheadAttention")

    def module(self, E, H, dtype, p=0.0):
        import torch

        # bias=True with zero biases, as in use: without in_proj_bias torch skips its fast path
        mha = torch.nn.MultiheadAttention(E, H, dropout=p, bias=True, batch_first=True, dtype=getattr(torch, dtype))
        with torch.no_grad():
            mha.in_proj_bias.zero_()
            mha.out_proj.bias.zero_()
            mha.in_proj_weight.copy_(torch.cat([torch.eye(E)] * 3))  # (3E, E): identity Q, K, V
            mha.out_proj.weight.copy_(torch.eye(E))
        return mha.requires_grad_(False).eval()

    def no_modifier(self, kind: str) -> str | None:
        import torch

        return _no_argument(torch.nn.MultiheadAttention.forward, "nn.MultiheadAttention.forward", kind)

    def cannot_group(self) -> str | None:
        import torch

        return _no_kv_heads_argument(torch.nn.MultiheadAttention, "nn.MultiheadAttention",
                                     "kdim and vdim set the K/V inputs' width, not their head count")

    def _run(self, q, k, v, mask=None, causal=False, dtype="float32", p=0.0, train=False):
        import torch

        B, H, Tq, hd = q.shape
        mha = self.module(H * hd, H, dtype, p).train(train)
        x = {id(a): self._t(a.transpose(0, 2, 1, 3).reshape(B, a.shape[2], H * hd), dtype) for a in (q, k, v)}
        kpm = None if mask is None else torch.from_numpy(mask)
        with torch.no_grad():  # self-attention (q is k is v) takes the inference fast path, as in use
            out, _ = mha(x[id(q)], x[id(k)], x[id(v)], key_padding_mask=kpm, need_weights=False, is_causal=causal)
        return out.reshape(B, Tq, H, hd).permute(0, 2, 1, 3)  # (B, H, Tq, hd)

    def dropout(self) -> tuple[str, str]:
        from conformance.semantics.probes import inputs

        q, k, v = inputs(1, 2, 8, 8, 4, seed=7)
        a, b, c = (self._run(q, k, v, p=0.5, train=True) for _ in range(3))
        return ("own RNG" if _differs(a, b) and _differs(b, c) else "not random",
                "dropout= in train mode draws from torch's RNG (repeated calls differ); no keep-mask argument")


def all_raw() -> list[Any]:
    """The CPU backends' libraries, in the order of the profile table."""
    return [SpecSteps("numpy", "numpy"), SpecSteps("torch", "torch"), TorchSdpa(), TorchMha(), Jax(), Flax(),
            OnnxRuntime()]
