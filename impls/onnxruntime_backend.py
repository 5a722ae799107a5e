"""ONNX Runtime as a backend: the standard ONNX `Attention` operator (opset 23) on the CPU.

A real peer: the graph, built with `onnx.helper`, is the whole block, MatMul (+ Add) for the
Q, K, V projections, one `Attention` node with `q_num_heads = H` and `kv_num_heads =
n_kv_heads` on the [B, T, d_out] and [B, T, d_kv] projections (the operator splits and merges
the heads itself, and groups query head h with K/V head h // group, the spec's consecutive
groups: measured by the semantic profile), then MatMul +
Add for the output projection. Weights are graph inputs, so one session per (dtype, heads,
options) serves every shape and every weight draw (dimensions are symbolic).

How the spec's decisions are expressed with the operator's own options:
- key padding mask: a boolean `attn_mask` has True = take part (the spec's polarity); the
  [B, Tk] mask is expanded to [B, 1, Tq, Tk] inside the graph (the operator's definition lets
  it broadcast from [B, 1, 1, Tk], but ONNX Runtime 1.32 refuses a query dimension of 1:
  "inconsistent q_sequence_length (between attn_mask and Q)");
- causal: the `is_causal` attribute. The suite's forward has Tq == Tk, where top-left and
  bottom-right alignment agree; the semantic profile shows how it aligns when Tq < Tk;
- scale: the operator's default, 1/sqrt(head_dim);
- softcap: the operator's `softcap` attribute, applied to the scaled scores before the mask is
  added (the operator's definition and the spec's order; the semantic profile measures it on
  ONNX Runtime itself). One session per cap value (an attribute is fixed in the graph). No
  sliding window: the operator has no window attribute;
- score bias (ALiBi or a bias array): a float `attn_mask` instead of the boolean one, the bias
  (rounded once to the dtype) where a key may be seen and -inf where causal, the window or padding
  masks it, with `is_causal` 0. The operator adds it after the softcap (its definition; measured on
  ONNX Runtime 1.32: the spec's order, so bias and softcap are declared together);
- sinks: Attention-23 (and 24, 25) has no sink input. The graph appends one more key and value of
  zeros (the input `kv0`), and the float mask's column for it holds the sink logit: its score is
  the logit, it joins the denominator and adds nothing to the context (as torch-sdpa);
- a query with no attendable key: ONNX Runtime returns a zero context, as the spec says
  (measured by the semantic profile), so nothing is corrected; a float mask row of -inf only gives
  zeros too (the operator's definition, measured).

dtypes: float64, float32 and float16. ONNX Runtime 1.32's CPU provider has no bfloat16
kernel for the nodes the operator expands into ("Could not find an implementation for
Expand(13)"), so bfloat16 is not declared. No dropout: the operator has none.
Threads: `SessionOptions.intra_op_num_threads` follows OMP_NUM_THREADS (which ONNX Runtime
itself ignores; the suite sets it to 1 per worker), inter-op 1, sequential execution.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from impls.base import Backend, Capabilities, library_versions
from impls.jax_backend import PEERS_SWITCH
from spec.config import AttentionConfig, dtype_name, numpy_dtype
from spec.params import Params

ORT_PINS = "onnx==1.23.2 onnxruntime==1.32.0"
ORT_DTYPES = ("float64", "float32", "float16")
OPSET = 23


def ort_missing() -> str | None:
    """Why onnx and onnxruntime cannot be used here, or None when both import."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        return f"onnxruntime is not installed: {e} ({PEERS_SWITCH}, or pip install {ORT_PINS})"
    return None


