"""docs/plugging-in-a-backend.md stays true: its example runs, and its tables match the code."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib

import spec
from impls.base import Capabilities
from impls.registry import BUILTINS, ENTRY_POINT_GROUP, resolve
from spec.table import STEPS

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugging-in-a-backend.md"
EXAMPLE_HEADING = "## A complete example: `mypkg/attn.py`"


def section(heading: str) -> str:
    text = DOC.read_text()
    assert heading in text, f"{DOC.name} lost the heading {heading!r}"
    body = text.split(heading, 1)[1]
    return re.split(r"^## ", body, maxsplit=1, flags=re.MULTILINE)[0]


def first_block(text: str, lang: str) -> str:
    m = re.search(rf"^```{lang}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    assert m, f"no ```{lang} block found"
    return m.group(1)


@pytest.fixture
def mypkg(tmp_path, monkeypatch):
    """The doc's example written out as tmp_path/mypkg/attn.py, importable."""
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "attn.py").write_text(first_block(section(EXAMPLE_HEADING), "python"))
    (pkg / "attn_grad.py").write_text(first_block(section("## Gradients"), "python"))  # the gradient example
    for mod in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def check_against_spec(backend) -> None:
    for causal in (True, False):
        config = spec.AttentionConfig(d_in=12, d_out=16, n_heads=4, causal=causal, qkv_bias=causal)
        params = spec.init_params(config, seed=3)
        x = np.random.default_rng(4).standard_normal((2, 9, 12))
        golden = spec.forward(x, params, config)
        for dtype, tol in (("float64", 1e-12), ("float32", 1e-5)):
            assert dtype in backend.capabilities.dtypes
            out = backend.forward(backend.from_numpy(x, dtype), backend.prepare(params, dtype), config)
            got = backend.to_numpy(out)
            assert got.dtype == np.dtype(dtype), f"{dtype} in, {got.dtype} out"
            np.testing.assert_allclose(got, golden, rtol=0, atol=tol)


def test_example_is_about_thirty_lines():
    code = first_block(section(EXAMPLE_HEADING), "python")
    n = len([line for line in code.splitlines() if line.strip()])
    assert 20 <= n <= 40, f"the example has {n} non-blank lines"


def test_example_resolves_as_module_attr_and_matches_spec(mypkg):
    info = resolve("mypkg.attn:Backend")
    assert info.source == "module:attr" and info.skip_reason is None
    assert info.backend.name == "mypkg-numpy"
    check_against_spec(info.backend)


def test_example_resolves_through_an_entry_point(mypkg):
    toml = tomllib.loads(first_block(DOC.read_text().split("**Entry point.**", 1)[1], "toml"))
    entries = toml["project"]["entry-points"][ENTRY_POINT_GROUP]
    assert entries == {"mybackend": "mypkg.attn:Backend"}
    info = mypkg / "mypkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()))
    resolved = resolve("mybackend")
    assert resolved.source == "entry point" and resolved.backend.name == "mypkg-numpy"
    check_against_spec(resolved.backend)


def test_step_table_lists_every_step_by_its_method_name():
    table = section("## The twelve steps")
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", table, flags=re.MULTILINE)
    assert {int(n): name for n, name in rows} == {n: s.name for n, s in STEPS.items()}


def test_capabilities_table_lists_every_field_with_its_default():
    table = section("## Capabilities")
    rows = dict(re.findall(r"^\| `(\w+)` \| `?([^|`]*)`? \|", table, flags=re.MULTILINE))
    fields = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
              for f in dataclasses.fields(Capabilities)}
    assert set(rows) == set(fields)
    for name, default in fields.items():
        assert ast.literal_eval(rows[name]) == default, f"{name}: doc says {rows[name]}, code {default!r}"


def test_every_builtin_name_is_documented():
    text = DOC.read_text()
    for name in BUILTINS:
        assert f"`{name}`" in text, name
    assert f'"{ENTRY_POINT_GROUP}"' in text


