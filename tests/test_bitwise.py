"""Bitwise batch invariance, a promise a backend may declare (Capabilities.batch_invariant):
held to it bit for bit, unsupported with its reason when not declared, and its mutant killed."""

from __future__ import annotations

import numpy as np
import pytest

from conformance.mutants.base import PlainBackend
from conformance.mutants.bitwise import BatchSplitK, PerSequence
from conformance.mutants.catalogue import MUTANTS
from conformance.suite import profiles
from conformance.suite.checks import get
from conformance.suite.checks.bitwise import bit_difference
from conformance.suite.engine import run_check, run_once
from conformance.suite.judgement import Judgement
from conformance.suite.strategies import case_from
from impls.registry import available_names, resolve
from spec.config import AttentionConfig


@pytest.fixture
def mutants_profile():
    profiles.load("mutants")  # the kill table's profile; tests/conftest.py puts the previous one back


def test_bit_difference_is_zero_only_for_the_same_bits_and_says_where():
    a = np.array([[1.0, np.nan], [3.0, 4.0]])
    assert bit_difference(a, a.copy()) == (0.0, "")  # NaN equals NaN
    b = a.copy()
    b[1, 0] = np.nextafter(3.0, 4.0)  # one ulp
    worst, where = bit_difference(b, a)
    assert worst == pytest.approx(4.440892098500626e-16) and "1 of 4 elements differ; first at (1, 0)" in where
    c = a.copy()
    c[0, 1] = 2.0  # a number where the batch gave NaN: a difference, not a pass
    assert bit_difference(c, a)[0] == float("inf")


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_per_sequence_backend_keeps_its_promise(dtype, mutants_profile):
    r = run_check(get("batch_invariant_bitwise"), PerSequence(), dtype, seed=1)
    assert r.outcome == "passed", r.reason


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_split_k_by_batch_size_breaks_the_promise_and_only_that(dtype, mutants_profile):
    r = run_check(get("batch_invariant_bitwise"), BatchSplitK(), dtype, seed=1)
    assert r.outcome == "failed" and "elements differ" in r.reason, r.reason
    # its values are right: a batch of three meets the tolerance model on matches_spec
    case = case_from(AttentionConfig(d_in=6, d_out=16, n_heads=2, causal=True), 3, 7, dtype, seed=4)
    assert run_once(get("matches_spec"), BatchSplitK(), case, Judgement()).outcome == "passed"
    assert BatchSplitK in MUTANTS


def test_without_the_declaration_the_check_is_unsupported_with_its_reason():
    reason = get("batch_invariant_bitwise").unsupported(PlainBackend(), "float32")
    assert reason and "Capabilities.batch_invariant" in reason


def test_no_built_in_backend_declares_it():
    """Measured (docs/spec-decisions.md): numpy, torch, torch-sdpa and torch-mha all change bits
    with the batch at some dtype, so none may promise it."""
    for name in available_names():
        assert not resolve(name).backend.capabilities.batch_invariant, name


def test_the_survey_tool_reports_both_measurements_for_a_backend_with_a_cache(capsys):
    from conformance.tools import bitwise_survey

    assert bitwise_survey.main(["-b", "numpy", "--cases", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out[:3] + out[4:]] == ["numpy float64", "numpy float32", "numpy float16",
                                                                  "batch_invariant", "decode_invariant"]
    assert out[3].startswith("numpy library (numpy ")
    assert all("batch changes the bits of" in line and "decoding differs from the forward in" in line for line in out[:3])
    assert "last query decoded alone vs the causal forward's last row" in out[3]
    assert all("every bit kept in every case by" in line for line in out[4:])


def test_the_survey_says_when_a_backend_has_no_cache(capsys):
    from conformance.tools import bitwise_survey

    assert bitwise_survey.main(["-b", "torch-mha", "--cases", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert all("decoding not measured (no KV cache" in line for line in out if line.startswith("torch-mha float"))
    assert out[-1] == "decode_invariant: every bit kept in every case by none of them"


def test_the_report_shows_who_promises_batch_invariance():
    from reports.environment import backend_rows
    from reports.model import _columns

    run = {"machine": "m", "conformance": {"backends": [
        {"name": "plain-per-sequence", "capabilities": PerSequence.capabilities.to_dict()},
        {"name": "plain", "capabilities": PlainBackend.capabilities.to_dict()}], "records": []}}
    rows = backend_rows(_columns([run], multi=False), ["conforms", "conforms"])
    assert rows[0][2] == "promises batch invariance (bitwise)" and rows[1][2] == "none declared"
