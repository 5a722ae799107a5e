"""A run never lies, round two (issue #29), items 3 and 4: shards and a results file's own
bookkeeping are checked, not trusted; `--out` and `python -m reports --out` lose nothing the
suite did not write. Each defect reproduced with an input written for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_honest_runs import conformance, quick


# -- 3: shards and a file's own bookkeeping are checked, not trusted -------------------------------

BACKENDS, DTYPES, CHECKS = ["numpy", "torch"], ["float32", "float16"], ["c1", "c2", "c3", "c4", "c5", "c6", "c7"]


def _section_doc(shard: tuple[int, int] | None, commit: str | None = "a" * 40, drop: int = 0,
                 double: int = 0) -> dict:
    """A results document of the plan above (28 keys), all passed, bookkeeping saying complete;
    `drop` records left out and `double` records given twice, with `missing` still []."""
    from conformance.suite.plan import plan_id, shard_of, whole_plan

    whole = whole_plan([(b, b) for b in BACKENDS], DTYPES, CHECKS)
    mine = shard_of(whole, shard or (1, 1))
    records = [{"backend": k.backend, "dtype": k.dtype, "check": k.check, "step": None,
                "outcome": "passed", "reason": "5 examples"} for k in mine]
    records = records[drop:] + records[drop:drop + double]
    k, n = shard or (1, 1)
    conf = {"status": "complete", "started": "t", "profile": "quick", "seed": 1, "command": "c",
            "backends": [{"name": b, "spec": b, "source": "builtin", "capabilities": {}, "exposed_steps": [],
                          "skip_reason": None} for b in BACKENDS],
            "checks": [{"name": c, "step": None, "doc": "d"} for c in CHECKS], "dtypes": DTYPES,
            "records": records, "missing": [], "planned": len(mine),
            "plan": {"id": plan_id(whole, "quick", 1, n), "shard": k, "shards": n, "total": len(whole)}}
    env = {"os": "x", "cpu": "x", "python": "3", "libraries": {}, "threads": {}, "commit": commit, "dirty": False}
    return {"schema_version": "1.0", "kind": "mha-conformance-results",
            "runs": [{"machine": f"m{k}", "environment": env, "conformance": conf, "speed": None}]}


def test_shards_of_the_same_n_merge_complete():  # 3 (the control)
    from conformance.results import merge

    conf = merge([_section_doc((1, 2)), _section_doc((2, 2))])["runs"][0]["conformance"]
    assert conf["status"] == "complete" and conf["missing"] == [] and len(conf["records"]) == 28


def test_shards_cut_into_different_n_are_refused():  # 3
    from conformance.results import ResultsError, merge

    # 1/2 and 2/3 cover 28 keys as 14 + 9: key 4 twice (even, and 4 % 3 == 1), 3, 5, 9, ... never
    with pytest.raises(ResultsError, match="different numbers of parts.*shard 1/2.*shard 2/3"):
        merge([_section_doc((1, 2)), _section_doc((2, 3))])


def test_shards_of_different_suite_versions_are_refused():  # 3
    from conformance.results import ResultsError, merge

    with pytest.raises(ResultsError, match="different suite versions"):
        merge([_section_doc((1, 2), commit="a" * 40), _section_doc((2, 2), commit="b" * 40)])


def test_the_plan_id_names_n():  # 3
    from conformance.suite.plan import plan_id, whole_plan

    whole = whole_plan([("numpy", "numpy")], DTYPES, CHECKS)
    assert plan_id(whole, "quick", 1, 2) != plan_id(whole, "quick", 1, 3)


def test_an_absurd_n_is_refused_by_the_run_and_by_the_reader(tmp_path):  # 3
    proc = conformance("--backend", "numpy", "--dtype", "float32", "--check", "matches_spec", "--seed", "1",
                       "--shard", "1/10000000", "--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert "N must be at most 1" in proc.stderr and not (tmp_path / "out").exists()
    from conformance.results import ResultsError, merge

    doc = _section_doc((1, 2))
    doc["runs"][0]["conformance"]["plan"]["shards"] = 10_000_000
    with pytest.raises(ResultsError, match="N must be at most"):
        merge([doc])


def test_a_file_that_claims_complete_is_recounted(tmp_path):  # 3
    from reports import cli as reports_cli

    doc = _section_doc(None, drop=18, double=2)  # 10 of 28 records (2 of them twice), missing: []
    src = tmp_path / "in.json"
    src.write_text(json.dumps(doc))
    out, report = reports_cli.generate([src], tmp_path / "r")
    conf = json.loads((out / "results.json").read_text())["runs"][0]["conformance"]
    assert conf["status"] == "incomplete" and len(conf["missing"]) == 18 and conf["planned"] == 28
    assert len(conf["records"]) == 10 and [d["records"] for d in conf["duplicates"]] == [2, 2]
    md = (out / "report.md").read_text()
    assert "INCOMPLETE" in md and "18 of 28 planned" in md and "twice or more" in md


# -- 4: --out loses nothing the suite did not write ------------------------------------------------

def test_only_the_suites_own_files_are_removed_from_an_earlier_run(tmp_path):  # 4
    out = tmp_path / "out"
    (out / "failures" / "sub").mkdir(parents=True)
    (out / ".plan.json").write_text("[]")  # an earlier run's directory
    stale = out / "failures" / "gone__float32__matches_spec.npz"
    stale.write_bytes(b"an earlier run's bundle")
    notes = out / "failures" / "notes.txt"
    notes.write_text("mine")
    (out / "failures" / "sub" / "keep.npz").write_bytes(b"mine too")
    proc = conformance(*quick(out, ["numpy"], ["matches_spec"], "--dtype", "float32", "-n", "1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert not stale.exists() and notes.read_text() == "mine"
    assert (out / "failures" / "sub" / "keep.npz").read_bytes() == b"mine too"


def _no_run(tmp_path: Path, words: str, *, entries: dict[str, str | None]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name, content in entries.items():
        p = out / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.mkdir() if content is None else p.write_text(content)
    before = sorted((str(p.relative_to(out)), p.is_dir() or p.read_text()) for p in out.rglob("*"))
    proc = conformance("--backend", "numpy", "--check", "matches_spec", "--out", str(out), timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and words in lines[0], proc.stderr[-2000:]
    assert sorted((str(p.relative_to(out)), p.is_dir() or p.read_text()) for p in out.rglob("*")) == before


def test_a_directory_that_is_not_a_run_directory_is_refused(tmp_path):  # 4
    _no_run(tmp_path, "not a run directory", entries={"thesis.tex": "x", "failures/important.txt": "y"})


def test_a_results_json_the_suite_did_not_write_is_not_overwritten(tmp_path):  # 4
    _no_run(tmp_path, "not this suite's", entries={".plan.json": "[]", "results.json": '{"mine": 1}'})


@pytest.mark.parametrize("name, content, words", [
    (".records", "a file", "not a directory"), ("failures", "a file", "not a directory"),
    ("results.json", None, "is a directory")])
def test_odd_contents_of_out_are_one_line(tmp_path, name, content, words):  # 11
    _no_run(tmp_path, words, entries={".plan.json": "[]", name: content})


def test_reports_never_copies_a_bundle_outside_its_out(tmp_path):  # 4
    from reports import cli as reports_cli

    src = tmp_path / "src"
    (src / "failures").mkdir(parents=True)
    (src / "failures" / "x.npz").write_bytes(b"bundle")
    doc = _section_doc(None)
    rec = doc["runs"][0]["conformance"]["records"][0]
    rec.update(outcome="failed", reason="r", inputs="../src/failures/x.npz")
    (src / "results.json").write_text(json.dumps(doc))
    out = tmp_path / "deep" / "out"
    reports_cli.generate([src], out)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.npz")) == [
        "deep/out/failures/x.npz", "src/failures/x.npz"]
    merged = json.loads((out / "results.json").read_text())["runs"][0]["conformance"]
    assert next(r for r in merged["records"] if r["outcome"] == "failed")["inputs"] == "failures/x.npz"
