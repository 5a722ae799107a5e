"""NumPy backend: vectorised CPU attention with every step exposed.

Not a copy of the spec; where its speed comes from:
- the three projections are one fused matmul, and q is scaled once instead of every score;
- attention runs in query blocks, and causal attention never computes the key blocks past
  a query block (about half the work), masking only the diagonal square, additively;
- the (batch, head) groups are sized so a score block stays near one core's L2 cache, since
  NumPy's elementwise passes (max, subtract, exp, sum) are single-threaded and memory-bound;
- the softmax is normalised on the (bq, hd) context, not the (bq, T) weights: one pass fewer;
- the context is written straight into [B, T, H, hd], so concatenating heads costs nothing.
The step methods and their VJPs are the one array-generic implementation (impls.array_steps,
impls.array_vjps, shared with CuPy and the mutants), for step-by-step checking; KV-cache
decoding is composed from them (impls.array_cache). The forward and backward here are the fast
ones; tests hold them equal to the ones composed of the steps.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from impls.array_cache import InPlaceCache
from impls.array_backward import ArrayBackward, modified
from impls.array_steps import ArraySteps, fused_qkv_heads
from impls.array_vjps import ArrayVJPs
from impls.base import Backend, Capabilities, library_versions
from impls.strided import copy_keeping_strides
from spec.config import AttentionConfig, numpy_dtype
from spec.params import Params

_BLOCK = 128  # query rows per block (causal skipping granularity): 64 and 256 measured no better
_BUDGET = 2 << 20  # bytes of the scores of all heads of one block: about one core's L2


class NumpyBackend(InPlaceCache, ArrayBackward, ArrayVJPs, ArraySteps, Backend):
    name = "numpy"
    capabilities = Capabilities(
        dtypes=("float64", "float32", "float16"),
        device="cpu",
        key_padding_mask=True,
        qkv_bias=True,
        dropout="replay",
        gradients=True,  # FlashAttention-2's backward, blocked (impls.array_backward)
        grouped_kv=True,  # K/V heads repeated to their query heads (impls.array_steps.repeat_kv)
        kv_cache=True,
        cache_arrays=True,
        notes="float16 inputs are computed in float32 and rounded back (NumPy has no float16 BLAS); "
              "decode appends in place into preallocated storage, copied on growth and on branching (impls.array_cache).",
        window=True,  # sliding windows and softcap: forward and backward composed of the steps
        softcap=True,  # (impls.array_steps window_mask / softcap), not the blocked fast paths
        bias=True,  # ALiBi and sinks: the same composed paths (impls.array_steps bias / with_sinks),
        sinks=True,  # dsinks from impls.array_vjps sinks_vjp
    )

    token_minor = True  # the cache as (B, Hkv, hd, capacity): faster decode reads (impls.array_cache)

    def versions(self) -> dict[str, str]:
        return library_versions("numpy")

    # -- edges -------------------------------------------------------------------------
    def from_numpy(self, a: np.ndarray, dtype: str | None = None) -> np.ndarray:
        # a copy in a's own layout (strided, stride 0, negative): the suite's layouts reach forward
        return copy_keeping_strides(a, numpy_dtype(dtype) if dtype else None)

    def to_numpy(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a)

    def prepare(self, params: Params, dtype: str) -> dict[str, Any]:
        if dtype not in self.capabilities.dtypes:
            raise ValueError(f"backend {self.name!r} does not compute in {dtype!r}; "
                             f"valid: {', '.join(self.capabilities.dtypes)}")
        dt = numpy_dtype(dtype)
        work = np.dtype(np.float32) if dt == np.float16 else dt  # accumulate float16 in float32
        W_qkv = np.concatenate([params.W_q, params.W_k, params.W_v], axis=0)  # (d_out + 2*d_kv, d_in)
        b_qkv = (np.concatenate([params.b_q, params.b_k, params.b_v]) if params.b_q is not None else None)
        return {
            "dtype": dt, "work": work,
            "W_qkv_T": np.ascontiguousarray(W_qkv.T.astype(work)),  # (d_in, d_out + 2*d_kv)
            "b_qkv": None if b_qkv is None else b_qkv.astype(work),
            "W_o_T": np.ascontiguousarray(params.W_o.T.astype(work)),  # (d_out, d_out)
            "b_o": params.b_o.astype(work),
            "params": params.map(lambda a: a.astype(dt)),  # for the step methods
        }

    # -- the whole block -----------------------------------------------------------------
    def forward(self, x, weights, config: AttentionConfig, *, key_padding_mask=None,
                dropout_mask=None, training: bool = False) -> np.ndarray:
        if modified(config):  # a window or softcap: the forward composed of the steps (ArraySteps)
            return ArraySteps.forward(self, x, weights, config, key_padding_mask=key_padding_mask,
                                      dropout_mask=dropout_mask, training=training)
        B, T, d_in = x.shape
        H, hd, d_out = config.n_heads, config.head_dim, config.d_out
        work = weights["work"]
        q, k, v = fused_qkv_heads(x.astype(work, copy=False), weights, config)  # (B, H, T, hd), k, v Hkv heads
        q = q * work.type(1.0 / np.sqrt(hd))  # scale q once, not every score; a (B, H, T, hd) copy
        # grouped K/V: each K/V head copied to its query heads (h // group); simple, and no copy
        # at all when n_kv_heads = H
        kT = np.ascontiguousarray(self.repeat_kv(k, H).swapaxes(-1, -2))  # (B, H, hd, T): q @ kT beats q @ k.T in BLAS
        v = np.ascontiguousarray(self.repeat_kv(v, H))  # (B, H, T, hd)
        # own dropout: a fresh RNG, drawn block by block (a whole (B, H, T, T) mask can be GBs)
        rng = np.random.default_rng() if training and dropout_mask is None and config.dropout_p > 0 else None
        pad = None if key_padding_mask is None else np.where(key_padding_mask, 0, -np.inf).astype(work)  # (B, T)
        ctx = np.empty((B, T, H, hd), dtype=work)  # written block by block, already in concat order
        bq = min(_BLOCK, T)
        tri = np.triu(np.full((bq, bq), -np.inf, dtype=work), 1)  # (bq, bq) additive causal mask
        blk = partial(self._block, bq=bq, causal=config.causal, p=config.dropout_p, tri=tri, rng=rng)
        if H * bq * T * work.itemsize > _BUDGET:
            # long sequences: one (b, h) at a time, 2-D BLAS calls (NumPy's batched matmul is slower)
            for b in range(B):
                for h in range(H):
                    blk(q[b, h], kT[b, h], v[b, h], ctx[b, :, h],  # (T, hd), (hd, T), (T, hd), (T, hd)
                        None if pad is None else pad[b, None, :],  # (1, T)
                        None if dropout_mask is None else dropout_mask[b, h])  # (T, T)
        else:
            # short sequences: all heads of bb batch rows at once, one score block near L2-sized
            bb = max(1, _BUDGET // (H * bq * T * work.itemsize))
            for b0 in range(0, B, bb):
                b = slice(b0, b0 + bb)
                blk(q[b], kT[b], v[b], ctx[b].transpose(0, 2, 1, 3),  # (bb, H, T, hd) views
                    None if pad is None else pad[b, None, None, :],  # (bb, 1, 1, T)
                    None if dropout_mask is None else dropout_mask[b])  # (bb, H, T, T)
        out = ctx.reshape(B * T, d_out) @ weights["W_o_T"]  # (B*T, d_out)
        out += weights["b_o"]
        return out.reshape(B, T, d_out).astype(weights["dtype"], copy=False)  # (B, T, d_out)

    @staticmethod
    def _block(q, kT, v, ctx, pad, dropout_mask, *, bq: int, causal: bool, p: float, tri, rng) -> None:
        """Attention of one (b, h) or one group of them, query block by query block, into ctx.

        Leading axes are whatever the caller grouped: q (..., T, hd), kT (..., hd, T),
        v and ctx (..., T, hd), pad (..., T) additive, dropout_mask (..., T, T). The causal
        mask only touches the diagonal square: key blocks past the query block are never
        computed and the ones before it are fully visible. Normalising the (bq, hd) context
        instead of the (bq, T) weights saves a pass over the scores.
        """
        T = q.shape[-2]
        for i0 in range(0, T, bq):
            i1 = min(i0 + bq, T)
            kend = i1 if causal else T  # causal: keys past the block's last query are masked
            s = q[..., i0:i1, :] @ kT[..., :kend]  # (..., bq, kend)
            if causal:
                s[..., i0:i1] += tri[:i1 - i0, :i1 - i0]
            if pad is not None:
                s += pad[..., :kend]  # 0 or -inf per key
            m = s.max(axis=-1, keepdims=True)  # (..., bq, 1)
            if pad is not None:
                m[m == -np.inf] = 0  # fully masked rows: exp(-inf - 0) = 0, not NaN
            s -= m
            np.exp(s, out=s)
            total = s.sum(axis=-1, keepdims=True)  # (..., bq, 1)
            if pad is not None:
                total[total == 0] = 1  # fully masked rows give a zero context
            keep = None
            if rng is not None:
                keep = rng.random(s.shape, dtype=np.float32) >= p  # (..., bq, kend)
            elif dropout_mask is not None:
                keep = dropout_mask[..., i0:i1, :kend]
            if keep is not None:  # inverted dropout on the (not yet normalised) weights
                s *= keep
                total *= 1.0 - p
            c = s @ v[..., :kend, :]  # (..., bq, hd)
            np.divide(c, total, out=ctx[..., i0:i1, :])

    # -- the steps (3..12) and their VJPs: impls.array_steps / array_vjps, on this module's arrays --
    def xp(self):
        return np
