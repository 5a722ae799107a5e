"""The peers' attention as each library ships it, for the semantic-profile probes: JAX's
`dot_product_attention`, flax's `nnx.MultiHeadAttention` and the ONNX `Attention` operator on
ONNX Runtime, with the interface of `libraries.py` (its docstring says it). Frameworks are
imported inside methods only.

Score modifiers (`attend_modified`, `no_modifier`): JAX takes a window as `local_window_size`
and no softcap; the ONNX operator a `softcap` attribute and no window; flax's module neither
(its signature is read, as SDPA's is). Score terms (`float_bias`, `no_bias`; sinks through
`no_modifier("sink")`): JAX takes a float bias as `bias=`, the ONNX operator as a float
`attn_mask`; flax's module call takes neither; none of the three has a sink argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.semantics.invariance import LaysOut
from conformance.semantics.raw_common import _differs, _no_argument, _no_kv_heads_argument, version
from spec.config import numpy_dtype


class Jax(LaysOut):
    name, dist = "jax", "jax"
    library = property(lambda self: f"jax {version('jax')}: jax.nn.dot_product_attention")

    def missing(self) -> str | None:
        from impls.jax_backend import jax_missing

        return jax_missing()

    def _j(self, a, dtype):
        import jax.numpy as jnp

        return self._laid(a.astype(numpy_dtype(dtype)), jnp.asarray)  # JAX arrays have no strides: the profile says so

    def _run(self, q, k, v, mask=None, causal=False, dtype="float32", jit=False, **kw):
        import jax

        from impls.jax_backend import x64

        f = jax.jit(jax.nn.dot_product_attention, static_argnames=("is_causal",)) if jit else jax.nn.dot_product_attention
        with x64(dtype):
            q, k, v = (self._j(a.transpose(0, 2, 1, 3), dtype) for a in (q, k, v))  # (B, T, H, hd): BTNH
            m = None if mask is None else jax.numpy.asarray(mask)[:, None, None, :]  # (B, 1, 1, Tk)
            return np.asarray(f(q, k, v, mask=m, is_causal=causal, **kw)).transpose(0, 2, 1, 3)

    def attend(self, q, k, v, *, mask=None, causal=False, dtype="float32"):
        return self._run(q, k, v, mask, causal, dtype)

    def attend_grouped(self, q, k, v):
        return self._run(q, k, v)  # K, V (B, Tk, Hkv, hd): fewer heads in the N axis

    def output_dtype(self, q, k, v, dtype):
        return str(self._run(q, k, v, dtype=dtype).dtype)

    def no_modifier(self, kind: str) -> str | None:
        import jax

        return _no_argument(jax.nn.dot_product_attention, "jax.nn.dot_product_attention", kind)

    def float_bias(self, q, k, v, bias):
        """bias [B, H, Tq, Tk] float32 added to the scaled scores: dot_product_attention's bias=."""
        return self._run(q, k, v, bias=np.asarray(bias, dtype=np.float32))

    float_bias_how = "dot_product_attention's bias= of -1e9 on every key"

    def attend_modified(self, q, k, v, *, window=None, softcap=None, mask=None):
        """A window of `window` keys back: local_window_size=(window, 0) with is_causal, float64."""
        if softcap is not None:
            raise TypeError(self.no_modifier("softcap"))
        return self._run(q, k, v, mask, causal=window is not None, dtype="float64",
                         local_window_size=None if window is None else (window, 0))

    def dtype_notes(self) -> list[str]:
        from conformance.semantics.probes import _error, inputs

        notes = []
        for dtype in ("float16", "bfloat16"):
            for T, hd in ((3, 4), (1, 1)):  # XLA's CPU compiler fails bfloat16 at T = head_dim = 1 only
                try:
                    self._run(*inputs(1, 1, T, T, hd, seed=8), dtype=dtype, jit=True)
                except Exception as e:
                    notes.append((f"{dtype} fails under jit", f"{dtype} under jax.jit, T={T}, head_dim={hd}: {_error(e)}"))
                    break
        return notes

    def dropout(self) -> tuple[str, str]:
        from conformance.semantics.probes import _error, inputs

        q, k, v = inputs(1, 1, 3, 3, 4, seed=7)
        try:
            self._run(q, k, v, dropout_rate=0.5)
        except TypeError as e:
            return "none", f"no dropout argument: {_error(e)}"
        return "accepted", "a dropout_rate argument was accepted"


