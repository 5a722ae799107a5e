"""The installed package (docs/install-and-adopt.md): the wheel, the console script from a
directory outside the checkout, and the pytest entry in an adopter's project.

The wheel is built once from a copy of the four packages, installed with --no-deps into a venv
that sees this test environment's site-packages (numpy, hypothesis, pytest, ...) through a .pth
file but not the checkout, and every command runs from a temporary directory. Runs are kept
small (profile quick, a few checks, one dtype) for the tests' time budget.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TOP = ("spec", "impls", "conformance", "reports")
CHECKS = ["matches_spec", "causality", "fully_masked_queries_give_bias"]  # one unsupported by the example


def _setuptools_reason() -> str | None:
    """Why the wheel cannot be built here, or None (setup.py needs setuptools >= 70.1)."""
    try:
        import setuptools
    except ImportError:
        return "setuptools is not installed in this environment (noxfile.py installs it for the tests session)"
    major, minor = (int(p) for p in re.findall(r"\d+", setuptools.__version__)[:2])
    return None if (major, minor) >= (70, 1) else f"setuptools {setuptools.__version__} < 70.1 (no built-in bdist_wheel)"


def code_block(doc: Path, after: str, lang: str) -> str:
    """The first ```lang block after the line `after` in `doc`."""
    text = doc.read_text()
    assert after in text, f"{doc.name} lost {after!r}"
    m = re.search(rf"^```{lang}\n(.*?)^```", text.split(after, 1)[1], flags=re.DOTALL | re.MULTILINE)
    assert m, f"no ```{lang} block after {after!r} in {doc.name}"
    return m.group(1)


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    reason = _setuptools_reason()
    if reason:
        pytest.skip(reason)
    src = tmp_path_factory.mktemp("src")  # a copy: the build writes build/ and *.egg-info beside its sources
    for name in TOP:
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "published", "latest"))
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    (whl,) = dist.glob("mha_conformance-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(bin directory, environment) of a venv with the wheel installed and no checkout on its path."""
    home = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(home)], check=True, timeout=120)
    python = home / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    parents = [d for d in site.getsitepackages() if Path(d).resolve() != ROOT]
    Path(purelib, "_test_env.pth").write_text("\n".join(parents) + "\n")  # numpy, hypothesis, pip, ...
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "VIRTUAL_ENV")}
    env["PATH"] = f"{home / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    p = subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return home / "bin", env


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An adopter's project: the docs' example backend as mypkg/attn.py, importing the installed
    contract as docs/install-and-adopt.md says, and a broken variant as mypkg/bad.py."""
    example = code_block(DOCS / "plugging-in-a-backend.md", "## A complete example: `mypkg/attn.py`", "python")
    installed_import = code_block(DOCS / "install-and-adopt.md", "### The contract, installed", "python").strip()
    assert "from impls import Backend as BaseBackend, Capabilities" in example
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "attn.py").write_text(
        example.replace("from impls import Backend as BaseBackend, Capabilities", installed_import))
    (tmp_path / "mypkg" / "bad.py").write_text(
        "from mypkg.attn import Backend as Good\n\n\nclass Backend(Good):\n    name = 'mypkg-bad'\n\n"
        "    def forward(self, x, weights, config, **kw):\n"
        "        return super().forward(x, weights, config, **kw) * 1.01  # a planted bug\n")
    return tmp_path


def test_wheel_has_one_top_level_name(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"mha_conformance"}
    assert "mha_conformance/conformance/results.schema.json" in names  # package data
    assert "mha_conformance/conformance/plugin/pytest.ini" in names
    assert "mha_conformance/impls/expected/known-defects.toml" in names  # every run applies it
    assert not [n for n in names if n.startswith("mha_conformance/tests/")]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "mha-conformance = mha_conformance.conformance.commands:console" in zipfile.ZipFile(wheel).read(
        entry_points).decode()
    # every import of ours is prefixed: no module of the wheel imports a bare top-level name
    bare = re.compile(rf"^\s*(from|import) ({'|'.join(TOP)})[.\s]", re.MULTILINE)
    offenders = [n for n in names if n.endswith(".py") and bare.search(zipfile.ZipFile(wheel).read(n).decode())]
    assert offenders == []


def test_installed_command_runs_outside_the_checkout(venv, project: Path):
    """The docs' example and the numpy backend pass, a broken variant fails with a repro line
    that runs as printed, and `report` renders the run: all from a directory outside the checkout."""
    bindir, env = venv
    python = str(bindir / "python")
    for name in (*TOP, "tests"):  # nothing of the checkout is importable there
        p = run([python, "-c", f"import {name}"], project, env)
        assert p.returncode != 0 and "ModuleNotFoundError" in p.stderr, name
    backends = ["mypkg.attn:Backend", "numpy", "mypkg.bad:Backend"]
    args = ["mha-conformance", "--out", "r", "--profile", "quick", "--seed", "1", "--dtype", "float32", "-n", "1",
            *(a for b in backends for a in ("--backend", b)), *(a for c in CHECKS for a in ("--check", c))]
    p = run(args, project, env)
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]  # mypkg-bad fails matches_spec, nothing else
    section = json.loads((project / "r" / "results.json").read_text())["runs"][0]["conformance"]
    records = section["records"]
    outcomes = {(r["backend"], r["check"]): r["outcome"] for r in records}
    assert outcomes == {("mypkg-numpy", "matches_spec"): "passed", ("mypkg-numpy", "causality"): "passed",
                        ("mypkg-numpy", "fully_masked_queries_give_bias"): "unsupported",  # no key padding mask
                        ("numpy", "matches_spec"): "passed", ("numpy", "causality"): "passed",
                        ("numpy", "fully_masked_queries_give_bias"): "passed",
                        ("mypkg-bad", "matches_spec"): "failed", ("mypkg-bad", "causality"): "passed",
                        ("mypkg-bad", "fully_masked_queries_give_bias"): "unsupported"}
    (failed,) = [r for r in records if r["outcome"] == "failed"]
    # the diagnosis ran in its own process (python -m mha_conformance.conformance.findings)
    assert [f["backend"] for f in section["findings"]] == ["mypkg-bad"] and failed["finding"]
    assert failed["repro"].startswith("mha-conformance repro ") and f"reproduce: {failed['repro']}" in p.stdout
    p = run(shlex.split(failed["repro"]), project, env)
    assert p.returncode == 1 and "FAILED" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
    p = run(["mha-conformance", "report", "r"], project, env)
    assert p.returncode == 0, p.stderr
    assert (project / "r" / "index.html").stat().st_size > 0
    assert "mypkg-numpy" in (project / "r" / "report.md").read_text()


def test_pytest_entry_in_an_adopters_project(venv, project: Path):
    bindir, env = venv
    module = code_block(DOCS / "install-and-adopt.md", "Add one test module to your repository:", "python")
    call = 'conformance_tests("mypkg.attn:Backend", expect="tests/mha-expect.toml")'
    assert call in module
    fast = ', profile="quick", dtypes=["float32", "float16"], checks=["matches_spec", "fully_masked_queries_give_bias"])'
    module = module.replace(call, call[:-1] + fast)  # the documented module, restricted for time
    module += ('\ntest_bad = conformance_tests("mypkg.bad:Backend", expect="tests/mha-expect.toml", '
               'profile="quick", dtypes=["float64", "float32"], checks=["matches_spec", "causality"])\n')
    (project / "tests").mkdir()
    (project / "tests" / "test_mha_conformance.py").write_text(module)
    (project / "tests" / "mha-expect.toml").write_text(
        '[[expect]]\nbackend = "mypkg-bad"\ncheck = "matches_spec"\ndtype = "float64"\nreason = "output scaled by 1.01"\n\n'
        '[[expect]]\nbackend = "mypkg-*"\ncheck = "causality"\ndtype = "float64"\nreason = "listed though it passes"\n')
    (project / "pyproject.toml").write_text('[tool.pytest.ini_options]\npythonpath = ["."]\n')
    python = str(bindir / "python")
    # a temporary directory of its own: pytest keeps only the newest three of the shared one, and
    # the other tests' pytest runs beside this one would remove the failure bundle it checks
    p = run([python, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "--hypothesis-seed=1",
             f"--basetemp={project / 'pytest-tmp'}"], project, env)
    out = p.stdout
    assert p.returncode == 1, out[-3000:] + p.stderr[-2000:]
    item = "tests/test_mha_conformance.py::"
    assert f"PASSED {item}test_attention[float32-matches_spec]" in out
    assert f"PASSED {item}test_bad[float32-causality]" in out
    assert "unsupported: dtype float16 not declared" in out  # the example declares float64 and float32
    assert "unsupported: key padding masks are not supported" in out  # fully_masked_queries_give_bias
    assert f"XFAIL {item}test_bad[float64-matches_spec] - expected failure (output scaled by 1.01)" in out
    assert f"FAILED {item}test_bad[float64-causality]" in out
    assert "mypkg-bad [float64] causality: unexpectedly passing; listed in tests/mha-expect.toml (entry 2)" in out
    # unlisted (the entry names float64 only): the suite's failure message and its repro line
    assert f"FAILED {item}test_bad[float32-matches_spec]" in out
    assert "mypkg-bad [float32] matches_spec (end to end)\n  forward: max relative error" in out
    repro = re.search(r"^  reproduce: (mha-conformance repro \S+)$", out, flags=re.MULTILINE)
    assert repro and Path(shlex.split(repro[1])[-1]).is_file(), out[-3000:]
    assert re.search(r"\b2 failed, 2 passed, 3 skipped, 1 xfailed\b", out), out[-600:]
    p = run([python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
             "-k", "attention and float32 and matches_spec"], project, env)
    assert [line for line in p.stdout.splitlines() if line.startswith(item)] == [
        f"{item}test_attention[float32-matches_spec]"], p.stdout  # -k selected exactly that item
