"""The one array-generic implementation (impls.array_steps, array_vjps, array_cache).

The NumPy and CuPy backends expose its steps and VJPs; the mutants' PlainBackend is it on
NumPy arrays, so a bug planted in one piece reaches every path the checks call. The NumPy
backend's fast forward and fast backward stay its own and must equal the composed ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance.mutants.base import PlainBackend
from conformance.mutants.catalogue import FutureLeak, ScaleByDOut
from impls.array_cache import ArrayCache, InPlaceCache
from impls.array_steps import ArraySteps
from impls.array_vjps import ArrayVJPs
from impls.cupy_backend import CupyBackend
from impls.numpy_backend import NumpyBackend
from spec.config import AttentionConfig
from spec.params import init_params

STEPS = ("project_qkv", "split_heads", "group_by_heads", "attn_scores", "attn_weights", "context",
         "permute_back", "concat_heads", "out_proj")


def _problem(Hkv=2, causal=True, B=2, T=6, seed=3, modifiers=False):
    config = AttentionConfig(d_in=8, d_out=8, n_heads=4, n_kv_heads=Hkv, causal=causal, qkv_bias=True,
                             **(dict(window=(2, 0 if causal else 1), softcap=1.5) if modifiers else {}))
    rng = np.random.default_rng(seed)
    kpm = np.ones((B, T), dtype=bool)
    kpm[1, 2] = False
    return config, init_params(config, seed), rng.standard_normal((B, T, 8)), rng.standard_normal((B, T, 8)), kpm


# the built-in backends append in place (InPlaceCache); the mutants keep ArrayCache's concatenation
@pytest.mark.parametrize("cls, cache", [(NumpyBackend, InPlaceCache), (CupyBackend, InPlaceCache),
                                        (PlainBackend, ArrayCache)])
def test_every_array_backend_takes_its_steps_vjps_and_cache_from_the_one_implementation(cls, cache):
    for name in STEPS:
        assert getattr(cls, name) is getattr(ArraySteps, name), (cls.__name__, name)
    for name in ("project_qkv_vjp", "attn_scores_vjp", "attn_weights_vjp", "context_vjp", "out_proj_vjp"):
        assert getattr(cls, name) is getattr(ArrayVJPs, name), (cls.__name__, name)
    for name in ("prefill", "append", "decode", "attend", "cache_kv"):
        assert getattr(cls, name) is getattr(cache, name), (cls.__name__, name)
    assert InPlaceCache.decode is ArrayCache.decode and InPlaceCache.attend is ArrayCache.attend  # one decode


@pytest.mark.parametrize("Hkv", [4, 2, 1])
@pytest.mark.parametrize("causal", [True, False])
def test_numpy_fast_forward_and_backward_equal_the_composed_ones(Hkv, causal):
    config, params, x, g, kpm = _problem(Hkv, causal)
    b = NumpyBackend()
    w = b.prepare(params, "float64")
    fast = b.forward(x, w, config, key_padding_mask=kpm)
    composed = ArraySteps.forward(b, x, w, config, key_padding_mask=kpm)
    np.testing.assert_allclose(fast, composed, rtol=0, atol=1e-12)
    fast_g = b.backward(b.forward_for_grad(x, w, config, key_padding_mask=kpm)[1], g)
    composed_g = ArrayVJPs.backward(b, ArrayVJPs.forward_for_grad(b, x, w, config, key_padding_mask=kpm)[1], g)
    assert set(fast_g) == set(composed_g)
    for n in fast_g:
        np.testing.assert_allclose(fast_g[n], composed_g[n], rtol=0, atol=1e-12, err_msg=n)


def _paths(backend, config, params, x, g, kpm):
    """Every path the checks call: forward, step 8, the backward, a decode after a prefill."""
    w = backend.prepare(params, "float64")
    out = backend.forward(x, w, config, key_padding_mask=kpm)
    s = np.random.default_rng(0).standard_normal((2, 4, 6, 6))
    step8 = backend.attn_weights(s, config, kpm)
    grads = backend.backward(backend.forward_for_grad(x, w, config, key_padding_mask=kpm)[1], g)
    cache = backend.prefill(x[:, :4], w, config, key_padding_mask=kpm[:, :4])
    y, _ = backend.decode(x[:, 4:], cache, w, config, key_padding_mask=kpm[:, 4:])
    return {"forward": out, "step 8": step8, "backward dx": grads["dx"], "decode": y}


@pytest.mark.parametrize("mutant", [ScaleByDOut, FutureLeak], ids=lambda m: m.name)
def test_a_piece_planted_in_the_implementation_reaches_every_path(mutant):
    problem = _problem()
    right, wrong = _paths(PlainBackend(), *problem), _paths(mutant(), *problem)
    for path in right:
        assert not np.allclose(right[path], wrong[path]), f"{mutant.name}'s bug does not reach {path}"


@pytest.mark.parametrize("modifiers", [False, True], ids=["plain", "window_softcap"])
@pytest.mark.parametrize("cls", [PlainBackend, NumpyBackend])
def test_plain_backend_is_right_on_every_path(cls, modifiers):
    from spec.block import grads as spec_grads
    from spec.block import forward as spec_forward

    config, params, x, g, kpm = _problem(modifiers=modifiers)
    p = _paths(cls(), config, params, x, g, kpm)
    np.testing.assert_allclose(p["forward"], spec_forward(x, params, config, kpm), rtol=0, atol=1e-12)
    np.testing.assert_allclose(p["backward dx"], spec_grads(x, params, config, g, kpm).dx, rtol=0, atol=1e-12)
    np.testing.assert_allclose(p["decode"], spec_forward(x, params, config, kpm)[:, 4:], rtol=0, atol=1e-12)


def test_float16_steps_accumulate_in_float32():
    config, params, x, _, _ = _problem(causal=False)
    b = NumpyBackend()
    w16 = b.prepare(params, "float16")
    Q16 = b.project_qkv(x.astype(np.float16), w16)[0]
    want = (x.astype(np.float16).astype(np.float32) @ w16["params"].W_q.astype(np.float32).T
            + w16["params"].b_q.astype(np.float32)).astype(np.float16)
    assert Q16.dtype == np.float16 and np.array_equal(Q16, want)
