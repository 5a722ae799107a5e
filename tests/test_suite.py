"""The suite end to end, as users run it: the correct backends conform, results.json holds
one record per backend x check x dtype, failures are reproducible, and a plug-in backend
runs by module:attr and by entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conformance.suite.checks import catalogue
from conformance.results import load

ROOT = Path(__file__).resolve().parent.parent
CORRECT = ["numpy", "torch", "torch-sdpa", "torch-mha"]


def conformance(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conformance", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    """Every check on every CPU backend at every dtype, as `nox -s conformance` runs them, with the
    quick profile: the default profile's run (the product's own `nox -s conformance`, and the
    false-failure sweep, `nox -s sweep`) took 205 s of the test run's 10 minutes on 2 cores."""
    pytest.importorskip("torch", reason="the torch backends need torch")
    out = tmp_path_factory.mktemp("run")
    args = [a for b in CORRECT + ["cupy", "torch-cuda"] for a in ("--backend", b)]
    proc = conformance(*args, "--profile", "quick", "--seed", "20261129", "--out", str(out))
    return proc, load(out)


def test_correct_backends_conform(default_run):
    proc, doc = default_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    records = doc["runs"][0]["conformance"]["records"]
    failed = [f"{r['backend']} {r['dtype']} {r['check']}: {r['reason']}" for r in records if r["outcome"] == "failed"]
    assert not failed
    for name in CORRECT:
        assert any(r["backend"] == name and r["outcome"] == "passed" for r in records), name


def test_results_json_has_one_record_per_backend_check_dtype(default_run):
    _, doc = default_run
    section = doc["runs"][0]["conformance"]
    assert section["status"] == "complete"
    keys = [(r["backend"], r["check"], r["dtype"]) for r in section["records"]]
    assert len(keys) == len(set(keys))
    n_backends = len(section["backends"])
    assert len(keys) == n_backends * len(catalogue()) * 4
    for r in section["records"]:
        assert set(r) >= {"backend", "check", "dtype", "outcome", "reason"}
        # expected failure / unexpectedly passing: the built-ins' known defects (impls/expected/)
        assert r["outcome"] in ("passed", "failed", "unsupported", "skipped", "expected failure", "unexpectedly passing")
        if r["outcome"] != "passed":
            assert r["reason"], r  # every non-pass carries its reason


def test_missing_libraries_and_devices_are_skipped_with_reasons(default_run):
    proc, doc = default_run
    records = doc["runs"][0]["conformance"]["records"]
    cuda = {r["outcome"] for r in records if r["backend"] == "torch-cuda"}
    assert cuda == {"skipped"}
    cupy = [r for r in records if r["backend"] == "cupy"]
    assert {r["outcome"] for r in cupy} == {"skipped"} and "cupy" in cupy[0]["reason"].lower()
    # unsupported is distinct from skipped: numpy declares no bfloat16, torch-mha no steps
    assert {r["outcome"] for r in records if r["backend"] == "numpy" and r["dtype"] == "bfloat16"} == {"unsupported"}
    mha_steps = [r for r in records if r["backend"] == "torch-mha" and r["check"] == "scores_are_dot_products"]
    assert {r["outcome"] for r in mha_steps} == {"unsupported"}
    assert "conforms" in proc.stdout and "skipped:" in proc.stdout


BROKEN = textwrap.dedent('''
    from dataclasses import replace

    from impls.numpy_backend import NumpyBackend

    class Backend(NumpyBackend):
        """Scales the scores by 1/sqrt(d_out) instead of 1/sqrt(head_dim)."""
        name = "broken-scale"
        # no sinks: one per head, they cannot follow the config to one head
        capabilities = replace(NumpyBackend.capabilities, sinks=False)

        def attn_weights(self, attn_scores, config, key_padding_mask=None, dropout_mask=None):
            one_head = replace(config, n_heads=1, n_kv_heads=None)  # head_dim becomes d_out: the wrong scale
            return super().attn_weights(attn_scores, one_head, key_padding_mask, dropout_mask)
''')


def test_a_failure_names_step_and_reproduces_from_the_report(tmp_path):
    pkg = tmp_path / "code"
    pkg.mkdir()
    (pkg / "brokenattn.py").write_text(BROKEN)
    out = tmp_path / "out"
    proc = conformance("--backend", "brokenattn:Backend", "--dtype", "float32", "--check", "weights_match_spec",
                       "--check", "rows_sum_to_one", "--profile", "quick", "--seed", "1", "--out", str(out),
                       env={"PYTHONPATH": str(pkg)})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    doc = load(out)
    recs = {r["check"]: r for r in doc["runs"][0]["conformance"]["records"]}
    bad = recs["weights_match_spec"]
    assert bad["outcome"] == "failed" and bad["step"] == 8
    assert "step 8 attn_weights" in bad["reason"] and "max relative error" in bad["reason"]
    assert bad["counterexample"] and "head_dim=" in bad["counterexample"]
    assert recs["rows_sum_to_one"]["outcome"] == "passed"  # the wrong scale keeps rows normalised
    repro = subprocess.run(bad["repro"].split(), cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(pkg)}, timeout=120)
    assert repro.returncode == 1 and "FAILED" in repro.stdout, repro.stdout + repro.stderr
    fixed = subprocess.run([*bad["repro"].split(), "--backend", "numpy"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert fixed.returncode == 0 and "passed" in fixed.stdout, fixed.stdout + fixed.stderr


def test_plugin_by_entry_point_runs_through_the_cli(tmp_path):
    site = tmp_path / "site"
    (site / "myattn").mkdir(parents=True)
    (site / "myattn" / "__init__.py").write_text(
        "from impls.numpy_backend import NumpyBackend\n\n"
        "class Mine(NumpyBackend):\n    name = 'mine'\n")
    dist = site / "myattn-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myattn\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mha_conformance.backends]\nmine = myattn:Mine\n")
    out = tmp_path / "out"
    proc = conformance("--backend", "mine", "--dtype", "float32", "--check", "matches_spec", "--profile", "quick",
                       "--out", str(out), env={"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    backends = load(out)["runs"][0]["conformance"]["backends"]
    assert backends[0]["name"] == "mine" and backends[0]["source"] == "entry point"


def test_list_checks_names_every_check_with_its_step():
    proc = conformance("--list-checks")
    assert proc.returncode == 0
    for c in catalogue():
        assert c.name in proc.stdout
    assert "end to end" in proc.stdout and "step 8" in proc.stdout
