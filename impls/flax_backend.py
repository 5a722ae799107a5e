"""Flax as a backend: `flax.nnx.MultiHeadAttention` with the spec's weights loaded into it.

A real peer: the projections, the head split, the attention and the output projection all
run inside the nnx module. Its parameters are `LinearGeneral` kernels, [in, heads, head_dim]
for Q, K, V and [heads, head_dim, out] for the output, so W.T reshaped; `use_bias` covers all
four projections at once, so without qkv_bias the Q, K, V biases are zeros (adding 0 changes
nothing) and the output bias is b_o.

How the spec's decisions are expressed with flax's own options:
- key padding mask: `mask=` is boolean [B, heads, Tq, Tk] with True = take part (the spec's
  polarity), so the [B, Tk] mask goes in as [B, 1, Tq, Tk]. Not as [B, 1, 1, Tk]: with
  dropout_rate > 0 flax computes the weights itself and broadcasts its causal mask to the
  mask's shape, which raises for a query dimension of 1 ("Incompatible types for
  broadcasting", found by the suite's dropout_off_in_eval check);
- causal: `is_causal=True` (flax's own causal overlay, passed down to the attention function);
- scale: flax's default 1/sqrt(head_dim);
- dropout: flax's own (`dropout_rate`, `deterministic=False`, an `nnx.Rngs` dropout stream),
  drawn from the module's own stream (it advances on every call), with
  `broadcast_dropout=False` so every weight is dropped independently as the spec says
  (flax's default shares one mask across the batch and the heads).

Corrected here, openly: a query with no attendable key. Flax gives it the uniform average
of V (masked logits become a large finite negative number, not -inf); the spec says a
zero context, i.e. the output row is b_o, so those rows are set to b_o after the call.

Without dropout flax hands the attention to `jax.nn.dot_product_attention` (softmax in
float32 for every dtype); float16 and bfloat16
run op by op for the reason given in `impls.jax_backend`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from impls.base import Capabilities, library_versions
from impls.jax_backend import EAGER_DTYPES, JAX_DTYPES, JaxEdges, has_key, jax_missing, x64
from spec.config import AttentionConfig
from spec.params import Params

FLAX_PINS = "flax==0.12.8 jax==0.10.2 jaxlib==0.10.2"


def _call(mha: Any, x: Any, kpm: Any, b_o: Any, *, causal: bool, training: bool) -> Any:
    """The module's forward, then the disclosed correction of rows with no attendable key."""
    import jax.numpy as jnp

    B, T = x.shape[:2]
    # (B, 1, Tq, Tk), True = take part; not (B, 1, 1, Tk): with dropout_rate > 0 flax's own path
    # broadcasts its causal mask to the mask's shape and fails on a query dimension of 1
    mask = None if kpm is None else jnp.broadcast_to(kpm[:, None, None, :], (B, 1, T, kpm.shape[-1]))
    out = mha(x, mask=mask, is_causal=causal, deterministic=not training)  # (B, T, d_out)
    if kpm is not None:  # flax: mean of V on a row with no key; spec: zero context -> b_o
        out = jnp.where(has_key(kpm, x.shape[1], causal)[:, :, None], out, b_o)
    return out


