"""The peers' score modifiers (issue 26): the window and softcap each adapter declares, against the
spec, and each library's own convention measured by the semantic profile's probes.

Each test needs its peer's package and is skipped with the reason when it is missing (the default
test environment has none: MHA_WITH_PEERS=1 nox -s tests installs them).
"""

from __future__ import annotations

import numpy as np
import pytest

import spec
from conformance.semantics import probes
from impls.registry import resolve

PEERS = {"jax": "jax", "flax": "flax", "onnxruntime": "onnxruntime"}  # backend -> package it needs
#: float64 is float32-level for the three (their softmax runs in float32, measured ~1e-7 relative),
#: so both dtypes are held to float32's rounding of these O(1) outputs; 16-bit ones are not compared.
TOL = 1e-5
CONFIGS = {  # the modifiers with grouped heads, padding and either mask
    "causal_window": spec.AttentionConfig(8, 8, 4, n_kv_heads=2, causal=True, window=(2, 0)),
    "non_causal_window": spec.AttentionConfig(8, 8, 4, causal=False, qkv_bias=True, window=(1, 2)),
    "causal_softcap": spec.AttentionConfig(8, 8, 4, n_kv_heads=2, causal=True, softcap=1.5),
    "non_causal_softcap": spec.AttentionConfig(8, 8, 4, causal=False, qkv_bias=True, softcap=3.0),
}


def _skip_without(name: str) -> None:
    pytest.importorskip(PEERS[name], reason=f"{PEERS[name]} is not installed (MHA_WITH_PEERS=1 nox -s tests installs it)")


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("name", sorted(PEERS))
def test_declared_modifiers_give_the_spec(name, config_name):
    _skip_without(name)
    b = resolve(name).backend
    config = CONFIGS[config_name]
    if b.capabilities.unsupported(config):
        assert (config.window is not None and name != "jax") or (config.softcap is not None and name != "onnxruntime")
        refuses_by_name(b, config, "window|softcap")
        return
    gives_the_spec(b, config, f"{name} {config_name}", masks=("kpm",))


def refuses_by_name(b, config: spec.AttentionConfig, match: str) -> None:
    """The adapter raises a ValueError naming what it does not take: never dropped silently."""
    with pytest.raises(ValueError, match=match):
        b.forward(b.from_numpy(np.zeros((1, 3, 8)), "float32"), b.prepare(spec.init_params(config, 0), "float32"),
                  config)


def gives_the_spec(b, config: spec.AttentionConfig, label: str, masks: tuple[str, ...] = (None, "kpm")) -> None:
    """b's forward equals the spec's at float64 and float32 (within TOL of the output's scale) on
    peaked rows (weights x3: a wrong key or term shows), without a padding mask and/or with one
    under which batch 1's first queries see no key (a zero context, with or without sinks)."""
    rng = np.random.default_rng(0)
    params = spec.init_params(config, seed=1).map(lambda a: a * 3)
    x = rng.standard_normal((2, 7, config.d_in))
    kpm = rng.random((2, 7)) > 0.3
    kpm[1, :3] = False
    for mask in (None if m is None else kpm for m in masks):
        golden = spec.forward(x, params, config, key_padding_mask=mask)
        for dtype in ("float64", "float32"):
            got = b.to_numpy(b.forward(b.from_numpy(x, dtype), b.prepare(params, dtype), config,
                                       key_padding_mask=None if mask is None else b.from_numpy(mask)))
            np.testing.assert_allclose(got.astype(np.float64), golden, rtol=0, atol=TOL * np.abs(golden).max(),
                                       err_msg=f"{label} {dtype} padding={mask is not None}")


def _raw(name: str):
    from conformance.semantics.libraries import all_raw

    _skip_without(name)
    return {r.name: r for r in all_raw()}[name]


def test_jax_window_covers_w_plus_1_keys_aligned_top_left():
    e = probes.window_convention(_raw("jax"))
    assert e["value"] == "w + 1 keys, top-left", e


def test_onnxruntime_softcaps_the_scaled_scores_before_the_mask():
    e = probes.softcap_position(_raw("onnxruntime"))
    assert e["value"] == "before the mask", e


@pytest.mark.parametrize("name,kind", [("jax", "softcap"), ("onnxruntime", "window"), ("flax", "window"),
                                       ("flax", "softcap")])
def test_a_modifier_the_library_lacks_reads_not_offered_with_its_arguments(name, kind):
    probe = probes.window_convention if kind == "window" else probes.softcap_position
    e = probe(_raw(name))
    assert e["value"] == "not offered" and "is_causal" in e["detail"], e  # the arguments it does have, listed


def test_jax_zeroes_a_row_whose_window_holds_only_padded_keys():
    _skip_without("jax")
    config = spec.AttentionConfig(4, 4, 2, causal=True, window=(1, 0))
    params = spec.init_params(config, seed=2)
    x = np.random.default_rng(3).standard_normal((1, 5, 4))
    kpm = np.array([[True, True, False, False, False]])  # queries 3 and 4 see keys 2..3, 3..4: all padded
    b = resolve("jax").backend
    got = b.to_numpy(b.forward(b.from_numpy(x, "float32"), b.prepare(params, "float32"), config,
                               key_padding_mask=b.from_numpy(kpm)))
    np.testing.assert_allclose(got[0, 3:], np.broadcast_to(params.b_o, (2, 4)), rtol=0, atol=1e-6)  # zero context
    np.testing.assert_allclose(got, spec.forward(x, params, config, kpm), rtol=0, atol=1e-5)