def test_example_conforms_when_run_through_the_suite_as_documented(mypkg, tmp_path):
    """The doc's command, as a user types it (minus nox): the example passes every check it supports."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "conformance", "--backend", "mypkg.attn:Backend",
                           "--profile", "quick", "--seed", "5", "--out", str(out)],
                          cwd=DOC.parent.parent, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(mypkg)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "mypkg-numpy" in proc.stdout and "conforms" in proc.stdout
    records = json.loads((out / "results.json").read_text())["runs"][0]["conformance"]["records"]
    outcomes = {r["outcome"] for r in records}
    assert outcomes == {"passed", "unsupported"}  # no key padding, no dropout, no steps, no float16


# -- KV-cache decoding: the doc's mypkg/cached.py runs the cache checks ----------------------------
def test_cached_example_passes_the_cache_checks_through_the_suite(mypkg, tmp_path):
    (mypkg / "mypkg" / "cached.py").write_text(first_block(section("## KV-cache decoding"), "python"))
    from conformance.suite.checks import catalogue

    checks = [c.name for c in catalogue() if c.fn.__module__ == "conformance.suite.checks.cache"]
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "conformance", "--backend", "mypkg.cached:Backend",
                           *(a for c in checks for a in ("--check", c)), "--dtype", "float64", "--dtype", "float32",
                           "--profile", "quick", "--seed", "5", "--out", str(out)],
                          cwd=DOC.parent.parent, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(mypkg)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    records = json.loads((out / "results.json").read_text())["runs"][0]["conformance"]["records"]
    outcome = {(r["check"], r["dtype"]): r["outcome"] for r in records}
    for unsupported in ("decode_with_padding", "steps_with_fewer_queries"):  # no padding, no steps
        assert outcome.pop((unsupported, "float32")) == outcome.pop((unsupported, "float64")) == "unsupported"
    assert set(outcome.values()) == {"passed"}, outcome


def test_gradient_example_matches_the_spec_and_passes_the_gradient_checks(mypkg, tmp_path):
    """The Gradients section's example: the spec's gradients, then the suite's grads_* checks as documented."""
    from conformance.suite.calls import Runner
    from conformance.suite.checks import catalogue
    from conformance.suite.strategies import case_from

    backend = resolve("mypkg.attn_grad:Backend").backend
    for causal in (True, False):
        case = case_from(spec.AttentionConfig(d_in=6, d_out=8, n_heads=2, causal=causal, qkv_bias=causal), 2, 5,
                         "float64", seed=1)
        g = np.random.default_rng(2).standard_normal((2, 5, 8))
        got = Runner(backend, "float64").grads(case, g)
        for name, want in spec.block.grads(case.x, case.params, case.config, g).arrays().items():
            np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-12 * max(1.0, np.abs(want).max()), err_msg=name)
    checks = [a for c in catalogue() if c.group == "gradients" for a in ("--check", c.name)]
    proc = subprocess.run([sys.executable, "-m", "conformance", "--backend", "mypkg.attn_grad:Backend", *checks,
                           "--profile", "quick", "--seed", "5", "--out", str(tmp_path / "out")],
                          cwd=DOC.parent.parent, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(mypkg)})
    assert proc.returncode == 0 and "conforms" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]


# -- failure bundles and the spec as a reference --------------------------------------------------
BUNDLE_HEADING = "## Failure bundles and the spec as your reference"


def test_bundle_and_spec_example_runs_and_loads_a_real_bundle(tmp_path, capsys):
    from conformance.suite.case import Case
    from conformance.suite.strategies import case_from

    code = first_block(section(BUNDLE_HEADING), "python")
    ns: dict = {}
    exec(compile(code, "bundle-example", "exec"), ns)
    assert capsys.readouterr().out.split() == ["(2,", "5,", "8)", "(2,", "5,", "8)", "(8,", "8)"]
    want = spec.forward(ns["x"], ns["params"], ns["config"], key_padding_mask=ns["mask"])
    np.testing.assert_array_equal(ns["y"], want)
    # the doc's loader reads what the suite saves
    case = case_from(spec.AttentionConfig(d_in=6, d_out=8, n_heads=2, causal=True, qkv_bias=True), 2, 5,
                     "float32", seed=3)
    case = case.with_(key_padding_mask=np.array([[True] * 5, [True, False, True, True, False]]))
    path = case.save(tmp_path / "b.npz", {"backend": "b", "backend_spec": "m:B", "import_path": [], "check": "c",
                                          "reason": "r"})
    x, params, config, mask, meta = ns["load_bundle"](path)
    loaded, meta2 = Case.load(path)
    assert meta == meta2 and config == loaded.config
    np.testing.assert_array_equal(x, loaded.x)
    np.testing.assert_array_equal(mask, loaded.key_padding_mask)
    for k, v in loaded.params.arrays().items():
        np.testing.assert_array_equal(getattr(params, k), v)


def test_bundle_table_names_every_array_and_meta_key_the_suite_saves(tmp_path):
    from conformance.suite.strategies import case_from

    table = section(BUNDLE_HEADING)
    documented = set(re.findall(r"`(\w+)`", table.split("```python")[0]))
    case = case_from(spec.AttentionConfig(d_in=4, d_out=4, n_heads=1, causal=False, qkv_bias=True), 1, 3,
                     "float64", seed=1)
    case = case.with_(key_padding_mask=np.ones((1, 3), bool), dropout_mask=np.ones((1, 1, 3, 3), bool))
    meta = {"backend": "b", "backend_spec": "m:B", "import_path": [], "check": "c", "reason": "r"}
    path = case.save(tmp_path / "b.npz", meta)
    with np.load(path) as z:
        arrays = set(z.files)
        keys = set(json.loads(bytes(z["meta"]).decode()))
    assert arrays <= documented, arrays - documented
    assert keys <= documented, keys - documented
