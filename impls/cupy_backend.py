"""CuPy backend: the NumPy backend's algorithm on a CUDA GPU, every step exposed.

Mirrors `impls.numpy_backend` line for line where it can (CuPy follows NumPy's API): fused
QKV projection, masked softmax with fully masked rows giving a zero context, inverted
dropout that replays an explicit keep mask. On the GPU the whole (B, H, T, T) score tensor
is computed at once: the causal block skipping that pays on a CPU would only add kernel
launches here. float16 is computed in float32 and rounded back, as NumPy does, so the
softmax and the long sums never accumulate in half precision.

cupy is imported inside methods only: importing this module needs NumPy alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from impls.array_cache import InPlaceCache
from impls.array_backward import ArrayBackward, modified
from impls.array_steps import ArraySteps, fused_qkv_heads
from impls.array_vjps import ArrayVJPs
from impls.base import Backend, Capabilities, library_versions
from spec.config import AttentionConfig, dtype_name, numpy_dtype
from spec.params import Params

if TYPE_CHECKING:  # annotations only: cupy stays optional
    import cupy


def cupy_missing() -> str | None:
    """Why CuPy cannot run here, or None when it imports and sees a usable GPU."""
    try:
        import cupy
    except ImportError as e:
        return f"cupy is not installed (pip install cupy-cuda12x): {e}"
    try:
        ok = cupy.is_available()
    except Exception as e:  # noqa: BLE001 - a broken CUDA install raises instead of answering
        return f"cupy.is_available() raised {type(e).__name__}: {e}"
    if not ok:
        return "cupy.is_available() is False: no usable CUDA device/driver"
    return None


class CupyBackend(InPlaceCache, ArrayBackward, ArrayVJPs, ArraySteps, Backend):
    name = "cupy"
    capabilities = Capabilities(
        dtypes=("float64", "float32", "float16"),
        device="cuda",
        key_padding_mask=True,
        qkv_bias=True,
        dropout="replay",
        gradients=True,  # FlashAttention-2's backward, blocked (impls.array_backward)
        grouped_kv=True,  # the NumPy backend's array code: K/V heads repeated to their query heads
        kv_cache=True,
        cache_arrays=True,
        notes="float16 inputs are computed in float32 and rounded back, as the NumPy backend; "
              "decode appends in place into preallocated storage, as the NumPy backend (impls.array_cache).",
        window=True,  # sliding windows and softcap: forward and backward composed of the steps
        softcap=True,  # (impls.array_steps window_mask / softcap), not the blocked fast paths
        bias=True,  # ALiBi and sinks: the same composed paths (impls.array_steps bias / with_sinks),
        sinks=True,  # dsinks from impls.array_vjps sinks_vjp
    )

    def availability(self) -> str | None:
        return cupy_missing()

    def versions(self) -> dict[str, str]:
        return library_versions('cupy', 'cupy-cuda12x', 'cupy-cuda11x', 'cupy-cuda13x')

    # -- edges -------------------------------------------------------------------------
    def from_numpy(self, a: np.ndarray, dtype: str | None = None) -> cupy.ndarray:
        import cupy

        a = np.asarray(a)
        if dtype is None:
            if dtype_name(a.dtype) == "bfloat16":
                raise ValueError(f"backend {self.name!r} has no bfloat16; valid: "
                                 f"{', '.join(self.capabilities.dtypes)}")
            return cupy.array(a)  # copies to the device; bool masks stay bool
        if dtype not in self.capabilities.dtypes:
            raise ValueError(f"backend {self.name!r} does not compute in {dtype!r}; "
                             f"valid: {', '.join(self.capabilities.dtypes)}")
        return cupy.asarray(a.astype(numpy_dtype(dtype)))

    def to_numpy(self, a: cupy.ndarray) -> np.ndarray:
        import cupy

        return cupy.asnumpy(a)

    def synchronize(self) -> None:
        import cupy

        cupy.cuda.Device().synchronize()

    def prepare(self, params: Params, dtype: str) -> dict[str, Any]:
        import cupy

        dt = numpy_dtype(dtype)
        if dtype not in self.capabilities.dtypes:
            raise ValueError(f"backend {self.name!r} does not compute in {dtype!r}; "
                             f"valid: {', '.join(self.capabilities.dtypes)}")
        work = np.dtype(np.float32) if dt == np.float16 else dt  # accumulate float16 in float32
        W_qkv = np.concatenate([params.W_q, params.W_k, params.W_v], axis=0)  # (d_out + 2*d_kv, d_in)
        b_qkv = np.concatenate([params.b_q, params.b_k, params.b_v]) if params.b_q is not None else None

        def dev(a: np.ndarray) -> cupy.ndarray:
            return cupy.asarray(np.ascontiguousarray(a.astype(work)))

        return {
            "dtype": dt, "work": work,
            "W_qkv_T": dev(W_qkv.T),  # (d_in, d_out + 2*d_kv)
            "b_qkv": None if b_qkv is None else dev(b_qkv),
            "W_o_T": dev(params.W_o.T),  # (d_out, d_out)
            "b_o": dev(params.b_o),
            "params": params.map(lambda a: cupy.asarray(a.astype(dt))),  # for the step methods
        }

    # -- the whole block -----------------------------------------------------------------
    def forward(self, x, weights, config: AttentionConfig, *, key_padding_mask=None,
                dropout_mask=None, training: bool = False) -> cupy.ndarray:
        if modified(config):  # a window or softcap: the forward composed of the steps (ArraySteps)
            return ArraySteps.forward(self, x, weights, config, key_padding_mask=key_padding_mask,
                                      dropout_mask=dropout_mask, training=training)
        import cupy

        B, T, d_in = x.shape
        H, hd, d_out = config.n_heads, config.head_dim, config.d_out
        work = weights["work"]
        q, k, v = fused_qkv_heads(x.astype(work, copy=False), weights, config)  # (B, H, T, hd), k, v Hkv heads
        q = q * work.type(1.0 / np.sqrt(hd))  # scale q once instead of every score
        k, v = self.repeat_kv(k, H), self.repeat_kv(v, H)  # (B, H, T, hd): grouped K/V per query head
        s = q @ k.swapaxes(-1, -2)  # (B, H, T, T)
        if config.causal:  # (T, T) additive mask: 0 or -inf
            s += cupy.triu(cupy.full((T, T), -cupy.inf, dtype=work), 1)
        if key_padding_mask is not None:
            s += cupy.where(key_padding_mask, 0, -cupy.inf).astype(work)[:, None, None, :]  # (B, 1, 1, T)
        m = s.max(axis=-1, keepdims=True)  # (B, H, T, 1)
        if key_padding_mask is not None:
            m[m == -cupy.inf] = 0  # fully masked rows: exp(-inf - 0) = 0, not NaN
        s -= m
        cupy.exp(s, out=s)
        total = s.sum(axis=-1, keepdims=True)  # (B, H, T, 1)
        if key_padding_mask is not None:
            total[total == 0] = 1  # fully masked rows give a zero context
        if training and dropout_mask is None and config.dropout_p > 0:
            dropout_mask = cupy.random.random(s.shape, dtype=np.float32) >= config.dropout_p  # own RNG
        if dropout_mask is not None:  # inverted dropout on the (not yet normalised) weights
            s *= dropout_mask
            total *= 1.0 - config.dropout_p
        ctx = (s @ v) / total  # (B, H, T, hd)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(B * T, d_out)  # (B*T, d_out)
        out = ctx @ weights["W_o_T"]  # (B*T, d_out)
        out += weights["b_o"]
        return out.reshape(B, T, d_out).astype(weights["dtype"], copy=False)  # (B, T, d_out)

    # -- the steps (3..12) and their VJPs: impls.array_steps / array_vjps, on this module's arrays --
    def xp(self):
        import cupy  # lazily: only where CuPy runs

        return cupy
