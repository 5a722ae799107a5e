"""Findings and conventions: one cause reads as one finding; a property check judges its property;
a declared convention is judged as declared and shown as such."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conformance.findings import probes
from conformance.results import load
from conformance.suite.checks import get
from conformance.suite.engine import run_once
from conformance.suite.judgement import Judgement
from conformance.suite.strategies import case_from
from impls.base import Capabilities
from spec import conventions as conv
from spec.config import AttentionConfig
from tests import convention_backends as cb

ROOT = Path(__file__).resolve().parent.parent
MOD = "tests.convention_backends"
PROPERTY_CHECKS = ("causality", "prefix_consistency", "batch_independence", "permutation_equivariance",
                   "head_permutation_invariance")
CHECKS = ("matches_spec", "output_dtype_and_shape", *PROPERTY_CHECKS, "zero_wq_uniform_attention",
          "fully_masked_queries_give_bias", "deterministic_on_repeat")
BACKENDS = ("MeanVRows", "MeanVRowsDeclared", "ZeroPaddedQueries", "Float32Inside", "UpcastWithMask", "WrongScale")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path_factory.mktemp("findings")
    args = [a for b in BACKENDS for a in ("--backend", f"{MOD}:{b}")]
    args += [a for c in CHECKS for a in ("--check", c)]
    args += ["--dtype", "float64", "--dtype", "float32", "--dtype", "float16", "--profile", "quick",
             "--seed", "3", "--out", str(out)]
    proc = subprocess.run([sys.executable, "-m", "conformance", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return proc, load(out)["runs"][0]["conformance"]


def _findings(section: dict, backend: str) -> list[dict]:
    return [f for f in section.get("findings", []) if f["backend"] == backend]


def _failed(section: dict, backend: str) -> list[dict]:
    return [r for r in section["records"] if r["backend"] == backend and r["outcome"] == "failed"]


@pytest.mark.parametrize("backend, cause, convention", [
    ("conv-mean-v", "fully_masked_rows", {"name": "fully_masked_rows", "value": "mean_v"}),
    ("conv-zero-padded-queries", "padded_query_rows", {"name": "padded_query_rows", "value": "zero_output"}),
    ("conv-float32-inside", "precision", {"name": "float64_compute", "value": "float32"}),
    ("conv-upcast-with-mask", "output_dtype", None),
    ("bug-wrong-scale", "unexplained", None),
])
def test_one_cause_reads_as_one_finding_that_explains_every_failure(run, backend, cause, convention):
    proc, section = run
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = _findings(section, backend)
    assert len(found) == 1, [f["title"] for f in found]
    f = found[0]
    assert f["cause"] == cause and f["convention"] == convention
    failed = _failed(section, backend)
    assert failed and all(r["finding"] == f["id"] for r in failed)
    assert sorted((c["check"], c["dtype"]) for c in f["checks"]) == sorted((r["check"], r["dtype"]) for r in failed)
    assert f["id"] in proc.stdout and f["title"] in proc.stdout  # the summary leads with it


def test_a_backend_that_keeps_every_property_passes_every_property_check(run):
    _, section = run
    for backend in ("conv-zero-padded-queries", "conv-float32-inside"):
        for r in section["records"]:
            if r["backend"] == backend and r["check"] in PROPERTY_CHECKS and r["dtype"] != "float64":
                assert r["outcome"] == "passed", r
    zeroed = [r for r in section["records"] if r["backend"] == "conv-zero-padded-queries"
              and r["check"] in PROPERTY_CHECKS]
    assert zeroed and all(r["outcome"] == "passed" for r in zeroed)


def test_a_declared_convention_conforms_and_says_so(run):
    proc, section = run
    recs = [r for r in section["records"] if r["backend"] == "conv-mean-v-declared"]
    assert recs and all(r["outcome"] in ("passed", "unsupported") for r in recs)
    header = next(b for b in section["backends"] if b["name"] == "conv-mean-v-declared")
    assert header["capabilities"]["conventions"] == {"fully_masked_rows": "mean_v"}
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("conv-mean-v-declared"))
    assert line.rstrip().endswith("conforms under declared conventions: fully_masked_rows=mean_v")


def _padded_case(dtype: str = "float32"):
    config = AttentionConfig(d_in=8, d_out=8, n_heads=2, causal=True)
    kpm = np.ones((2, 6), dtype=bool)
    kpm[0, :2] = False  # queries 0 and 1 of batch element 0 have no visible key
    case = case_from(config, 2, 6, dtype, seed=5).with_(key_padding_mask=kpm)
    return case.with_(extra={"t": 1, "perturb_seed": 7})


def test_causality_fails_where_a_row_averages_future_keys_unless_declared():
    check, case = get("causality"), _padded_case()
    assert run_once(check, cb.MeanVRows(), case).outcome == "failed"  # the row sees future tokens: a true finding
    assert run_once(check, cb.MeanVRowsDeclared(), case).outcome == "passed"
    assert run_once(check, cb.ZeroPaddedQueries(), case).outcome == "passed"  # zeroed rows keep causality


def test_matches_spec_judges_a_declared_value_and_rejects_another():
    check, case = get("matches_spec"), _padded_case()
    declared = Judgement({"fully_masked_rows": "mean_v"})
    assert run_once(check, cb.MeanVRows(), case, declared).outcome == "passed"
    assert run_once(check, cb.NanRows(), case, declared).outcome == "failed"
    assert run_once(check, cb.NanRows(), case, Judgement({"fully_masked_rows": "nan"})).outcome == "passed"


@pytest.mark.parametrize("backend, value", [(cb.MeanVRows, "mean_v"), (cb.NanRows, "nan"),
                                            (cb.ZeroPaddedQueries, "zero_output"), (cb.WrongScale, "zero_context")])
def test_the_fully_masked_row_probe_names_what_the_backend_does(backend, value):
    assert probes.fully_masked_rows(backend())[0] == value


def test_probes_through_the_contract_on_a_plain_backend():
    seen = probes.run_all(cb._Wrapped())
    assert seen["fully_masked_rows"][0] == "zero_context"
    assert seen["padded_query_rows"][0] == "computed"
    assert seen["mask_polarity"][0] == "True = may attend"
    assert seen["float64_compute"][0] == "float64"
    assert probes.run_all(cb.Float32Inside())["float64_compute"][0] == "float32"
    assert probes.output_dtypes(cb.UpcastWithMask())[0] == "changed"
    assert "float16 with a mask -> float32" in probes.output_dtypes(cb.UpcastWithMask())[1]
    assert seen["output_dtypes"][0] == "input dtype"


def test_a_convention_off_the_menu_is_an_error_naming_the_valid_ones():
    with pytest.raises(ValueError, match="fully_masked_rows='zeros' is not on the menu; valid: zero_context"):
        Capabilities(conventions={"fully_masked_rows": "zeros"})
    with pytest.raises(ValueError, match="unknown convention 'masked_rows'; valid: fully_masked_rows"):
        Capabilities(conventions={"masked_rows": "nan"})
    assert conv.departures({"fully_masked_rows": "zero_context", "float64_compute": "float32"}) == \
        {"float64_compute": "float32"}


def test_the_bench_gate_names_declared_conventions_and_wants_a_pass(tmp_path):
    import json

    from conformance.speed.gate import conformance_status

    def rec(backend, outcome):
        return {"backend": backend, "check": "matches_spec", "dtype": "float32", "outcome": outcome, "reason": ""}

    section = {"backends": [{"name": "decl", "capabilities": {"conventions": {"fully_masked_rows": "mean_v"}}},
                            {"name": "none", "capabilities": {}}],
               "records": [rec("decl", "passed"), rec("none", "unsupported")], "missing": []}
    (tmp_path / "results.json").write_text(json.dumps({"runs": [{"machine": "m", "conformance": section}]}))
    status = conformance_status(tmp_path / "results.json", "m", ["decl", "none"])
    assert status["decl"][0] is True and "declared conventions: fully_masked_rows=mean_v" in status["decl"][1]
    assert status["none"][0] is None and "no conformance check passed" in status["none"][1]


def test_every_comparison_passes_the_one_observer_hook():
    from conformance.suite.calls import Runner

    seen: list[tuple[str, float]] = []
    run = Runner(cb._Wrapped(), "float32", observers=[lambda what, c: seen.append((what, c.err))])
    get("matches_spec").fn(run, _padded_case())
    get("causality").fn(run, _padded_case())
    assert [w for w, _ in seen] == ["forward", "outputs 0..1 after changing tokens 2.. vs before"]
    assert all(err <= 1e-5 for _, err in seen)


def _saved_failure(tmp_path: Path, backend, kpm: np.ndarray) -> dict:
    config = AttentionConfig(d_in=8, d_out=8, n_heads=2, causal=True)
    case = case_from(config, *kpm.shape, "float32", seed=5).with_(key_padding_mask=kpm)
    path = case.save(tmp_path / "failures" / "x.npz", {"backend": backend.name, "check": "matches_spec"})
    return {"backend": backend.name, "check": "matches_spec", "dtype": "float32", "step": None,
            "outcome": "failed", "reason": "forward: ... (got nan, expected 0.1)",
            "inputs": str(path.relative_to(tmp_path))}


def test_nan_in_a_row_that_sees_keys_is_named_not_unexplained(tmp_path):
    from conformance.findings.diagnose import Diagnosis

    kpm = np.array([[1, 1, 0, 1, 1], [1, 1, 0, 1, 1], [0, 0, 0, 1, 1]], dtype=bool)  # element 2: queries 0-2 see nothing
    rec = _saved_failure(tmp_path, cb.NanLeak(), kpm)
    [finding] = Diagnosis(tmp_path, budget_s=60).run([rec], {"bug-nan-leak": cb.NanLeak()})
    assert finding["cause"] == "non_finite" and rec["finding"] == finding["id"]
    assert "(0, 4)" in finding["detail"] and "batch elements [2]" in finding["detail"]  # where, and next to what


def test_nan_only_in_rows_without_keys_is_a_convention_not_a_leak(tmp_path):
    from conformance.findings.diagnose import Diagnosis

    kpm = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=bool)
    rec = _saved_failure(tmp_path, cb.NanRows(), kpm)
    [finding] = Diagnosis(tmp_path, budget_s=60).run([rec], {"conv-nan-rows": cb.NanRows()})
    assert finding["cause"] == "fully_masked_rows"


def test_a_backend_that_hung_is_not_probed_by_the_diagnosis(tmp_path):
    """Its later checks read "not run: ... hung earlier": one crash finding, and no call into it
    (the probes would hang as the run did: 70 s more for three hung backends)."""
    from conformance.findings.diagnose import Diagnosis

    class Spy(cb.NanRows):
        calls = 0

        def forward(self, *args, **kwargs):
            Spy.calls += 1
            return super().forward(*args, **kwargs)

    kpm = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=bool)
    later = _saved_failure(tmp_path, Spy(), kpm)  # a saved example the diagnosis could re-run
    later["check"], later["reason"] = "causality", f"not run: {Spy.name} hung earlier in this run (during matches_spec)"
    hang = {"backend": Spy.name, "check": "matches_spec", "dtype": "float32", "step": None, "outcome": "failed",
            "reason": f"hang: matches_spec on {Spy.name} (float32) used no CPU for 2 s (sleeping or blocked)"}
    [finding] = Diagnosis(tmp_path, budget_s=60).run([hang, later], {Spy.name: Spy()})
    assert finding["cause"] == "crash" and len(finding["checks"]) == 2
    assert Spy.calls == 0
