"""Correct backends never fail: disclosed false failures stay here as data and must pass.

Each file is a repro bundle the suite itself saved (`python -m conformance.repro FILE`
replays it), copied here so that it does not depend on a random seed or on the Hypothesis
version. Name: seed<N>__<backend>__<dtype>__<check>.npz.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.suite.case import Case
from conformance.suite.checks import get
from conformance.suite.engine import run_once
from impls.registry import resolve

CASES = sorted((Path(__file__).parent / "data" / "regressions").glob("*.npz"))


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_disclosed_false_failure_passes(path: Path):
    case, meta = Case.load(path)
    _, backend, dtype, check = path.stem.split("__")
    assert (meta["backend"], case.dtype, meta["check"]) == (backend, dtype, check)
    info = resolve(backend)
    if info.skip_reason:
        pytest.skip(f"{backend} cannot run here: {info.skip_reason}")
    result = run_once(get(check), info.backend, case)
    assert result.outcome == "passed", result.reason


def test_regression_data_is_present():
    # a glob that finds nothing would make the test above vacuous
    assert len(CASES) >= 2
