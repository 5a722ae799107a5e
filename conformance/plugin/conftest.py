"""All pytest plumbing of the conformance suite: options, parametrisation, worker set-up.

`python -m conformance` (what `nox -s conformance` runs) writes the run's plan to
`<out>/.plan.json` and passes it as `--mha-plan`; pytest-xdist hands the same options to every
worker. Each test is one planned key (backend, dtype, check), identified by its index in the
plan; its worker writes the record to a file the controller reads (`conformance.suite.recorder`).

Workers ignore SIGINT: the user's Ctrl-C belongs to the controller, which stops the run and
writes what finished; inside a worker a KeyboardInterrupt can then only come from a backend.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from conformance.suite import plan, profiles

UNSUPPORTED = "unsupported"  # the outcome test_check skips with, as "unsupported: <reason>"
_BACKENDS: dict[str, tuple] = {}  # spec -> (backend, skip reason, error), once per worker
_PARENT: int | None = None  # a worker's controller
_DUMP = None  # the worker's crash dump file, kept open for faulthandler


def fault_dump(markers: Path, worker: str) -> Path:
    """Where worker `worker` (gw0, ...) writes a crash's traceback dump; the controller reads it."""
    return Path(markers) / f"fault-{worker}.txt"


def orphaned() -> bool:
    """Whether this worker's controller has died: its records would land in a run directory
    that may already belong to another run, so it writes none."""
    return _PARENT is not None and os.getppid() != _PARENT


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("mha-conformance")
    g.addoption("--mha-plan", default=None, help="the run's plan file (written by python -m conformance)")
    g.addoption("--mha-example-timeout", type=float, default=None,
                help="per-example time limit in seconds (first example gets 4x)")


def pytest_configure(config: pytest.Config) -> None:
    profiles.register()
    global _PARENT
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: Ctrl-C and SIGTERM are the controller's
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # it stops us; pytest-xdist kills a stuck one
        _PARENT = os.getppid()
        markers = config.workerinput.get("mha_markers")
        if markers:  # a crash's "Fatal Python error" dump goes into its record, not the terminal
            import faulthandler

            global _DUMP
            _DUMP = open(fault_dump(Path(markers), config.workerinput["workerid"]), "w")
            faulthandler.enable(file=_DUMP, all_threads=True)
    if os.environ.get("OMP_NUM_THREADS") == "1":
        # the CLI asks for one thread per worker; BLAS pools already loaded need telling too
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, str] | None:
    """The suite's own outcome words on pytest's lines: a combination outside the backend's
    declared capabilities is "unsupported" (pytest would count it "skipped", which here means
    this machine lacks the backend's library or device), so the last line reads
    "N passed, N failed, N unsupported, N skipped"."""
    if report.when == "call" and report.skipped and isinstance(report.longrepr, tuple):
        if str(report.longrepr[2]).startswith(f"Skipped: {UNSUPPORTED}: "):
            return UNSUPPORTED, "u", UNSUPPORTED.upper()
    return None


def backend_state(spec: str) -> tuple[object | None, str | None, str | None]:
    """(backend, skip reason, error) of `spec` in this worker, resolved once."""
    if spec not in _BACKENDS:
        from conformance.suite.process_state import restored_state
        from impls.registry import resolve

        try:
            with restored_state(full=True):  # a constructor or availability() may change state too
                info = resolve(spec)  # availability() once, under the registry's one policy
                _BACKENDS[spec] = (info.backend, info.skip_reason, info.error)
        except BaseException as e:  # it resolved in the controller; here it is the backend's doing
            _BACKENDS[spec] = (None, None, f"resolving the backend in the worker raised {type(e).__name__}: {e}")
    return _BACKENDS[spec]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function.__name__ != "test_check":
        return
    path = metafunc.config.getoption("--mha-plan")
    if path is None:
        raise pytest.UsageError("run the suite through `python -m conformance` (it plans the run)")
    given = getattr(metafunc.config, "workerinput", {}).get("mha_plan")  # from the controller
    keys = [plan.Key(**d) for d in given] if given is not None else plan.read(Path(path))
    metafunc.parametrize("key", keys, ids=[k.test_id for k in keys])


@pytest.fixture
def out_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.config.getoption("--mha-plan")).parent


@pytest.fixture
def markers(request: pytest.FixtureRequest, out_dir: Path) -> Path:
    """Where the crash and hang markers are: the controller's private directory."""
    from conformance.suite.rundir import CRASHED

    given = getattr(request.config, "workerinput", {}).get("mha_markers")
    return Path(given) if given else out_dir / CRASHED


@pytest.fixture
def example_timeouts(request: pytest.FixtureRequest) -> dict[str, float] | None:
    t = request.config.getoption("--mha-example-timeout")
    return None if t is None else {"first": 4 * t, "later": t}  # idle limit: IDLE_FACTOR x later


@pytest.fixture
def hypothesis_seed(request: pytest.FixtureRequest) -> int | None:
    seed = request.config.getoption("--hypothesis-seed", default=None)
    return int(seed) if seed is not None else None
