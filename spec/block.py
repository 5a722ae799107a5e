"""The whole block: the twelve steps composed, as the source document runs them."""

from __future__ import annotations

import numpy as np

from spec import steps
from spec.config import AttentionConfig
from spec.params import Params
from spec.table import STEPS, Trace, call_args


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
    H = config.n_heads
    steps.head_dim(config.d_out, H)                                # step 2: ValueError unless H divides d_out
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
) -> Trace:
    """Every step's outputs as a named trace (`trace["attn_scores"]`, or `trace[7]` by step).

    Driven by the step table (spec/table.py): each step is called on the trace entries the
    table names as its inputs, and its outputs are stored under the names it gives them.
    """
    trace = Trace(x=steps.input_matrix(x, config), head_dim=steps.head_dim(config.d_out, config.n_heads),
                  params=params)
    for n in range(4, 13):
        s = STEPS[n]
        if s.per_tensor:  # steps 5 and 6 take Q, K and V one at a time
            for i, name in enumerate(s.outputs):
                args, kw = call_args(n, trace, config, key_padding_mask, tensor=i)
                trace[name] = s.fn(*args, **kw)
            continue
        args, kw = call_args(n, trace, config, key_padding_mask, dropout_mask=dropout_mask)
        out = s.fn(*args, **kw)
        for name, value in zip(s.outputs, out if len(s.outputs) > 1 else (out,)):
            trace[name] = value
    return trace


def sample_dropout_mask(shape: tuple[int, ...], p: float, seed: int = 0) -> np.ndarray:
    """A keep mask for inverted dropout: each entry True (kept) with probability 1 - p."""
    return np.random.default_rng(seed).random(shape) >= p
