"""Strategies built inside draws are built once per argument value (conformance/suite/reused.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from conformance.suite import strategies as cs
from conformance.suite.reused import reused
from impls.registry import resolve


def test_equal_arguments_give_the_same_strategy_object_even_when_unhashable():
    caps = resolve("numpy").backend.capabilities  # holds a dict (conventions): not hashable itself
    same = replace(caps)  # another object, equal values
    assert same is not caps
    assert cs.cases(caps, "float32") is cs.cases(same, "float32")
    assert cs.configs(caps, causal=True) is cs.configs(same, causal=True)


def test_different_values_give_different_strategies():
    caps = resolve("numpy").backend.capabilities
    assert cs.cases(caps, "float32") is not cs.cases(caps, "float64")
    assert cs.cases(caps, "float32") is not cs.cases(replace(caps, softcap=False), "float32")
    assert cs.cases(caps, "float32") is not cs.cases(replace(caps, conventions={"fully_masked_rows": "mean_v"}), "float32")


def test_an_argument_without_a_hashable_form_builds_afresh():
    built = []

    @reused
    def factory(a):
        built.append(a)
        return object()

    arr = np.zeros(3)
    assert factory(arr) is not factory(arr) and len(built) == 2
    assert factory((1, [2, 3])) is factory((1, [2, 3])) and len(built) == 3  # a list inside: by value
