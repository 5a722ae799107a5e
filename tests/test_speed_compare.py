"""Speed history (`python -m conformance bench --compare OLD.json`): a planted slowdown is flagged
(exit 1), an unchanged file passes (exit 0), noise inside the quartiles is not a slowdown."""

from __future__ import annotations

import copy
import io
import json

import pytest

from conformance.speed import bench, cli, compare
from tests.test_speed import FakeBackend, plan


def _cell(backend: str, T: int, median: float, spread: float = 0.05) -> dict:
    return {"backend": backend, "dtype": "float32", "B": 4, "T": T, "median_s": median,
            "p25_s": median * (1 - spread), "p75_s": median * (1 + spread)}


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    """A real results file: the bench run in-process on two fake backends at two shapes."""
    d = tmp_path_factory.mktemp("old")
    bench.run(plan(d, [FakeBackend("a"), FakeBackend("b")], include_nonconforming=True), out=io.StringIO())
    doc = json.loads((d / "results.json").read_text())  # as taken on a quiet machine, whatever this one is
    doc["runs"][0]["speed"]["load_average"] = {"start": 0.1, "now": 0.1, "cpu_busy_percent_at_start": 0.0}
    (d / "results.json").write_text(json.dumps(doc))
    return d / "results.json"


def _new(tmp_path, old_path, change):
    doc = json.loads(old_path.read_text())
    change(doc["runs"][0]["speed"])
    d = tmp_path / "new"
    d.mkdir(exist_ok=True)
    (d / "results.json").write_text(json.dumps(doc))
    return d / "results.json"


def test_an_unchanged_file_passes(tmp_path, old, capsys):
    assert cli.main(["--compare", str(old), "--current", str(old)]) == 0
    out = capsys.readouterr().out
    assert "4 cells compared: 0 slower, 0 faster" in out and "SLOWER" not in out


def test_a_planted_slowdown_is_flagged(tmp_path, old, capsys):
    def slow(speed):
        c = next(c for c in speed["cells"] if c["backend"] == "b" and c["T"] == 16)  # 1.5x, quartiles apart
        c.update(median_s=c["p75_s"] * 1.5, p25_s=c["p75_s"] * 1.4, p75_s=c["p75_s"] * 1.6)
    new = _new(tmp_path, old, slow)
    assert cli.main(["--compare", str(old), "--current", str(new)]) == 1
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "forward b" in l and "T=16" in l)
    assert "SLOWER" in line and "1 slower" in out
    assert sum("SLOWER" in l for l in out.splitlines()) == 1


def test_noise_is_not_a_slowdown_and_a_decode_slowdown_is():
    old, noisy = _cell("numpy", 64, 1e-3, spread=0.5), _cell("numpy", 64, 1.4e-3, spread=0.5)
    assert compare.judge(old, noisy) == "same"  # 1.4x, but the quartiles overlap
    assert compare.judge(_cell("n", 1, 1e-3), _cell("n", 1, 1.2e-3)) == "same"  # below 1.25x
    assert compare.judge(_cell("n", 1, 1e-3), _cell("n", 1, 1.2e-3), threshold=0.1) == "slower"
    assert compare.judge(_cell("n", 1, 2e-3), _cell("n", 1, 1e-3)) == "faster"
    doc = {"runs": [{"machine": "m", "speed": {"cells": [], "decode": {"cells": [
        {"backend": "numpy", "dtype": "float32", "B": 1, "L": 128, "median_s": 1e-3, "p25_s": 0.9e-3, "p75_s": 1.1e-3}]}}}]}
    slow = copy.deepcopy(doc)
    slow["runs"][0]["speed"]["decode"]["cells"][0].update(median_s=2e-3, p25_s=1.9e-3, p75_s=2.1e-3)
    r = compare.compare(doc, slow)
    assert [(c.key, c.verdict) for c in r.changes] == [("decode numpy float32 B=1 L=128", "slower")]
    assert r.busy == []  # no load recorded


def test_cells_in_one_file_only_are_listed_and_bad_input_is_one_line(tmp_path, old, capsys):
    new = _new(tmp_path, old, lambda speed: speed["cells"].pop(0))
    assert cli.main(["--compare", str(old), "--current", str(new)]) == 0
    assert "only in the old file" in capsys.readouterr().out
    assert cli.main(["--current", str(old)]) == 2
    assert "--current needs --compare" in capsys.readouterr().err
    assert cli.main(["--compare", str(tmp_path / "nope.json"), "--current", str(old)]) == 2
    assert "no such results file" in capsys.readouterr().err
    assert cli.main(["--compare", str(old), "--current", str(old), "--slowdown", "-1"]) == 2
    empty = _new(tmp_path, old, lambda speed: speed["cells"].clear())
    assert compare.report(old, empty, out=io.StringIO()) == 2  # nothing in both: not a pass


def test_a_slowdown_on_a_busy_machine_is_not_established(tmp_path, old, capsys):
    def slow_and_busy(speed):
        c = next(c for c in speed["cells"] if c["backend"] == "a")
        c.update(median_s=c["p75_s"] * 2, p25_s=c["p75_s"] * 1.9, p75_s=c["p75_s"] * 2.1)
        speed["load_average"] = {"start": 20.0, "now": 22.0}
    new = _new(tmp_path, old, slow_and_busy)
    doc = json.loads(new.read_text())
    doc["runs"][0].setdefault("environment", {})["cpu_count"] = 2
    new.write_text(json.dumps(doc))
    assert cli.main(["--compare", str(old), "--current", str(new)]) == 3
    out = capsys.readouterr().out
    assert "busy machine, new run: load average 22.0 on 2 CPUs" in out and "not established" in out
