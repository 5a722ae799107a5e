"""The semantic profile through the backend contract: every backend gets a row, plug-ins included.

Backends with one known behaviour each (tests/convention_backends.py) must get exactly that value
in the right column and the spec's everywhere else; built-ins get the library row and the
contract row; a backend that cannot be measured (availability() raises, a segfault, an exit, a
hang, a module that does not import) gets a row that says why, and the others are still measured.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from conformance import results
from conformance.semantics import __main__ as sem_cli
from conformance.semantics import contract
from conformance.semantics import rows as sem_rows
from reports import cli
from reports import semantic
from tests import report_parse as rp

CB = "tests.convention_backends"
#: What the spec's own behaviour reads as through the contract, per column (numpy, every built-in
#: that conforms); a convention backend differs from it in exactly the columns it names.
SPEC = {"fully_masked_row": "zero_context", "mask_polarity": "True = may attend", "default_scale": contract.SPEC_SCALE,
        "padded_query_rows": "computed", "float64_compute": "float64", "dtypes": "float64, float32, float16",
        "low_precision_output": "float16 → float16, float16 with a mask → float16"}
NO_CACHE = "n/a: no KV-cache decoding (forward always has Tq = Tk)"


def values(row: dict) -> dict[str, str]:
    return {k: e["value"] for k, e in row["entries"].items()}


@pytest.mark.parametrize("attr, differs", [
    ("MeanVRows", {"fully_masked_row": "mean_v"}),
    ("NanRows", {"fully_masked_row": "nan"}),
    ("ZeroPaddedQueries", {"padded_query_rows": "zero_output", "fully_masked_row": "zero_output"}),
    ("Float32Inside", {"float64_compute": "float32"}),
    ("UpcastWithMask", {"low_precision_output": "float16 → float16, float16 with a mask → float32"}),
])
def test_a_plugin_row_names_its_one_behaviour(attr, differs):
    row = sem_rows.contract_row(f"{CB}:{attr}")
    assert (row["via"], row["source"], row["spec"], row["skip_reason"]) == ("contract", "module:attr", f"{CB}:{attr}", None)
    got = values(row)
    assert list(got) == [k for k, _ in contract.ALL_COLUMNS]
    # mask polarity is read on the queries that are not padding: zeroed padded rows do not hide it
    expected = {**SPEC, **differs, "causal_alignment": NO_CACHE, "dropout": "none"}
    assert {k: got[k] for k in expected} == expected


def test_a_declared_convention_is_kept_with_the_row_and_shown_in_the_notes():
    row = sem_rows.contract_row(f"{CB}:MeanVRowsDeclared")
    assert row["conventions"] == {"fully_masked_rows": "mean_v"}
    assert row["entries"]["fully_masked_row"]["value"] == "mean_v"  # measured, whatever is declared
    section = {"columns": sem_rows.columns(), "rows": [row]}
    assert semantic.notes(section) == [("conv-mean-v-declared", "declares fully_masked_rows=mean_v")]


def test_a_wrong_scale_is_named_and_the_dtypes_carry_their_error():
    row = sem_rows.contract_row(f"{CB}:WrongScale")
    assert row["entries"]["default_scale"]["value"] == "1/sqrt(d_out)"
    detail = row["entries"]["dtypes"]["detail"]
    assert detail.startswith("declared: float64, float32, float16; float64: relative error ")
    assert float(detail.split("float64: relative error ")[1].split(";")[0]) > 1e-3  # the bug, measured


def test_a_builtin_gets_its_library_row_and_its_contract_row():
    lib, con = sem_rows.rows_for("numpy")
    assert (lib["via"], con["via"]) == ("library", "contract") and lib["backend"] == con["backend"] == "numpy"
    assert lib["entries"]["padded_query_rows"]["value"] == "—"  # the library probes have no such column
    assert con["library"] == "backend adapter impls.numpy_backend:NumpyBackend"
    got = values(con)
    assert {k: got[k] for k in SPEC} == SPEC
    assert got["causal_alignment"] == "bottom-right" and got["dropout"] == "replay"  # KV cache, keep mask


def test_the_adapter_correction_shows_between_the_two_rows():
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    from conformance.semantics import probes
    from conformance.semantics.libraries import TorchSdpa
    from impls.registry import resolve

    # the two rows' causal column, probed alone (the whole rows take seconds of torch)
    assert probes.causal_alignment(TorchSdpa())["value"] == "top-left"  # is_causal=True as the library ships it
    backend = resolve("torch-sdpa").backend
    assert contract.causal_alignment(backend)[0] == "bottom-right"  # the adapter builds its own mask
    assert contract.dropout(backend)[0] == "own RNG"


def test_every_backend_of_the_run_gets_a_row_even_when_it_crashes(tmp_path, capsys):
    specs = [f"{CB}:MeanVRows", "tests.hostile_backends:AvailabilityRaises", "tests.hostile_backends:Segfaults",
             "tests.hostile_backends:ExitsZero", "no_such_module_xyz:Backend", "numpy"]
    argv = ["--out", str(tmp_path), "--machine", "box", "--profile", "quick", "-n", "2"]  # the suite's: ignored
    assert sem_cli.main(argv + [a for s in specs for a in ("--backend", s)]) == 0
    doc = results.load(tmp_path)  # schema-valid, via and the rest included
    rows = doc["runs"][0]["semantics"]["rows"]
    assert [(r["spec"], r["via"]) for r in rows] == [(s, "contract") for s in specs[:-1]] + [
        ("numpy", "library"), ("numpy", "contract")]
    by = {r["spec"]: r for r in rows if r["via"] == "contract"}
    assert by[f"{CB}:MeanVRows"]["backend"] == "conv-mean-v"
    assert by[f"{CB}:MeanVRows"]["entries"]["fully_masked_row"]["value"] == "mean_v"  # measured in a child process
    reasons = {s: (by[s]["skip_reason"] or "") for s in specs}
    assert reasons["tests.hostile_backends:AvailabilityRaises"] == (  # a failure, not "not available here"
        "the backend failed: availability() raised RuntimeError: probing the device failed")
    assert "child process killed by SIGSEGV" in reasons["tests.hostile_backends:Segfaults"]
    assert "child process exited with status 0 before writing its row" in reasons["tests.hostile_backends:ExitsZero"]
    assert "cannot import module 'no_such_module_xyz'" in reasons["no_such_module_xyz:Backend"]
    assert reasons["numpy"] == "" and reasons[f"{CB}:MeanVRows"] == ""
    # the report: the plug-in's measured row beside the library rows, marked via contract
    out, _ = cli.generate([tmp_path], tmp_path / "out")
    [table] = rp.section((out / "report.md").read_text(), semantic.TITLE).tables()
    assert [rp.plain(h) for h in table.head[:3]] == ["Backend", "Via", "Library"]
    cells = {(rp.code_spans(r[0])[0], rp.plain(r[1])): [rp.plain(c) for c in r[3:]] for r in table.rows}
    assert cells["conv-mean-v", "contract"][0] == "mean_v"
    assert cells["numpy", "library"][0] == "zeros" and cells["numpy", "contract"][0] == "zero_context"
    assert cells["hostile-availability-raises", "contract"] == ["not measured"] * len(contract.ALL_COLUMNS)


def test_a_hanging_plugin_is_cut_at_the_wall_limit(tmp_path, monkeypatch):
    (tmp_path / "sleepy_backend.py").write_text(textwrap.dedent("""
        import time
        from conformance.mutants.misbehaving import ForwardOnly

        class Sleepy(ForwardOnly):
            name = "sleepy"

            def result(self, out, x):
                time.sleep(600)  # no CPU time: only a wall limit ends it
                return out
    """))
    monkeypatch.syspath_prepend(str(tmp_path))  # the child process gets this process's sys.path
    row = sem_rows.isolated_contract_row("sleepy_backend:Sleepy", timeout_s=4)
    assert row["via"] == "contract" and row["entries"] == {}
    assert row["skip_reason"].startswith("the contract probes did not finish within 4 s of wall time")


def test_help_unknown_backends_and_listing_options(tmp_path, capsys):
    assert sem_cli.main(["--help", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m conformance.semantics") and "--backend SPEC" in out and "via" in out
    assert sem_cli.main(["--list-backends", "--out", str(tmp_path)]) == 0
    assert sem_cli.main(["--out", str(tmp_path), "-b", "numpy", "-b", "no-such-backend"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown backend 'no-such-backend'; available: " in err
    assert sem_cli.main(["--out", str(tmp_path), "-b", "a:b:c"]) == 2
    assert "malformed backend 'a:b:c'" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()  # nothing probed, nothing written


def test_the_schema_refuses_an_unknown_via(tmp_path):
    section = {"status": "complete", "started": "x", "command": "c", "columns": sem_rows.columns(),
               "rows": [sem_rows.failed_row("x:Y", "reason")]}
    path = sem_cli.write(tmp_path, "box", section)
    results.load(path)
    doc = json.loads(path.read_text())
    doc["runs"][0]["semantics"]["rows"][0]["via"] = "guess"
    path.write_text(json.dumps(doc))
    with pytest.raises(results.ResultsError):
        results.load(path)
