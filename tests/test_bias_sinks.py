"""ALiBi and attention sinks (issue 27): the spec's conventions and gradients, the backends
against the spec (forward, decode, gradients), the capability gate, the drawn configs, and each
mutant's bug reaching the path it names."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import errors, find

from conformance.mutants.bias import BIAS_GRAD_MUTANTS, BIAS_MUTANTS, ScoredPlain
from conformance.suite import strategies as cs
from conformance.suite.cache_reference import decoded
from impls.base import Capabilities
from spec import steps as S
from spec.block import forward, grads
from spec.config import AttentionConfig
from spec.params import init_params
from spec.scores import BiasArray, alibi_bias, alibi_slopes, reduce_to

#: A bias array per head, broadcast over the batch (shape [1, H, Tq, Tk]), for the array tests.
BIAS = np.random.default_rng(9).standard_normal((1, 4, 7, 7))

CONFIGS = {
    "causal_alibi_sinks_gqa": AttentionConfig(8, 8, 4, n_kv_heads=2, causal=True, bias="alibi",
                                              sinks=(0.5, -1.0, 2.0, -math.inf)),
    "non_causal_alibi_window": AttentionConfig(8, 8, 4, causal=False, qkv_bias=True, bias="alibi", window=(1, 2)),
    "causal_sinks_softcap": AttentionConfig(8, 8, 2, causal=True, sinks=(1.0, -0.25), softcap=3.0),
    "bias_array_sinks_gqa": AttentionConfig(8, 8, 4, n_kv_heads=1, causal=True, bias=BIAS, sinks=(0.0, 1.0, -2.0, 3.0)),
}


def _problem(config: AttentionConfig, B: int = 2, T: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = init_params(config, seed + 1).map(lambda a: a * 3)  # peaked rows: a wrong key shows
    kpm = rng.random((B, T)) > 0.3
    kpm[1, :3] = False  # batch 1's early causal queries see no key: the sink takes the whole row
    return params, rng.standard_normal((B, T, config.d_in)), kpm


def _backend(name: str):
    import importlib

    from impls.registry import BUILTINS

    module, attr = BUILTINS[name].split(":")
    return getattr(importlib.import_module(module), attr)()


def test_alibi_slopes_are_the_reference_codes():
    # Press et al.'s get_slopes: powers of 2^(-8/n); 6 heads: the 4 of n = 4, then every other of n = 8
    np.testing.assert_array_equal(alibi_slopes(8), 2.0 ** -np.arange(1, 9))
    np.testing.assert_array_equal(alibi_slopes(6), 2.0 ** -np.array([2, 4, 6, 8, 1, 3]))
    np.testing.assert_allclose(alibi_slopes(3), [2 ** -4, 2 ** -8, 2 ** -2], rtol=1e-15)
    np.testing.assert_array_equal(alibi_slopes(1), [2 ** -8])


def test_alibi_is_bottom_right_and_zero_on_the_query_itself():
    b = alibi_bias(2, 2, 4)  # (H, Tq, Tk): queries at positions 2 and 3
    np.testing.assert_array_equal(b[0], 2 ** -4 * np.array([[-2, -1, 0, 1], [-3, -2, -1, 0]]))


def test_a_sink_takes_its_share_and_a_row_with_no_key_gets_zeros():
    config = AttentionConfig(4, 4, 1, causal=False, sinks=(math.log(3.0),))
    w = S.attn_weights(np.zeros((1, 1, 1, 3)), config)  # 3 equal scores, sink log 3: 1/6 each
    np.testing.assert_allclose(w, np.full((1, 1, 1, 3), 1 / 6), rtol=1e-15)
    np.testing.assert_allclose(S.sink_weight(np.zeros((1, 1, 1, 3)), config), [[[[0.5]]]], rtol=1e-15)
    none = S.attn_weights(np.zeros((1, 1, 1, 3)), config, key_padding_mask=np.zeros((1, 3), bool))
    assert (none == 0).all()


def test_sinks_at_minus_infinity_are_no_sinks_in_the_spec():
    config = CONFIGS["causal_sinks_softcap"]
    params, x, kpm = _problem(config)
    off = dataclasses.replace(config, sinks=(-math.inf, -math.inf))
    np.testing.assert_array_equal(forward(x, params, off, kpm), forward(x, params, dataclasses.replace(config, sinks=None), kpm))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_dsinks_is_the_derivative_of_the_output(name):
    config = CONFIGS[name]
    if config.sinks is None:
        return
    params, x, kpm = _problem(config)
    g = np.random.default_rng(5).standard_normal((2, 7, config.d_out))
    d = grads(x, params, config, g, kpm).dsinks
    for h, s in enumerate(config.sinks):
        if not math.isfinite(s):
            assert d[h] == 0  # a -inf sink has weight 0 everywhere
            continue
        up, down = (dataclasses.replace(config, sinks=config.sinks[:h] + (s + e,) + config.sinks[h + 1:])
                    for e in (1e-6, -1e-6))
        fd = ((forward(x, params, up, kpm) - forward(x, params, down, kpm)) * g).sum() / 2e-6
        assert abs(fd - d[h]) < 1e-7 * max(1.0, abs(fd))


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("backend", ["numpy", "torch", "torch-sdpa"])
def test_backends_forward_decode_and_gradients_give_the_spec(backend, name):
    if backend.startswith("torch"):
        pytest.importorskip("torch")
    b, config = _backend(backend), CONFIGS[name]
    why = b.capabilities.unsupported(config)
    assert why is None or (backend == "torch-sdpa" and "softcap" in why)  # SDPA takes no softcap, by declaration
    if why:
        return
    params, x, kpm = _problem(config)
    w, X = b.prepare(params, "float64"), b.from_numpy(x, "float64")
    mask = b.from_numpy(kpm) if backend.startswith("torch") else kpm
    got = b.to_numpy(b.forward(X, w, config, key_padding_mask=mask))
    np.testing.assert_allclose(got, forward(x, params, config, kpm), rtol=0, atol=1e-12)
    if not isinstance(config.bias, BiasArray):  # an array covers one call's T: no cache
        cache = b.prefill(b.from_numpy(x[:, :3], "float64"), w, config, key_padding_mask=mask[:, :3])
        y, _ = b.decode(b.from_numpy(x[:, 3:], "float64"), cache, w, config, key_padding_mask=mask[:, 3:])
        np.testing.assert_allclose(b.to_numpy(y), decoded(x, params, config, kpm, 3, (4,)), rtol=0, atol=1e-12)
    g = np.random.default_rng(5).standard_normal(got.shape)
    _, saved = b.forward_for_grad(X, w, config, key_padding_mask=mask)
    mine = b.backward(saved, b.from_numpy(g, "float64"))
    want = grads(x, params, config, g, kpm).arrays()
    assert set(want) == set(mine) and ("dsinks" in want) == (config.sinks is not None)
    assert ("dbias" in want) == isinstance(config.bias, BiasArray)
    for k, v in want.items():
        np.testing.assert_allclose(b.to_numpy(mine[k]), v, rtol=0, atol=1e-11, err_msg=k)


@pytest.mark.parametrize("shape", [(1, 4, 7, 7), (2, 1, 7, 7), (4, 1, 7), (7,), (2, 4, 7, 1), (1, 1, 1, 1)])
def test_dbias_is_the_derivative_summed_over_the_broadcast_axes(shape):
    config = dataclasses.replace(CONFIGS["causal_sinks_softcap"], n_heads=4, sinks=None,
                                 bias=np.random.default_rng(2).standard_normal(shape))
    params, x, kpm = _problem(config)
    g = np.random.default_rng(5).standard_normal((2, 7, config.d_out))
    d = grads(x, params, config, g, kpm).dbias
    assert d.shape == shape
    idx = tuple(n - 1 for n in shape)  # the last query's last key: visible in every row shape
    up, down = (config.bias.array.copy() for _ in range(2))
    up[idx] += 1e-6
    down[idx] -= 1e-6
    fd = ((forward(x, params, dataclasses.replace(config, bias=up), kpm)
           - forward(x, params, dataclasses.replace(config, bias=down), kpm)) * g).sum() / 2e-6
    assert abs(fd - d[idx]) < 1e-7 * max(1.0, abs(fd))


def test_reduce_to_sums_what_was_broadcast():
    d = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(reduce_to(d, (3, 1, 5)), d.sum(axis=(0, 2))[:, None, :])
    np.testing.assert_array_equal(reduce_to(d, (2, 1, 4, 5)), d.sum(axis=1, keepdims=True))


def test_a_bias_array_that_does_not_broadcast_is_named():
    config = AttentionConfig(4, 4, 2, bias=np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match=r"\(3, 5, 5\)"):
        S.attn_weights(np.zeros((1, 2, 5, 5)), config)


def test_the_capability_gate_names_the_field():
    caps = Capabilities()
    assert "Capabilities.bias" in caps.unsupported(AttentionConfig(4, 4, 2, bias="alibi"))
    assert "Capabilities.sinks" in caps.unsupported(AttentionConfig(4, 4, 2, sinks=(0.0, 1.0)))
    assert Capabilities(bias=True, sinks=True).unsupported(AttentionConfig(4, 4, 2, bias="alibi", sinks=(0, 1))) is None


@pytest.mark.parametrize("bad", [{"bias": "rope"}, {"bias": np.array([np.nan])}, {"sinks": (0.0,)}, {"sinks": (0.0, math.nan)},
                                 {"sinks": (0.0, math.inf)}, {"sinks": "0 0"}])
def test_bad_values_are_refused_by_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))[:4]):
        AttentionConfig(4, 4, 2, **bad)


def test_configs_round_trip_through_dicts():
    for config in CONFIGS.values():
        assert AttentionConfig.from_dict(config.to_dict()) == config


def test_configs_draw_alibi_and_sinks_only_for_a_declaring_backend():
    declares = Capabilities(bias=True, sinks=True)
    find(cs.configs(declares), lambda c: c.bias == "alibi" and c.sinks is not None)
    drawn = find(cs.configs(declares), lambda c: c.sinks is not None)
    assert all(float(s * 4).is_integer() for s in drawn.sinks)  # exact in every dtype
    # without the capability the strategies draw nothing at all: the search ends at its one example
    for strategy in (cs.biases(Capabilities()), cs.sinks(Capabilities(), 4)):
        with pytest.raises(errors.NoSuchExample):
            find(strategy, lambda v: v is not None)


def test_the_mutants_declare_both_and_the_control_is_right():
    assert ScoredPlain.capabilities.bias and ScoredPlain.capabilities.sinks
    config = CONFIGS["causal_alibi_sinks_gqa"]
    params, x, kpm = _problem(config)
    b = ScoredPlain()
    got = b.forward(x, b.prepare(params, "float64"), config, key_padding_mask=kpm)
    np.testing.assert_allclose(got, forward(x, params, config, kpm), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mutant", BIAS_MUTANTS + BIAS_GRAD_MUTANTS, ids=lambda m: m.name)
def test_each_mutant_is_wrong_where_it_says(mutant):
    config = CONFIGS["causal_alibi_sinks_gqa"]
    params, x, kpm = _problem(config)
    b = mutant()
    w = b.prepare(params, "float64")
    fwd = np.abs(b.forward(x, w, config, key_padding_mask=kpm) - forward(x, params, config, kpm)).max()
    if mutant.name == "mutant-dbias-wrong-axes":  # its forward is right; a head-shared bias's gradient is not
        shared = dataclasses.replace(config, bias=np.random.default_rng(3).standard_normal((1, 4, 7, 7)))
        g = np.random.default_rng(5).standard_normal((2, 7, config.d_out))
        mine = b.backward(b.forward_for_grad(x, w, shared, key_padding_mask=kpm)[1], g)
        assert np.abs(mine["dbias"] - grads(x, params, shared, g, kpm).dbias).max() > 1e-3
    elif mutant.name == "mutant-sink-ignored-empty-row-grad":  # its forward is right; the backward is not
        assert fwd < 1e-12
        g = np.random.default_rng(5).standard_normal((2, 7, config.d_out))
        mine = b.backward(b.forward_for_grad(x, w, config, key_padding_mask=kpm)[1], g)
        want = grads(x, params, config, g, kpm)
        assert np.abs(mine["dsinks"] - want.dsinks).max() > 1e-3 and np.abs(mine["dW_k"] - want.dW_k).max() > 1e-3
    else:
        assert fwd > 1e-3


@pytest.mark.parametrize("mutant", [ScoredPlain, *BIAS_GRAD_MUTANTS], ids=lambda m: m.__name__)
def test_the_gradient_checks_kill_each_gradient_mutant_and_pass_the_control(mutant, dtype="float32"):
    """Their forward is right, so the kill table reaches them only after every forward check (minutes
    each): here grads_match_spec and grads_padded_and_empty_rows alone, at float32 and the quick
    profile (`nox -s mutants` kills them at float16 too)."""
    from conformance.suite import profiles
    from conformance.suite.checks import get
    from conformance.suite.engine import run_check

    profiles.load("quick")  # a suite profile (no deadline); tests/conftest.py puts the previous one back
    outcomes = {name: run_check(get(name), mutant(), dtype, seed=3)
                for name in ("grads_match_spec", "grads_padded_and_empty_rows")}
    if mutant is ScoredPlain:
        assert all(r.outcome == "passed" for r in outcomes.values()), {n: r.reason for n, r in outcomes.items()}
    else:
        assert any(r.outcome == "failed" for r in outcomes.values()), f"{mutant.name} survived the gradient checks"


def test_the_profile_columns_measure_the_library_and_the_contract():
    from conformance.mutants.bias import AlibiSlopesReversed
    from conformance.semantics import probes, score_terms
    from conformance.semantics.contract import ALL_COLUMNS, PROBES, _measured
    from conformance.semantics.libraries import SpecSteps
    from conformance.semantics.probes import COLUMNS

    for key in ("bias_masked_row", "sink_masked_row"):
        assert key in dict(COLUMNS) and key in dict(ALL_COLUMNS) and key in PROBES
    numpy_raw = SpecSteps("numpy", "numpy")
    assert score_terms.sink_masked_row(numpy_raw, probes)["value"] == "zeros"
    # float32: -1e9 + s rounds to -1e9, so the row is uniform
    assert score_terms.bias_masked_row(numpy_raw, probes)["value"] == "mean of V (uniform weights)"
    assert score_terms.contract_alibi(ScoredPlain(), _measured)[0] == "standard (the spec)"
    assert score_terms.contract_alibi(AlibiSlopesReversed(), _measured)[0] == "slopes in reverse head order"
