"""The whole block: the twelve steps composed, as the source document runs them."""

from __future__ import annotations

import numpy as np

from spec import steps
from spec.config import AttentionConfig
from spec.params import Params


def forward(
    x: np.ndarray,
    params: Params,
    config: AttentionConfig,
    key_padding_mask: np.ndarray | None = None,
    dropout_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Multi-head self-attention, steps 1 to 12: x [B, T, d_in] -> output [B, T, d_out].

    Eval mode (no dropout) unless `dropout_mask` [B, H, T, T] (True = kept) is given; the
    mask is explicit so that any backend's dropout can be replayed exactly.
    """
    x = steps.input_matrix(x, config)                              # step 1
    H = config.n_heads                                             # step 2
    params.check(config)                                           # step 3 (given)
    Q, K, V = steps.project_qkv(x, params)                         # step 4: (B, T, d_out)
    Q, K, V = (steps.split_heads(a, H) for a in (Q, K, V))         # step 5: (B, T, H, hd)
    Q, K, V = (steps.group_by_heads(a) for a in (Q, K, V))         # step 6: (B, H, T, hd)
    attn_scores = steps.attn_scores(Q, K)                          # step 7: (B, H, T, T)
    attn_weights = steps.attn_weights(attn_scores, config, key_padding_mask, dropout_mask)  # step 8
    context = steps.context(attn_weights, V)                       # step 9: (B, H, T, hd)
    context = steps.permute_back(context)                          # step 10: (B, T, H, hd)
    context = steps.concat_heads(context)                          # step 11: (B, T, d_out)
    return steps.out_proj(context, params)                         # step 12: (B, T, d_out)


def intermediates(
    x: np.ndarray,
    params: Params,
    config: AttentionConfig,
    key_padding_mask: np.ndarray | None = None,
    dropout_mask: np.ndarray | None = None,
) -> dict[int, object]:
    """Every step's output, by step number, for step-by-step comparison with a backend."""
    H = config.n_heads
    out: dict[int, object] = {1: steps.input_matrix(x, config), 2: config.head_dim, 3: params}
    out[4] = steps.project_qkv(x, params)
    out[5] = tuple(steps.split_heads(a, H) for a in out[4])
    out[6] = tuple(steps.group_by_heads(a) for a in out[5])
    Q, K, V = out[6]
    out[7] = steps.attn_scores(Q, K)
    out[8] = steps.attn_weights(out[7], config, key_padding_mask, dropout_mask)
    out[9] = steps.context(out[8], V)
    out[10] = steps.permute_back(out[9])
    out[11] = steps.concat_heads(out[10])
    out[12] = steps.out_proj(out[11], params)
    return out


def sample_dropout_mask(shape: tuple[int, ...], p: float, seed: int = 0) -> np.ndarray:
    """A keep mask for inverted dropout: each entry True (kept) with probability 1 - p."""
    return np.random.default_rng(seed).random(shape) >= p
