"""Expected failures (--expect), JUnit XML (--junit-xml) and the GitHub job summary.

Two small runs of a backend that fails matches_spec reliably (tests/convention_backends.py's
WrongScale: scores scaled by 1/sqrt(d_out)) and passes causality; the rest are unit tests on
hand-made sections.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conformance import ci_outputs, cli, expect, verdict
from conformance.results import load
from conformance.usage import UsageError

ROOT = Path(__file__).resolve().parent.parent
WRONG = "tests.convention_backends:WrongScale"
CHECKS = ["matches_spec", "causality"]
DTYPES = ["float64", "float32", "float16", "bfloat16"]


def _run(tmp: Path, toml: str, name: str) -> tuple[subprocess.CompletedProcess, dict, Path, Path]:
    out, xml, summary = tmp / name, tmp / f"{name}.xml", tmp / f"{name}-summary.md"
    (tmp / f"{name}.toml").write_text(toml)
    args = ["-b", WRONG, "--dtype", "float32", *[a for c in CHECKS for a in ("--check", c)], "--profile", "quick",
            "--seed", "5", "-n", "1", "--out", str(out), "--expect", str(tmp / f"{name}.toml"), "--junit-xml", str(xml)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), ci_outputs.SUMMARY_VAR: str(summary)}
    proc = subprocess.run([sys.executable, "-m", "conformance", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    return proc, load(out)["runs"][0]["conformance"], xml, summary  # load validates against the schema


def _by_check(section: dict) -> dict[str, dict]:
    return {r["check"]: r for r in section["records"]}


def _junit_counts(xml: Path) -> dict[str, int]:
    suite = ET.parse(xml).getroot().find("testsuite")
    cases = suite.findall("testcase")
    return {"tests": len(cases), "failures": sum(c.find("failure") is not None for c in cases),
            "skipped": sum(c.find("skipped") is not None for c in cases),
            "errors": sum(c.find("error") is not None for c in cases), "declared": int(suite.get("tests"))}


@pytest.fixture(scope="module")
def listed(tmp_path_factory):
    """matches_spec listed (strict), causality listed with strict = false: both expected outcomes."""
    toml = ('[[expect]]\nbackend = "bug-wrong-scale"\ncheck = "matches_spec"\ndtype = "float*"\n'
            'reason = "scores scaled by 1/sqrt(d_out)"\n\n'
            '[[expect]]\nbackend = "bug-*"\ncheck = "causality"\nreason = "flaky on some draws"\nstrict = false\n')
    return _run(tmp_path_factory.mktemp("ci"), toml, "listed")


@pytest.fixture(scope="module")
def stale(tmp_path_factory):
    """Only causality listed, strict: it passes, and matches_spec fails unlisted."""
    toml = '[[expect]]\nbackend = "bug-wrong-scale"\ncheck = "causality"\nreason = "was broken once"\n'
    return _run(tmp_path_factory.mktemp("ci"), toml, "stale")


def test_a_listed_failure_is_an_expected_failure_and_the_run_exits_0(listed):
    proc, section, _, _ = listed
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    r = _by_check(section)
    assert r["matches_spec"]["outcome"] == "expected failure"
    assert r["matches_spec"]["expected"]["reason"] == "scores scaled by 1/sqrt(d_out)"
    assert "max relative error" in r["matches_spec"]["reason"]  # the failure's own reason is kept
    # strict = false: its pass is reported, and does not fail the run
    assert r["causality"]["outcome"] == "unexpectedly passing" and r["causality"]["expected"]["strict"] is False
    assert "fails only where expected: 1 expected failure, 1 unexpectedly passing" in proc.stdout
    assert "1 listed as failing on some draws passed this time (strict = false: not a failure): " \
           "bug-wrong-scale [float32] causality" in proc.stdout and "UNEXPECTEDLY PASSING" not in proc.stdout
    files = [(Path(e["file"]).name, e["entry"]) for e in section["expect"]["entries"]]
    assert files[:2] == [("listed.toml", 1), ("listed.toml", 2)]  # the user's list first: it decides first
    assert {f for f, _ in files[2:]} == {"known-defects.toml"}  # then the built-ins' known defects


def test_the_known_defects_list_names_only_built_in_backends_and_loads():
    from conformance.expect import KNOWN_DEFECTS, load
    from conformance.suite.checks import catalogue
    from impls.registry import available_names
    from spec.config import FLOAT_DTYPES

    entries = load(KNOWN_DEFECTS, [c.name for c in catalogue()], FLOAT_DTYPES)
    assert entries and all(e.backend in available_names() for e in entries)
    assert all(not e.strict for e in entries)  # the defect shows on some draws only


def test_a_listed_combination_that_passes_makes_the_run_exit_1(stale):
    proc, section, _, _ = stale
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    r = _by_check(section)
    assert r["causality"]["outcome"] == "unexpectedly passing" and r["causality"]["expected"]["strict"] is True
    assert r["matches_spec"]["outcome"] == "failed"  # not listed: an ordinary failure
    assert "remove it from the --expect file" in proc.stdout


def test_junit_has_one_testcase_per_planned_record_and_its_failures_are_the_failed_records(listed, stale):
    for proc, section, xml, _ in (listed, stale):
        n = _junit_counts(xml)
        assert n["tests"] == n["declared"] == section["planned"] == len(CHECKS)
        failed = sum(r["outcome"] == "failed" for r in section["records"])
        strict_pass = sum(r["outcome"] == "unexpectedly passing" and r["expected"]["strict"] for r in section["records"])
        assert n["failures"] == failed + strict_pass
    assert _junit_counts(listed[2])["failures"] == 0 and _junit_counts(listed[2])["skipped"] == 1
    assert _junit_counts(stale[2])["failures"] == 2
    case = ET.parse(stale[2]).getroot().find("testsuite/testcase[@name='matches_spec[float32]']/failure")
    assert "max relative error" in case.get("message") and "reproduce: python -m conformance repro" in case.text


def test_the_job_summary_is_written_when_the_variable_is_set(listed, stale):
    text = listed[3].read_text()
    assert "no unexpected outcomes" in text and "scores scaled by 1/sqrt(d_out)" in text
    assert "| `bug-wrong-scale` | 0 | 0 | 1 | 1 | 0 | 0 | 0 | fails only where expected" in text
    text = stale[3].read_text()
    assert "unexpected outcomes" in text and "**Failed** (1)" in text and "remove from the --expect file" in text
    assert ci_outputs.write_step_summary({"records": []}, environ={}) is None  # unset: nothing written


# -- units -------------------------------------------------------------------------------------
CHECK_NAMES = ["matches_spec", "causality"]


@pytest.mark.parametrize("text, words", [
    ("[[expect]\n", "not valid TOML"),
    ('[[expect]]\nbackend = "a"\ncheck = "causality"\nreason = "r"\n[[expect]]\nbackend = "b"\ncheck = "x"\n'
     'reason = "r"\n', "entry 2 ([[expect]] number 2): check 'x' names no check"),
    ('[[expect]]\nbackend = "a"\ncheck = "causality"\n', "entry 1 ([[expect]] number 1): missing 'reason'"),
    ('[[expect]]\nbackend = "a"\ncheck = "causality"\nreason = "r"\nstrikt = false\n', "unknown key 'strikt'"),
    ('[[expect]]\nbackend = "a"\ncheck = "causality"\nreason = "r"\nstrict = "no"\n', "expected a boolean"),
    ('[[expect]]\nbackend = "a"\ncheck = "causality"\nreason = "r"\ndtype = "float8"\n', "dtype 'float8' names no dtype"),
    ('[[expect]]\nbackend = "a"\ncheck = "causality"\nreason = "  "\n', "reason is empty"),
    ('expect = 3\n', "must be an array of tables"),
    ('[[expected]]\n', "unknown top-level key 'expected'"),
])
def test_a_bad_expect_file_names_the_bad_entry(tmp_path, text, words):
    p = tmp_path / "x.toml"
    p.write_text(text)
    with pytest.raises(UsageError, match=None) as e:
        expect.load(p, CHECK_NAMES, DTYPES)
    assert words in str(e.value) and str(p) in str(e.value)


def test_a_bad_expect_file_is_one_line_and_exit_2(tmp_path, capsys):
    p = tmp_path / "x.toml"
    p.write_text('[[expect]]\nbackend = "a"\ncheck = "causality"\n')
    assert cli.main(["--expect", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "entry 1" in err and "missing 'reason'" in err
    assert cli.main(["--expect", str(tmp_path / "absent.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_first_matching_entry_decides_and_other_outcomes_are_kept():
    es = [expect.Entry(1, "b*", "causality", "float16", "one"), expect.Entry(2, "*", "*", "*", "two", strict=False)]
    rec = {"backend": "bx", "dtype": "float16", "check": "causality", "outcome": "failed", "reason": "r"}
    assert expect.apply(es, rec)["expected"]["reason"] == "one"
    assert expect.apply(es, {**rec, "dtype": "float32"})["expected"]["reason"] == "two"
    assert expect.apply(es, {**rec, "outcome": "unsupported"})["outcome"] == "unsupported"
    assert expect.apply([], rec) is rec
    assert not expect.fails_run(expect.apply(es, rec))
    assert expect.fails_run(expect.apply(es, {**rec, "outcome": "passed"}))  # entry 1 is strict
    assert not expect.fails_run(expect.apply(es, {**rec, "outcome": "passed", "dtype": "float32"}))


def test_the_verdict_of_expected_failures_is_never_a_plain_conforms():
    assert verdict.status({"passed": 3, "expected failure": 1}) == "expected"
    assert verdict.status({"passed": 3, "expected failure": 1, "failed": 1}) == "fails"
    assert verdict.status({"passed": 3, "expected failure": 1}, missing=1) == "incomplete"
    assert verdict.status({"unexpectedly passing": 1}) == "conforms"
    assert "expected" not in verdict.CONFORMING
    assert verdict.verdict_text({"expected failure": 2}) == "fails only where expected: 2 expected failures"


def test_junit_shows_skips_unsupported_and_an_incomplete_run():
    section = {"status": "incomplete", "planned": 5, "backends": [{"name": "b"}], "records": [
        {"backend": "b", "dtype": "float32", "check": "c1", "outcome": "passed", "reason": ""},
        {"backend": "b", "dtype": "float32", "check": "c2", "outcome": "unsupported", "reason": "no mask"},
        {"backend": "b", "dtype": "float16", "check": "c1", "outcome": "skipped", "reason": "no GPU\x07"},
        {"backend": "b", "dtype": "float16", "check": "c2", "outcome": "failed", "reason": "bad\nsecond line"}],
        "missing": [{"backend": "b", "dtype": "bfloat16", "check": "c1"}]}
    root = ci_outputs.junit(section).getroot()
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == \
        {"tests": "5", "failures": "1", "errors": "1", "skipped": "2"}
    assert root.find("testsuite/testcase[@name='c2[float32]']/skipped").get("message") == "unsupported: no mask"
    assert "not run" in root.find("testsuite/testcase[@name='c1[bfloat16]']/error").get("message")
    assert root.find("testsuite/testcase[@name='c2[float16]']/failure").get("message") == "bad"
    ET.fromstring(ET.tostring(root))  # the bell character did not make it unparsable
    text = ci_outputs.job_summary(section)
    assert "unexpected outcomes" in text and "**Not run (planned, no result)** (1)" in text


def _doc(records: list[dict]) -> dict:
    section = {"status": "complete", "started": "t", "profile": "quick", "seed": 1, "command": "c",
               "backends": [{"name": "b", "spec": "b", "source": "builtin", "capabilities": {}, "exposed_steps": [],
                             "skip_reason": None}],
               "checks": [{"name": c, "step": None, "doc": ""} for c in ("c1", "c2", "c3")], "records": records}
    return {"schema_version": "1.0", "kind": "mha-conformance-results",
            "runs": [{"machine": "m", "environment": {"commit": None, "dirty": None}, "conformance": section,
                      "speed": None}]}


XFAIL = {"backend": "b", "dtype": "float32", "check": "c1", "outcome": "expected failure", "reason": "err 0.5",
         "expected": {"entry": 1, "reason": "known scale bug", "strict": True}}
XPASS = {"backend": "b", "dtype": "float32", "check": "c2", "outcome": "unexpectedly passing", "reason": "",
         "expected": {"entry": 2, "reason": "fixed upstream?", "strict": False}}
PASS = {"backend": "b", "dtype": "float32", "check": "c3", "outcome": "passed", "reason": ""}


def test_the_report_shows_both_outcomes_with_their_reasons():
    from reports import html, markdown, model

    report = model.build(_doc([XFAIL, XPASS, PASS]))
    assert model.backend_verdict(report.matrix, 0).status == "expected"
    assert report.matrix.cell("c1", 0).status == "xfail" and report.matrix.cell("c2", 0).status == "xpass"
    assert "1 fail only where expected" in model.conformance_summary(report) and not report.failures
    md, page = markdown.render(report), html.render(report)
    for out in (md, page):
        assert "Expected failures" in out and "known scale bug" in out and "fixed upstream?" in out
        assert "unexpectedly passing (strict = false)" in out and "fails only where expected" in out


def test_the_bench_gate_does_not_time_a_backend_with_expected_failures_as_conforming(tmp_path):
    import json

    from conformance.speed.gate import conformance_status

    (tmp_path / "results.json").write_text(json.dumps(_doc([XFAIL, PASS])))
    ok, note = conformance_status(tmp_path / "results.json", "m", ["b"])["b"]
    assert ok is False and "1 of them expected (--expect)" in note
