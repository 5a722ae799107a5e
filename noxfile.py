"""Sessions of mha-conformance. Each runs from the repo root; nothing of ours is installed
(tests/test_install.py builds and installs the package into a temporary venv of its own).

`nox -s conformance` checks every backend this machine can run, `nox -s tests` runs the
project's own tests. Dependencies come from pyproject.toml; torch is pinned there, because
an unpinned torch resolves to a ~3 GB CUDA build on a CPU-only machine.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.sessions = ["conformance"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
DEPENDENCIES: list[str] = PYPROJECT["project"]["dependencies"]
EXTRAS: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]  # the pins, written once
TORCH: list[str] = EXTRAS["torch"]
CUPY: list[str] = EXTRAS["cupy"]
PEERS: list[str] = EXTRAS["peers"]  # jax, flax, onnxruntime
# tests/test_install.py builds the wheel without build isolation: setup.py needs setuptools >= 70.1
# (bdist_wheel built in), newer than the 65.5 a Python 3.11 venv starts with
BUILD: list[str] = ["setuptools==84.2.1"]


def install(session: nox.Session, *, torch: bool = True, cupy: bool = False) -> None:
    """Install the declared dependencies; torch (pinned) by default, CuPy and the peers on request.

    --no-compile: pip byte-compiles every file it installs (torch alone has thousands); Python
    compiles only the modules a run imports, on first import, into the environment's own
    bytecode cache (`bytecode_cache`); a fresh environment takes 18 s instead of 37.

    MHA_WITH_PEERS=1 adds the pinned jax, flax and onnxruntime, so their backends run instead
    of being reported as skipped.
    """
    packages = list(DEPENDENCIES)
    if torch:
        packages += TORCH
    if cupy or os.environ.get("MHA_WITH_CUPY") == "1":
        packages += CUPY
    if torch and os.environ.get("MHA_WITH_PEERS") == "1":
        packages += PEERS
    session.install("--disable-pip-version-check", "-q", "--no-compile", *packages)
    bytecode_cache(session)


def bytecode_cache(session: nox.Session) -> None:
    """Let Python keep the bytecode it compiles, in the session's environment, not the checkout.

    With PYTHONDONTWRITEBYTECODE set (container images often set it) and nothing byte-compiled at
    install, every process compiled torch, scipy and hypothesis again: a one-check run took 9.3 s
    instead of 5.3 s, and `nox -s tests` starts hundreds of such processes (2-core machine,
    2026-12-06). PYTHONPYCACHEPREFIX keeps every .pyc under .nox, so the checkout stays clean.
    """
    session.env["PYTHONDONTWRITEBYTECODE"] = ""  # Python writes bytecode unless this is non-empty
    session.env["PYTHONPYCACHEPREFIX"] = os.path.join(session.virtualenv.location, "pycache")


def warm_bytecode(session: nox.Session) -> None:
    """Compile once, in one process, what every test process imports.

    Otherwise pytest's workers and the runs they start compile torch, scipy and hypothesis side by
    side until one has written the cache: a fresh clone's test run took 8 min 51 s against 7 min 51 s
    with a warm cache (2-core machine, 2026-12-07). Third-party libraries by import (only the modules
    a run loads), the project's own sources with compileall.
    """
    session.run("python", "-c", "import torch, scipy.stats, hypothesis, numpy, jsonschema, psutil, pytest, xdist",
                silent=True)
    session.run("python", "-m", "compileall", "-q", "-j", "0", "conformance", "spec", "impls", "reports", "tests",
                silent=True)


@nox.session
def conformance(session: nox.Session) -> None:
    """Check every available backend against the spec; writes reports/latest/results.json.

    The semantic profile of every backend, its library and its contract (seconds; also into results.json,
    same --out and --machine), runs beside the suite's start; its table is printed after the suite's.
    """
    install(session)
    if {"-h", "--help", "--list-checks", "--list-backends"} & set(session.posargs):  # the suite's help alone
        session.run("python", "-m", "conformance", *session.posargs)
        return
    # the profile runs beside the suite's start, which waits on one core for imports (a fresh
    # clone: 12 s of profile, most of it compiling torch, before the suite began); its lines are
    # printed when the suite ends, and results.json takes both sections (written under a lock)
    with tempfile.TemporaryFile("w+") as log:
        env = {**os.environ, "PATH": session.bin + os.pathsep + os.environ.get("PATH", "")}
        for name, value in session.env.items():
            if value is None:  # nox unsets it (PYTHONHOME in a venv)
                env.pop(name, None)
            else:
                env[name] = value
        semantics = subprocess.Popen([os.path.join(session.bin, "python"), "-m", "conformance", "semantics",
                                      *session.posargs], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            session.run("python", "-m", "conformance", *session.posargs)
        finally:
            code = semantics.wait()
            log.seek(0)
            print(log.read(), end="", flush=True)
        if code != 0:
            session.error(f"the semantic profile exited with status {code} (its output is above)")


@nox.session
def tests(session: nox.Session) -> None:
    """Run the project's own tests (spec, backends, suite, mutants, speed harness, reports, the install)."""
    install(session)
    session.install("--disable-pip-version-check", "-q", "--no-compile", *BUILD)
    warm_bytecode(session)
    session.run("python", "-m", "pytest", "-n", "auto", *session.posargs)


@nox.session
def mutants(session: nox.Session) -> None:
    """Run the suite on every deliberately broken backend and print which checks kill each."""
    install(session)
    session.run("python", "-m", "conformance", "mutants", *session.posargs)


@nox.session
def sweep(session: nox.Session) -> None:
    """Run the default profile on many fresh random seeds over the correct backends; count failures."""
    install(session)
    session.run("python", "-m", "conformance", "sweep", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Time every available, conforming backend side by side; writes the speed section."""
    install(session)
    session.run("python", "-m", "conformance", "bench", *session.posargs)


@nox.session
def report(session: nox.Session) -> None:
    """Render results.json (one or several run directories) as report.md and index.html."""
    install(session, torch=False)
    session.run("python", "-m", "conformance", "report", *session.posargs)


@nox.session
def screenshot(session: nox.Session) -> None:
    """Render reports/latest/index.html in headless Chromium and save a PNG (needs chromium)."""
    install(session, torch=False)
    session.run("python", "-m", "reports.screenshot", *session.posargs)


@nox.session
def gpu(session: nox.Session) -> None:
    """On a GPU machine: conformance and speed of cupy, torch-cuda and torch-sdpa-cuda."""
    install(session, cupy=True)
    session.run("python", "-m", "conformance", "gpu-check", *session.posargs)
