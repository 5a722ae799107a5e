"""The jax, flax and onnxruntime backends and the semantic profile.

Every test here runs with and without the optional packages: a missing package is a skip
whose reason names it (and is itself tested, by hiding the package in a subprocess); where the
package is installed the adapter must match the spec. The probes are tested on libraries
that are always here (this project's NumPy code, and fakes that misbehave on purpose) so the
tests show each probe can tell the behaviours apart.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import spec
from conformance.semantics import __main__ as sem_cli
from conformance.semantics import probes
from conformance.semantics import rows as sem_rows
from conformance.semantics.libraries import SpecSteps
from impls.registry import resolve
from conformance import results
from reports import cli, html, markdown, model, semantic
from tests import report_parse as rp

REPO = Path(__file__).resolve().parent.parent
PEERS = {"jax": "jax", "flax": "flax", "onnxruntime": "onnxruntime"}  # backend -> package it needs
#: Loose: these compare dtype plumbing and semantics, not accuracy (the suite does that). float64
#: is float32-level for jax/flax/onnxruntime: their softmax runs in float32 (measured ~1e-7).
TOL = {"float64": 1e-6, "float32": 1e-4, "float16": 2e-2, "bfloat16": 5e-2}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)


# -- skip paths ------------------------------------------------------------------------------
def test_peer_modules_import_without_their_frameworks():
    code = ("import sys\n"
            "import impls.jax_backend, impls.flax_backend, impls.onnxruntime_backend, conformance.semantics.probes, "
            "conformance.semantics.libraries, reports.semantic\n"
            "bad = [m for m in ('jax', 'flax', 'onnx', 'onnxruntime', 'torch') if m in sys.modules]\n"
            "assert not bad, bad\nprint('ok')\n")
    r = run_python(code)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


@pytest.mark.parametrize("name,hidden,expected", [
    ("jax", ("jax",), "jax is not installed"),
    ("flax", ("flax",), "flax is not installed"),
    ("flax", ("jax", "flax"), "jax is not installed"),
    ("onnxruntime", ("onnxruntime",), "onnxruntime is not installed"),
    ("onnxruntime", ("onnx",), "onnxruntime is not installed"),
])
def test_missing_package_is_a_skip_with_its_reason(name, hidden, expected):
    # sys.modules[m] = None makes `import m` raise ImportError, as if m were not installed
    code = ("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in hidden) +
            "from impls.registry import resolve\n"
            f"print(resolve({name!r}).skip_reason)\n")
    r = run_python(code)
    assert r.returncode == 0, r.stderr
    reason = r.stdout.strip()
    if name == "flax" and importlib.util.find_spec("jax") is None:
        expected = "jax is not installed"  # flax needs jax: the first missing one is named
    assert reason.startswith(expected), reason
    assert "MHA_WITH_PEERS=1" in reason and "==" in reason, reason  # the switch and the pinned versions


def test_missing_library_is_a_row_that_says_why(monkeypatch):
    raw = SpecSteps("numpy", "numpy")
    monkeypatch.setattr(raw, "missing", lambda: "jax is not installed: test")
    monkeypatch.setattr(sem_rows, "all_raw", lambda: [raw])
    lib, con = sem_cli.measure(["numpy"])["rows"]
    assert lib["via"] == "library" and lib["skip_reason"] == "jax is not installed: test" and lib["entries"] == {}
    assert con["via"] == "contract" and con["skip_reason"] is None  # the adapter is measured all the same


# -- adapters, where their package is installed ----------------------------------------------
@pytest.fixture(scope="module", params=sorted(PEERS))
def peer(request):
    pytest.importorskip(PEERS[request.param], reason=f"{PEERS[request.param]} is not installed "
                                                     "(MHA_WITH_PEERS=1 nox -s tests installs it)")
    info = resolve(request.param)
    assert info.skip_reason is None, info.skip_reason
    return info.backend


def _forward(b, x, params, config, dtype, kpm=None):
    kw = {} if kpm is None else {"key_padding_mask": b.from_numpy(kpm)}
    out = b.to_numpy(b.forward(b.from_numpy(x, dtype), b.prepare(params, dtype), config, **kw))
    return out


@pytest.mark.parametrize("causal,qkv_bias,d_in", [(True, False, 12), (False, True, 16)])
def test_adapter_matches_spec_with_padding(peer, causal, qkv_bias, d_in):
    config = spec.AttentionConfig(d_in=d_in, d_out=16, n_heads=4, causal=causal, qkv_bias=qkv_bias)
    params = spec.init_params(config, seed=3)
    x = np.random.default_rng(4).standard_normal((2, 6, d_in))
    kpm = np.ones((2, 6), bool)
    kpm[0, :3] = False  # causal: the first queries of row 0 see no key
    kpm[1] = causal  # non-causal: row 1 entirely padded
    golden = spec.forward(x, params, config, key_padding_mask=kpm)
    for dtype in peer.capabilities.dtypes:
        out = _forward(peer, x, params, config, dtype, kpm)
        assert str(out.dtype) == dtype, (dtype, out.dtype)
        err = np.abs(out.astype(np.float64) - golden).max() / np.abs(golden).max()
        assert err < TOL[dtype], (peer.name, dtype, err)
    empty = ~np.cumsum(kpm, 1).astype(bool) if causal else ~kpm.any(1, keepdims=True).repeat(6, 1)
    out = _forward(peer, x, params, config, "float32", kpm)
    np.testing.assert_allclose(out[empty], np.broadcast_to(params.b_o, out[empty].shape), rtol=0, atol=1e-6)


@pytest.mark.parametrize("H,n_kv_heads,qkv_bias", [(6, 2, True), (4, 1, False), (8, 4, True)])
def test_adapter_matches_spec_with_grouped_kv_heads(peer, H, n_kv_heads, qkv_bias):
    assert peer.capabilities.grouped_kv
    config = spec.AttentionConfig(d_in=5, d_out=2 * H, n_heads=H, n_kv_heads=n_kv_heads, causal=True,
                                  qkv_bias=qkv_bias)
    params = spec.init_params(config, seed=3)
    assert params.W_k.shape == (2 * n_kv_heads, 5)  # K/V projections of n_kv_heads * head_dim rows
    x = np.random.default_rng(4).standard_normal((2, 7, 5))
    kpm = np.ones((2, 7), bool)
    kpm[1, :2] = False
    golden = spec.forward(x, params, config, key_padding_mask=kpm)
    for dtype in ("float64", "float32"):
        err = np.abs(_forward(peer, x, params, config, dtype, kpm) - golden).max() / np.abs(golden).max()
        assert err < TOL[dtype], (peer.name, dtype, err)


@pytest.mark.parametrize("name", sorted(PEERS))
def test_peer_libraries_group_consecutively(name):
    from conformance.semantics.libraries import all_raw

    raw = {r.name: r for r in all_raw()}[name]
    if raw.missing():
        pytest.skip(raw.missing())
    e = probes.kv_grouping(raw)  # the library itself: jnp-level call, nnx(num_kv_heads=), Attention's 4-D K/V
    assert e["value"] == "consecutive; groups 2, 3, 4, multi-query", e
    assert "6 over 4 (no whole groups): refused" in e["detail"], e


def test_adapter_refuses_what_it_does_not_declare(peer):
    config = spec.AttentionConfig(d_in=8, d_out=8, n_heads=2, dropout_p=0.3)
    params = spec.init_params(config, seed=0)
    x = peer.from_numpy(np.zeros((1, 3, 8)), "float32")
    with pytest.raises(ValueError, match=peer.name):
        peer.forward(x, peer.prepare(params, "float32"), config, dropout_mask=peer.from_numpy(np.ones((1, 2, 3, 3), bool)))
    undeclared = [d for d in spec.FLOAT_DTYPES if d not in peer.capabilities.dtypes]
    for d in undeclared:
        with pytest.raises(ValueError, match="valid"):
            peer.prepare(params, d)


def test_flax_dropout_is_its_own_rng():
    pytest.importorskip("flax", reason="flax is not installed (MHA_WITH_PEERS=1 nox -s tests installs it)")
    b = resolve("flax").backend
    config = spec.AttentionConfig(d_in=8, d_out=8, n_heads=2, causal=False, dropout_p=0.5)
    params = spec.init_params(config, seed=0)
    w, x = b.prepare(params, "float32"), b.from_numpy(np.random.default_rng(0).standard_normal((2, 8, 8)), "float32")
    a1, a2 = (b.to_numpy(b.forward(x, w, config, training=True)) for _ in range(2))
    e1, e2 = (b.to_numpy(b.forward(x, w, config)) for _ in range(2))
    assert not np.array_equal(a1, a2) and np.array_equal(e1, e2)


def test_flax_eval_with_a_dropout_rate_causal_and_padding():
    # dropout_rate > 0 takes flax's own attention path, whose causal mask once failed to
    # broadcast against a [B, 1, 1, Tk] padding mask
    pytest.importorskip("flax", reason="flax is not installed (MHA_WITH_PEERS=1 nox -s tests installs it)")
    b = resolve("flax").backend
    config = spec.AttentionConfig(d_in=8, d_out=8, n_heads=2, causal=True, dropout_p=0.5)
    params = spec.init_params(config, seed=0)
    x = np.random.default_rng(1).standard_normal((2, 5, 8))
    kpm = np.ones((2, 5), bool)
    kpm[0, :2] = False
    out = _forward(b, x, params, config, "float32", kpm)
    golden = spec.forward(x, params, spec.AttentionConfig(d_in=8, d_out=8, n_heads=2), key_padding_mask=kpm)
    assert np.abs(out - golden).max() < 1e-5


# -- probes ----------------------------------------------------------------------------------
class Fake:
    """A library that gets every disputed point 'wrong' on purpose: the probes must notice."""

    name, library = "fake", "fake 0"

    def attend(self, q, k, v, *, mask=None, causal=False, dtype="float32"):
        s = q @ k.swapaxes(-1, -2)  # no scale
        if mask is not None:  # True = ignore; masked logits NaN out a fully masked row
            s = np.where(mask[:, None, None, :], -np.inf, s)
        if causal:  # top-left
            s = np.where(np.tril(np.ones(s.shape[-2:], bool)), s, -np.inf)
        e = np.exp(s - s.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True) @ v).astype(dtype if dtype != "bfloat16" else "float32")

    def output_dtype(self, q, k, v, dtype):
        return str(self.attend(q, k, v, dtype=dtype).dtype)

    def dropout(self):
        return "none", "fake"


def test_probes_see_the_spec_decisions_in_numpy():
    row = probes.profile(SpecSteps("numpy", "numpy"))
    assert {k: e["value"] for k, e in row.items()} == {
        "fully_masked_row": "zeros", "mask_polarity": "True = take part", "causal_alignment": "bottom-right",
        "default_scale": "1/sqrt(head_dim)", "dropout": "replay",
        "low_precision_output": "float16 → float16, bfloat16: raises",  # bfloat16 is not declared
        "dtypes": "float64, float32, float16", "kv_grouping": "consecutive; groups 2, 3, 4, multi-query",
        "window": "w + 1 keys, bottom-right", "softcap": "before the mask",
        "bias_masked_row": "mean of V (uniform weights)", "sink_masked_row": "zeros",
        "non_finite_masked": "leaks (causal, padding)", "decode_bitwise": "differs (float64, float32)",
        "batch_bitwise": "equal", "layout_bitwise": "equal"}


def test_probes_tell_the_other_behaviours_apart():
    with np.errstate(invalid="ignore"):
        row = probes.profile(Fake())
    assert row["mask_polarity"]["value"] == "True = masked out"
    assert row["fully_masked_row"]["value"] == "NaN"
    assert row["causal_alignment"]["value"] == "top-left"
    assert row["default_scale"]["value"] == "1 (none)"
    assert row["low_precision_output"]["value"] == "float16 → float16, bfloat16 → float32"


def test_probe_reports_a_library_that_raises():
    class Refuses(Fake):
        def attend(self, q, k, v, *, mask=None, causal=False, dtype="float32"):
            if causal:
                raise RuntimeError("Need attn_mask")
            return super().attend(q, k, v, mask=mask, dtype=dtype)

    e = probes.causal_alignment(Refuses())
    assert e["value"] == "raises" and "RuntimeError: Need attn_mask" in e["detail"]


def test_torch_mha_raw_behaviour_is_measured_not_corrected():
    pytest.importorskip("torch", reason="torch is not installed (pip install torch==2.13.0)")
    from conformance.semantics.libraries import TorchMha

    raw = TorchMha()
    assert probes.mask_polarity(raw)["value"] == "True = masked out"
    assert probes.fully_masked_row(raw, "True = masked out")["value"] == "NaN"  # torch 2.13's fast path


# -- results file and report -----------------------------------------------------------------
def test_semantics_section_written_beside_conformance(tmp_path):
    doc = {"schema_version": "1.0", "kind": "mha-conformance-results", "runs": [
        {"machine": "box", "environment": {"os": "x", "cpu": "y", "python": "3", "libraries": {}, "threads": {},
                                           "commit": None, "dirty": None},
         "conformance": None, "speed": {"kept": True}}]}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    assert sem_cli.main(["--out", str(tmp_path), "--machine", "box", "--backend", "numpy", "--profile", "quick"]) == 0
    run = json.loads((tmp_path / "results.json").read_text())["runs"][0]
    assert run["speed"] == {"kept": True}
    assert [(r["backend"], r["via"]) for r in run["semantics"]["rows"]] == [("numpy", "library"), ("numpy", "contract")]
    assert sem_cli.main(["--list-checks", "--out", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "none").exists()


def test_report_shows_the_profile(tmp_path):
    raw = SpecSteps("numpy", "numpy")
    section = sem_cli.measure(["numpy"])
    section["rows"].append({"backend": "jax", "via": "library", "library": "jax not installed",
                            "skip_reason": "jax is not <installed>", "entries": {}})
    path = sem_cli.write(tmp_path, "box", section)
    results.load(path)  # schema-valid
    out, report = cli.generate([tmp_path], tmp_path / "out")
    md = (out / "report.md").read_text()
    page = (out / "index.html").read_text()
    assert "jax is not &lt;installed&gt;" in md and "jax is not &lt;installed&gt;" in page  # escaped
    # a row per backend, a column per measured point, each cell the value the probe measured
    keys = [c["key"] for c in section["columns"]]
    measured = [section["rows"][0]["entries"][k]["value"] for k in keys]
    assert measured[keys.index("causal_alignment")] == "bottom-right"  # the spec's decision, measured on numpy
    [table] = rp.section(md, semantic.TITLE).tables()
    assert [rp.plain(h) for h in table.head[3:]] == [c["title"] for c in section["columns"]]
    rows = {(rp.code_spans(r[0])[0], rp.plain(r[1])): [rp.plain(c) for c in r[2:]] for r in table.rows}
    assert list(rows) == [("numpy", "library"), ("numpy", "contract"), ("jax", "library")]
    assert rows["numpy", "library"] == [raw.library, *measured]
    # a library that is missing: nothing measured, and the reason under the table
    assert rows["jax", "library"][0] == "jax not installed" and len(set(rows["jax", "library"][1:])) == 1
    assert not set(rows["jax", "library"][1:]) & set(measured)
    jax_notes = [rp.plain(i) for i in rp.section(md, semantic.TITLE).items() if rp.code_spans(i)[:1] == ["jax"]]
    assert jax_notes and all(n.endswith("jax is not <installed>") for n in jax_notes)
    sem = rp.parse_html(page).root.one("section", id="semantics")
    trs = {(r[0].text, r[1].text): r[2:] for r in rp.html_rows(sem.one("table"))}
    assert [td.text for td in trs["numpy", "library"]] == [raw.library, *measured]
    assert [td.attrs["title"] for td in trs["jax", "library"][1:]] == ["jax is not <installed>"] * len(keys)
    # no profile in the document: the section says so and names the command that measures one
    no_profile = model.build({"schema_version": "1.0", "kind": "mha-conformance-results", "runs": []})
    empty = rp.section(markdown.render(no_profile), semantic.TITLE)
    assert empty.tables() == [] and "python -m conformance.semantics" in empty.text
    sem = rp.parse_html(html.render(no_profile)).root.one("section", id="semantics")
    assert sem.all("table") == [] and "python -m conformance.semantics" in sem.text
