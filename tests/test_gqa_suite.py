"""Grouped-query attention in the suite: who draws n_kv_heads and how often, the fixed examples,
the grouped properties on the correct PlainBackend, and the grouped mutants killed at float32
and float16 (conformance/mutants/grouped.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import Phase, given, settings

from conformance.cli import grouped_share, print_grouped_share
from conformance.mutants.base import PlainBackend
from conformance.mutants.grouped import (GROUPED_CACHE_MUTANTS, GroupCacheReadsGroupZero, GroupCacheRepeated,
                                         GroupGradAveraged, GroupGradFirstHead, GroupInterleaved,
                                         GroupOnlyAtTheEnds)
from conformance.suite import profiles
from conformance.suite import strategies as cs
from conformance.suite.checks import get
from conformance.suite.checks.grouped import repeated_kv
from conformance.suite.engine import run_check
from impls.numpy_backend import NumpyBackend
from impls.torch_mha import TorchMhaBackend
from tests.test_backends import numpy_as_cupy  # noqa: F401  (the fixture: a NumPy stand-in for cupy)
from spec import AttentionConfig, forward, init_params
from spec.params import Params

#: Independent Hypothesis runs per share estimate, each of the default profile's examples (one
#: check's run). Examples within one run are correlated (Hypothesis starts simple and mutates
#: what it drew), so a single run's share spreads widely (sd about 0.15 around 0.45 to 0.6);
#: the aggregate over 40 runs, like a suite run's over its checks, has an sd near 0.025.
RUNS = 40


def _suite_share(caps, large: bool) -> tuple[float, list[AttentionConfig]]:
    """The share of grouped draws the way the suite draws them: `RUNS` @given runs of
    `cases`, each under the default profile (so its max_examples), no example database."""
    profiles.register()
    settings.load_profile("default")  # put back after the test by tests/conftest.py
    seen: list[AttentionConfig] = []

    @settings(database=None, phases=(Phase.generate,))
    @given(cs.cases(caps, "float32", large=large, padding=False))
    def draw(case):
        seen.append(case.config)

    for _ in range(RUNS):
        draw()
    return sum(c.kv_heads < c.n_heads for c in seen) / len(seen), seen


@pytest.mark.parametrize("large", [False, True])
def test_a_third_or_more_of_draws_are_grouped_for_a_declaring_backend(large):
    share, configs = _suite_share(NumpyBackend.capabilities, large)
    assert share >= 1 / 3, f"{share:.2f} of {len(configs)} draws grouped"
    assert all(c.n_heads % c.kv_heads == 0 for c in configs)
    grouped = [c for c in configs if c.kv_heads < c.n_heads]
    assert any(c.kv_heads == 1 for c in grouped) and any(c.kv_heads > 1 for c in grouped)


def test_backends_without_the_capability_never_get_grouped_heads():
    assert not TorchMhaBackend.capabilities.grouped_kv
    assert _suite_share(TorchMhaBackend.capabilities, large=False)[0] == 0
    cfg = AttentionConfig(d_in=8, d_out=8, n_heads=4, n_kv_heads=2)
    assert "grouped_kv" in TorchMhaBackend.capabilities.unsupported(cfg)
    assert NumpyBackend.capabilities.unsupported(cfg) is None


def test_fixed_examples_are_multi_query_and_a_group_of_two_only_for_declaring_backends():
    reps = cs.class_representatives(NumpyBackend.capabilities, "float32")
    kv = {(c.config.n_heads, c.config.kv_heads) for c in reps if c.config.kv_heads < c.config.n_heads}
    assert kv == {(4, 1), (4, 2)}
    assert cs.grouped_representatives(TorchMhaBackend.capabilities, "float32") == []
    assert get("grads_match_spec").explicit_cases(NumpyBackend(), "float32")  # gradients see them too
    assert all(c.extra["prefill"] == 9 for c in get("cache_holds_spec_kv").explicit_cases(NumpyBackend(), "float32"))
    one_by_one = get("decode_token_by_token").explicit_cases(NumpyBackend(), "float32")
    assert len(one_by_one) == 2 and all(c.extra["chunks"] == [1] * 8 for c in one_by_one)  # 8 steps past the first


def test_repeated_kv_is_the_spec_exactly_and_head_permutations_keep_groups():
    cfg = AttentionConfig(d_in=3, d_out=12, n_heads=6, n_kv_heads=2, qkv_bias=True)
    p = init_params(cfg, 1).map(lambda a: a * 3)
    x = np.random.default_rng(0).standard_normal((2, 5, 3))
    full, fp = repeated_kv(cfg, p)
    assert full.kv_heads == 6 and fp.W_k.shape == (12, 3)
    np.testing.assert_array_equal(forward(x, fp, full), forward(x, p, cfg))
    perm = {"kv": [1, 0], "within": [2, 0, 1]}
    q_idx, kv_idx = cs.head_perm_indices(cfg, perm)
    assert list(q_idx[::2] // 2) == [5, 3, 4, 2, 0, 1] and list(kv_idx[::2] // 2) == [1, 0]

    def permuted(qi, ki):
        rows = {k: getattr(p, k)[qi if k[-1] == "q" else ki] for k in ("W_q", "W_k", "W_v", "b_q", "b_k", "b_v")}
        return Params(W_o=p.W_o[:, qi], b_o=p.b_o, **rows)

    y = forward(x, p, cfg)
    assert np.abs(forward(x, permuted(q_idx, kv_idx), cfg) - y).max() < 1e-12
    # moving the K/V heads without their groups is a different block: the property can fail
    assert np.abs(forward(x, permuted(q_idx, kv_idx[::-1].copy()), cfg) - y).max() > 1e-3


@pytest.fixture
def quick():
    profiles.load("quick")  # tests/conftest.py puts the previous profile back after each test


@pytest.fixture
def mutants():
    profiles.load("mutants")  # the kill table's profile


@pytest.mark.parametrize("check", ["matches_spec", "grouped_equals_repeated_kv", "head_permutation_invariance",
                                   "grads_match_spec", "grads_head_permutation_invariant", "cache_holds_spec_kv",
                                   "decode_token_by_token"])
def test_the_correct_plain_backend_passes_the_grouped_checks(check, quick):
    r = run_check(get(check), PlainBackend(), "float32", seed=3)
    assert r.outcome == "passed", r.reason
    assert 0 < r.grouped <= r.examples  # counted for results.json's grouped_examples


def test_the_run_summary_states_each_backends_grouped_share(capsys):
    records = [{"backend": "a", "examples": 30, "grouped_examples": 12},
               {"backend": "a", "examples": 10, "grouped_examples": 4},
               {"backend": "b", "examples": 30, "grouped_examples": 0},
               {"backend": "a", "outcome": "unsupported"}]
    assert grouped_share(records) == {"a": (16, 40)}  # b drew none: not listed
    print_grouped_share(records)
    assert "a 40% of 40" in capsys.readouterr().out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mutant, killer", [
    (GroupInterleaved, "matches_spec"), (GroupOnlyAtTheEnds, "matches_spec"),
    (GroupInterleaved, "grouped_equals_repeated_kv"), (GroupOnlyAtTheEnds, "grouped_equals_repeated_kv"),
    (GroupGradFirstHead, "grads_match_spec"), (GroupGradAveraged, "grads_match_spec"),
    (GroupCacheRepeated, "cache_holds_spec_kv"),
    (GroupCacheReadsGroupZero, "cache_holds_spec_kv"), (GroupCacheReadsGroupZero, "decode_token_by_token"),
], ids=lambda v: getattr(v, "name", v))
def test_each_grouped_mutant_is_killed(mutant, killer, dtype, mutants):
    r = run_check(get(killer), mutant(), dtype, seed=3)
    assert r.outcome == "failed", f"{mutant.name} survived {killer} at {dtype}"


@pytest.mark.parametrize("mutant", [GroupGradFirstHead, GroupGradAveraged, *GROUPED_CACHE_MUTANTS],
                         ids=lambda m: m.name)
def test_gradient_and_cache_mutants_have_a_right_forward(mutant, quick):
    assert run_check(get("matches_spec"), mutant(), "float32", seed=3).outcome == "passed"


def test_a_grouped_failure_bundle_replays_with_its_kv_heads(tmp_path):
    case = cs.grouped_representatives(NumpyBackend.capabilities, "float32")[1]
    loaded, _ = type(case).load(case.save(tmp_path / "case.npz", {}))
    assert loaded.config == case.config and loaded.config.kv_heads == 2
    assert "n_kv_heads=2" in case.describe() and loaded.params.W_k.shape == (16, 16)


# The same float64 math in other operation orders (blocked, fused projection): a few roundings
# (~1e-16) times these small cases' conditioning, as tests/test_gqa_spec.py's RTOL.
BACKEND_RTOL = 1e-12


@pytest.mark.parametrize("name", ["numpy", "cupy-on-numpy", "torch", "torch-sdpa"])
def test_declaring_backends_match_the_spec_grouped_forward_gradients_and_cache(name, request):
    from impls.registry import resolve
    from spec import cache as C
    from spec import grads

    be = request.getfixturevalue("numpy_as_cupy") if name == "cupy-on-numpy" else resolve(name).backend
    assert be.capabilities.grouped_kv
    for H, Hkv, T in ((6, 2, 7), (4, 1, 5), (8, 2, 300)):  # 300: the blocked paths of numpy's forward
        cfg = AttentionConfig(d_in=5, d_out=2 * H, n_heads=H, n_kv_heads=Hkv, qkv_bias=True)
        p = init_params(cfg, 3)
        x = np.random.default_rng(0).standard_normal((2, T, 5))
        kpm = np.ones((2, T), dtype=bool)
        kpm[1, :2] = False
        w, nx = be.prepare(p, "float64"), be.from_numpy(x, "float64")
        want = forward(x, p, cfg, key_padding_mask=kpm)
        got = be.to_numpy(be.forward(nx, w, cfg, key_padding_mask=be.from_numpy(kpm)))
        assert np.abs(got - want).max() <= BACKEND_RTOL * np.abs(want).max(), (name, H, Hkv)
        g = np.random.default_rng(1).standard_normal(want.shape)
        out = be.backward(be.forward_for_grad(nx, w, cfg, key_padding_mask=be.from_numpy(kpm))[1],
                          be.from_numpy(g, "float64"))
        ref = grads(x, p, cfg, g, key_padding_mask=kpm).arrays()
        overall = max(np.abs(r).max() for r in ref.values())  # db_k is rounding noise: on the whole scale
        for k, r in ref.items():
            assert np.abs(be.to_numpy(out[k]) - r).max() <= BACKEND_RTOL * overall, (name, H, Hkv, k)
        cache = be.prefill(be.from_numpy(x[:, :3], "float64"), w, cfg)
        y, cache = be.decode(be.from_numpy(x[:, 3:], "float64"), cache, w, cfg)
        spec_cache = C.prefill(x, p, cfg)
        assert all(be.to_numpy(a).shape == (2, Hkv, T, 2) for a in be.cache_kv(cache))
        np.testing.assert_allclose(be.to_numpy(be.cache_kv(cache)[0]), spec_cache.k, rtol=0, atol=1e-12)
        assert np.abs(be.to_numpy(y) - forward(x, p, cfg)[:, 3:]).max() <= BACKEND_RTOL * np.abs(want).max()
