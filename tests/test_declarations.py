"""Two promises a backend may declare: non-finite masked inputs ignored
(Capabilities.non_finite_masked_inputs) and decoding equal to the forward bit for bit
(Capabilities.decode_invariant). The spec keeps the first itself; each is checked only where
declared, its control keeps it, its mutants break it, and the semantic profile measures both
on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from conformance.mutants.base import PlainBackend
from conformance.mutants.bitwise import SplitKVDecode, TokenByToken
from conformance.mutants.catalogue import MUTANTS
from conformance.mutants.nonfinite import BlendedSentinel, MaskedSelect, ValueTimesZero
from conformance.semantics import contract
from conformance.suite import profiles
from conformance.suite.checks import get
from conformance.suite.checks.poison import poison_cases
from conformance.suite.engine import run_check, run_once
from conformance.suite.judgement import Judgement
from conformance.suite.strategies import case_from
from impls.base import Capabilities
from impls.registry import available_names, resolve
from spec import block, steps
from spec.config import AttentionConfig


@pytest.fixture
def mutants_profile():
    profiles.load("mutants")  # the kill table's profile; tests/conftest.py puts the previous one back


# -- the spec keeps it --------------------------------------------------------------------------
@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_the_spec_ignores_non_finite_inputs_at_padded_and_future_tokens(fill):
    case = case_from(AttentionConfig(d_in=6, d_out=8, n_heads=2, causal=True, qkv_bias=True), 2, 7, "float64", seed=3)
    kpm = np.ones((2, 7), dtype=bool)
    kpm[0, :2] = False  # left padding
    kpm[1, 5:] = False  # right padding
    clean = block.forward(case.x, case.params, case.config, kpm)
    x = case.x.copy()
    x[~kpm] = fill
    x[:, 4:] = fill  # tokens 4.. are future tokens for rows 0..3
    with np.errstate(invalid="ignore"):
        got = block.forward(x, case.params, case.config, kpm)
    rows = kpm.copy()
    rows[:, 4:] = False  # (B, T): neither padded nor future
    assert rows.sum() == 6 and np.array_equal(got[rows], clean[rows])


def test_step_9_selects_rather_than_multiplying_by_zero():
    w = np.array([[[[0.5, 0.5, 0.0]]]])  # (1, 1, 1, 3): the third key masked
    V = np.array([[[[1.0], [3.0], [np.nan]]]])  # (1, 1, 3, 1): its value NaN
    with np.errstate(invalid="ignore"):
        assert np.isnan(w @ V).all()  # what 0 x NaN would give
    assert steps.context(w, V).item() == 2.0
    # a non-finite value whose weight is not 0 still reaches the output, with IEEE's sign rules
    assert steps.context(w, np.array([[[[1.0], [np.inf], [np.nan]]]])).item() == np.inf
    assert steps.context(w, np.array([[[[-np.inf], [1.0], [np.nan]]]])).item() == -np.inf
    assert np.isnan(steps.context(w, np.array([[[[np.inf], [-np.inf], [0.0]]]]))).item()
    assert np.isnan(steps.context(w, np.array([[[[np.nan], [1.0], [0.0]]]]))).item()


# -- non-finite masked inputs: checked where declared ---------------------------------------------
def test_only_a_declaring_backend_draws_non_finite_poison():
    seen = {}
    for caps in (PlainBackend.capabilities, MaskedSelect.capabilities):
        fills = []

        @settings(max_examples=15, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        @given(poison_cases(caps, "float32"))
        def draw(case):
            fills.append(case.extra.get("fill"))

        draw()
        seen[caps.non_finite_masked_inputs] = set(fills)
    assert seen[False] == {None}  # no extra draw: the examples of non-declaring backends are unchanged
    assert seen[True] - {"finite"}, seen  # NaN or inf drawn


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_select_control_keeps_the_promise(dtype, mutants_profile):
    r = run_check(get("poisoned_positions_ignored"), MaskedSelect(), dtype, seed=1)
    assert r.outcome == "passed", r.reason


@pytest.mark.parametrize("dtype", ["float16"])  # float32: the fixed case below (its draws shrink for 20 s)
@pytest.mark.parametrize("mutant", [ValueTimesZero, BlendedSentinel])
def test_the_non_finite_variant_kills_both_mutants(mutant, dtype, mutants_profile):
    r = run_check(get("poisoned_positions_ignored"), mutant(), dtype, seed=1)
    assert r.outcome == "failed" and "declared non_finite_masked_inputs" in r.reason, r.reason
    assert mutant in MUTANTS


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mutant", [ValueTimesZero, BlendedSentinel])
def test_both_mutants_pass_the_finite_poison_and_fail_the_non_finite_on_one_case(mutant, dtype):
    case = case_from(AttentionConfig(d_in=6, d_out=8, n_heads=2, causal=True), 2, 6, dtype, seed=5)
    kpm = np.ones((2, 6), dtype=bool)
    kpm[0, 4:] = False  # right padding
    kpm[1, :1] = False  # left padding
    case = case.with_(key_padding_mask=kpm, extra={"t": 3, "padding": "random", "poison_seed": 7})
    check = get("poisoned_positions_ignored")
    for fill, outcome in (("finite", "passed"), ("nan", "failed"), ("inf", "failed"), ("mixed", "failed")):
        r = run_once(check, mutant(), case.with_(extra={**case.extra, "fill": fill}), Judgement())
        assert r.outcome == outcome, (fill, r.reason)
    assert run_once(check, MaskedSelect(), case.with_(extra={**case.extra, "fill": "nan"}), Judgement()).outcome == "passed"


# -- decode invariance ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_token_by_token_backend_keeps_the_decode_promise(dtype, mutants_profile):
    r = run_check(get("decode_invariant_bitwise"), TokenByToken(), dtype, seed=1)
    assert r.outcome == "passed", r.reason


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_split_kv_decoding_breaks_the_promise_and_only_that(dtype, mutants_profile):
    r = run_check(get("decode_invariant_bitwise"), SplitKVDecode(), dtype, seed=1)
    assert r.outcome == "failed" and "elements differ" in r.reason, r.reason
    # its values are right: a decoding meets the tolerance model
    case = case_from(AttentionConfig(d_in=6, d_out=16, n_heads=2, causal=True), 2, 9, dtype, seed=4)
    case = case.with_(extra={"prefill": 3, "chunks": [1] * 6})
    assert run_once(get("decode_token_by_token"), SplitKVDecode(), case, Judgement()).outcome == "passed"
    assert SplitKVDecode in MUTANTS


def test_without_the_declaration_the_decode_check_is_unsupported_with_its_reason():
    reason = get("decode_invariant_bitwise").unsupported(PlainBackend(), "float32")
    assert reason and "Capabilities.decode_invariant" in reason


def test_decode_invariance_needs_a_causal_cache():
    with pytest.raises(ValueError, match="decode_invariant=True needs kv_cache=True"):
        Capabilities(decode_invariant=True)
    with pytest.raises(ValueError, match="causal=True"):
        Capabilities(decode_invariant=True, kv_cache=True, causal=False)


# -- measured on every backend ------------------------------------------------------------------
def test_no_built_in_backend_declares_either():
    """Measured (the semantic profile; docs/spec-decisions.md): every built-in leaks a masked NaN
    and decodes with other bits than its forward, so none may declare them."""
    for name in available_names():
        caps = resolve(name).backend.capabilities
        assert not caps.non_finite_masked_inputs and not caps.decode_invariant, name


def test_the_contract_probes_tell_the_controls_from_plain():
    nf, dec = contract.PROBES["non_finite_masked"], contract.PROBES["decode_bitwise"]
    assert nf(MaskedSelect())[0] == "ignored"
    assert nf(PlainBackend())[0] == "leaks (causal, padding)"
    assert dec(TokenByToken())[0] == "equal"
    assert dec(PlainBackend())[0].startswith("differs")
    assert dec(resolve("torch-mha").backend)[0].startswith("n/a") or not resolve("torch-mha").backend.capabilities.kv_cache


def test_the_library_probes_measure_numpy():
    from conformance.semantics import declarations as dc
    from conformance.semantics import probes as lp
    from conformance.semantics.libraries import all_raw

    raw = next(r for r in all_raw() if r.name == "numpy")
    value, detail = dc.library_non_finite(raw, "True = take part", lp.inputs, lp._call)
    assert value == "leaks (causal, padding)" and "padding NaN: NaN in" in detail
    assert dc.library_decode(raw, lp.inputs, lp._call)[0] in ("equal", "differs (float64)", "differs (float32)", "differs (float64, float32)")


def test_the_report_shows_both_promises():
    from reports.environment import backend_rows
    from reports.model import _columns

    both = TokenByToken.capabilities.to_dict() | {"non_finite_masked_inputs": True}
    run = {"machine": "m", "conformance": {"backends": [
        {"name": "declares-both", "capabilities": both},
        {"name": "plain", "capabilities": PlainBackend.capabilities.to_dict()}], "records": []}}
    rows = backend_rows(_columns([run], multi=False), ["conforms", "conforms"])
    assert rows[0][2] == ("promises decoding equals the forward (bitwise), non-finite masked inputs ignored")
    assert rows[1][2] == "none declared"
