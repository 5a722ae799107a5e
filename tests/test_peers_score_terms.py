"""The peers' score terms (issue 27 item 4): ALiBi, bias arrays and sinks through the jax and
onnxruntime adapters against the spec, flax's refusal, and each library's own fully masked rows
measured by the semantic profile's probes.

Each test needs its peer's package and is skipped with the reason when it is missing (the default
test environment has none: MHA_WITH_PEERS=1 nox -s tests installs them).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import spec
from conformance.semantics import probes
from conformance.semantics import score_terms as st
from impls.registry import resolve
from spec.scores import BiasArray
from tests.test_peers_modifiers import PEERS, _skip_without, gives_the_spec, refuses_by_name

_rng = np.random.default_rng(5)
SINKS = (0.5, -1.0, 2.0, -math.inf)  # one head without a sink
CONFIGS = {  # each term alone and combined, with grouped heads, padding (empty rows) and either mask
    "alibi_causal_grouped": spec.AttentionConfig(8, 8, 4, n_kv_heads=2, causal=True, bias="alibi"),
    "bias_per_key_non_causal": spec.AttentionConfig(8, 8, 4, causal=False, qkv_bias=True,
                                                    bias=BiasArray(_rng.standard_normal((1, 4, 1, 7)) * 2)),
    "bias_per_row_sinks": spec.AttentionConfig(8, 8, 4, causal=True, sinks=SINKS,
                                               bias=BiasArray(_rng.standard_normal((2, 4, 7, 1)) * 2)),
    "sinks_alibi_multi_query": spec.AttentionConfig(8, 8, 4, n_kv_heads=1, causal=False, bias="alibi",
                                                    sinks=(0.0, 1.0, -2.0, 3.0)),
    "window_bias_sinks": spec.AttentionConfig(8, 8, 4, causal=True, window=(2, 0), sinks=SINKS,
                                              bias=BiasArray(_rng.standard_normal((4, 7, 7)) * 2)),
    "softcap_alibi_sinks": spec.AttentionConfig(8, 8, 4, causal=True, softcap=1.5, bias="alibi", sinks=SINKS),
}


@pytest.mark.parametrize("name", ["jax", "onnxruntime"])
def test_jax_and_onnxruntime_declare_bias_and_sinks_flax_neither_with_its_reason(name):
    caps = resolve(name).backend.capabilities
    assert caps.bias and caps.sinks and "sink" in caps.notes
    flax = resolve("flax").backend.capabilities
    assert not flax.bias and not flax.sinks and "no score bias or sinks" in flax.notes


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("name", ["jax", "onnxruntime"])
def test_score_terms_give_the_spec(name, config_name):
    _skip_without(name)
    b = resolve(name).backend
    config = CONFIGS[config_name]
    why = b.capabilities.unsupported(config)
    if why:  # jax: no softcap; onnxruntime: no window; each refused by name, never dropped silently
        assert (name, config.softcap is None) in (("jax", False), ("onnxruntime", True)), why
        refuses_by_name(b, config, "softcap" if name == "jax" else "window")
        return
    gives_the_spec(b, config, f"{name} {config_name}")


def test_flax_refuses_a_bias_and_sinks_by_name():
    _skip_without("flax")
    b = resolve("flax").backend
    for config in (CONFIGS["alibi_causal_grouped"], spec.AttentionConfig(8, 8, 4, sinks=SINKS)):
        assert b.capabilities.unsupported(config)
        refuses_by_name(b, config, r"bias=.*sinks=.*valid: bias=None, sinks=None")


def _raw(name: str):
    from conformance.semantics.libraries import all_raw

    _skip_without(name)
    return {r.name: r for r in all_raw()}[name]


@pytest.mark.parametrize("name", ["jax", "onnxruntime"])
def test_a_float_bias_of_minus_1e9_gives_the_mean_of_v_on_the_raw_library(name):
    e = st.bias_masked_row(_raw(name), probes)
    assert e["value"] == "mean of V (uniform weights)", e
    assert ("bias=" if name == "jax" else "float attn_mask") in e["detail"], e


def test_flax_takes_no_float_bias_read_from_its_signature():
    e = st.bias_masked_row(_raw("flax"), probes)
    assert e["value"] == "not offered" and "inputs_q" in e["detail"], e


@pytest.mark.parametrize("name", sorted(PEERS))
def test_no_peer_library_offers_a_sink(name):
    e = st.sink_masked_row(_raw(name), probes)
    assert e["value"] == "not offered" and "no sink" in e["detail"], e
    assert "mask" in e["detail"] and ("is_causal" in e["detail"] or "num_heads" in e["detail"]), e  # its arguments listed