def session_options() -> Any:
    """One intra-op thread per worker when the suite asks for it; quiet logs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)  # 0: ORT's default
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only: symbolic output shapes make ORT warn on every run
    return so


def elem_type(dtype: str) -> int:
    from onnx import TensorProto

    return {"float64": TensorProto.DOUBLE, "float32": TensorProto.FLOAT,
            "float16": TensorProto.FLOAT16, "bfloat16": TensorProto.BFLOAT16}[dtype]


def attention_graph(dtype: str, n_heads: int, causal: bool, qkv_bias: bool, mask: bool,
                    n_kv_heads: int | None = None, softcap: float | None = None, float_mask: bool = False,
                    sink: bool = False) -> bytes:
    """The block as a serialized ONNX model: inputs x, W_q^T, W_k^T, W_v^T, W_o^T, b_o (+ biases, mask).

    float_mask: the attn_mask is the float input `fmask` [b, H, Tq, Tk (+ 1)] (the bias, -inf where
    masked: `OnnxRuntimeBackend.float_mask`), is_causal 0 (the causal part is in fmask), no `kpm`.
    sink: K and V get one more key, the zeros of the input `kv0` [B, 1, d_kv] (fmask's last column is
    the sink logit)."""
    from onnx import TensorProto, helper

    t = elem_type(dtype)
    vi = helper.make_tensor_value_info
    inputs = [vi("x", t, ["B", "T", "d_in"])]
    inputs += [vi(f"W_{n}T", t, ["d_in", "d_out" if n == "q" else "d_kv"]) for n in "qkv"]
    inputs += [vi("W_oT", t, ["d_out", "d_out"]), vi("b_o", t, ["d_out"])]
    nodes = []
    for n in "qkv":  # q (B, T, d_out), k and v (B, T, d_kv)
        nodes.append(helper.make_node("MatMul", ["x", f"W_{n}T"], [f"{n}0" if qkv_bias else n]))
        if qkv_bias:
            inputs.append(vi(f"b_{n}", t, ["d_out" if n == "q" else "d_kv"]))
            nodes.append(helper.make_node("Add", [f"{n}0", f"b_{n}"], [n]))
    attn_in = ["q", "k", "v"]
    if sink:  # the sink key: k = v = 0, one more position of the K/V sequence
        inputs.append(vi("kv0", t, ["B", 1, "d_kv"]))
        nodes += [helper.make_node("Concat", [n, "kv0"], [f"{n}s"], axis=1) for n in "kv"]  # (B, T + 1, d_kv)
        attn_in = ["q", "ks", "vs"]
    if float_mask:
        inputs.append(vi("fmask", t, ["Bm", "Hm", "Tq", "Tk"]))
        attn_in.append("fmask")
    elif mask:
        inputs.append(vi("kpm", TensorProto.BOOL, ["B", "T"]))
        nodes.append(helper.make_node("Constant", [], ["axes"], value=helper.make_tensor(
            "axes", TensorProto.INT64, [2], [1, 2])))
        nodes.append(helper.make_node("Unsqueeze", ["kpm", "axes"], ["kpm4"]))  # (B, 1, 1, Tk)
        # ONNX Runtime wants the mask's query dimension to be Tq itself, not a broadcast 1
        nodes.append(helper.make_node("Shape", ["x"], ["B"], start=0, end=1))
        nodes.append(helper.make_node("Shape", ["x"], ["T"], start=1, end=2))
        nodes.append(helper.make_node("Constant", [], ["one"], value=helper.make_tensor(
            "one", TensorProto.INT64, [1], [1])))
        nodes.append(helper.make_node("Concat", ["B", "one", "T", "T"], ["shape4"], axis=0))
        nodes.append(helper.make_node("Expand", ["kpm4", "shape4"], ["attn_mask"]))  # (B, 1, Tq, Tk)
        attn_in.append("attn_mask")
    cap = {} if softcap is None else {"softcap": float(softcap)}  # the operator's 0 (default) is no cap
    nodes.append(helper.make_node("Attention", attn_in, ["ctx"], q_num_heads=n_heads, kv_num_heads=n_kv_heads or n_heads,
                                  is_causal=int(causal and not float_mask), **cap))  # (B, T, d_out)
    nodes.append(helper.make_node("MatMul", ["ctx", "W_oT"], ["y0"]))
    nodes.append(helper.make_node("Add", ["y0", "b_o"], ["y"]))  # (B, T, d_out)
    graph = helper.make_graph(nodes, "mha", inputs, [vi("y", t, ["B", "T", "d_out"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return model.SerializeToString()


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    capabilities = Capabilities(
        dtypes=ORT_DTYPES,
        device="cpu",
        key_padding_mask=True,
        qkv_bias=True,
        dropout="none",
        grouped_kv=True,  # kv_num_heads = n_kv_heads on the Attention node; K/V projections of d_kv columns
        softcap=True,  # the operator's softcap attribute: on the scaled scores, before the mask (the spec's order)
        bias=True,  # ALiBi or a bias array in a float attn_mask (-inf where masked), added after the softcap (measured)
        sinks=True,  # no sink input in Attention-23..25: one more key with k = v = 0, its float-mask column the sink logit
        notes="ONNX Attention operator (opset 23) on ONNX Runtime's CPU execution provider, one graph for "
              "the block; mask passed as is (its True = take part); no correction needed (fully masked "
              "rows already zero); no bfloat16 CPU kernel; the operator has no dropout; softcap as the "
              "operator's softcap attribute; no window attribute; ALiBi or a bias array in a float attn_mask (the bias, "
              "-inf where masked, is_causal 0); no sink input: sinks as one more key of zeros whose float-mask "
              "column is the sink logit.",
    )

    def __init__(self) -> None:
        self._sessions: dict[tuple, Any] = {}

    def availability(self) -> str | None:
        return ort_missing()

    def versions(self) -> dict[str, str]:
        return library_versions('onnxruntime', 'onnx')

    def check_dtype(self, dtype: str) -> None:
        if dtype not in self.capabilities.dtypes:
            raise ValueError(f"backend {self.name!r} does not compute in {dtype!r}; "
                             f"valid: {', '.join(self.capabilities.dtypes)}")

    def from_numpy(self, a: np.ndarray, dtype: str | None = None) -> np.ndarray:
        a = np.asarray(a)
        return np.array(a, dtype=numpy_dtype(dtype) if dtype else a.dtype)  # a copy, never shared

    def to_numpy(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a)

    def prepare(self, params: Params, dtype: str) -> dict[str, np.ndarray]:
        """Graph inputs, transposed and contiguous, in dtype."""
        self.check_dtype(dtype)
        feeds = {f"W_{n}T": np.ascontiguousarray(self.from_numpy(getattr(params, f"W_{n}"), dtype).T)
                 for n in "qkvo"}  # (in, out)
        feeds["b_o"] = self.from_numpy(params.b_o, dtype)
        if params.b_q is not None:
            feeds.update({f"b_{n}": self.from_numpy(getattr(params, f"b_{n}"), dtype) for n in "qkv"})
        return feeds

    def session(self, dtype: str, config: AttentionConfig, qkv_bias: bool, mask: bool) -> Any:
        import onnxruntime as ort

        float_mask, sink = config.bias is not None or config.sinks is not None, config.sinks is not None
        key = (dtype, config.n_heads, config.kv_heads, config.causal, qkv_bias, mask, config.softcap, float_mask, sink)
        if key not in self._sessions:
            model = attention_graph(dtype, config.n_heads, config.causal, qkv_bias, mask, config.kv_heads,
                                    config.softcap, float_mask, sink)
            self._sessions[key] = ort.InferenceSession(model, session_options(),
                                                       providers=["CPUExecutionProvider"])
        return self._sessions[key]

    def forward(self, x: np.ndarray, weights: dict[str, np.ndarray], config: AttentionConfig, *,
                key_padding_mask: Any = None, dropout_mask: Any = None,
                training: bool = False) -> np.ndarray:
        if dropout_mask is not None or (training and config.dropout_p > 0):
            raise ValueError(f"backend {self.name!r} has no dropout (the ONNX Attention operator has "
                             f"none); use training=False or dropout_p=0")
        if config.window is not None:  # never dropped silently (transformers #32309 dropped a softcap so)
            raise ValueError(f"backend {self.name!r} has no sliding window (window={config.window}): the ONNX "
                             f"Attention operator has no window attribute; valid: window=None")
        dtype = dtype_name(x.dtype)
        sess = self.session(dtype, config, "b_q" in weights, key_padding_mask is not None)
        feeds = {"x": x, **weights}
        if config.bias is not None or config.sinks is not None:
            feeds["fmask"] = self.float_mask(config, x.shape[1], key_padding_mask, dtype)
            if config.sinks is not None:
                feeds["kv0"] = np.zeros((x.shape[0], 1, weights["W_kT"].shape[1]), dtype=x.dtype)  # (B, 1, d_kv)
        elif key_padding_mask is not None:
            feeds["kpm"] = key_padding_mask
        return sess.run(["y"], feeds)[0]

    def float_mask(self, config: AttentionConfig, T: int, key_padding_mask: Any, dtype: str) -> np.ndarray:
        """The float attn_mask in dtype, [b, H, T, T] ([b, H, T, T + 1] with sinks, the sink logit last):
        the bias (ALiBi or an array, rounded to dtype once) and -inf where causal, padding or the window
        mask a key. A row with no visible key is all -inf: the operator gives it zeros (its definition,
        measured on ONNX Runtime 1.32), the spec's answer; with sinks the sink takes the whole row."""
        from impls import peer_scores as ps

        bias = ps.bias_4d(config, T, T)  # (b, H or 1, T or 1, T or 1), float64, or None
        ok = ps.allowed(config, T, T, key_padding_mask)  # (b, 1, T, T), with sinks (b, 1, T, T + 1): never masked
        if config.sinks is not None:
            bias = ps.with_sink_column(bias, config, T, T)  # (b, H, T, T + 1)
        b = np.zeros((), numpy_dtype(dtype)) if bias is None else bias.astype(numpy_dtype(dtype))
        # (b, H or 1, T, T (+ 1)): ok's last two axes are whole, as ONNX Runtime wants with 3-D Q/K/V (a bias's
        # [.., 1, Tk] or [.., Tq, 1] is refused there: "inconsistent q_sequence_length"); b and H may be 1
        fmask = np.where(ok, b, np.array(-np.inf, numpy_dtype(dtype)))
        return np.ascontiguousarray(fmask, dtype=numpy_dtype(dtype))
