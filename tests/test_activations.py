"""Activation-like draws (conformance/suite/activations.py), the index-width examples (sizes.INDEX_EDGES,
the 2^16 + 1-key decode) and the mutants only they kill (conformance/mutants/inputs.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, find, given, settings

from conformance.mutants.base import PlainBackend
from conformance.mutants.inputs import Float16Accumulator, KeyIndex16, PairIndex16
from conformance.suite import activations as act
from conformance.suite import profiles
from conformance.suite import sizes as sz
from conformance.suite import strategies as cs
from conformance.suite.checks import cache as cc
from impls.numpy_backend import NumpyBackend
from spec import steps
from spec.config import AttentionConfig

CAPS = NumpyBackend.capabilities


@pytest.mark.parametrize("seed", range(8))
def test_outlier_channels_are_100_to_1000_times_the_rest(seed):
    rng = np.random.default_rng(seed)
    x = act.activation_x(rng, 2, 33, 64, 1.0)
    col = np.median(np.abs(x), axis=(0, 1))  # (d_in,): each channel's typical size
    ratio = col / np.median(col)
    big = ratio > 20  # 100x-1000x, less the spread of the medians of a low-rank draw
    assert 1 <= big.sum() <= 64 // 16  # a few channels
    assert ratio.max() > 80 and np.all(ratio < 3000)


def test_some_draws_repeat_tokens_and_some_are_low_rank():
    near, low = 0, 0
    for seed in range(20):
        x = act.activation_x(np.random.default_rng(seed), 1, 40, 16, 1.0)[0]  # (T, d_in)
        d = np.linalg.norm(x[:, None] - x[None], axis=-1) / np.linalg.norm(x, axis=-1).max()
        near += bool(np.any(d[np.triu_indices(40, 1)] < 1e-2))  # two tokens within 1%: a near tie
        low += np.linalg.matrix_rank(x, tol=1e-9 * np.abs(x).max()) <= 4 + 4  # rank r, plus outlier channels
    assert near >= 5 and low >= 3


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("grads", [False, True])
def test_values_stay_inside_the_bounds(dtype, grads):
    for seed in range(10):
        config = AttentionConfig(d_in=24, d_out=8, n_heads=2, causal=True, qkv_bias=bool(seed % 2))
        _, x, params = act.activation_values(config, 2, 17, dtype, seed, 3.0, grads=grads)
        assert np.abs(x).max() <= (act.GRAD_X_MAX if grads else act.X_MAX)[dtype]
        bound = act.score_bound(x, params, config)
        assert bound <= act.LOGIT_CAP[dtype] * (1 + 1e-9)
        Q, K, _ = steps.project_qkv(x, params)
        s = steps.attn_scores(steps.heads(Q, 2), steps.heads(K, 2)) / np.sqrt(config.head_dim)
        assert np.abs(s).max() <= bound * (1 + 1e-9)  # the bound is one


def test_weights_are_at_init_scale_with_a_few_large_heads():
    config = AttentionConfig(d_in=256, d_out=8 * 16, n_heads=8)
    p = act.activation_params(np.random.default_rng(0), config)
    head_std = p.W_v.reshape(8, 16, 256).std(axis=(1, 2))  # (H,)
    assert np.sum(np.abs(head_std / act.WEIGHT_STD - 1) < 0.2) >= 6  # most heads at std 0.02
    assert 1 <= np.sum(head_std > 3 * act.WEIGHT_STD) <= 2  # one or two large heads
    assert abs(p.W_o.std() / act.WEIGHT_STD - 1) < 0.1


def test_cases_draw_both_distributions_record_them_and_shrink_to_gaussian():
    seen = set()

    @settings(max_examples=60, database=None, suppress_health_check=list(HealthCheck))
    @given(cs.cases(CAPS, "float32"))
    def collect(case):
        seen.add(case.extra.get("values", "gaussian"))
        if case.extra.get("values") == "activation-like":
            assert "param_scale" not in case.extra and "values=activation-like" in case.describe()

    collect()
    assert seen == set(act.DISTRIBUTIONS)
    smallest = find(cs.cases(CAPS, "float32"), lambda c: True, settings=settings(database=None))
    assert "values" not in smallest.extra


def test_forced_values_and_the_large_logit_cases(monkeypatch):
    monkeypatch.setattr(cs, "FORCED_VALUES", "activation-like")
    got = find(cs.cases(CAPS, "float16"), lambda c: True, settings=settings(database=None))
    assert got.extra["values"] == "activation-like"
    big = find(cs.large_logit_cases(CAPS, "float16"), lambda c: True, settings=settings(database=None))
    assert "values" not in big.extra  # scaling outliers up to 2e4 logits would overflow float16


def test_index_width_representatives_fit_the_default_budget_and_pass_the_grid_limit():
    profiles.register()
    profiles.load("default")
    _, budget = profiles.large_regime()
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        reps = dict(sz.index_representatives(dtype, budget))
        assert reps["H=300"].H == 300 and reps["B*H>65535"].B * reps["B*H>65535"].H > 65535
    cases = cs.class_representatives(CAPS, "float32")
    assert any(c.config.n_heads == 300 for c in cases) and any(c.B * c.config.n_heads > 65535 for c in cases)
    grads = cs.class_representatives(CAPS, "float32", budget_scale=1 / 16, first_edges=True, long_past=256)
    assert not any(c.config.n_heads == 300 for c in grads)  # the gradients' edges stay the size classes'


def test_longest_cache_decodes_over_one_key_past_16_bits():
    (long, wide) = cc.longest_cache(CAPS, "float32")
    assert wide.T == 2**16 + 1 and wide.extra["prefill"] == 2**16 and wide.extra["chunks"] == [1]
    capped = type("Caps", (), {"max_tokens": 4096, "causal": True})()
    assert [c.T for c in cc.longest_cache(capped, "float32")] == [4096]


def _forward(cls, case, dtype="float32"):
    b = cls()
    kw = {} if case.key_padding_mask is None else {"key_padding_mask": case.key_padding_mask}
    with np.errstate(over="ignore", invalid="ignore"):  # the overflowing mutant's inf and NaN are the point
        return b.forward(case.x.astype(np.float32), b.prepare(case.params, dtype), case.config, **kw)


def test_pair_index_mutant_is_right_up_to_65536_pairs_and_wrong_past():
    for B, wrong in ((2048, False), (2049, True)):  # x 32 heads: 65,536 and 65,568 pairs
        case = cs.case_from(AttentionConfig(d_in=4, d_out=32, n_heads=32), B, 2, "float32", seed=1)
        same = np.array_equal(_forward(PairIndex16, case), _forward(PlainBackend, case))
        assert same != wrong


def test_key_index_mutant_is_right_up_to_65535_keys_and_wrong_past():
    config = AttentionConfig(d_in=4, d_out=4, n_heads=1, causal=True)
    case = cs.case_from(config, 1, 2**16 + 1, "float32", seed=1)
    outs = []
    for cls in (KeyIndex16, PlainBackend):
        b = cls()
        w = b.prepare(case.params, "float32")
        x = case.x.astype(np.float32)
        for t in (2**16 - 2, 2**16):  # decode the last token over 2^16 - 1, then 2^16 + 1 keys
            y, _ = b.decode(x[:, t:t + 1], b.prefill(x[:, :t], w, config), w, config)
            outs.append(y)
    assert np.array_equal(outs[0], outs[2]) and not np.allclose(outs[1], outs[3], rtol=1e-3)


def test_float16_accumulator_is_right_on_gaussian_draws_and_overflows_on_an_outlier_channel():
    config = AttentionConfig(d_in=24, d_out=8, n_heads=2)
    case = cs.case_from(config, 2, 65, "float32", seed=2, param_scale=2.0)
    np.testing.assert_allclose(_forward(Float16Accumulator, case), _forward(PlainBackend, case), rtol=1e-5, atol=1e-6)
    x = case.x.copy()
    x[..., 3] *= 1000  # one outlier channel: 127 / max|W_row| x its values passes 65,504
    outlier = case.with_(x=x)
    assert np.all(np.isfinite(_forward(PlainBackend, outlier)))
    assert not np.all(np.isfinite(_forward(Float16Accumulator, outlier)))


def test_calibrate_values_option_names_the_distributions(capsys):
    from conformance.tools import calibrate

    assert calibrate.main(["--values", "uniform"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'gaussian', 'activation-like'" in err


def test_a_wrong_decode_over_2_16_keys_is_judged_without_the_top_left_square():
    from conformance.suite.cache_reference import looks_top_left

    (_, wide) = cc.longest_cache(CAPS, "float32")
    got = np.zeros((1, 1, 4))
    assert looks_top_left(wide, got, 1e-3) is False  # the (Tk, Tk) square would be 32 GiB
