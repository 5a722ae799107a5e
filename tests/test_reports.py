"""Reports: merged results.json, report.md and index.html from synthetic results documents.

The documents are built here from the schema (two machines: a CPU box with a failure, an
unsupported and a skipped backend, and a GPU box with CuPy and torch-cuda speed cells), so
these tests need neither the conformance suite nor the speed harness.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conformance import results
from reports import cli, markdown, model, speed_model

REPO = Path(__file__).resolve().parent.parent
HOSTILE = "<script>alert(1)</script>"
NASTY_REASON = "mismatch &<>\"' at row 3"
COUNTEREXAMPLE = "B=1 T=3 d_in=4 d_out=4 n_heads=2 causal=True\nx = [[[1e4, -1e4, 0.5, 0.0], ...]]\n``` fence inside"
REPRO = "python -m conformance --backend torch-mha --check matches_spec --dtype float16 --seed 1234"
CHECKS = [
    ("input_rank_and_dtype", 1, "Step 1 rejects a wrong rank or a non-float dtype with ValueError.\nMore text."),
    ("head_dim_divides", 2, "head_dim = d_out // n_heads; a non-divisor is a ValueError."),
    ("split_matches_index", 5, "split(x)[b,t,h,d] == x[b,t,h*head_dim+d]."),
    ("masked_weights_zero", 8, "Masked positions get weight exactly 0."),
    ("rows_sum_to_one", 8, "Softmax rows sum to 1."),
    ("context_in_hull", 9, "Each context vector lies in the convex hull of the attendable values."),
    ("matches_spec", None, "The output matches the float64 spec within the tolerance."),
    ("causality", None, "Perturbing tokens after t leaves outputs up to t unchanged."),
]
DTYPES = ("float64", "float32", "float16")


def environment(gpu: bool) -> dict:
    blas = [{"internal_api": "openblas", "version": "0.3.27", "num_threads": 8, "threading_layer": "pthreads"}]
    return {"os": "Linux 6.8.0", "cpu": "AMD EPYC 7763 64-Core Processor", "cpu_count": 16,
            "gpu": {"name": "NVIDIA H200", "driver": "550.54.15", "cuda_runtime": "12.4",
                    "memory_bytes": 150 * 2**30, "capability": "9.0"} if gpu else None,
            "python": "3.12.3", "libraries": {"numpy": "2.1.0", "torch": "2.13.0", "scipy": "1.14.1"},
            "blas": blas, "threads": {"torch": 8, "omp_num_threads_env": "8", "blas": []},
            "commit": ("b" if gpu else "a") * 40, "dirty": False}


def backend(name: str, skip: str | None = None, steps: list[int] | None = None) -> dict:
    return {"name": name, "spec": name, "source": f"impls/{name}.py", "capabilities": {},
            "exposed_steps": steps if steps is not None else list(range(1, 13)), "skip_reason": skip}


def record(b: str, check: str, step, dtype: str, outcome: str = "passed", **kw) -> dict:
    r = {"backend": b, "check": check, "step": step, "dtype": dtype, "outcome": outcome, "reason": "",
         "max_error": 1e-7, "tolerance": 1e-5, "counterexample": None, "repro": None, "inputs": None}
    r.update(kw)
    return r


def cpu_conformance() -> dict:
    backends = [backend("numpy"), backend("torch"), backend("torch-sdpa", steps=[]),
                backend("torch-mha", steps=[]), backend(HOSTILE),
                backend("cupy", skip="CuPy not importable: no CUDA driver on this machine")]
    records = []
    for b in backends:
        for name, step, _ in CHECKS:
            for dtype in DTYPES:
                if b["skip_reason"]:
                    records.append(record(b["name"], name, step, dtype, "skipped", reason=b["skip_reason"]))
                elif step is not None and step not in b["exposed_steps"]:
                    records.append(record(b["name"], name, step, dtype, "unsupported",
                                          reason="backend exposes no intermediate steps"))
                elif b["name"] == "torch-mha" and name == "matches_spec" and dtype == "float16":
                    records.append(record(b["name"], name, step, dtype, "failed", reason="max error above tolerance",
                                          max_error=0.0123, tolerance=0.004, counterexample=COUNTEREXAMPLE,
                                          repro=REPRO, inputs="inputs/torch-mha-matches_spec-float16.npz"))
                elif b["name"] == HOSTILE and name == "causality" and dtype == "float32":
                    records.append(record(b["name"], name, step, dtype, "failed", reason=NASTY_REASON,
                                          counterexample=HOSTILE, repro=f"run {HOSTILE}"))
                else:
                    records.append(record(b["name"], name, step, dtype))
    return {"status": "complete", "started": "2025-01-01T00:00:00Z", "finished": "2025-01-01T00:05:00Z",
            "duration_s": 300.0, "profile": "reproducible", "seed": 1234,
            "command": "python -m conformance --profile reproducible", "backends": backends,
            "checks": [{"name": n, "step": s, "doc": d} for n, s, d in CHECKS], "records": records}


def gpu_conformance() -> dict:
    backends = [backend("cupy", steps=[]), backend("torch-cuda", steps=[])]
    records = [record(b["name"], n, s, d, "passed" if s is None else "unsupported")
               for b in backends for n, s, _ in CHECKS for d in ("float32", "float16")]
    return dict(cpu_conformance(), backends=backends, records=records)


def cell(b: str, device: str, dtype: str, T: int, rate: float, conforming=True, peak=None, **kw) -> dict:
    """A speed cell as conformance.speed writes it, timed as if the backend ran at `rate` GFLOP/s."""
    B, d, H = 2, 256, 8
    hd = d // H
    flops = 2 * B * T * d * 3 * d + (4 * B * H * T * T * hd) * (T + 1) / (2 * T) + 2 * B * T * d * d
    rng = np.random.default_rng(T)
    samples = list(flops / (rate * 1e9) * (1 + 0.05 * rng.random(9)))
    med, p25, p75 = (float(np.percentile(samples, q)) for q in (50, 25, 75))
    c = {"backend": b, "device": device, "dtype": dtype, "B": B, "T": T, "d_in": d, "d_out": d,
         "n_heads": H, "causal": True, "first_call_s": 3 * med, "samples_s": samples, "median_s": med,
         "p25_s": p25, "p75_s": p75, "spread": (p75 - p25) / med, "noisy": False, "flops": flops,
         "gflops": flops / med / 1e9, "peak_gflops": peak, "peak_fraction": flops / med / 1e9 / peak if peak else None,
         "peak_memory_bytes": 3 << 20, "memory_method": "tracemalloc", "timer": "perf_counter_ns",
         "conforming": conforming, "error": None, "time_vs_torch": None}
    c.update(kw)
    return c


def peak_section(measured: dict[str, float], library: str, n: int) -> dict:
    ms = [{"device": k.split("/")[0], "library": library, "dtype": k.split("/")[1], "shape": [n, n, n],
           "reps": 3, "best_s": 1.0, "gflops": v, "error": None} for k, v in measured.items()]
    if "cpu/float32" in measured:
        ms.append(dict(ms[0], library="torch", gflops=measured["cpu/float32"] * 0.9))
    head = ms[0]
    return {"gflops": head["gflops"], "device": head["device"], "dtype": head["dtype"], "library": library,
            "shape": [n, n, n], "by_device_dtype": dict(measured), "measurements": ms}


def speed(cells: list[dict], peak: dict, **kw) -> dict:
    sp = {"status": "complete", "started": "2025-01-01T00:06:00Z", "finished": None, "duration_s": 60.0,
          "command": "python -m conformance.speed", "peak": peak, "cells": cells,
          "threads": {"requested": 8, "torch": 8, "omp_num_threads_env": "8",
                      "blas": [{"internal_api": "openblas", "num_threads": 8}]},
          "budget_s": 0.5, "min_samples": 5, "load_average": {"start": 0.2, "now": 0.4},
          "backends": [{"name": n, "spec": n, "device": "cpu", "conforming": True, "conformance_note": ""}
                       for n in dict.fromkeys(c["backend"] for c in cells)], "skipped": []}
    sp.update(kw)
    return sp


TS = (64, 128, 256, 512)


def cpu_doc() -> dict:
    rates = {"numpy": 40.0, "torch": 80.0, "torch-sdpa": 120.0, "torch-mha": 90.0, HOSTILE: 60.0}
    conforming = {"torch-mha": False, HOSTILE: None}
    cells = [cell(b, "cpu", "float32", T, r, conforming=conforming.get(b, True), peak=1500.0)
             for b, r in rates.items() for T in TS]
    cells[0].update(noisy=True, spread=0.35)
    cells.append(cell("numpy", "cpu", "float64", 128, 20.0, peak=700.0))  # no torch at this dtype: ratio n/a
    skipped = [{"backend": "cupy", "reason": "CuPy not importable: no CUDA driver"}] + [
        {"backend": "torch-sdpa", "reason": "dtype float64 not declared", "dtype": "float64", "B": 2, "T": T}
        for T in TS]
    sp = speed(cells, peak_section({"cpu/float32": 1500.0, "cpu/float64": 700.0}, "numpy", 2048), skipped=skipped,
               load_average={"start": 12.5, "now": 3.0})
    return {"schema_version": "1.0", "kind": "mha-conformance-results", "runs": [
        {"machine": "cpu-box", "environment": environment(False), "conformance": cpu_conformance(), "speed": sp}]}


def gpu_doc() -> dict:
    peaks = {"cuda/float32": 50000.0, "cuda/float16": 700000.0}
    cells = [cell(b, "cuda", dt, T, r, peak=peaks[f"cuda/{dt}"], timer="torch.cuda.Event")
             for b, r in (("cupy", 9000.0), ("torch-cuda", 15000.0)) for dt in ("float32", "float16") for T in TS]
    return {"schema_version": "1.0", "kind": "mha-conformance-results", "runs": [
        {"machine": "gpu-box", "environment": environment(True), "conformance": gpu_conformance(),
         "speed": speed(cells, peak_section(peaks, "torch", 8192))}]}


def write(tmp: Path, name: str, doc: dict) -> Path:
    d = tmp / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps(doc))
    return d


class Checker(HTMLParser):
    """Balanced non-void tags, ids seen, and resource references (src/href)."""
    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source", "area", "base"})
    SVG_LEAVES = frozenset({"circle", "rect", "line", "path", "polyline", "polygon"})  # may be self-closed in SVG

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []
        self.refs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID and tag not in self.SVG_LEAVES:
            self.errors.append(f"self-closed <{tag}/>")

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def check_html(page: str) -> Checker:
    c = Checker()
    c.feed(page)
    c.close()
    assert not c.errors, c.errors[:5]
    assert not c.stack, f"unclosed: {c.stack}"
    return c


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merged")
    cpu = write(tmp, "cpu", cpu_doc())
    (cpu / "inputs").mkdir()
    (cpu / "inputs" / "torch-mha-matches_spec-float16.npz").write_bytes(b"npz")
    gpu = write(tmp, "gpu", gpu_doc())
    out = tmp / "out"
    assert cli.main([str(cpu), str(gpu / "results.json"), "--out", str(out), "--title", "Test report"]) == 0
    return out, (out / "report.md").read_text(), (out / "index.html").read_text()


def test_merged_results_validate(merged):
    out, _, _ = merged
    doc = results.load(out)
    assert [r["machine"] for r in doc["runs"]] == ["cpu-box", "gpu-box"]
    failed = [r for r in doc["runs"][0]["conformance"]["records"] if r["backend"] == "torch-mha" and r["outcome"] == "failed"]
    # the saved inputs travel with the report, and the record points at the copy
    assert (out / failed[0]["inputs"]).read_bytes() == b"npz"


def test_summary_sentence_counts_backends(merged):
    _, md, page = merged
    sentence = "Conformance: 2 failed records; 5 of 8 backends conform, 2 fail, 1 skipped"
    assert sentence in md and sentence in page


def test_markdown_matrix(merged):
    _, md, _ = merged
    matrix = md.split("## Conformance")[1].split("## Failures")[0]
    header = next(line for line in matrix.splitlines() if line.startswith("| Check"))
    for label in ("numpy @ cpu-box", "torch @ cpu-box", "torch-sdpa @ cpu-box", "torch-mha @ cpu-box",
                  "cupy @ cpu-box", "cupy @ gpu-box", "torch-cuda @ gpu-box"):
        assert f"`{label}`" in header
    positions = [matrix.index(f"`{name}`") for name, _, _ in CHECKS]
    assert positions == sorted(positions[:6]) + sorted(positions[6:]) and max(positions[:6]) < min(positions[6:])
    groups = [matrix.index(f"**{markdown.text(model.step_title(s))}**") for s in (1, 2, 5, 8, 9, None)]
    assert groups == sorted(groups)
    row = next(line for line in matrix.splitlines() if line.startswith("| `matches_spec`"))
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    cols = [c.strip() for c in header.strip("|").split(" | ")]
    assert cells[cols.index("`torch-mha @ cpu-box`")] == "❌ FAIL (float16)"
    assert cells[cols.index("`numpy @ cpu-box`")] == "✅ pass"
    assert cells[cols.index("`cupy @ cpu-box`")] == "⏭ skipped"
    split_row = next(line for line in matrix.splitlines() if line.startswith("| `split_matches_index`"))
    assert "— unsupported" in split_row
    totals = next(line for line in matrix.splitlines() if "totals" in line)
    assert "24 passed, 0 failed, 0 unsupported, 0 skipped" in totals      # numpy
    assert "23 passed, 1 failed, 0 unsupported, 0 skipped" in totals      # the hostile plug-in
    assert "5 passed, 1 failed, 18 unsupported, 0 skipped" in totals      # torch-mha: no steps exposed
    assert "0 passed, 0 failed, 0 unsupported, 24 skipped" in totals
    assert "CuPy not importable: no CUDA driver on this machine" in matrix


def test_markdown_failures_verbatim(merged):
    _, md, _ = merged
    failures = md.split("## Failures")[1].split("## Speed")[0]
    assert COUNTEREXAMPLE in failures and REPRO in failures
    assert "0.0123 vs tolerance 0.00400" in failures
    assert "The output matches the float64 spec within the tolerance." in failures
    # the fence around a counterexample holding ``` is longer than any run inside it
    assert "````text\n" + COUNTEREXAMPLE + "\n````" in failures


def test_markdown_speed(merged):
    _, md, _ = merged
    sp = md.split("## Speed")[1]
    assert "### cpu-box: cpu, float32" in sp and "### gpu-box: cuda, float16" in sp
    assert "Measured matmul peak: 1500 GFLOP/s (numpy matmul 2048×2048×2048, best of 3; torch reached 1350)." in sp
    assert "Measured matmul peak: 700000 GFLOP/s (torch matmul 8192×8192×8192" in sp
    assert "BUSY" in sp and "not timed: torch-sdpa: dtype float64 not declared (4 cells)" in sp
    rows = [r for r in sp.split("### cpu-box: cpu, float32")[1].split("###")[0].splitlines() if r.startswith("| B=")]
    t128 = {r.split(" | ")[1]: r for r in rows if "T=128 " in r}
    assert "| 1.00× |" in t128["`torch`"] and "| 2.00× |" in t128["`numpy`"] and "| 0.67× |" in t128["`torch-sdpa`"]
    assert "| 2.6% |" in t128["`numpy`"] and "| 3.00 |" in t128["`numpy`"]  # % of peak, memory MiB
    assert "NOT CONFORMING" in t128["`torch-mha`"]
    assert t128["`torch-mha`"].split(" | ")[2:8] == ["—"] * 6  # no headline figure, no time at all
    assert "conformance unverified" in t128[markdown.code(HOSTILE)]
    assert any("⚠ noisy: spread 35%" in r for r in rows)
    f64 = sp.split("### cpu-box: cpu, float64")[1].split("###")[0]
    assert "| n/a |" in f64 and "No torch eager backend here" in f64 and "700 GFLOP/s" in f64
    gpu = sp.split("### gpu-box: cuda, float32")[1].split("###")[0]
    assert "against torch-cuda" in gpu and "| 1.67× |" in gpu and "Median µs" in gpu and "torch.cuda.Event" in gpu


def test_html_structure_and_plots(merged):
    _, _, page = merged
    c = check_html(page)
    assert {"environment", "conformance", "failures", "speed", "plots", "failure-1"} <= c.ids
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    assert not [r for r in c.refs if not r.startswith("#")]
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.DOTALL)
    assert len(svgs) == 2  # one shape family: time and GFLOP/s
    labels = set(re.findall(r'data-label="([^"]*)"', page))
    assert {"numpy @ cpu-box, float32", "torch-cuda @ gpu-box, float16", "cupy @ gpu-box, float32"} <= labels
    assert not any("torch-mha" in lb for lb in labels)  # non-conforming: no curve
    assert "matmul peak gpu-box, float16" in svgs[1] and 'stroke-dasharray="9 5"' in svgs[1]
    assert "matmul peak cpu-box, float64: 700" in svgs[1]
    assert "tokens T (log scale)" in svgs[0] and "<polyline" in svgs[0]
    text = "".join(c.text)
    assert COUNTEREXAMPLE in text and REPRO in text and "❌ FAIL (float16)" in text


def test_html_escapes_hostile_strings(merged):
    _, md, page = merged
    assert HOSTILE not in page and "alert(1)" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "mismatch &amp;&lt;&gt;&quot;&#x27; at row 3" in page
    assert "&lt;script&gt;" in md or f"`{HOSTILE}" in md  # markdown: code span or escaped


def test_partial_run_is_flagged(tmp_path):
    doc = cpu_doc()
    doc["runs"][0]["conformance"]["status"] = "running"
    d = write(tmp_path, "run", doc)
    assert cli.main([str(d)]) == 0
    md = (d / "report.md").read_text()
    top = md.split("## Environment")[0]
    assert "INCOMPLETE" in top and "conformance on cpu-box" in top
    page = (d / "index.html").read_text()
    assert 'class="warn"' in page and "INCOMPLETE" in page.split('id="environment"')[0]
    # the single input's own results.json is left untouched
    assert json.loads((d / "results.json").read_text()) == doc


@pytest.mark.parametrize("section", ["conformance", "speed"])
def test_one_section_only(tmp_path, section):
    doc = cpu_doc()
    doc["runs"][0]["speed" if section == "conformance" else "conformance"] = None
    d = write(tmp_path, "run", doc)
    assert cli.main([str(d), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    page = (tmp_path / "o" / "index.html").read_text()
    check_html(page)
    missing = "Speed" if section == "conformance" else "Conformance"
    assert f"{missing}: not run" in md and f"{missing}: not run" in page
    if section == "speed":
        assert "<svg" in page and "## Failures" in md
    else:
        assert "<svg" not in page and "FAIL (float16)" in md


def test_empty_document_renders(tmp_path):
    d = write(tmp_path, "run", results.empty_document())
    assert cli.main([str(d)]) == 0
    assert "no runs" in (d / "report.md").read_text()
    check_html((d / "index.html").read_text())


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    (tmp / "notjson.json").write_text("{not json")
    wrong = cpu_doc()
    del wrong["runs"][0]["environment"]["os"]
    (tmp / "wrong.json").write_text(json.dumps(wrong))
    return {"missing": tmp / "nope" / "results.json", "notjson": tmp / "notjson.json", "wrong": tmp / "wrong.json"}


@pytest.mark.parametrize("kind,needle", [("missing", "no such results file"), ("notjson", "not JSON"),
                                         ("wrong", "runs/0/environment")])
def test_cli_bad_input_exits_2(tmp_path, capsys, kind, needle):
    bad = _bad_inputs(tmp_path)[kind]
    good = write(tmp_path, "good", cpu_doc())
    assert cli.main([str(good), str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and str(bad) in err and "Traceback" not in err
    assert not (tmp_path / "o" / "report.md").exists()


def test_cli_bad_argument_exits_2(capsys):
    assert cli.main(["--nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--nope" in err


def test_module_entry_point_exit_status(tmp_path):
    bad = _bad_inputs(tmp_path)["wrong"]
    p = subprocess.run([sys.executable, "-m", "reports", str(bad)], cwd=REPO, capture_output=True, text=True,
                       check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1


def test_summarise_cell():
    recs = [record("x", "c", 1, "float32"), record("x", "c", 1, "float16", "failed"),
            record("x", "c", 1, "bfloat16", "failed"), record("x", "c", 1, "float64", "unsupported")]
    assert model.summarise_cell(recs).text == "❌ FAIL (float16, bfloat16)"
    assert model.summarise_cell(recs[:1] + recs[3:]).text == "✅ pass (unsupported: float64)"
    assert model.summarise_cell(recs[3:]).status == "unsupported"
    assert model.summarise_cell([]).text == "○ not run"
    # the same dtype checked twice keeps its worst outcome
    assert model.summarise_cell([recs[0], record("x", "c", 1, "float32", "failed")]).status == "fail"


def test_table_peak():
    pk = peak_section({"cpu/float32": 100.0}, "numpy", 64)
    assert speed_model.table_peak(pk, [], "cpu", "float32")[0] == 100.0
    assert speed_model.table_peak(pk, [], "cpu", "float16") == (None, "")  # another dtype's peak is not borrowed
    assert speed_model.table_peak(pk, [{"peak_gflops": 90.0}], "cpu", "float32")[0] == 90.0  # the cells' denominator wins
    assert speed_model.table_peak({}, [{"gflops": 5.0, "peak_fraction": 0.5}], "cuda:0", "float16")[0] == 10.0
    assert speed_model.table_peak({"gflops": 7, "dtype": "float32", "device": "cpu"}, [], "cpu", "float32")[0] == 7.0


def test_same_machine_twice_is_kept_apart(tmp_path):
    a, b = write(tmp_path, "a", cpu_doc()), write(tmp_path, "b", copy.deepcopy(cpu_doc()))
    assert cli.main([str(a), str(b), "--out", str(tmp_path / "o")]) == 0
    md = (tmp_path / "o" / "report.md").read_text()
    assert "`numpy @ cpu-box (2)`" in md and "`numpy @ cpu-box`" in md


def test_screenshot_without_chromium(tmp_path, capsys, monkeypatch):
    from reports import screenshot
    page = tmp_path / "index.html"
    page.write_text("<!DOCTYPE html><title>x</title>")
    monkeypatch.setattr(screenshot, "find_chromium", lambda: None)
    assert screenshot.main([str(page), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "apt-get install chromium" in err


def test_repro_follows_copied_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    doc = cpu_doc()
    rec = next(r for r in doc["runs"][0]["conformance"]["records"] if r["outcome"] == "failed")
    rec["repro"] = "python -m conformance.repro run/inputs/case.npz"
    rec["inputs"] = "inputs/case.npz"
    d = write(tmp_path, "run", doc)
    (d / "inputs").mkdir()
    (d / "inputs" / "case.npz").write_bytes(b"npz")
    assert cli.main(["run", "--out", "published/cpu-x"]) == 0
    out = results.load(tmp_path / "published" / "cpu-x")
    rec = next(r for r in out["runs"][0]["conformance"]["records"] if r["outcome"] == "failed")
    assert rec["inputs"] == "inputs/case.npz"
    assert rec["repro"] == "python -m conformance.repro published/cpu-x/inputs/case.npz"
    assert "published/cpu-x/inputs/case.npz" in (tmp_path / "published" / "cpu-x" / "report.md").read_text()