class Flax(Jax):
    """nnx.MultiHeadAttention with identity kernels and no biases: its output is the context."""

    name, dist = "flax", "flax"
    library = property(lambda self: f"flax {version('flax')}: flax.nnx.MultiHeadAttention")

    def __init__(self) -> None:
        self._modules: dict[tuple, Any] = {}

    def missing(self) -> str | None:
        from impls.flax_backend import FLAX_PINS
        from impls.jax_backend import jax_missing

        return jax_missing(FLAX_PINS, "flax")

    float_bias = None  # the module's call takes no bias: `no_bias`

    def no_bias(self) -> str | None:
        """None when nnx.MultiHeadAttention.__call__ takes a score bias, else the reason (its signature)."""
        import inspect

        from flax import nnx

        names = list(inspect.signature(nnx.MultiHeadAttention.__call__).parameters)[1:]
        if "bias" in names:
            return None
        return (f"nnx.MultiHeadAttention.__call__ has no bias argument (a boolean mask only; use_bias and bias_init "
                f"are the projections'); its arguments: {', '.join(names)}")

    def no_modifier(self, kind: str) -> str | None:
        from flax import nnx

        init = _no_argument(nnx.MultiHeadAttention.__init__, "nnx.MultiHeadAttention", kind)
        call = _no_argument(nnx.MultiHeadAttention.__call__, "nnx.MultiHeadAttention.__call__", kind)
        return None if init is None or call is None else f"{init}; {call}"

    def cannot_group(self) -> str | None:
        from flax import nnx

        return _no_kv_heads_argument(nnx.MultiHeadAttention, "nnx.MultiHeadAttention",
                                     "its key and value projections have num_heads heads, as the query's")

    def _run(self, q, k, v, mask=None, causal=False, dtype="float32", jit=False, p=0.0, train=False):
        import jax.numpy as jnp
        from flax import nnx

        from impls.jax_backend import x64

        B, H, Tq, hd = q.shape
        Hkv = k.shape[1]  # fewer than H: grouped K/V heads (num_kv_heads)
        E, Ekv = H * hd, Hkv * hd
        with x64(dtype):
            jdt = jnp.dtype(numpy_dtype(dtype))
            key = (H, Hkv, hd, dtype, p)  # one module per setting: its dropout stream advances per call
            if key not in self._modules:
                grouped = {} if Hkv == H else {"num_kv_heads": Hkv, "in_kv_features": Ekv}
                mha = nnx.MultiHeadAttention(num_heads=H, in_features=E, dtype=jdt, param_dtype=jdt, use_bias=False,
                                             dropout_rate=p, decode=False, rngs=nnx.Rngs(0), **grouped)
                eye = jnp.eye(E, dtype=jdt)
                mha.query.kernel[...] = eye.reshape(E, H, hd)  # (E, H, hd): identity
                for lin in (mha.key, mha.value):
                    lin.kernel[...] = jnp.eye(Ekv, dtype=jdt).reshape(Ekv, Hkv, hd)  # (Ekv, Hkv, hd): identity
                mha.out.kernel[...] = eye.reshape(H, hd, E)  # (H, hd, E): identity
                self._modules[key] = mha
            mha = self._modules[key]
            x = {id(a): self._j(a.transpose(0, 2, 1, 3).reshape(B, a.shape[2], a.shape[1] * hd), dtype)
                 for a in (q, k, v)}
            m = None if mask is None else jnp.asarray(mask)[:, None, None, :]  # (B, 1, 1, Tk)
            call = nnx.jit(lambda mod, *a, **kw: mod(*a, **kw), static_argnames=("is_causal", "deterministic")) \
                if jit else (lambda mod, *a, **kw: mod(*a, **kw))
            out = call(mha, x[id(q)], x[id(k)], x[id(v)], mask=m, is_causal=causal, deterministic=not train)
            return np.asarray(out).reshape(B, Tq, H, hd).transpose(0, 2, 1, 3)  # (B, H, Tq, hd)

    def dropout(self) -> tuple[str, str]:
        import jax
        from flax.nnx.nn.attention import dot_product_attention_weights

        from conformance.semantics.probes import inputs

        q, k, v = inputs(1, 2, 8, 8, 4, seed=7)
        a, b = (self._run(q, k, v, p=0.5, train=True) for _ in range(2))
        qk = np.random.default_rng(9).standard_normal((2, 8, 2, 4)).astype(np.float32)  # (B, T, H, hd)
        w = np.asarray(dot_product_attention_weights(qk, qk, dropout_rng=jax.random.key(0), dropout_rate=0.5,
                                                         deterministic=False))  # (B, H, T, T): flax's defaults
        shared = bool((w == 0).all(axis=(0, 1)).any() and ((w == 0) == (w[:1, :1] == 0)).all())
        return ("own RNG" if _differs(a, b) else "not random",
                "dropout_rate with an nnx.Rngs stream (a new draw per call); no keep-mask argument; "
                + ("by default one mask is shared by every batch row and head (broadcast_dropout=True)"
                   if shared else "masks differ across batch rows and heads by default"))


