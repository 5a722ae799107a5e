"""The whole block: the twelve steps composed, as the source document runs them, and its backward."""

from __future__ import annotations

import numpy as np

from spec import steps
from spec import backward as BW
from spec.backward import Grads
from spec.config import AttentionConfig
from spec.params import Params
from spec.scores import BiasArray
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
    mask is explicit so that any backend's dropout can be replayed exactly. The steps are
    written out in `qkv_heads` (1 to 6) and `attend` (7 to 12), split where a KV cache sits.
    """
    q, k, v = qkv_heads(x, params, config)                         # steps 1 to 6: (B, H, T, hd)
    return attend(q, k, v, params, config, key_padding_mask, dropout_mask)  # steps 7 to 12


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
    dW_q, dW_k, dW_v, dW_o, db_o (and db_q, db_k, db_v when qkv_bias; dsinks [H] when config.sinks;
    dbias in the bias array's shape when config.bias is one),
    in the dtype of x.
    Driven by the step table (spec/table.py): the forward trace is computed, then each step's
    VJP from 12 down to 4 maps its outputs' cotangents to its inputs'. Dropout is replayed with
    the same `dropout_mask` as the forward's.
    """
    cotangents = backward_trace(x, params, config, grad_out, key_padding_mask, dropout_mask)
    return Grads.from_cotangents(cotangents["x"], cotangents["params"], cotangents.get("sinks"),
                                 cotangents.get("bias"))


def backward_trace(
    x: np.ndarray,
    params: Params,
    config: AttentionConfig,
    grad_out: np.ndarray,
    key_padding_mask: np.ndarray | None = None,
    dropout_mask: np.ndarray | None = None,
) -> dict:
    """Every trace entry's cotangent by name (`cot["attn_scores"]`, `cot["params"]` a dict by
    field name, `cot["sinks"]` the sink logits' when config.sinks, `cot["bias"]` a bias array's), as `grads` computes them: what
    the backward's step-by-step checks compare."""
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
        if n == 8 and config.sinks is not None:  # the sinks live in the config: their VJP beside step 8's
            cotangents["sinks"] = BW.sinks_vjp(cotangents["attn_weights"], trace["attn_scores"], config,
                                               key_padding_mask, dropout_mask)
        if n == 8 and isinstance(config.bias, BiasArray):  # a bias array's gradient, in its shape
            cotangents["bias"] = BW.bias_vjp(cotangents["attn_weights"], trace["attn_scores"], config,
                                             key_padding_mask, dropout_mask)
    return cotangents


def sample_dropout_mask(shape: tuple[int, ...], p: float, seed: int = 0) -> np.ndarray:
    """A keep mask for inverted dropout: each entry True (kept) with probability 1 - p."""
    return np.random.default_rng(seed).random(shape) >= p


# -- Queries apart from keys and values (Tq <= Tk): the block as KV-cache decoding runs it ----
# forward(x) is attend(*qkv_heads(x, params, config), params, config): the same steps, split
# where a cache sits between them. spec/cache.py keeps k and v between calls.

def qkv_heads(
    x: np.ndarray, params: Params, config: AttentionConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1 to 6 on x [B, T, d_in]: q [B, H, T, head_dim], k, v [B, Hkv, T, head_dim]."""
    x = steps.input_matrix(x, config)                              # step 1
    H = config.n_heads
    steps.head_dim(config.d_out, H)                                # step 2
    params.check(config)                                           # step 3 (given)
    Q, K, V = steps.project_qkv(x, params)                         # step 4: (B, T, d_out), K, V d_kv
    Hkv = config.kv_heads                                        # K and V have their own heads
    Q, K, V = steps.split_heads(Q, H), steps.split_heads(K, Hkv), steps.split_heads(V, Hkv)  # step 5
    q, k, v = (steps.group_by_heads(a) for a in (Q, K, V))         # step 6: (B, H or Hkv, T, hd)
    return q, k, v


def attend(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    params: Params,
    config: AttentionConfig,
    key_padding_mask: np.ndarray | None = None,
    dropout_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Steps 7 to 12 for Tq queries over Tk >= Tq keys and values: -> output [B, Tq, d_out].

    q [B, H, Tq, head_dim] are the heads of the last Tq tokens; k, v [B, Hkv, Tk, head_dim] those
    of all Tk tokens, the queries' own included (steps 7 and 9 repeat them over each group). The causal mask is aligned bottom-right:
    query i is token Tk - Tq + i and sees keys j <= Tk - Tq + i. key_padding_mask [B, Tk]
    (True = may attend) covers all Tk keys; dropout_mask is [B, H, Tq, Tk].
    """
    _check_heads(q, k, v, config)
    params.check(config)
    attn_scores = steps.attn_scores(q, k)                          # step 7: (B, H, Tq, Tk), k repeated per group
    attn_weights = steps.attn_weights(attn_scores, config, key_padding_mask, dropout_mask)  # step 8
    context = steps.context(attn_weights, v)                       # step 9: (B, H, Tq, hd), v repeated per group
    context = steps.permute_back(context)                          # step 10: (B, Tq, H, hd)
    context = steps.concat_heads(context)                          # step 11: (B, Tq, d_out)
    return steps.out_proj(context, params)                         # step 12: (B, Tq, d_out)


def _check_heads(q: np.ndarray, k: np.ndarray, v: np.ndarray, config: AttentionConfig) -> None:
    """ValueError naming the bad shape or dtype unless q, k, v are heads for config, Tq <= Tk."""
    hd = config.head_dim
    for name, a, H in (("q", q, config.n_heads), ("k", k, config.kv_heads), ("v", v, config.kv_heads)):
        sym = "H" if name == "q" else "n_kv_heads"
        if getattr(a, "ndim", None) != 4 or a.shape[1:2] + a.shape[3:] != (H, hd):
            raise ValueError(f"{name} must have shape (B, {sym}={H}, T, head_dim={hd}), got "
                             f"{getattr(a, 'shape', type(a).__name__)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got k {k.shape} and v {v.shape}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q has batch size B={q.shape[0]} but k and v have B={k.shape[0]}")
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"more queries than keys: Tq={q.shape[2]} > Tk={k.shape[2]}; "
                         f"the queries are the last Tq of the Tk tokens, so Tq <= Tk")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
