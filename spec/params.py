"""The parameters of the block (step 3): four `nn.Linear` layers, in their layout.

Weights follow `torch.nn.Linear`: `[out_features, in_features]`, applied as `y = x @ W.T + b`.
W_q, W_k, W_v have no bias unless `qkv_bias`; the output projection W_o always has one.
With grouped K/V heads (`n_kv_heads` < n_heads) W_k, W_v and their biases have d_kv =
n_kv_heads * head_dim rows: K/V head g owns rows g*head_dim .. (g+1)*head_dim - 1.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from spec.config import AttentionConfig


@dataclass(frozen=True)
class Params:
    """Weights `[out, in]` and biases `[out]` of the Q, K, V and output projections."""

    W_q: np.ndarray  # (d_out, d_in)
    W_k: np.ndarray  # (d_kv, d_in), d_kv = n_kv_heads * head_dim (d_out unless grouped)
    W_v: np.ndarray  # (d_kv, d_in)
    W_o: np.ndarray  # (d_out, d_out)
    b_o: np.ndarray  # (d_out,)
    b_q: np.ndarray | None = None  # (d_out,) when qkv_bias
    b_k: np.ndarray | None = None  # (d_kv,)
    b_v: np.ndarray | None = None  # (d_kv,)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays that are present, by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def map(self, fn) -> "Params":
        """A copy with `fn` applied to every array that is present."""
        return replace(self, **{k: fn(v) for k, v in self.arrays().items()})

    def check(self, config: AttentionConfig) -> None:
        """Raise ValueError naming the first array whose shape or presence does not fit config."""
        d_in, d_out, d_kv = config.d_in, config.d_out, config.d_kv
        expected = {"W_q": (d_out, d_in), "W_k": (d_kv, d_in), "W_v": (d_kv, d_in),
                    "W_o": (d_out, d_out), "b_o": (d_out,)}
        if config.qkv_bias:
            expected.update(b_q=(d_out,), b_k=(d_kv,), b_v=(d_kv,))
        for name, shape in expected.items():
            a = getattr(self, name)
            if a is None:
                raise ValueError(f"{name} is missing; qkv_bias={config.qkv_bias} requires it")
            if a.shape != shape:
                raise ValueError(f"{name} has shape {a.shape}, expected {shape} for {config}")
        if not config.qkv_bias:
            for name in ("b_q", "b_k", "b_v"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is given but qkv_bias=False")


def init_bound(fan_in: int) -> float:
    """`nn.Linear`'s init bound: weights and biases are U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return 1.0 / np.sqrt(fan_in)


def init_params(config: AttentionConfig, seed: int = 0) -> Params:
    """Step 3: initialise W_q, W_k, W_v (and biases) and W_o, b_o as `nn.Linear` does.

    Shapes: W_q [d_out, d_in], W_k, W_v [d_kv, d_in]; W_o [d_out, d_out]; biases [d_out] ([d_kv]
    for K and V). Checked by bounds and a distribution test, never by exact values: RNGs differ.
    """
    rng = np.random.default_rng(seed)
    d_in, d_out, d_kv = config.d_in, config.d_out, config.d_kv
    a_in, a_out = init_bound(d_in), init_bound(d_out)
    W_q = rng.uniform(-a_in, a_in, (d_out, d_in))
    W_k = rng.uniform(-a_in, a_in, (d_kv, d_in))
    W_v = rng.uniform(-a_in, a_in, (d_kv, d_in))
    W_o = rng.uniform(-a_out, a_out, (d_out, d_out))
    b_o = rng.uniform(-a_out, a_out, (d_out,))
    if not config.qkv_bias:
        return Params(W_q, W_k, W_v, W_o, b_o)
    b_q, b_k, b_v = (rng.uniform(-a_in, a_in, (n,)) for n in (d_out, d_kv, d_kv))
    return Params(W_q, W_k, W_v, W_o, b_o, b_q, b_k, b_v)