class OnnxRuntime(LaysOut):
    """A graph holding one standard ONNX Attention node (opset 23), run on the CPU provider."""

    name, dist = "onnxruntime", "onnxruntime"
    library = property(lambda self: f"onnxruntime {version('onnxruntime')}, onnx {version('onnx')}: "
                                    f"ONNX Attention (opset 23), CPU execution provider")

    def missing(self) -> str | None:
        from impls.onnxruntime_backend import ort_missing

        return ort_missing()

    def _run(self, q, k, v, mask=None, causal=False, dtype="float32", fmask=None, **attrs):
        """mask: bool [B, Tk] (True = take part); fmask: a float attn_mask [B, H, Tq, Tk] instead."""
        import onnxruntime as ort
        from onnx import TensorProto, helper

        from impls.onnxruntime_backend import OPSET, elem_type, session_options

        t, vi = elem_type(dtype), helper.make_tensor_value_info
        names = ["Q", "K", "V"] + ([] if mask is None and fmask is None else ["M"])
        ins = [vi(n, t, None) for n in names[:3]] + [vi("M", TensorProto.BOOL if fmask is None else t, None)] * (len(names) > 3)
        node = helper.make_node("Attention", names, ["Y"], is_causal=int(causal), **attrs)
        model = helper.make_model(helper.make_graph([node], "probe", ins, [vi("Y", t, None)]),
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        sess = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
        feeds = {n: self._laid(a.astype(numpy_dtype(dtype)), lambda a: a, ort.OrtValue.ortvalue_from_numpy)
                 for n, a in zip("QKV", (q, k, v))}  # (B, H, T, hd); the layout's strides read from an OrtValue
        if mask is not None:  # (B, 1, Tq, Tk): ONNX Runtime refuses a broadcast query dimension
            feeds["M"] = np.ascontiguousarray(np.broadcast_to(mask[:, None, None, :], (q.shape[0], 1, q.shape[2], k.shape[2])))
        if fmask is not None:
            feeds["M"] = np.ascontiguousarray(fmask, dtype=numpy_dtype(dtype))
        return sess.run(["Y"], feeds)[0]

    def float_bias(self, q, k, v, bias):
        """bias [B, H, Tq, Tk] float32 added to the scaled scores: the operator's float attn_mask."""
        return self._run(q, k, v, fmask=bias)

    float_bias_how = "a float attn_mask of -1e9 on every key"

    def attend(self, q, k, v, *, mask=None, causal=False, dtype="float32"):
        return self._run(q, k, v, mask, causal, dtype)

    def attend_grouped(self, q, k, v):
        return self._run(q, k, v)  # 4-D K, V (B, Hkv, Tk, hd): the operator reads kv_num_heads from them

    def output_dtype(self, q, k, v, dtype):
        return str(self._run(q, k, v, dtype=dtype).dtype)

    def no_modifier(self, kind: str) -> str | None:
        """None when the operator's schema has an attribute or input naming the modifier, else the reason."""
        from onnx import defs

        s = defs.get_schema("Attention", 23, "")
        names = [i.name for i in s.inputs] + list(s.attributes)
        if any(kind in n.lower() for n in names):  # window, softcap, sink
            return None
        mask = {"window": "can carry a window", "softcap": "cannot cap scores",
                "sink": "adds to scores, not to the denominator"}.get(kind, "adds to scores")
        return (f"Attention-{s.since_version} has no {kind} attribute (an explicit attn_mask {mask}); "
                f"its inputs and attributes: {', '.join(names)}")

    def attend_modified(self, q, k, v, *, window=None, softcap=None, mask=None):
        """The operator's softcap attribute, float64 (no window: `no_modifier`)."""
        if window is not None:
            raise TypeError(self.no_modifier("window"))
        return self._run(q, k, v, mask, dtype="float64", **({} if softcap is None else {"softcap": float(softcap)}))

    def dropout(self) -> tuple[str, str]:
        from onnx import defs

        s = defs.get_schema("Attention", 23, "")
        names = [i.name for i in s.inputs] + list(s.attributes)
        found = [n for n in names if "drop" in n.lower()]
        return ("none" if not found else "has " + ", ".join(found),
                f"Attention-{s.since_version} schema in onnx: inputs and attributes {', '.join(names)}")
