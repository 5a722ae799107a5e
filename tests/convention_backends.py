"""Backends that differ from the spec in one known way each, for the findings and conventions tests.

Each wraps the NumPy backend's forward (so everything else is right) and changes one thing that
real libraries do: what a query with no visible key gets, a padded query's row zeroed, float64
computed in float32, a widened output dtype, or a plain bug no probe knows (a wrong scale).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from impls.base import Backend, Capabilities
from impls.numpy_backend import NumpyBackend
from spec import conventions as conv
from spec.params import Params


class _Wrapped(Backend):
    """The NumPy backend's forward, then `adjust(out, x, params, config, kpm)`."""

    name = "wrapped"
    capabilities = Capabilities(dtypes=("float64", "float32", "float16"), key_padding_mask=True, qkv_bias=True)

    def __init__(self) -> None:
        self.inner = NumpyBackend()

    def from_numpy(self, a: np.ndarray, dtype: str | None = None) -> np.ndarray:
        return self.inner.from_numpy(a, dtype)

    def to_numpy(self, a: np.ndarray) -> np.ndarray:
        return np.asarray(a)

    def prepare(self, params: Params, dtype: str) -> tuple[Params, Any]:
        return params, self.inner.prepare(params, dtype)

    def forward(self, x, weights, config, *, key_padding_mask=None, dropout_mask=None, training=False):
        params, inner = weights
        out = self.inner.forward(x, inner, config, key_padding_mask=key_padding_mask)
        return self.adjust(out, x, params, config, key_padding_mask)

    def adjust(self, out, x, params, config, kpm):
        return out


class _RowConvention(_Wrapped):
    rule: dict[str, str] = {}

    def adjust(self, out, x, params, config, kpm):
        adjusted = conv.adjusted_rows(self.rule, x.astype(np.float64), params, config, kpm)
        if adjusted is None:
            return out
        rows, values = adjusted
        with np.errstate(invalid="ignore"):
            return np.where(rows[..., None], values.astype(out.dtype), out)


class MeanVRows(_RowConvention):
    """A query with no visible key gets the mean of V over every key (future ones included)."""

    name = "conv-mean-v"
    rule = {"fully_masked_rows": "mean_v"}


class MeanVRowsDeclared(MeanVRows):
    name = "conv-mean-v-declared"
    capabilities = Capabilities(dtypes=("float64", "float32", "float16"), key_padding_mask=True, qkv_bias=True,
                                conventions={"fully_masked_rows": "mean_v"})


class NanRows(_RowConvention):
    name = "conv-nan-rows"
    rule = {"fully_masked_rows": "nan"}


class ZeroPaddedQueries(_RowConvention):
    """A padded query token's output row is zeroed, even where it sees keys: every property holds."""

    name = "conv-zero-padded-queries"
    rule = {"padded_query_rows": "zero_output"}


class Float32Inside(_Wrapped):
    """float64 inputs computed in float32 (as JAX does by default), returned as float64."""

    name = "conv-float32-inside"

    def prepare(self, params: Params, dtype: str):
        inner_dtype = "float32" if dtype == "float64" else dtype
        return params, self.inner.prepare(params, inner_dtype)

    def forward(self, x, weights, config, *, key_padding_mask=None, dropout_mask=None, training=False):
        params, inner = weights
        out = self.inner.forward(x.astype(np.float32) if x.dtype == np.float64 else x, inner, config,
                                 key_padding_mask=key_padding_mask)
        return out.astype(x.dtype)


class UpcastWithMask(_Wrapped):
    """float16 inputs with a padding mask give float32 outputs."""

    name = "conv-upcast-with-mask"

    def adjust(self, out, x, params, config, kpm):
        return out.astype(np.float32) if kpm is not None and out.dtype == np.float16 else out


class WrongScale(_Wrapped):
    """Scores scaled by 1/sqrt(d_out) instead of 1/sqrt(head_dim): a bug no probe names."""

    name = "bug-wrong-scale"

    def forward(self, x, weights, config, *, key_padding_mask=None, dropout_mask=None, training=False):
        params, _ = weights
        from dataclasses import replace

        scale = (config.head_dim / config.d_out) ** 0.5  # q scaled so the scores use 1/sqrt(d_out)
        p = replace(params, W_q=params.W_q * scale, b_q=None if params.b_q is None else params.b_q * scale)
        inner = self.inner.prepare(p, _dtype_name(x.dtype))
        return self.inner.forward(x, inner, config, key_padding_mask=key_padding_mask)


def _dtype_name(dt: np.dtype) -> str:
    return np.dtype(dt).name


class NanLeak(_Wrapped):
    """When a query of the batch has no visible key, the last query of the next batch element gets
    NaN although it sees keys (as nn.MultiheadAttention's bfloat16 fast path does in torch 2.13)."""

    name = "bug-nan-leak"

    def adjust(self, out, x, params, config, kpm):
        B, T = out.shape[:2]
        empty = conv.empty_rows(config, B, T, T, kpm)  # (B, T)
        out = out.copy()
        for b in np.nonzero(empty.any(-1))[0]:
            out[(b + 1) % B, -1] = np.nan
        return out
