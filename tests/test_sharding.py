"""`--shard K/N`: three shards of one run give the same records as the whole run, and
`python -m reports` merges them into one report; a shard that never arrived is missing, never passed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.suite.plan import Key, shard_of, whole_plan
from conformance.results import load

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["numpy", "conformance.mutants.catalogue:ScaleByDOut"]
CHECKS = ["matches_spec", "rows_sum_to_one", "output_dtype_and_shape"]


def _run(out: Path, *extra: str) -> subprocess.Popen:
    args = ["--profile", "quick", "--seed", "7", "--dtype", "float32", "--dtype", "float64", "--out", str(out),
            "-n", "1", *extra]
    args += [a for b in BACKENDS for a in ("--backend", b)] + [a for c in CHECKS for a in ("--check", c)]
    return subprocess.Popen([sys.executable, "-m", "conformance", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})


def _outcomes(records: list[dict]) -> list[tuple]:
    return sorted((r["backend"], r["dtype"], r["check"], r["outcome"]) for r in records)


def _reports(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reports", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("shards")
    procs = {"whole": _run(tmp / "whole")}
    procs.update({k: _run(tmp / f"shard{k}", "--shard", f"{k}/3") for k in (1, 2, 3)})
    logs = {k: p.communicate(timeout=300)[0] for k, p in procs.items()}
    codes = {k: p.returncode for k, p in procs.items()}
    return {"tmp": tmp, "codes": codes, "logs": logs}


def test_shards_partition_the_plan():
    keys = whole_plan([("a", "a"), ("b", "b")], ["float32", "float16"], ["x", "y", "z"])
    parts = [shard_of(keys, (k, 3)) for k in (1, 2, 3)]
    assert sorted(k.index for p in parts for k in p) == list(range(len(keys)))
    assert all(abs(len(p) - len(keys) / 3) < 1 for p in parts)
    assert all(isinstance(k, Key) for p in parts for k in p)


def test_three_shards_give_the_records_of_the_whole_run(shards):
    whole = load(shards["tmp"] / "whole")["runs"][0]["conformance"]
    parts = [load(shards["tmp"] / f"shard{k}")["runs"][0]["conformance"] for k in (1, 2, 3)]
    for name, sec in zip(("whole", 1, 2, 3), [whole, *parts]):  # exit 1 exactly where a check failed
        failed = any(r["outcome"] == "failed" for r in sec["records"])
        assert sec["status"] == "complete" and shards["codes"][name] == int(failed), shards["logs"][name]
    assert shards["codes"]["whole"] == 1  # the mutant fails
    assert [p["planned"] for p in parts] == [4, 4, 4] and whole["planned"] == 12
    ids = {p["plan"]["id"] for p in parts}
    assert len(ids) == 1 and whole["plan"]["id"] not in ids  # the id names N too (issue 29, item 3)
    assert _outcomes([r for p in parts for r in p["records"]]) == _outcomes(whole["records"])
    out = shards["tmp"] / "merged"
    proc = _reports(*(str(shards["tmp"] / f"shard{k}") for k in (1, 2, 3)), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    runs = load(out)["runs"]
    assert len(runs) == 1  # one run again, not three machines
    assert runs[0]["conformance"]["status"] == "complete"
    assert _outcomes(runs[0]["conformance"]["records"]) == _outcomes(whole["records"])
    md = (out / "report.md").read_text()
    assert "never arrived" not in md and "is INCOMPLETE" not in md and "NOT RUN" not in md


def test_a_missing_shard_is_reported_as_missing(shards):
    out = shards["tmp"] / "two-of-three"
    proc = _reports(str(shards["tmp"] / "shard1"), str(shards["tmp"] / "shard3"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "INCOMPLETE" in proc.stdout
    conf = load(out)["runs"][0]["conformance"]
    shard2 = load(shards["tmp"] / "shard2")["runs"][0]["conformance"]["records"]
    assert conf["status"] == "incomplete" and conf["plan"]["arrived"] == [1, 3]
    assert sorted((m["backend"], m["dtype"], m["check"]) for m in conf["missing"]) == \
        sorted((r["backend"], r["dtype"], r["check"]) for r in shard2)
    md = (out / "report.md").read_text()
    assert "shards 2 of 3 never arrived" in md.replace("shard 2 of 3", "shards 2 of 3")
    assert "numpy" in md and "1 of 2 backends conform" not in md  # numpy lacks shard 2's records
