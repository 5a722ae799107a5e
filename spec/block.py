"""The whole block: the twelve steps composed, as the source document runs them, and its backward."""

from __future__ import annotations

import numpy as np

from spec import steps
from spec.backward import Grads
from spec.config import AttentionConfig
from spec.params import Params
from spec.table import STEPS, Trace, call_args, vjp_call_args


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


def _accumulate(cotangents: dict, name: str, value) -> None:
    # a value used twice gets the sum of its cotangents; the params' is a dict by field name
    if name not in cotangents:
        cotangents[name] = value
    elif isinstance(value, dict):
        old = cotangents[name]
        cotangents[name] = {**old, **{k: old[k] + v if k in old else v for k, v in value.items()}}
    else:
        cotangents[name] = cotangents[name] + value


def grads(
    x: np.ndarray,
    params: Params,
    config: AttentionConfig,
    grad_out: np.ndarray,
    key_padding_mask: np.ndarray | None = None,
    dropout_mask: np.ndarray | None = None,
) -> Grads:
    """The block's backward: the gradients of sum(grad_out * forward(x, ...)).

    grad_out [B, T, d_out] is the loss's gradient with respect to the output. Returns dx and
    dW_q, dW_k, dW_v, dW_o, db_o (and db_q, db_k, db_v when qkv_bias), in the dtype of x.
    Driven by the step table (spec/table.py): the forward trace is computed, then each step's
    VJP from 12 down to 4 maps its outputs' cotangents to its inputs'. Dropout is replayed with
    the same `dropout_mask` as the forward's.
    """
    trace = intermediates(x, params, config, key_padding_mask, dropout_mask)
    out = trace["out"]
    if getattr(grad_out, "shape", None) != out.shape:
        raise ValueError(f"grad_out must have the output's shape (B, T, d_out) = {out.shape}, "
                         f"got {getattr(grad_out, 'shape', None)}")
    cotangents: dict = {"out": np.asarray(grad_out).astype(trace["x"].dtype, copy=False)}
    for n in range(12, 3, -1):
        s = STEPS[n]
        for i in range(len(s.outputs) if s.per_tensor else 1):  # steps 5 and 6: Q, K, V in turn
            args, kw, names = vjp_call_args(n, trace, cotangents, config, key_padding_mask, tensor=i,
                                            dropout_mask=dropout_mask)
            result = s.vjp(*args, **kw)
            for name, value in zip(names, result if len(names) > 1 else (result,)):
                _accumulate(cotangents, name, value)
    return Grads.from_cotangents(cotangents["x"], cotangents["params"])


def sample_dropout_mask(shape: tuple[int, ...], p: float, seed: int = 0) -> np.ndarray:
    """A keep mask for inverted dropout: each entry True (kept) with probability 1 - p."""
    return np.random.default_rng(seed).random(shape) >= p
