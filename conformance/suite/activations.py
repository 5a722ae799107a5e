"""Activation-like values: the inputs real models give attention, beside the Gaussian draw.

LLM activations are not Gaussian: a few channels carry values 100 to 1000 times the rest
(LLM.int8's outlier features), the tails are heavy, the tokens of a sequence span a low-rank
space and repeat (near-identical tokens are near-ties in the softmax), and the weights are at
initialisation scale (std 0.02) with a few heads much larger. TransformerEngine #3216 (a
backward wrong only with real activations) is the kind of bug this distribution is for.

`cases` (conformance/suite/strategies.py) draws the distribution per example: `DISTRIBUTIONS`,
the first (today's Gaussian draw) where shrinking ends. An activation-like case says so in its
`extra` ("values": "activation-like"), so a failure's description and repro line name it.

Two bounds keep the draw inside what the tolerance model can judge: the scores' Cauchy-Schwarz
bound is held at `LOGIT_CAP[dtype]` by scaling W_q and W_k (larger logits have their own checks,
as for the Gaussian draw), and |x| at `X_MAX` (forward) or `GRAD_X_MAX` (a backward sums x over
every token, so low precision needs a lower bound there) by scaling x.
"""

from __future__ import annotations

import numpy as np

from spec.config import AttentionConfig
from spec.params import Params

#: The distributions `cases` draws from; the first is where shrinking ends.
DISTRIBUTIONS = ("gaussian", "activation-like")
#: Outlier channels are this many times the rest (log-uniform between the two).
OUTLIER_RANGE = (100.0, 1000.0)
#: Weight std at initialisation scale (GPT-2's 0.02), and the range of a large head's factor.
WEIGHT_STD = 0.02
LARGE_HEAD_RANGE = (4.0, 32.0)
#: Degrees of freedom of the heavy-tailed base (Student's t: infinite kurtosis at 3 and below
#: would make the scale meaningless; 3 keeps a finite variance), clipped at TAIL_CLIP std.
TAIL_DF, TAIL_CLIP = 3, 20.0
#: Largest score bound: the Gaussian draw's order of magnitude (float16 and bfloat16 stop at a few
#: tens, where one rounding of a score reorders the softmax; see strategies.LOW_PRECISION_SCALES).
LOGIT_CAP = {"float64": 1000.0, "float32": 1000.0, "float16": 30.0, "bfloat16": 30.0}
#: Largest |x|: low precision keeps the projections and P @ V far from float16's 65504.
X_MAX = {"float64": 2.0**20, "float32": 2.0**20, "float16": 2.0**12, "bfloat16": 2.0**12}
#: Largest |x| for a backward: dW sums x times the output gradient over every token (up to
#: ~1000 of them), which must stay finite in float16.
GRAD_X_MAX = {"float64": 2.0**20, "float32": 2.0**20, "float16": 2.0**5, "bfloat16": 2.0**5}


