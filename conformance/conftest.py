"""All pytest plumbing of the conformance suite: options, parametrisation, per-test records.

`python -m conformance` (what `nox -s conformance` runs) passes the backends, dtypes, checks
and output directory as `--mha-*` options; pytest-xdist hands the same options to every
worker. Each test is one (backend, dtype, check); its record travels to the controller in
`user_properties`, where `conformance.recorder` writes results.json as results arrive.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conformance import profiles
from conformance.checks import catalogue
from spec.config import FLOAT_DTYPES

_BACKENDS: dict[str, object] = {}  # spec -> BackendInfo, resolved once per worker


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("mha-conformance")
    g.addoption("--mha-backend", action="append", default=[], help="backend spec (repeatable)")
    g.addoption("--mha-dtype", action="append", default=[], help="dtype (repeatable; default all)")
    g.addoption("--mha-check", action="append", default=[], help="check name (repeatable; default all)")
    g.addoption("--mha-out", default="reports/latest", help="run directory for results and failures")
    g.addoption("--mha-example-timeout", type=float, default=None,
                help="per-example time limit in seconds (first example gets 4x)")


def pytest_configure(config: pytest.Config) -> None:
    profiles.register()
    if os.environ.get("OMP_NUM_THREADS") == "1":
        # the CLI asks for one thread per worker; BLAS pools already loaded need telling too
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)


def _info(spec: str):
    if spec not in _BACKENDS:
        from impls.registry import resolve

        _BACKENDS[spec] = resolve(spec)
    return _BACKENDS[spec]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function.__name__ != "test_check":
        return
    opt = metafunc.config.getoption
    specs = opt("--mha-backend") or ["numpy"]
    dtypes = opt("--mha-dtype") or list(FLOAT_DTYPES)
    checks = opt("--mha-check") or [c.name for c in catalogue()]
    params, ids = [], []
    for spec in specs:
        name = _info(spec).backend.name
        for dtype in dtypes:
            for check in checks:
                params.append((spec, dtype, check))
                ids.append(f"{name}|{dtype}|{check}")
    metafunc.parametrize(("backend_spec", "dtype", "check_name"), params, ids=ids)


@pytest.fixture
def backend_info(backend_spec: str):
    return _info(backend_spec)


@pytest.fixture
def out_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.config.getoption("--mha-out"))


@pytest.fixture
def example_timeouts(request: pytest.FixtureRequest) -> dict[str, float] | None:
    t = request.config.getoption("--mha-example-timeout")
    return None if t is None else {"first": 4 * t, "later": t}


@pytest.fixture
def hypothesis_seed(request: pytest.FixtureRequest) -> int | None:
    seed = request.config.getoption("--hypothesis-seed", default=None)
    return int(seed) if seed is not None else None


@pytest.fixture
def record(request: pytest.FixtureRequest):
    """Attach this test's result record to the report, for the controller to write."""

    def attach(rec: dict) -> None:
        request.node.user_properties.append(("mha_record", json.dumps(rec, default=str)))

    return attach
