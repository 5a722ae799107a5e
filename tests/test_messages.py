"""Failure messages show the difference: enough digits, the statistic, its bound and its meaning."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conformance.suite.case import Case
from conformance.suite.checks import get
from conformance.suite.engine import run_once
from conformance.suite.tolerance import compare, distinct_digits, got_expected
from impls.numpy_backend import NumpyBackend
from impls.base import Capabilities
from spec.config import AttentionConfig
from spec.params import Params
from spec.steps import init_params

NUM = r"(-?[0-9.]+(?:e[-+]?\d+)?)"


def test_values_one_ulp_apart_print_differently():
    a = -1.0738312345678
    b = float(np.nextafter(a, 0.0))
    text = got_expected(a, b)
    got, expected, diff = (float(v) for v in re.fullmatch(
        rf"got {NUM}, expected {NUM} \(difference {NUM}\)", text).groups())
    assert got != expected  # the printed numbers differ, as the values do
    assert got < expected
    assert diff == pytest.approx(abs(a - b), rel=1e-2)


def test_digits_grow_only_as_needed():
    assert distinct_digits(1.5, 2.0) == 6
    assert distinct_digits(1.0, 1.0 + 2**-52) == 17
    assert distinct_digits(1.0, 1.0) == 17  # equal values: the most float64 can show
    assert distinct_digits(100.0, 100.0001) == 9  # differ at the 7th digit: two more shown


def test_comparison_summary_shows_the_worst_elements_difference():
    golden = np.array([1.0, -1.0738312345678])
    actual = golden.copy()
    actual[1] = golden[1] - 3e-9  # equal to 6 digits: "got -1.07383, expected -1.07383" before
    c = compare(actual, golden, golden, "float64")
    assert not c.ok
    m = re.search(rf"at index \(1,\) \(got {NUM}, expected {NUM} \(difference {NUM}\)\)", c.summary())
    got, expected, diff = (float(v) for v in m.groups())
    assert got != expected
    assert abs(got - actual[1]) < abs(actual[1] - golden[1])  # printed closer to each value than they are apart
    assert abs(expected - golden[1]) < abs(actual[1] - golden[1])
    assert diff == pytest.approx(abs(actual[1] - golden[1]), rel=1e-2)


def test_assert_exact_shows_every_digit_of_the_violation():
    from conformance.suite.calls import Runner
    from conformance.suite.checks import CheckFailure

    with pytest.raises(CheckFailure) as e:
        Runner(NumpyBackend(), "float64").assert_exact("masked zeros", 1.0000001)
    assert float(re.search(rf"violated by {NUM} ", str(e.value)).group(1)) == 1.0000001  # .6g showed 1


class _RateDropout(NumpyBackend):
    """Own-RNG dropout that drops at `rate` whatever p is asked (a wrong rate)."""

    name = "rate-dropout"
    capabilities = Capabilities(dtypes=("float64",), dropout="rng")
    rate = 0.3

    def forward(self, x, weights, config, *, key_padding_mask=None, dropout_mask=None, training=False):
        if training and config.dropout_p:
            B, T = x.shape[0], x.shape[1]
            keep = np.random.default_rng(0).random((B, config.n_heads, T, T)) >= self.rate
            # the check's identity case has one head: dropping weights = dropping the output rows' entries
            p = config.dropout_p
            out = super().forward(x, weights, config)
            return out * keep[:, 0] / (1 - p)
        return super().forward(x, weights, config)


def _identity_case(T: int, p: float) -> Case:
    eye = np.eye(T)
    config = AttentionConfig(d_in=T, d_out=T, n_heads=1, causal=False, dropout_p=p)
    params = Params(W_q=np.zeros((T, T)), W_k=eye.copy(), W_v=eye.copy(), W_o=eye.copy(), b_o=np.zeros(T))
    return Case(config=config, dtype="float64", x=np.broadcast_to(eye, (4, T, T)).copy(), params=params)


def test_dropout_statistics_message_says_fraction_p_value_bound_and_meaning():
    case = _identity_case(32, 0.1)
    result = run_once(get("dropout_statistics"), _RateDropout(), case)
    assert result.outcome == "failed"
    m = re.search(rf"dropped fraction {NUM} \((\d+) of (\d+) weights\), expected p = {NUM}: "
                  rf"two-sided binomial test p-value {NUM} < {NUM} \(each weight", result.reason)
    assert m, result.reason
    frac, dropped, n, p, pv, bound = (float(v) for v in m.groups())
    assert n == 4 * 32 * 32 and p == 0.1 and bound == 1e-6
    assert frac == pytest.approx(dropped / n, abs=1e-4)
    assert abs(frac - 0.3) < 0.03  # the rate it really dropped at
    assert pv < bound


def test_dropout_statistics_message_for_a_stray_weight_shows_distinct_digits():
    class Stray(_RateDropout):
        rate = 0.1

        def forward(self, x, weights, config, **kw):
            out = super().forward(x, weights, config, **kw)
            out[0, 0, 0] = out[0, 0, 1] * (1 + 1e-9) if out[0, 0, 1] else 1 / 32 / 0.9 * (1 + 1e-9)
            return out

    result = run_once(get("dropout_statistics"), Stray(), _identity_case(32, 0.1))
    m = re.search(rf"= {NUM} is neither 0 nor w/\(1-p\) = {NUM}", result.reason)
    assert m, result.reason
    assert float(m.group(1)) != float(m.group(2))


class _SkewedInit(NumpyBackend):
    """init_params in the right layout and bound, but from U(0, bound): not symmetric."""

    name = "skewed-init"

    def init_params(self, config, seed=0):
        p = init_params(config, seed)
        return p.map(lambda a: np.abs(a))


def test_init_uniformity_message_says_statistic_p_value_bound_and_meaning():
    config = AttentionConfig(d_in=32, d_out=32, n_heads=4)
    case = Case(config=config, dtype="float64", x=np.zeros((1, 4, 32)), params=init_params(config, 0),
                extra={"init_seed": 3})
    result = run_once(get("init_follows_nn_linear"), _SkewedInit(), case)
    assert result.outcome == "failed"
    m = re.search(rf"Kolmogorov-Smirnov statistic D = {NUM} over (\d+) values, p-value {NUM} < {NUM} \(",
                  result.reason)
    assert m, result.reason
    D, n, pv, bound = (float(v) for v in m.groups())
    assert n == 32 * 32 and bound == 1e-6 and pv < bound
    assert 0.4 < D <= 0.55  # |U(-1, 1)| has CDF gap 1/2 from U(-1, 1)


# -- the repro line runs as printed, for a module:attr plug-in from a directory on PYTHONPATH ------
ROOT = Path(__file__).resolve().parent.parent
PLUGIN = '''
from impls.numpy_backend import NumpyBackend


class Backend(NumpyBackend):
    """Off by 0.1%: fails matches_spec."""

    name = "off-by-a-little"

    def forward(self, x, weights, config, **kw):
        return super().forward(x, weights, config, **kw) * 1.001
'''


def test_repro_line_of_a_plugin_from_pythonpath_runs_as_printed(tmp_path):
    plug = tmp_path / "plugdir" / "offpkg"
    plug.mkdir(parents=True)
    (plug / "__init__.py").write_text("")
    (plug / "attn.py").write_text(PLUGIN)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-m", "conformance", "--backend", "offpkg.attn:Backend",
                           "--check", "matches_spec", "--dtype", "float64", "--profile", "quick", "--seed", "1",
                           "-n", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**env, "PYTHONPATH": str(tmp_path / "plugdir")})
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    rec = json.loads((out / "results.json").read_text())["runs"][0]["conformance"]["records"][0]
    assert rec["outcome"] == "failed"
    backend = json.loads((out / "results.json").read_text())["runs"][0]["conformance"]["backends"][0]
    assert backend["versions"] == {"numpy": np.__version__}  # the plug-in inherits NumpyBackend.versions
    _, meta = Case.load(out / rec["inputs"])
    assert meta["import_path"] == [str((tmp_path / "plugdir").resolve())]
    # as printed, from the run's working directory, without the run's PYTHONPATH
    again = subprocess.run(rec["repro"], shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 1, again.stdout + again.stderr
    assert "result   FAILED: forward" in again.stdout
    # the plug-in's directory gone: one line naming it, exit 2
    shutil.rmtree(tmp_path / "plugdir")
    gone = subprocess.run(rec["repro"], shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert gone.returncode == 2 and len(gone.stderr.strip().splitlines()) == 1
    assert "cannot import module 'offpkg.attn'" in gone.stderr and "no longer exists" in gone.stderr


# -- what was tested: each backend's library versions -----------------------------------------------
def test_builtin_backends_report_their_libraries_without_importing_them():
    code = ("import sys\n"
            "from impls.registry import BUILTINS, _load_module_attr\n"
            "out = {n: _load_module_attr(s)().versions() for n, s in BUILTINS.items()}\n"
            "assert not {'torch', 'jax', 'cupy', 'onnxruntime', 'flax'} & set(sys.modules), sys.modules.keys()\n"
            "import json; print(json.dumps(out))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["numpy"] == {"numpy": np.__version__}
    from importlib import metadata

    torch_version = metadata.version("torch")  # the test environment has torch
    for name in ("torch", "torch-cuda", "torch-sdpa", "torch-sdpa-cuda", "torch-mha"):
        assert got[name] == {"torch": torch_version}, name
    for name, libs in (("jax", {"jax", "jaxlib"}), ("flax", {"flax", "jax", "jaxlib"}),
                       ("onnxruntime", {"onnxruntime", "onnx"})):
        assert set(got[name]) <= libs, name  # only what is installed here
    assert all(k.startswith("cupy") for k in got["cupy"])


class _V:
    def __init__(self, fn):
        self.versions = fn


def _raise_exit():
    raise SystemExit(3)


@pytest.mark.parametrize("fn, want", [
    (lambda: {"mylib": "1.2"}, {"mylib": "1.2"}),
    (lambda: {"mylib": (1, 2)}, {"mylib": "(1, 2)"}),
    (lambda: ["mylib 1.2"], {"error": "versions() returned list, expected a dict of library -> version"}),
    (lambda: 1 / 0, {"error": "versions() raised ZeroDivisionError: division by zero"}),
    (_raise_exit, {"error": "versions() raised SystemExit: 3"}),
])
def test_versions_are_recorded_or_an_error_never_a_crash(fn, want):
    from conformance.cli import backend_versions

    assert backend_versions(_V(fn)) == want


def test_a_backend_without_versions_reports_none():
    from conformance.cli import backend_versions

    assert backend_versions(object()) == {}


# -- pytest's last line in the suite's words; Hypothesis's files kept out of the starting directory ----
@pytest.mark.parametrize("chosen", [False, True])
def test_suite_line_counts_unsupported_and_hypothesis_files_stay_with_the_run(tmp_path, chosen):
    cwd, out = tmp_path / "cwd", tmp_path / "out"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYPOTHESIS_STORAGE_DIRECTORY")}
    env["PYTHONPATH"] = str(ROOT)  # started outside the checkout: nothing may land in cwd
    if chosen:
        env["HYPOTHESIS_STORAGE_DIRECTORY"] = str(tmp_path / "chosen")
    proc = subprocess.run([sys.executable, "-m", "conformance", "--backend", "numpy", "--backend", "cupy",
                           "--check", "init_follows_nn_linear", "--dtype", "float64", "--dtype", "bfloat16",
                           "--profile", "quick", "--seed", "1", "-n", "1", "--out", str(out)],
                          cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    records = json.loads((out / "results.json").read_text())["runs"][0]["conformance"]["records"]
    n = {o: sum(r["outcome"] == o for r in records) for o in ("passed", "unsupported", "skipped")}
    assert n == {"passed": 1, "unsupported": 1, "skipped": 2}  # numpy has no bfloat16; no cupy here
    line = next(ln for ln in proc.stdout.splitlines() if re.search(r"\d+ passed", ln))
    words = dict((w, int(c)) for c, w in re.findall(r"(\d+) (\w+)", line))
    assert words == n, line
    assert list(cwd.iterdir()) == []
    where = tmp_path / "chosen" if chosen else out / ".hypothesis"
    assert where.is_dir() and any(where.iterdir())
    assert (out / ".hypothesis").exists() == (not chosen)


# -- python -m conformance.semantics: a real help, one-line errors ---------------------------------
def test_semantics_help_lists_its_options_and_errors_are_one_line():
    run = [sys.executable, "-m", "conformance.semantics"]
    helped = subprocess.run([*run, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: python -m conformance.semantics")
    assert {"--out", "--machine", "--backend"} <= set(re.findall(r"--\w+", helped.stdout))
    bad = subprocess.run([*run, "--out"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "--out" in bad.stderr


def test_import_path_is_empty_for_what_every_process_imports(monkeypatch):
    from impls.registry import import_path, resolve

    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the checkout itself: never needed in a bundle
    resolve("numpy")
    resolve("impls.numpy_backend:NumpyBackend")
    assert import_path("numpy") == []
    assert import_path("impls.numpy_backend:NumpyBackend") == []
