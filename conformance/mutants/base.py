"""`PlainBackend`: the one array-generic implementation (`impls.array_steps`) on NumPy arrays.

Every mutant in `conformance.mutants` is a subclass that changes one piece by a few lines, so
the bug is easy to read next to the correct code. The pieces, the steps, the forward composed
of them (steps 4 to 12), the step VJPs and the backward composed of them, and the KV cache are
the implementations' own (`impls.array_steps.ArraySteps`, `impls.array_vjps.ArrayVJPs`,
`impls.array_cache.ArrayCache`, shared with the NumPy and CuPy backends): a bug planted in one
piece reaches every path the checks call, the forward, the steps, the backward and the cache.
float16 inputs are computed in float32 and rounded back at the end, float64 and float32 in
their own precision. Its weights are the `Params` themselves, in the dtype under test.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from impls.array_cache import ArrayCache
from impls.array_steps import ArraySteps, work_dtype
from impls.array_vjps import ArrayVJPs
from impls.base import Backend, Capabilities
from impls.strided import copy_keeping_strides
from spec.config import numpy_dtype
from spec.params import Params

__all__ = ["PlainBackend", "work_dtype"]


class PlainBackend(ArrayCache, ArrayVJPs, ArraySteps, Backend):
    """Correct reference-style attention in NumPy; every step exposed, every piece overridable."""

    name = "plain"
    capabilities = Capabilities(
        dtypes=("float64", "float32", "float16"),
        device="cpu",
        key_padding_mask=True,
        qkv_bias=True,
        dropout="replay",
        kv_cache=True,  # prefill / decode / cache_kv composed from the step methods (impls.array_cache)
        cache_arrays=True,
        gradients=True,  # backward composed of the step VJPs (impls.array_vjps)
        grouped_kv=True,  # K/V heads repeated to their query groups (repeat_kv), summed back (sum_groups)
        notes="the base of the mutants: simple and correct; float16 computed in float32.",
    )
    #: Why this backend's bug cannot exist in float16 (mutants only); None: it can.
    float16_na: str | None = None

    # -- edges -----------------------------------------------------------------------------
    def from_numpy(self, a: np.ndarray, dtype: str | None = None) -> np.ndarray:
        return copy_keeping_strides(a, numpy_dtype(dtype) if dtype else None)  # a's layout kept

    def to_numpy(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def prepare(self, params: Params, dtype: str) -> Params:
        return params.map(lambda a: a.astype(numpy_dtype(dtype)))

    def step_params(self, weights: Params) -> Params:
        """The weights are the Params themselves (what `prepare` returns)."""
        return weights

    def xp(self):
        """NumPy: the array module of the steps, the backward and the KV cache."""
        return np
