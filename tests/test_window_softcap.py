"""Sliding windows and the logit softcap (issue 26): the backends against the spec, the
capability gate, the drawn configs, and each window mutant's bug reaching the path it names."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import errors, find

from conformance.mutants.windows import WINDOW_DECODE_MUTANTS, WINDOW_MUTANTS, WindowedPlain
from conformance.suite import strategies as cs
from conformance.suite.cache_reference import decoded
from impls.base import Capabilities
from spec import steps as S
from spec.block import forward
from spec.config import AttentionConfig
from spec.params import init_params

CONFIGS = {
    "causal_window_softcap_gqa": AttentionConfig(8, 8, 4, n_kv_heads=2, causal=True, window=(2, 0), softcap=1.5),
    "non_causal_window_softcap": AttentionConfig(8, 8, 4, causal=False, qkv_bias=True, window=(1, 2), softcap=3.0),
    "non_causal_window": AttentionConfig(8, 8, 4, causal=False, window=(1, 2)),
}


def _problem(config: AttentionConfig, B: int = 2, T: int = 7, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = init_params(config, seed + 1).map(lambda a: a * 3)  # peaked rows: a wrong key shows
    kpm = rng.random((B, T)) > 0.3
    kpm[1, :3] = False  # with a window, batch 1's early queries see no key
    return params, rng.standard_normal((B, T, config.d_in)), kpm


#: torch-flex on the config holding every modifier only: its first eager call costs seconds (flex's
#: dispatch warming up; impls/torch_flex.py), each later one a fraction of a second
PAIRS = [(b, n) for b in ("numpy", "torch", "torch-sdpa") for n in sorted(CONFIGS)] + \
    [("torch-flex", "causal_window_softcap_gqa")]


@pytest.mark.parametrize("backend,name", PAIRS)
def test_backends_forward_and_decode_give_the_spec_with_the_modifiers(backend, name):
    pytest.importorskip("torch") if backend.startswith("torch") else None
    import importlib

    from impls.registry import BUILTINS

    module, attr = BUILTINS[backend].split(":")
    b = getattr(importlib.import_module(module), attr)()
    config = CONFIGS[name]
    if b.capabilities.unsupported(config):
        assert backend == "torch-sdpa" and config.softcap is not None  # SDPA takes no softcap, by declaration
        return
    params, x, kpm = _problem(config)
    w = b.prepare(params, "float64")
    mask = b.from_numpy(kpm) if backend.startswith("torch") else kpm
    got = b.to_numpy(b.forward(b.from_numpy(x, "float64"), w, config, key_padding_mask=mask))
    np.testing.assert_allclose(got, forward(x, params, config, kpm), rtol=0, atol=1e-12)
    cache = b.prefill(b.from_numpy(x[:, :3], "float64"), w, config, key_padding_mask=mask[:, :3])
    y, _ = b.decode(b.from_numpy(x[:, 3:], "float64"), cache, w, config, key_padding_mask=mask[:, 3:])
    np.testing.assert_allclose(b.to_numpy(y), decoded(x, params, config, kpm, 3, (4,)), rtol=0, atol=1e-12)


def test_the_softcap_bounds_the_scores_and_saturated_keys_share_their_weight():
    s = np.array([[[[0.0, 10.0, 100.0, 1000.0]]]])  # head_dim 4: scaled by 1/2
    capped = S.softcap(s / 2, 5.0)
    assert np.all(np.abs(capped) < 5.0 + 1e-12) and capped[..., 3] == pytest.approx(5.0)
    w = S.attn_weights(s, AttentionConfig(4, 4, 1, causal=False, softcap=5.0))
    assert w[..., 2] == pytest.approx(w[..., 3], rel=1e-6) and w[..., 0] < 0.01  # uncapped: all on key 3


def test_an_undeclared_modifier_is_unsupported_with_its_reason():
    caps = Capabilities()
    assert "sliding windows are not supported" in caps.unsupported(AttentionConfig(4, 4, 1, window=(1, 0)))
    assert "softcapping is not supported" in caps.unsupported(AttentionConfig(4, 4, 1, softcap=5.0))
    assert Capabilities(window=True, softcap=True).unsupported(AttentionConfig(4, 4, 1, window=(1, 0), softcap=5.0)) is None
    assert caps.unmet(("window",)) and Capabilities(window=True).unmet(("window",)) is None


def test_configs_draw_the_modifiers_only_for_a_backend_declaring_them():
    both = Capabilities(window=True, softcap=True)
    assert find(cs.configs(both), lambda c: c.window is not None and c.softcap is not None)
    for causal in (True, False):  # undeclared: the modifier strategies draw nothing but None
        with pytest.raises(errors.NoSuchExample):
            find(cs.windows(Capabilities(), causal), lambda w: w is not None)
    with pytest.raises(errors.NoSuchExample):
        find(cs.softcaps(Capabilities()), lambda c: c is not None)


def test_config_round_trips_through_its_dict():
    c = CONFIGS["causal_window_softcap_gqa"]
    assert AttentionConfig.from_dict(c.to_dict()) == c
    assert "window" not in AttentionConfig(4, 4, 1).to_dict()  # configs without them read and write as before


#: The path each mutant's bug must reach: (config, Tq of the step-8 call, what to compare).
MUTANT_PATHS = {
    "mutant-window-left-wide": (AttentionConfig(4, 4, 1, window=(1, 0)), 6),
    "mutant-window-left-narrow": (AttentionConfig(4, 4, 1, window=(1, 0)), 6),
    "mutant-window-right-wide": (AttentionConfig(4, 4, 1, causal=False, window=(1, 1)), 6),
    "mutant-window-right-narrow": (AttentionConfig(4, 4, 1, causal=False, window=(1, 1)), 6),
    "mutant-window-top-left": (AttentionConfig(4, 4, 1, window=(1, 0)), 2),
    "mutant-window-forgotten-in-decode": (AttentionConfig(4, 4, 1, window=(1, 0)), 2),
    "mutant-softcap-after-mask": (AttentionConfig(4, 4, 1, softcap=2.0), 6),
    "mutant-softcap-unscaled": (AttentionConfig(4, 4, 1, causal=False, softcap=2.0), 6),
}


@pytest.mark.parametrize("mutant", WINDOW_MUTANTS + WINDOW_DECODE_MUTANTS, ids=lambda m: m.name)
def test_each_window_mutant_changes_step_8_where_it_says(mutant):
    config, Tq = MUTANT_PATHS[mutant.name]
    s = np.random.default_rng(1).standard_normal((1, 1, Tq, 6)) * 4  # Tq queries over 6 keys
    right = WindowedPlain().attn_weights(s, config)
    np.testing.assert_allclose(right, S.attn_weights(s, config), rtol=0, atol=1e-12)  # the base is correct
    assert not np.allclose(mutant().attn_weights(s, config), right), mutant.name
    if Tq < 6:  # a decode bug: right when the queries are all the keys
        square = np.random.default_rng(2).standard_normal((1, 1, 6, 6))
        np.testing.assert_allclose(mutant().attn_weights(square, config), S.attn_weights(square, config), atol=1e-12)


@pytest.mark.parametrize("mutant", [WindowedPlain, *WINDOW_DECODE_MUTANTS], ids=lambda m: m.__name__)
def test_the_cache_checks_kill_each_window_decode_mutant_and_pass_the_windowed_control(mutant, dtype="float32"):
    """Their forward is right (Tq = Tk), so the kill table reaches them only after every forward
    check (minutes each): here the cache checks alone, in catalogue order, at float32 and the quick
    profile, as tests/test_cache_checks.py does (`nox -s mutants` kills them at float16 too)."""
    from conformance.suite import profiles
    from conformance.suite.checks import catalogue, get
    from conformance.suite.engine import run_check

    profiles.load("quick")  # a suite profile (no deadline); tests/conftest.py puts the previous one back
    failed = None
    for c in [c for c in catalogue() if c.fn.__module__.endswith(".cache")]:
        r = run_check(c, mutant(), dtype, seed=2)
        if r.outcome == "failed":
            failed = (c.name, r.reason)
            break
        assert r.outcome == "passed", (c.name, r.outcome, r.reason)
    if mutant is WindowedPlain:
        assert failed is None, failed
    else:
        assert failed, f"{mutant.name} survived the cache checks"
        assert run_check(get("matches_spec"), mutant(), dtype, seed=2).outcome == "passed"  # the forward is right