class FlaxBackend(JaxEdges):
    name = "flax"
    capabilities = Capabilities(
        dtypes=JAX_DTYPES,
        device="cpu",
        key_padding_mask=True,
        qkv_bias=True,
        dropout="rng",
        grouped_kv=True,  # nnx.MultiHeadAttention(num_kv_heads=n_kv_heads): K/V kernels (d_in, n_kv_heads, hd)
        notes="flax.nnx.MultiHeadAttention with the spec's weights as LinearGeneral kernels (zero Q/K/V "
              "biases without qkv_bias); mask passed as is (its True = take part); rows with no "
              "attendable key set to b_o after the call (flax gives them the mean of V); dropout is "
              "flax's own RNG with broadcast_dropout=False; softmax in float32 for every dtype "
              "(jax.nn.dot_product_attention); float16/bfloat16 run op by op, float64/float32 under nnx.jit; "
              "no score bias or sinks: nnx.MultiHeadAttention.__call__ takes a boolean mask only (its bias "
              "arguments are the projections'; its attention_fn, nnx.dot_product_attention, has a bias= the module "
              "never passes), and neither has a sink argument.",
    )

    def __init__(self) -> None:
        self._jitted: dict[str, Any] = {}

    def availability(self) -> str | None:
        return jax_missing(FLAX_PINS, "flax")

    def versions(self) -> dict[str, str]:
        return library_versions('flax', 'jax', 'jaxlib')

    def prepare(self, params: Params, dtype: str) -> dict[str, Any]:
        """The weights in dtype, once; the module itself needs n_heads, so it is built on first use."""
        self.check_dtype(dtype)
        d_out, d_in = params.W_q.shape
        bias = {n: getattr(params, f"b_{n}") if params.b_q is not None else np.zeros(len(getattr(params, f"W_{n}")))
                for n in "qkv"}  # b_q (d_out,), b_k and b_v (d_kv,)
        return {"params": params, "dtype": dtype, "d_in": d_in, "d_out": d_out, "bias": bias,
                "b_o": self.from_numpy(params.b_o, dtype), "modules": {}}

    def module(self, weights: dict[str, Any], config: AttentionConfig) -> Any:
        """The nnx.MultiHeadAttention for this head count and dropout, built once per weights."""
        from flax import nnx

        H, Hkv, hd, dtype = config.n_heads, config.kv_heads, config.head_dim, weights["dtype"]
        key = (H, Hkv, config.dropout_p)
        if key not in weights["modules"]:
            p, d_in, d_out = weights["params"], weights["d_in"], weights["d_out"]
            jdt = self.from_numpy(np.zeros(1), dtype).dtype
            with x64(dtype):
                mha = nnx.MultiHeadAttention(
                    num_heads=H, in_features=d_in, qkv_features=d_out, out_features=d_out,
                    dtype=jdt, param_dtype=jdt, use_bias=True, dropout_rate=config.dropout_p,
                    broadcast_dropout=False, decode=False, rngs=nnx.Rngs(0),
                    **({} if Hkv == H else {"num_kv_heads": Hkv}))  # grouped: flax groups consecutively
                for n, lin, h in (("q", mha.query, H), ("k", mha.key, Hkv), ("v", mha.value, Hkv)):
                    W = getattr(p, f"W_{n}")  # (h * hd, d_in)
                    lin.kernel[...] = self.from_numpy(W.T.reshape(d_in, h, hd), dtype)  # (d_in, h, hd)
                    lin.bias[...] = self.from_numpy(weights["bias"][n].reshape(h, hd), dtype)  # (h, hd)
                mha.out.kernel[...] = self.from_numpy(p.W_o.T.reshape(H, hd, d_out), dtype)  # (H, hd, d_out)
                mha.out.bias[...] = weights["b_o"]  # (d_out,)
            weights["modules"][key] = mha
        return weights["modules"][key]

    def forward(self, x: Any, weights: dict[str, Any], config: AttentionConfig, *,
                key_padding_mask: Any = None, dropout_mask: Any = None,
                training: bool = False) -> Any:
        from flax import nnx

        if dropout_mask is not None:
            raise ValueError(f"backend {self.name!r} cannot replay a dropout mask (flax draws its own; "
                             f"dropout='rng'); pass dropout_mask=None and training=True")
        if config.window is not None or config.softcap is not None:  # refused by name, never dropped silently
            raise ValueError(f"backend {self.name!r} has no sliding window or softcap (window={config.window}, "
                             f"softcap={config.softcap}): nnx.MultiHeadAttention takes neither; valid: None")
        if config.bias is not None or config.sinks is not None:  # refused by name, never dropped silently
            raise ValueError(f"backend {self.name!r} takes no score bias or sinks (bias={config.bias!r}, "
                             f"sinks={config.sinks}): nnx.MultiHeadAttention.__call__ takes a boolean mask only and "
                             f"has no sink argument; valid: bias=None, sinks=None")
        mha = self.module(weights, config)
        training = bool(training and config.dropout_p > 0)
        fn = _call
        if weights["dtype"] not in EAGER_DTYPES:
            if "jit" not in self._jitted:
                self._jitted["jit"] = nnx.jit(_call, static_argnames=("causal", "training"))
            fn = self._jitted["jit"]
        with x64(weights["dtype"]):
            out = fn(mha, x, key_padding_mask, weights["b_o"], causal=config.causal, training=training)
            return out.block_until_ready()
