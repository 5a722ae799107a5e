"""Poisoned positions (conformance/suite/checks/poison.py): the poison is as large as the dtype
allows and no larger, only the positions the spec says cannot matter are poisoned, only the rows
they cannot reach are compared, and the check kills the masking bugs that moderate inputs hide."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from conformance.mutants.base import PlainBackend
from conformance.mutants.catalogue import FutureLeak, PaddingAddsSentinel, PaddingZeroedAfterExp
from conformance.suite import profiles
from conformance.suite import strategies as cs
from conformance.suite.calls import Runner
from conformance.suite.checks import get
from conformance.suite.checks import poison as P
from conformance.suite.engine import run_check
from impls.base import Capabilities
from spec.config import AttentionConfig, numpy_dtype

DTYPES = ("float64", "float32", "float16", "bfloat16")
CHECK = "poisoned_positions_ignored"


@pytest.fixture(autouse=True)
def quick_profile():
    profiles.load("quick")  # tests/conftest.py puts the previous profile back after each test


def _case(dtype: str, causal: bool, padding: str, qkv_bias: bool = True, t: int = 5, seed: int = 3):
    cfg = AttentionConfig(d_in=6, d_out=8, n_heads=2, causal=causal, qkv_bias=qkv_bias)
    case = cs.case_from(cfg, 2, 11, dtype, seed=seed, param_scale=cs.value_scales(dtype)[1][0])
    kpm = None
    if padding == "left":
        kpm = np.ones((2, 11), dtype=bool)
        kpm[:, :3] = False
    elif padding == "random":
        kpm = np.random.default_rng(seed).random((2, 11)) > 0.4
        kpm[:, 0] = True  # some row is left to compare
    return case.with_(key_padding_mask=kpm, extra={"t": t if causal else 10, "poison_seed": seed})


def _abs_bounds(case, x):
    """|x|, and per head sum_d |a_d| |b_d| of every projection and every score, from |x| and |W|."""
    p, H = case.params, case.config.n_heads
    ax = np.abs(x)
    proj = [ax @ np.abs(W).T + (0 if b is None else np.abs(b))
            for W, b in ((p.W_q, p.b_q), (p.W_k, p.b_k), (p.W_v, p.b_v))]  # (B, T, d_out)
    heads = lambda a: a.reshape(*a.shape[:2], H, -1).transpose(0, 2, 1, 3)  # noqa: E731  (B, H, T, hd)
    scores = heads(proj[0]) @ heads(proj[1]).swapaxes(-1, -2)  # (B, H, T, T)
    return ax, proj, scores


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal, padding", [(True, "left"), (True, "none"), (False, "random"), (True, "random")])
def test_poison_is_the_largest_that_keeps_projections_and_scores_finite(dtype, causal, padding):
    case = _case(dtype, causal, padding)
    poison = P.poisoned_tokens(case)
    x = P.poisoned_inputs(case)
    limit = float(ml_dtypes.finfo(numpy_dtype(dtype)).max) / P.POISON_HEADROOM
    assert poison.any() and np.array_equal(x[~poison], case.x[~poison])  # clean tokens untouched
    assert np.array_equal(x.astype(numpy_dtype(dtype)).astype(np.float64), x)  # values of the dtype
    ax, proj, scores = _abs_bounds(case, x)
    # every input, projection and score stays within the limit in any order of summation
    assert ax.max() <= limit and max(a.max() for a in proj) <= limit and scores.max() <= limit * 1.0001
    # and the poison is not small: the binding bound is reached within a factor 2
    assert max(ax.max(), max(a.max() for a in proj), scores.max()) >= limit / 2
    # each poisoned token is far past the clean inputs (at least 5x their largest: float16 allows
    # scores of two poisoned tokens up to 16376, so its poison is near sqrt(16376) = 128)
    assert np.abs(x[poison]).max(-1).min() > 5 * np.abs(case.x).max()


def test_poisoned_tokens_and_compared_rows():
    case = _case("float32", True, "left", t=5)
    poison = P.poisoned_tokens(case)
    assert poison[:, :3].all() and poison[:, 6:].all() and not poison[:, 3:6].any()
    rows = P.compared_rows(Runner(PlainBackend(), "float32"), case)
    assert np.array_equal(rows, ~poison)  # no declared convention: every row not poisoned
    nc = _case("float32", False, "random")
    assert np.array_equal(P.poisoned_tokens(nc), ~nc.key_padding_mask)  # non-causal: padding only


def test_drawn_cases_poison_something_and_compare_something():
    from hypothesis import HealthCheck, given, settings

    caps = PlainBackend.capabilities

    @settings(max_examples=40, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(P.poison_cases(caps, "float32"))
    def each(case):
        poison = P.poisoned_tokens(case)
        assert poison.any() and (~poison).any()
        assert case.extra["padding"] in (*P.POISON_PADDINGS, "none")
        assert case.extra["padding"] != "none" or case.config.causal

    each()


class _CausalNoPadding(PlainBackend):
    capabilities = Capabilities(dtypes=("float32",), causal=True, non_causal=True, key_padding_mask=False)


def test_without_padding_only_causal_cases_are_drawn_and_a_correct_backend_passes():
    r = run_check(get(CHECK), _CausalNoPadding(), "float32", seed=5)
    assert r.outcome == "passed", r.reason


class _NoMasks(PlainBackend):
    capabilities = Capabilities(dtypes=("float32",), causal=False, non_causal=True)


def test_needs_causal_attention_or_padding():
    assert "no position the spec says cannot matter" in get(CHECK).unsupported(_NoMasks(), "float32")
    assert get(CHECK).unsupported(PlainBackend(), "float32") is None


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_correct_backend_passes(dtype):
    r = run_check(get(CHECK), PlainBackend(), dtype, seed=1)
    assert r.outcome == "passed", r.reason


@pytest.mark.parametrize("mutant, dtypes", [(PaddingAddsSentinel, ["float32"]),
                                            (PaddingZeroedAfterExp, ["float32", "float16"]),
                                            (FutureLeak, ["float32", "float16"])])
def test_poison_kills_masking_bugs(mutant, dtypes):
    profiles.load("mutants")  # the kill table's examples: float16's poison needs a few draws to leak
    for dtype in dtypes:
        r = run_check(get(CHECK), mutant(), dtype, seed=1)
        assert r.outcome == "failed" and "disagrees with itself" in r.reason, (mutant.name, dtype, r.reason)


@pytest.mark.parametrize("mutant", [PaddingAddsSentinel, PaddingZeroedAfterExp])
def test_moderate_inputs_hide_the_padding_mutants_and_poison_shows_them(mutant):
    from conformance.suite.engine import run_once

    case = _case("float32", False, "random")
    ok, bad = PlainBackend(), mutant()
    w = ok.prepare(case.params, "float32")
    x, kpm = case.x.astype(np.float32), case.key_padding_mask
    assert np.array_equal(bad.forward(x, w, case.config, key_padding_mask=kpm),
                          ok.forward(x, w, case.config, key_padding_mask=kpm))  # bit for bit
    assert run_once(get(CHECK), ok, case).outcome == "passed"
    r = run_once(get(CHECK), bad, case)
    assert r.outcome == "failed" and "disagrees with itself" in r.reason, r.reason


def test_the_added_sentinel_cannot_leak_in_float16():
    # float16 scores stay below 65504: -1e9 added always masks, so the mutant is n/a there
    assert PaddingAddsSentinel.float16_na and "65504" in PaddingAddsSentinel.float16_na
