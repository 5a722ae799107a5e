"""The step table: what each of the twelve steps is, in one place.

Every part of the project that needs to know a step reads this table: the spec's trace
(`spec.block.intermediates`), the shape contracts (`spec.shapes`), which steps a backend
exposes (`impls.base.exposed_steps`), how a step is called from the trace (first-wrong-step
localisation and the step checks, `call_args`), and the report's step titles. Adding a step
(or a step's backward, the `vjp` field, called from the trace by `vjp_call_args`) means adding
one record here and its function.

Each record names the step's inputs and outputs as entries of the trace, a dict from name to
value that `spec.block.intermediates` returns. Inputs that are not trace entries are the
run's givens: `n_heads`, `d_out` and `config` (from the AttentionConfig), and the optional
`key_padding_mask` and `dropout_mask`.
Shapes are written in the symbols B, Tq, Tk, H, head_dim, d_in, d_out (Tq = Tk = T in
self-attention), and Hkv, d_kv = Hkv * head_dim for the K/V heads (Hkv = H unless grouped).
Step 5 splits K and V into Hkv heads: `call_args` passes n_kv_heads as their `n_heads`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from spec import backward as BW
from spec import steps as S


@dataclass(frozen=True)
class Step:
    """One step: its number, function, title, named inputs and outputs, output shapes."""

    number: int
    name: str  # the function's name, here in spec.steps and on every backend exposing it
    title: str  # the source document's heading, shortened
    inputs: tuple[str, ...]  # trace names, or the givens n_heads / config / key_padding_mask
    outputs: tuple[str, ...]  # trace names of its outputs
    shapes: tuple[tuple[str, ...], ...]  # each output's shape, in symbols
    fn: Callable[..., Any]
    per_tensor: bool = False  # applied to each of Q, K, V in turn (steps 5 and 6)
    vjp: Callable[..., Any] | None = None  # its backward (spec/backward.py), steps 4 to 12

    @property
    def label(self) -> str:
        return f"step {self.number} ({self.name})"

    @property
    def grad_inputs(self) -> tuple[str, ...]:
        """The inputs the backward differentiates: every input that is not a given."""
        return tuple(name for name in self.inputs if name not in GIVENS)


#: Inputs that are the run's givens, not trace values: nothing is differentiated through them.
GIVENS = ("n_heads", "d_out", "config", "key_padding_mask", "dropout_mask")


_QKV = ("d_out", "d_in")
_KV = ("d_kv", "d_in")  # W_k, W_v: n_kv_heads * head_dim rows
_HEADS = ("B", "Tk", "Hkv", "head_dim")  # Q's is (B, Tq, H, head_dim); K's and V's have Tk, Hkv

#: The twelve steps, by number.
STEPS: dict[int, Step] = {s.number: s for s in (
    Step(1, "input_matrix", "input matrix", ("x", "config"), ("x",), (("B", "Tq", "d_in"),), S.input_matrix),
    Step(2, "head_dim", "d_out and n_heads", ("d_out", "n_heads"), ("head_dim",), ((),), S.head_dim),
    Step(3, "init_params", "Q/K/V weights (init)", ("config",), ("params",),
         (_QKV, _KV, _KV, ("d_out", "d_out"), ("d_out",)), S.init_params),
    Step(4, "project_qkv", "projection", ("x", "params"), ("Q", "K", "V"),
         (("B", "Tq", "d_out"), ("B", "Tk", "d_kv"), ("B", "Tk", "d_kv")), S.project_qkv,
         vjp=BW.project_qkv_vjp),
    Step(5, "split_heads", "split into heads", ("Q", "n_heads"), ("Q_split", "K_split", "V_split"),
         (("B", "Tq", "H", "head_dim"), _HEADS, _HEADS), S.split_heads, per_tensor=True, vjp=BW.split_heads_vjp),
    Step(6, "group_by_heads", "permute (group by heads)", ("Q_split",), ("q", "k", "v"),
         (("B", "H", "Tq", "head_dim"), ("B", "Hkv", "Tk", "head_dim"), ("B", "Hkv", "Tk", "head_dim")),
         S.group_by_heads, per_tensor=True, vjp=BW.group_by_heads_vjp),
    Step(7, "attn_scores", "attention scores", ("q", "k"), ("attn_scores",), (("B", "H", "Tq", "Tk"),),
         S.attn_scores, vjp=BW.attn_scores_vjp),
    Step(8, "attn_weights", "scale + softcap + mask + softmax (+ dropout)",
         ("attn_scores", "config", "key_padding_mask", "dropout_mask"),
         ("attn_weights",), (("B", "H", "Tq", "Tk"),), S.attn_weights, vjp=BW.attn_weights_vjp),
    Step(9, "context", "context vectors", ("attn_weights", "v"), ("context",), (("B", "H", "Tq", "head_dim"),),
         S.context, vjp=BW.context_vjp),
    Step(10, "permute_back", "permute back", ("context",), ("context_tokens",), (("B", "Tq", "H", "head_dim"),),
         S.permute_back, vjp=BW.permute_back_vjp),
    Step(11, "concat_heads", "concatenate heads", ("context_tokens",), ("context_concat",),
         (("B", "Tq", "d_out"),), S.concat_heads, vjp=BW.concat_heads_vjp),
    Step(12, "out_proj", "output projection", ("context_concat", "params"), ("out",), (("B", "Tq", "d_out"),),
         S.out_proj, vjp=BW.out_proj_vjp),
)}


def step(n: int) -> Step:
    """The record of step n; a ValueError naming the valid numbers otherwise."""
    if n not in STEPS:
        raise ValueError(f"step must be one of {min(STEPS)}..{max(STEPS)}, got {n!r}")
    return STEPS[n]


def call_args(n: int, trace: dict[str, Any], config: Any, key_padding_mask: Any = None,
              weights: Any = None, tensor: int = 0,
              dropout_mask: Any = None) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """(args, kwargs) that call step n on the trace's values, as the spec's function takes them.

    `weights` replaces the trace's params (a backend's prepared weights); `tensor` picks which
    of Q, K, V a per-tensor step (5, 6) gets. Missing optional masks are left out of kwargs.
    """
    s = step(n)
    # step 5 splits K and V (tensor 1, 2) into their n_kv_heads heads, Q into n_heads
    heads = config.kv_heads if s.per_tensor and tensor > 0 else config.n_heads
    given = {"n_heads": heads, "config": config, "d_out": config.d_out}
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    optional = {"key_padding_mask": key_padding_mask, "dropout_mask": dropout_mask}
    for i, name in enumerate(s.inputs):
        if name in optional:
            if optional[name] is not None:
                kwargs[name] = optional[name]
        elif name in given:
            args.append(given[name])
        elif name == "params" and weights is not None:
            args.append(weights)
        elif s.per_tensor and i == 0:
            args.append(trace[step(n - 1).outputs[tensor]])
        else:
            args.append(trace[name])
    return tuple(args), kwargs


def vjp_call_args(n: int, trace: dict[str, Any], cotangents: dict[str, Any], config: Any,
                  key_padding_mask: Any = None, tensor: int = 0,
                  dropout_mask: Any = None) -> tuple[tuple[Any, ...], dict[str, Any], tuple[str, ...]]:
    """(args, kwargs, names) that call step n's VJP: the cotangents of its outputs, then the
    forward's own arguments (`call_args`); `names` are the trace names its results are
    cotangents of. A per-tensor step (5, 6) handles the Q, K or V that `tensor` picks.
    """
    s = step(n)
    args, kwargs = call_args(n, trace, config, key_padding_mask, tensor=tensor, dropout_mask=dropout_mask)
    if s.per_tensor:
        outs, names = (s.outputs[tensor],), (step(n - 1).outputs[tensor],)
    else:
        outs, names = s.outputs, s.grad_inputs
    return tuple(cotangents[k] for k in outs) + args, kwargs, names


class Trace(dict):
    """Every step's outputs by trace name; `trace[n]` is step n's output (a tuple if several)."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int):
            names = step(key).outputs
            return dict.__getitem__(self, names[0]) if len(names) == 1 else \
                tuple(dict.__getitem__(self, k) for k in names)
        return dict.__getitem__(self, key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, int):
            return key in STEPS and all(dict.__contains__(self, k) for k in STEPS[key].outputs)
        return dict.__contains__(self, key)
