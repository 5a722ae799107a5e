"""Check requirements are data: each check names what it needs, and Capabilities alone gives the reason."""

from __future__ import annotations

import pytest

from conformance.suite.checks import catalogue
from impls.base import NEEDS, Capabilities


def test_every_check_names_only_known_needs():
    for c in catalogue():
        assert set(c.needs) <= set(NEEDS), (c.name, c.needs)


@pytest.mark.parametrize("caps, needs, reason", [
    (Capabilities(), ("gradients",), "gradients not declared (Capabilities.gradients)"),
    (Capabilities(gradients=True, dropout="rng"), ("gradients", "grad_replay"), "dropout='rng': the backend's own keep"),
    (Capabilities(causal=False), ("maskable",), "neither causal attention nor key padding masks"),
    (Capabilities(causal=False, key_padding_mask=True), ("maskable",), None),
    (Capabilities(key_padding_mask=True), ("key_padding_mask", "kv_cache"), "KV-cache decoding not declared"),
])
def test_needs_become_the_first_unmet_reason(caps, needs, reason):
    got = caps.unmet(needs)
    assert (got is None) if reason is None else got.startswith(reason), got


def test_an_unknown_need_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown need 'cache'; valid: causal, non_causal"):
        Capabilities().unmet(("cache",))