def activation_x(rng: np.random.Generator, B: int, T: int, d_in: int, x_scale: float) -> np.ndarray:
    """x [B, T, d_in]: heavy-tailed, sometimes low-rank, with repeated tokens and outlier channels;
    the non-outlier channels at about x_scale."""
    t = lambda shape: np.clip(rng.standard_t(TAIL_DF, shape) / np.sqrt(3.0), -TAIL_CLIP, TAIL_CLIP)  # noqa: E731
    if d_in > 1 and rng.random() < 0.4:  # low rank: r directions span every token
        r = int(rng.integers(1, min(4, d_in - 1) + 1))
        x = t((B, T, r)) @ rng.standard_normal((r, d_in)) / np.sqrt(r)  # (B, T, d_in)
    else:
        x = t((B, T, d_in))
    if T > 1 and rng.random() < 0.6:  # repeated tokens: copies of a few prototypes, moved a little
        n_proto = int(rng.integers(1, max(1, T // 4) + 1))
        protos = rng.integers(0, T, n_proto)
        copies = rng.random((B, T)) < rng.uniform(0.3, 0.9)
        src = protos[rng.integers(0, n_proto, (B, T))]  # (B, T): which prototype each token copies
        near = x[np.arange(B)[:, None], src] * (1 + 1e-3 * rng.standard_normal((B, T, d_in)))
        x = np.where(copies[..., None], near, x)
    n_out = int(rng.integers(1, max(1, d_in // 16) + 1)) if d_in > 1 else 0
    channels = rng.choice(d_in, n_out, replace=False)
    factors = np.exp(rng.uniform(*np.log(OUTLIER_RANGE), n_out))
    x[..., channels] *= factors  # a few channels 100 to 1000 times the rest
    return x * x_scale


def _heads_scaled(rng: np.random.Generator, W: np.ndarray, n_heads: int) -> np.ndarray:
    """W [n_heads * head_dim, d_in] with one to n_heads // 4 heads' rows times a large factor."""
    hd = W.shape[0] // n_heads
    big = rng.choice(n_heads, int(rng.integers(1, max(1, n_heads // 4) + 1)), replace=False)
    rows = np.ones(n_heads)
    rows[big] = np.exp(rng.uniform(*np.log(LARGE_HEAD_RANGE), big.size))
    return W * np.repeat(rows, hd)[:, None]


def activation_params(rng: np.random.Generator, config: AttentionConfig) -> Params:
    """Weights and biases of std WEIGHT_STD, a few query, K/V and output heads larger."""
    d_in, d_out, d_kv, H, Hkv = config.d_in, config.d_out, config.d_kv, config.n_heads, config.kv_heads
    n = lambda *shape: WEIGHT_STD * rng.standard_normal(shape)  # noqa: E731
    W_q = _heads_scaled(rng, n(d_out, d_in), H)
    W_k = _heads_scaled(rng, n(d_kv, d_in), Hkv)
    W_v = _heads_scaled(rng, n(d_kv, d_in), Hkv)
    W_o = n(d_out, d_out)
    if not config.qkv_bias:
        return Params(W_q, W_k, W_v, W_o, n(d_out))
    return Params(W_q, W_k, W_v, W_o, n(d_out), n(d_out), n(d_kv), n(d_kv))


def score_bound(x: np.ndarray, params: Params, config: AttentionConfig) -> float:
    """An upper bound on |score| (Cauchy-Schwarz per head: max |q| times max |k| times the scale):
    O(B T d), where the scores themselves cost O(B T^2 d)."""
    B, T, d_in = x.shape
    hd, g = config.head_dim, config.group
    x2 = np.ascontiguousarray(x.reshape(B * T, d_in))  # (B*T, d_in): one 2-D GEMM, not B batched ones
    q = x2 @ params.W_q.T + (0 if params.b_q is None else params.b_q)  # (B*T, d_out)
    k = x2 @ params.W_k.T + (0 if params.b_k is None else params.b_k)  # (B*T, d_kv)
    qn = np.linalg.norm(q.reshape(B * T, config.n_heads, hd), axis=-1).max(axis=0, initial=0.0)  # (H,)
    kn = np.linalg.norm(k.reshape(B * T, config.kv_heads, hd), axis=-1).max(axis=0, initial=0.0)  # (Hkv,)
    return float(np.max(qn * np.repeat(kn, g), initial=0.0)) / np.sqrt(hd)


def activation_values(config: AttentionConfig, B: int, T: int, dtype: str, seed: int, x_scale: float,
                      grads: bool = False) -> tuple[np.random.Generator, np.ndarray, Params]:
    """(rng, x, params) in float64, not yet rounded: `_values`'s activation-like counterpart.
    `grads`: bound x for a backward (GRAD_X_MAX) rather than a forward (X_MAX)."""
    rng = np.random.default_rng(seed)
    x = activation_x(rng, B, T, config.d_in, x_scale)
    peak = float(np.max(np.abs(x), initial=0.0))
    top = (GRAD_X_MAX if grads else X_MAX)[dtype]
    if peak > top:
        x = x * (top / peak)
    params = activation_params(rng, config)
    bound = score_bound(x, params, config)
    if bound > LOGIT_CAP[dtype]:  # scores are bilinear in W_q and W_k: split the factor
        f = np.sqrt(LOGIT_CAP[dtype] / bound)
        params = Params(**{**params.arrays(), "W_q": params.W_q * f, "W_k": params.W_k * f,
                           **({"b_q": params.b_q * f, "b_k": params.b_k * f} if config.qkv_bias else {})})
    return rng, x, params
