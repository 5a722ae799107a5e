"""Each CPU backend's attention as its library ships it, for the semantic-profile probes.

A `Raw` calls the library directly, with the library's own arguments and defaults and none
of the corrections the backend adapters in `impls/` make (no mask inversion, no zeroing of
fully masked rows, no bottom-right causal mask built by hand). Projections are left out, or
set to the identity where the library has them built in (nn.MultiheadAttention, flax's
MultiHeadAttention), so that the output is the attention's context itself.

`numpy` and `torch` are this project's own code written to the spec; their rows probe the
backends' steps 7-9 (`attn_scores`, `attn_weights`, `context`) in the same way.

Interface: `attend(q, k, v, *, mask=None, causal=False, dtype="float32")` with q [B, H, Tq, hd],
k and v [B, H, Tk, hd] (float64 NumPy) and mask a boolean [B, Tk] passed to the library as it
is; returns the context [B, H, Tq, hd] as NumPy. `output_dtype(q, k, v, dtype)` names the
dtype the library returns; `dropout()` measures what dropout the library offers and returns
(value, detail). `attend_grouped(q, k, v)` passes k and v of fewer heads [B, Hkv, Tk, hd] the
way the library takes them; a library that has no such way has `cannot_group()`, its reason,
read from its own signature. Frameworks are imported inside methods only.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import numpy as np

from spec.config import AttentionConfig, numpy_dtype


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _differs(a: Any, b: Any) -> bool:
    return not np.array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


class SpecSteps:
    """numpy / torch: the in-house backends' steps 7-9 (the spec's decisions, by design)."""

    def __init__(self, name: str, dist: str):
        self.name, self.dist = name, dist

    @property
    def library(self) -> str:
        return f"{self.dist} {version(self.dist)} (this project's code)"

    def backend(self) -> Any:
        from impls.registry import resolve

        return resolve(self.name).backend

    def missing(self) -> str | None:
        from impls.registry import resolve

        info = resolve(self.name)
        return info.skip_reason or info.error  # not measured either way; the registry's policy names which

    def _run(self, q, k, v, mask=None, causal=False, dtype="float32", dropout_mask=None, p=0.0):
        b = self.backend()
        if dtype not in b.capabilities.dtypes:
            raise ValueError(f"{dtype} is not declared by backend {self.name!r} "
                             f"(declared: {', '.join(b.capabilities.dtypes)})")
        H, hd = q.shape[1], q.shape[-1]
        cfg = AttentionConfig(d_in=H * hd, d_out=H * hd, n_heads=H, causal=causal, dropout_p=p)
        Q, K, V = (b.from_numpy(a.astype(numpy_dtype(dtype)), dtype) for a in (q, k, v))
        kpm = None if mask is None else b.from_numpy(mask)
        keep = None if dropout_mask is None else b.from_numpy(dropout_mask)
        w = b.attn_weights(b.attn_scores(Q, K), cfg, key_padding_mask=kpm, dropout_mask=keep)
        return b.to_numpy(b.context(w, V))

    def attend(self, q, k, v, *, mask=None, causal=False, dtype="float32"):
        return self._run(q, k, v, mask, causal, dtype)

    def attend_grouped(self, q, k, v):
        return self._run(q, k, v)  # steps 7 and 9 take K and V of their own head count

    def attend_modified(self, q, k, v, *, window=None, softcap=None, mask=None):
        """A window of `window` keys back (causal, AttentionConfig.window = (window, 0)) or a softcap, float64."""
        b = self.backend()
        H, hd = q.shape[1], q.shape[-1]
        cfg = AttentionConfig(d_in=H * hd, d_out=H * hd, n_heads=H, causal=window is not None,
                              window=None if window is None else (window, 0), softcap=softcap)
        Q, K, V = (b.from_numpy(a, "float64") for a in (q, k, v))
        kpm = None if mask is None else b.from_numpy(mask)
        return b.to_numpy(b.context(b.attn_weights(b.attn_scores(Q, K), cfg, key_padding_mask=kpm), V))

    def output_dtype(self, q, k, v, dtype):
        return str(self._run(q, k, v, dtype=dtype).dtype)

    def dropout(self) -> tuple[str, str]:
        from conformance.semantics.probes import inputs

        q, k, v = inputs(1, 2, 4, 4, 4, seed=7)
        keep = np.random.default_rng(0).random((1, 2, 4, 4)) > 0.5
        got = self._run(q, k, v, dtype="float64", dropout_mask=keep, p=0.5)
        b, cfg = self.backend(), AttentionConfig(d_in=8, d_out=8, n_heads=2, causal=False)
        w = b.to_numpy(b.attn_weights(b.attn_scores(*(b.from_numpy(a, "float64") for a in (q, k))), cfg))
        exact = np.allclose(got, (w * keep / 0.5) @ v, rtol=1e-12, atol=1e-12)
        return ("replay" if exact else "other",
                "takes an explicit keep mask: weights * keep / (1-p) reproduced exactly" if exact
                else "a keep mask was accepted but did not give weights * keep / (1-p)")


class TorchSdpa:
    name, dist = "torch-sdpa", "torch"
    library = property(lambda self: f"torch {version('torch')}: torch.nn.functional.scaled_dot_product_attention")

    def missing(self) -> str | None:
        from impls.torch_backend import torch_missing

        return torch_missing()

    def _t(self, a, dtype):
        import torch

        return torch.from_numpy(a.astype(np.float32 if dtype == "bfloat16" else numpy_dtype(dtype))).to(
            getattr(torch, dtype))

    def _run(self, q, k, v, mask=None, causal=False, dtype="float32", **kw):
        import torch
        import torch.nn.functional as F

        attn_mask = None if mask is None else torch.from_numpy(mask)[:, None, None, :]  # (B, 1, 1, Tk)
        return F.scaled_dot_product_attention(self._t(q, dtype), self._t(k, dtype), self._t(v, dtype),
                                              attn_mask=attn_mask, is_causal=causal, **kw)

    def attend(self, q, k, v, *, mask=None, causal=False, dtype="float32"):
        import torch

        return self._run(q, k, v, mask, causal, dtype).to(torch.float64).numpy()

    def attend_grouped(self, q, k, v):
        import torch

        return self._run(q, k, v, enable_gqa=True).to(torch.float64).numpy()  # K, V (B, Hkv, Tk, hd)

    def output_dtype(self, q, k, v, dtype):
        return str(self._run(q, k, v, dtype=dtype).dtype).replace("torch.", "")

    def no_modifier(self, kind: str) -> str | None:
        import torch.nn.functional as F

        return _no_argument(F.scaled_dot_product_attention, "scaled_dot_product_attention", kind)

    def dropout(self) -> tuple[str, str]:
        from conformance.semantics.probes import inputs

        q, k, v = inputs(1, 2, 8, 8, 4, seed=7)
        a, b, c = (self._run(q, k, v, dropout_p=0.5) for _ in range(3))
        return ("own RNG" if _differs(a, b) and _differs(b, c) else "not random",
                "dropout_p draws from torch's RNG (repeated calls differ); no argument takes a keep mask")


class TorchMha(TorchSdpa):
    """nn.MultiheadAttention with identity projections and no biases: its output is the context."""

    name = "torch-mha"
    library = property(lambda self: f"torch {version('torch')}: torch.nn.MultiheadAttention")

    def module(self, E, H, dtype, p=0.0):
        import torch

        # bias=True with zero biases, as in use: without in_proj_bias torch skips its fast path
        mha = torch.nn.MultiheadAttention(E, H, dropout=p, bias=True, batch_first=True, dtype=getattr(torch, dtype))
        with torch.no_grad():
            mha.in_proj_bias.zero_()
            mha.out_proj.bias.zero_()
            mha.in_proj_weight.copy_(torch.cat([torch.eye(E)] * 3))  # (3E, E): identity Q, K, V
            mha.out_proj.weight.copy_(torch.eye(E))
        return mha.requires_grad_(False).eval()

    def no_modifier(self, kind: str) -> str | None:
        import torch

        return _no_argument(torch.nn.MultiheadAttention.forward, "nn.MultiheadAttention.forward", kind)

    def cannot_group(self) -> str | None:
        import torch

        return _no_kv_heads_argument(torch.nn.MultiheadAttention, "nn.MultiheadAttention",
                                     "kdim and vdim set the K/V inputs' width, not their head count")

    def _run(self, q, k, v, mask=None, causal=False, dtype="float32", p=0.0, train=False):
        import torch

        B, H, Tq, hd = q.shape
        mha = self.module(H * hd, H, dtype, p).train(train)
        x = {id(a): self._t(a.transpose(0, 2, 1, 3).reshape(B, a.shape[2], H * hd), dtype) for a in (q, k, v)}
        kpm = None if mask is None else torch.from_numpy(mask)
        with torch.no_grad():  # self-attention (q is k is v) takes the inference fast path, as in use
            out, _ = mha(x[id(q)], x[id(k)], x[id(v)], key_padding_mask=kpm, need_weights=False, is_causal=causal)
        return out.reshape(B, Tq, H, hd).permute(0, 2, 1, 3)  # (B, H, Tq, hd)

    def dropout(self) -> tuple[str, str]:
        from conformance.semantics.probes import inputs

        q, k, v = inputs(1, 2, 8, 8, 4, seed=7)
        a, b, c = (self._run(q, k, v, p=0.5, train=True) for _ in range(3))
        return ("own RNG" if _differs(a, b) and _differs(b, c) else "not random",
                "dropout= in train mode draws from torch's RNG (repeated calls differ); no keep-mask argument")


class Jax:
    name, dist = "jax", "jax"
    library = property(lambda self: f"jax {version('jax')}: jax.nn.dot_product_attention")

    def missing(self) -> str | None:
        from impls.jax_backend import jax_missing

        return jax_missing()

    def _j(self, a, dtype):
        import jax.numpy as jnp

        return jnp.asarray(a.astype(numpy_dtype(dtype)))

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


class OnnxRuntime:
    """A graph holding one standard ONNX Attention node (opset 23), run on the CPU provider."""

    name, dist = "onnxruntime", "onnxruntime"
    library = property(lambda self: f"onnxruntime {version('onnxruntime')}, onnx {version('onnx')}: "
                                    f"ONNX Attention (opset 23), CPU execution provider")

    def missing(self) -> str | None:
        from impls.onnxruntime_backend import ort_missing

        return ort_missing()

    def _run(self, q, k, v, mask=None, causal=False, dtype="float32"):
        import onnxruntime as ort
        from onnx import TensorProto, helper

        from impls.onnxruntime_backend import OPSET, elem_type, session_options

        t, vi = elem_type(dtype), helper.make_tensor_value_info
        names = ["Q", "K", "V"] + ([] if mask is None else ["M"])
        ins = [vi(n, t, None) for n in names[:3]] + [vi("M", TensorProto.BOOL, None)] * (mask is not None)
        node = helper.make_node("Attention", names, ["Y"], is_causal=int(causal))
        model = helper.make_model(helper.make_graph([node], "probe", ins, [vi("Y", t, None)]),
                                  opset_imports=[helper.make_opsetid("", OPSET)])
        sess = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
        feeds = {n: a.astype(numpy_dtype(dtype)) for n, a in zip("QKV", (q, k, v))}  # (B, H, T, hd)
        if mask is not None:  # (B, 1, Tq, Tk): ONNX Runtime refuses a broadcast query dimension
            feeds["M"] = np.ascontiguousarray(np.broadcast_to(mask[:, None, None, :], (q.shape[0], 1, q.shape[2], k.shape[2])))
        return sess.run(["Y"], feeds)[0]

    def attend(self, q, k, v, *, mask=None, causal=False, dtype="float32"):
        return self._run(q, k, v, mask, causal, dtype)

    def attend_grouped(self, q, k, v):
        return self._run(q, k, v)  # 4-D K, V (B, Hkv, Tk, hd): the operator reads kv_num_heads from them

    def output_dtype(self, q, k, v, dtype):
        return str(self._run(q, k, v, dtype=dtype).dtype)

    def dropout(self) -> tuple[str, str]:
        from onnx import defs

        s = defs.get_schema("Attention", 23, "")
        names = [i.name for i in s.inputs] + list(s.attributes)
        found = [n for n in names if "drop" in n.lower()]
        return ("none" if not found else "has " + ", ".join(found),
                f"Attention-{s.since_version} schema in onnx: inputs and attributes {', '.join(names)}")


def _no_kv_heads_argument(cls: type, title: str, why: str) -> str | None:
    """None when `cls`'s constructor has an argument naming K/V heads (then it can group), else the reason."""
    import inspect

    names = list(inspect.signature(cls.__init__).parameters)[1:]
    if any("kv" in n.lower() and "head" in n.lower() for n in names):
        return None
    return f"{title} has no argument for fewer K/V heads ({why}); its arguments: {', '.join(names)}"


def _no_argument(fn: Any, title: str, kind: str) -> str | None:
    """None when `fn` has an argument naming the modifier (window / softcap / sink), else the reason, read
    from its signature."""
    import inspect

    try:
        names = list(inspect.signature(fn).parameters)
    except ValueError:  # a builtin (SDPA): its docstring's first line is its signature
        import re

        head = re.search(r"\((.*?)\)", fn.__doc__ or "", re.S)
        names = [a.split("=")[0].strip(" *\n") for a in head.group(1).split(",")] if head else []
    words = {"window": ("window",), "softcap": ("softcap", "cap"), "sink": ("sink",)}[kind]
    if any(w in n.lower() for n in names for w in words):
        return None
    mask = {"window": "can carry a window", "softcap": "cannot cap scores",
            "sink": "adds to scores, not to the denominator"}[kind]
    return f"{title} has no {kind} argument (an explicit attn_mask {mask}); its arguments: {', '.join(names)}"


def all_raw() -> list[Any]:
    """The CPU backends' libraries, in the order of the profile table."""
    return [SpecSteps("numpy", "numpy"), SpecSteps("torch", "torch"), TorchSdpa(), TorchMha(), Jax(), Flax(),
            OnnxRuntime()]
